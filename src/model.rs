//! nanoGPT's GPT (`bias=False`, no dropout), written once against [`Backend`].
//!
//!   x = wte[idx] + wpe[pos]
//!   per layer: x += c_proj(attn(ln_1(x)));  x += mlp.c_proj(gelu(c_fc(ln_2(x))))
//!   logits = ln_f(x) · wteᵀ                  (head tied to the token embedding)
//!
//! The forward, backward and optimizer are each compiled once into an op sequence; a training
//! step is those three sequences in one submission, with the batch and the step's learning
//! rate written into their buffers beforehand. Forward and backward read top to bottom as
//! pairs, like llm.c.

use anyhow::{bail, Result};

use crate::kernels::cross_entropy::Keep;
use crate::kernels::{adamw, attention, embedding, matmul, sampled_loss, Op};
use crate::loss::Loss;
use crate::rng::Rng;
use crate::runtime::{Backend, Buf, Dtype, Seq};

/// Model sizes. Every field can be overridden from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

impl GptConfig {
    /// The paper's model: 4 layers, 4 heads, width 128, block 64.
    pub fn paper(vocab_size: usize) -> Self {
        GptConfig {
            vocab_size,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
        }
    }

    /// nanoGPT's shakespeare_char model: 6 layers, 6 heads, width 384, block 256.
    pub fn large(vocab_size: usize) -> Self {
        GptConfig {
            vocab_size,
            block_size: 256,
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if v == 0 {
                bail!(
                    "{name} must be at least 1 (got 0): pass a positive --{}",
                    name.replace('_', "-")
                );
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd {} is not divisible by n_head {}: pick sizes with n_embd = n_head x head size",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        param_specs(self).iter().map(|p| p.numel()).sum()
    }
}

/// One parameter tensor, under nanoGPT's name.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Init standard deviation; 0 means "ones" (LayerNorm weights).
    pub init_std: f32,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay applies to 2-D tensors (matmul weights, wte, wpe) only.
    pub fn decays(&self) -> bool {
        self.shape.len() == 2
    }
}

/// Parameters in nanoGPT's order: wte, wpe, the blocks, ln_f.
pub fn param_specs(cfg: &GptConfig) -> Vec<ParamSpec> {
    let c = cfg.n_embd;
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    let p = |name: String, shape: Vec<usize>, init_std: f32| ParamSpec {
        name,
        shape,
        init_std,
    };
    let mut v = vec![
        p(
            "transformer.wte.weight".into(),
            vec![cfg.vocab_size, c],
            0.02,
        ),
        p(
            "transformer.wpe.weight".into(),
            vec![cfg.block_size, c],
            0.02,
        ),
    ];
    for i in 0..cfg.n_layer {
        let h = format!("transformer.h.{i}");
        v.push(p(format!("{h}.ln_1.weight"), vec![c], 0.0));
        v.push(p(format!("{h}.attn.c_attn.weight"), vec![3 * c, c], 0.02));
        v.push(p(format!("{h}.attn.c_proj.weight"), vec![c, c], proj_std));
        v.push(p(format!("{h}.ln_2.weight"), vec![c], 0.0));
        v.push(p(format!("{h}.mlp.c_fc.weight"), vec![4 * c, c], 0.02));
        v.push(p(
            format!("{h}.mlp.c_proj.weight"),
            vec![c, 4 * c],
            proj_std,
        ));
    }
    v.push(p("transformer.ln_f.weight".into(), vec![c], 0.0));
    v
}

/// nanoGPT's initialisation: N(0, 0.02), residual projections N(0, 0.02/√(2·n_layer)),
/// LayerNorm weights 1. Drawn in parameter order from `rng`.
pub fn init_params(cfg: &GptConfig, rng: &mut Rng) -> Vec<Vec<f32>> {
    param_specs(cfg)
        .iter()
        .map(|s| {
            if s.init_std == 0.0 {
                vec![1.0; s.numel()]
            } else {
                (0..s.numel())
                    .map(|_| (rng.normal() * s.init_std as f64) as f32)
                    .collect()
            }
        })
        .collect()
}

/// Indices of one block's parameters within `param_specs`.
struct LayerParams {
    ln_1: usize,
    c_attn: usize,
    attn_proj: usize,
    ln_2: usize,
    c_fc: usize,
    mlp_proj: usize,
}

fn layer_params(l: usize) -> LayerParams {
    let base = 2 + 6 * l;
    LayerParams {
        ln_1: base,
        c_attn: base + 1,
        attn_proj: base + 2,
        ln_2: base + 3,
        c_fc: base + 4,
        mlp_proj: base + 5,
    }
}

/// Activations one block keeps for its backward.
struct LayerActs {
    ln_1: Buf,
    ln_1_mean: Buf,
    ln_1_rstd: Buf,
    qkv: Buf,
    att: Buf,
    atty: Buf,
    /// Residual stream after attention.
    mid: Buf,
    ln_2: Buf,
    ln_2_mean: Buf,
    ln_2_rstd: Buf,
    fc: Buf,
    fc_gelu: Buf,
    /// Residual stream after the MLP (the next block's input).
    out: Buf,
}

/// The optimizer's fixed settings; the learning rate is set per step.
#[derive(Clone, Copy, Debug)]
pub struct OptConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f32,
}

impl Default for OptConfig {
    fn default() -> Self {
        OptConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// A GPT with its parameters, gradients, optimizer state and activations on one backend.
pub struct Gpt {
    pub cfg: GptConfig,
    pub batch: usize,
    pub specs: Vec<ParamSpec>,
    pub params: Vec<Buf>,
    pub grads: Vec<Buf>,
    pub adam_m: Vec<Buf>,
    pub adam_v: Vec<Buf>,
    /// Input ids and targets, u32 [batch, block].
    pub idx: Buf,
    pub targets: Buf,
    pub logits: Buf,
    /// Per-position loss under the training loss, and their mean.
    pub losses: Buf,
    pub loss: Buf,
    /// Per-position plain cross-entropy and its mean (validation; same positions).
    pub plain_losses: Buf,
    pub plain_loss: Buf,
    /// `[norm, clip scale]` of the last step's gradients.
    pub norm: Buf,
    /// `[lr, 1 - β1^t, √(1 - β2^t), 0]`, written by the host every step.
    pub step_scalars: Buf,
    pub forward: Seq,
    /// Loss and backward (needs `forward` first).
    pub backward: Seq,
    /// Clip and AdamW (needs `backward` first).
    pub optimize: Seq,
    /// Plain cross-entropy of the current logits (needs `forward` first).
    pub eval_loss: Seq,
    pub opt: OptConfig,
    pub loss_fn: Loss,
    /// `sampled:K` only: the noise table (u32 [V], see `sampled_loss::cdf`; uniform until
    /// `set_noise`) and the draw seeds (u32 `[step, run seed]`).
    pub noise: Option<(Buf, Buf)>,
}

impl Gpt {
    /// Allocates everything and compiles the sequences; `loss_fn` is the training loss.
    pub fn new(
        be: &mut dyn Backend,
        cfg: GptConfig,
        batch: usize,
        loss_fn: Loss,
        opt: OptConfig,
    ) -> Result<Gpt> {
        cfg.validate()?;
        if batch == 0 {
            bail!("batch_size must be at least 1 (got 0): pass a positive --batch-size");
        }
        let specs = param_specs(&cfg);
        let (b, t, c, v, nh) = (
            batch,
            cfg.block_size,
            cfg.n_embd,
            cfg.vocab_size,
            cfg.n_head,
        );
        let bt = b * t;
        let keep = loss_fn.keep(v)?;
        let f32b = |be: &mut dyn Backend, label: &str, n: usize| be.alloc(label, n, Dtype::F32);

        let mut params = Vec::new();
        let mut grads = Vec::new();
        let mut adam_m = Vec::new();
        let mut adam_v = Vec::new();
        for s in &specs {
            params.push(f32b(be, &s.name, s.numel())?);
            grads.push(f32b(be, &format!("grad {}", s.name), s.numel())?);
            adam_m.push(f32b(be, &format!("adam_m {}", s.name), s.numel())?);
            adam_v.push(f32b(be, &format!("adam_v {}", s.name), s.numel())?);
        }
        let idx = be.alloc("idx", bt, Dtype::U32)?;
        let targets = be.alloc("targets", bt, Dtype::U32)?;

        // forward activations
        let x0 = f32b(be, "x0", bt * c)?;
        let mut acts = Vec::new();
        for _ in 0..cfg.n_layer {
            acts.push(LayerActs {
                ln_1: f32b(be, "ln_1", bt * c)?,
                ln_1_mean: f32b(be, "ln_1 mean", bt)?,
                ln_1_rstd: f32b(be, "ln_1 rstd", bt)?,
                qkv: f32b(be, "qkv", bt * 3 * c)?,
                att: f32b(be, "att", b * nh * t * t)?,
                atty: f32b(be, "atty", bt * c)?,
                mid: f32b(be, "mid", bt * c)?,
                ln_2: f32b(be, "ln_2", bt * c)?,
                ln_2_mean: f32b(be, "ln_2 mean", bt)?,
                ln_2_rstd: f32b(be, "ln_2 rstd", bt)?,
                fc: f32b(be, "fc", bt * 4 * c)?,
                fc_gelu: f32b(be, "fc gelu", bt * 4 * c)?,
                out: f32b(be, "out", bt * c)?,
            });
        }
        let lnf = f32b(be, "ln_f", bt * c)?;
        let lnf_mean = f32b(be, "ln_f mean", bt)?;
        let lnf_rstd = f32b(be, "ln_f rstd", bt)?;
        let logits = f32b(be, "logits", bt * v)?;
        let losses = f32b(be, "losses", bt)?;
        let loss = f32b(be, "loss", 1)?;
        let plain_losses = f32b(be, "plain losses", bt)?;
        let plain_loss = f32b(be, "plain loss", 1)?;
        // scratch shared by all layers
        let proj = f32b(be, "proj", bt * c)?;
        let dlogits = f32b(be, "dlogits", bt * v)?;
        let dres = f32b(be, "dres", bt * c)?;
        let dln = f32b(be, "dln", bt * c)?;
        let datty = f32b(be, "datty", bt * c)?;
        let dqkv = f32b(be, "dqkv", bt * 3 * c)?;
        let datt = f32b(be, "datt", b * nh * t * t)?;
        let dfc_gelu = f32b(be, "dfc gelu", bt * 4 * c)?;
        let dfc = f32b(be, "dfc", bt * 4 * c)?;
        let partials = f32b(
            be,
            "norm partials",
            specs.len() * adamw::SUMSQ_GROUPS as usize,
        )?;
        let norm = f32b(be, "norm", 2)?;
        let step_scalars = f32b(be, "step scalars", 4)?;
        let noise = match loss_fn.sampled {
            Some(_) => {
                let cdf = be.alloc("noise cdf", v, Dtype::U32)?;
                be.write_u32(cdf, &sampled_loss::cdf(&vec![1.0; v]));
                Some((cdf, be.alloc("noise seeds", 2, Dtype::U32)?))
            }
            None => None,
        };

        let (bt32, c32, t32, v32) = (bt as u32, c as u32, t as u32, v as u32);
        // y[bt, out] = x[bt, in] · W[out, in]ᵀ
        let linear = |x: Buf, w: Buf, y: Buf, out: usize, inp: usize| Op::Matmul {
            s: matmul::Shape {
                batch: 1,
                m: bt32,
                n: out as u32,
                k: inp as u32,
                trans_a: false,
                trans_b: true,
                accumulate: false,
            },
            a: x,
            b: w,
            c: y,
        };
        // dx[bt, in] = dy[bt, out] · W[out, in];  dW[out, in] = dy[bt, out]ᵀ · x[bt, in]
        let linear_bwd = |x: Buf, w: Buf, dy: Buf, dx: Buf, dw: Buf, out: usize, inp: usize| {
            [
                Op::Matmul {
                    s: matmul::Shape {
                        batch: 1,
                        m: bt32,
                        n: inp as u32,
                        k: out as u32,
                        trans_a: false,
                        trans_b: false,
                        accumulate: false,
                    },
                    a: dy,
                    b: w,
                    c: dx,
                },
                Op::Matmul {
                    s: matmul::Shape {
                        batch: 1,
                        m: out as u32,
                        n: inp as u32,
                        k: bt32,
                        trans_a: true,
                        trans_b: false,
                        accumulate: false,
                    },
                    a: dy,
                    b: x,
                    c: dw,
                },
            ]
        };
        let emb = embedding::Shape {
            b: b as u32,
            t: t32,
            c: c32,
            v: v32,
        };
        let att_shape = attention::Shape {
            b: b as u32,
            t: t32,
            c: c32,
            nh: nh as u32,
        };

        // ---- forward
        let mut fwd = vec![Op::EmbeddingFwd {
            s: emb,
            idx,
            wte: params[0],
            wpe: params[1],
            x: x0,
        }];
        let mut x = x0;
        for (l, a) in acts.iter().enumerate() {
            let p = layer_params(l);
            fwd.push(Op::LayerNormFwd {
                rows: bt32,
                cols: c32,
                x,
                w: params[p.ln_1],
                y: a.ln_1,
                mean: a.ln_1_mean,
                rstd: a.ln_1_rstd,
            });
            fwd.push(linear(a.ln_1, params[p.c_attn], a.qkv, 3 * c, c));
            fwd.push(Op::AttentionFwd {
                s: att_shape,
                qkv: a.qkv,
                att: a.att,
                y: a.atty,
            });
            fwd.push(linear(a.atty, params[p.attn_proj], proj, c, c));
            fwd.push(Op::Add {
                n: bt32 * c32,
                a: x,
                b: proj,
                out: a.mid,
            });
            fwd.push(Op::LayerNormFwd {
                rows: bt32,
                cols: c32,
                x: a.mid,
                w: params[p.ln_2],
                y: a.ln_2,
                mean: a.ln_2_mean,
                rstd: a.ln_2_rstd,
            });
            fwd.push(linear(a.ln_2, params[p.c_fc], a.fc, 4 * c, c));
            fwd.push(Op::GeluFwd {
                n: bt32 * 4 * c32,
                x: a.fc,
                y: a.fc_gelu,
            });
            fwd.push(linear(a.fc_gelu, params[p.mlp_proj], proj, c, 4 * c));
            fwd.push(Op::Add {
                n: bt32 * c32,
                a: a.mid,
                b: proj,
                out: a.out,
            });
            x = a.out;
        }
        let ln_f = params.len() - 1;
        fwd.push(Op::LayerNormFwd {
            rows: bt32,
            cols: c32,
            x,
            w: params[ln_f],
            y: lnf,
            mean: lnf_mean,
            rstd: lnf_rstd,
        });
        fwd.push(linear(lnf, params[0], logits, v, c));

        // ---- loss and backward, in reverse
        let mut bwd = vec![
            match (keep, loss_fn.sampled, noise) {
                (Some(keep), ..) => Op::CrossEntropy {
                    rows: bt32,
                    cols: v32,
                    keep,
                    scale: 1.0 / bt as f32,
                    logits,
                    targets,
                    losses,
                    dlogits,
                },
                (None, Some(k), Some((cdf, seeds))) => Op::SampledLoss {
                    rows: bt32,
                    cols: v32,
                    k,
                    scale: 1.0 / bt as f32,
                    logits,
                    targets,
                    cdf,
                    seeds,
                    losses,
                    dlogits,
                },
                _ => unreachable!("Loss::keep is None only for sampled:K, which has noise"),
            },
            Op::Mean {
                n: bt32,
                x: losses,
                out: loss,
            },
        ];
        // tied head: writes dwte; the embedding backward adds its part at the end
        bwd.extend(linear_bwd(lnf, params[0], dlogits, dln, grads[0], v, c));
        bwd.push(Op::LayerNormBwd {
            rows: bt32,
            cols: c32,
            accumulate: false,
            x,
            w: params[ln_f],
            mean: lnf_mean,
            rstd: lnf_rstd,
            dy: dln,
            dx: dres,
            dw: grads[ln_f],
        });
        for (l, a) in acts.iter().enumerate().rev() {
            let p = layer_params(l);
            let x_in = if l == 0 { x0 } else { acts[l - 1].out };
            // dres holds d(out); the MLP branch adds into it to give d(mid)
            bwd.extend(linear_bwd(
                a.fc_gelu,
                params[p.mlp_proj],
                dres,
                dfc_gelu,
                grads[p.mlp_proj],
                c,
                4 * c,
            ));
            bwd.push(Op::GeluBwd {
                n: bt32 * 4 * c32,
                x: a.fc,
                dy: dfc_gelu,
                dx: dfc,
            });
            bwd.extend(linear_bwd(
                a.ln_2,
                params[p.c_fc],
                dfc,
                dln,
                grads[p.c_fc],
                4 * c,
                c,
            ));
            bwd.push(Op::LayerNormBwd {
                rows: bt32,
                cols: c32,
                accumulate: true,
                x: a.mid,
                w: params[p.ln_2],
                mean: a.ln_2_mean,
                rstd: a.ln_2_rstd,
                dy: dln,
                dx: dres,
                dw: grads[p.ln_2],
            });
            // dres holds d(mid); the attention branch adds into it to give d(x_in)
            bwd.extend(linear_bwd(
                a.atty,
                params[p.attn_proj],
                dres,
                datty,
                grads[p.attn_proj],
                c,
                c,
            ));
            bwd.push(Op::AttentionBwd {
                s: att_shape,
                qkv: a.qkv,
                att: a.att,
                dy: datty,
                datt,
                dqkv,
            });
            bwd.extend(linear_bwd(
                a.ln_1,
                params[p.c_attn],
                dqkv,
                dln,
                grads[p.c_attn],
                3 * c,
                c,
            ));
            bwd.push(Op::LayerNormBwd {
                rows: bt32,
                cols: c32,
                accumulate: true,
                x: x_in,
                w: params[p.ln_1],
                mean: a.ln_1_mean,
                rstd: a.ln_1_rstd,
                dy: dln,
                dx: dres,
                dw: grads[p.ln_1],
            });
        }
        bwd.push(Op::EmbeddingBwd {
            s: emb,
            accumulate: true,
            idx,
            dx: dres,
            dwte: grads[0],
            dwpe: grads[1],
        });

        // ---- clip and AdamW
        let mut optimize = Vec::new();
        for (i, (g, s)) in grads.iter().zip(&specs).enumerate() {
            optimize.push(Op::SumSquares {
                n: s.numel() as u32,
                slot: i as u32 * adamw::SUMSQ_GROUPS,
                g: *g,
                partials,
            });
        }
        optimize.push(Op::GradNorm {
            count: specs.len() as u32 * adamw::SUMSQ_GROUPS,
            clip: opt.grad_clip,
            partials,
            norm,
        });
        for (i, s) in specs.iter().enumerate() {
            optimize.push(Op::AdamW {
                n: s.numel() as u32,
                h: adamw::Hyper {
                    beta1: opt.beta1,
                    beta2: opt.beta2,
                    eps: opt.eps,
                    weight_decay: if s.decays() { opt.weight_decay } else { 0.0 },
                },
                p: params[i],
                g: grads[i],
                m: adam_m[i],
                v: adam_v[i],
                norm,
                step: step_scalars,
            });
        }

        let eval = vec![
            Op::CrossEntropy {
                rows: bt32,
                cols: v32,
                keep: Keep::default(),
                scale: 1.0 / bt as f32,
                logits,
                targets,
                losses: plain_losses,
                dlogits,
            },
            Op::Mean {
                n: bt32,
                x: plain_losses,
                out: plain_loss,
            },
        ];

        let forward = be.compile(&fwd)?;
        let backward = be.compile(&bwd)?;
        let optimize = be.compile(&optimize)?;
        let eval_loss = be.compile(&eval)?;
        Ok(Gpt {
            cfg,
            batch,
            specs,
            params,
            grads,
            adam_m,
            adam_v,
            idx,
            targets,
            logits,
            losses,
            loss,
            plain_losses,
            plain_loss,
            norm,
            step_scalars,
            forward,
            backward,
            optimize,
            eval_loss,
            opt,
            loss_fn,
            noise,
        })
    }

    /// Uploads parameter values (in `param_specs` order).
    pub fn set_params(&self, be: &mut dyn Backend, values: &[Vec<f32>]) -> Result<()> {
        if values.len() != self.params.len() {
            bail!(
                "expected {} parameter tensors, got {}",
                self.params.len(),
                values.len()
            );
        }
        for ((b, v), s) in self.params.iter().zip(values).zip(&self.specs) {
            if v.len() != s.numel() {
                bail!(
                    "parameter {} has {} values, expected {} for shape {:?}",
                    s.name,
                    v.len(),
                    s.numel(),
                    s.shape
                );
            }
            be.write_f32(*b, v);
        }
        Ok(())
    }

    pub fn read_all(&self, be: &mut dyn Backend, bufs: &[Buf]) -> Result<Vec<Vec<f32>>> {
        bufs.iter().map(|&b| be.read_f32(b)).collect()
    }

    /// Writes one batch of ids and targets (`batch * block` each).
    pub fn set_batch(&self, be: &mut dyn Backend, x: &[u32], y: &[u32]) {
        be.write_u32(self.idx, x);
        be.write_u32(self.targets, y);
    }

    /// Writes the per-step AdamW scalars for 1-based step `t`.
    pub fn set_step(&self, be: &mut dyn Backend, lr: f32, t: u64) {
        let bc1 = 1.0 - (self.opt.beta1 as f64).powf(t as f64);
        let bc2 = 1.0 - (self.opt.beta2 as f64).powf(t as f64);
        be.write_f32(self.step_scalars, &[lr, bc1 as f32, bc2.sqrt() as f32, 0.0]);
        if let Some((_, seeds)) = self.noise {
            // Word 0 only: the run seed in word 1 stays.
            be.write_u32(seeds, &[t as u32]);
        }
    }

    /// `sampled:K`: the noise distribution (weights over the vocabulary, see
    /// `loss::noise_weights`) and the run seed the draws hash with. A no-op for other losses.
    pub fn set_noise(&self, be: &mut dyn Backend, weights: &[f64], seed: u64) -> Result<()> {
        let Some((cdf, seeds)) = self.noise else {
            return Ok(());
        };
        if weights.len() != self.cfg.vocab_size {
            bail!(
                "noise weights cover {} tokens, the model {}",
                weights.len(),
                self.cfg.vocab_size
            );
        }
        be.write_u32(cdf, &sampled_loss::cdf(weights));
        be.write_u32(seeds, &[0, (seed ^ (seed >> 32)) as u32]);
        Ok(())
    }

    /// One full training step (forward, loss, backward, clip, AdamW) as one submission.
    pub fn train_step(&self, be: &mut dyn Backend) -> Result<()> {
        be.run(&[self.forward, self.backward, self.optimize])
    }
}
