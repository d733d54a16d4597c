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
use crate::runtime::{Backend, Buf, Dtype, Mark, Seq};

/// Kernels index buffers with u32.
pub const MAX_BUFFER_VALUES: u64 = u32::MAX as u64;

/// Far beyond any model this trains; the cap keeps a typo such as `--n-layer 40000000` from
/// building millions of buffers before the size checks can say no.
pub const MAX_LAYERS: usize = 1024;

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
        if self.n_layer > MAX_LAYERS {
            bail!(
                "n_layer {} is more than the {MAX_LAYERS} layers selfish supports: pass a smaller --n-layer",
                self.n_layer
            );
        }
        // Every kernel indexes with u32, so one buffer holds at most u32::MAX values. Checked in
        // saturating u128 here, before anything multiplies these sizes in usize or allocates from them.
        let (v, t, c, nh) = (
            self.vocab_size as u128,
            self.block_size as u128,
            self.n_embd as u128,
            self.n_head as u128,
        );
        for (what, values, fix) in [
            (
                "the token embedding (vocab_size x n_embd)",
                v.saturating_mul(c),
                "--n-embd",
            ),
            (
                "the position table (block_size x n_embd)",
                t.saturating_mul(c),
                "--block-size or --n-embd",
            ),
            (
                "an MLP weight (4 n_embd x n_embd)",
                (4 * c).saturating_mul(c),
                "--n-embd",
            ),
            (
                "one sequence's MLP activations (block_size x 4 n_embd)",
                t.saturating_mul(4 * c),
                "--block-size or --n-embd",
            ),
            (
                "one sequence's logits (block_size x vocab_size)",
                t.saturating_mul(v),
                "--block-size",
            ),
            (
                "one sequence's attention scores (n_head x block_size^2)",
                nh.saturating_mul(t).saturating_mul(t),
                "--block-size or --n-head",
            ),
        ] {
            if values > MAX_BUFFER_VALUES as u128 {
                bail!(
                    "{what} would hold {values} values, over the {MAX_BUFFER_VALUES} one GPU buffer can index: lower {fix}"
                );
            }
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
    /// The head's input (ln_f's output), the loss gradient at the logits and, after the
    /// backward pass, the gradient at the embedding output: what the gradient-role
    /// analysis reads back.
    pub head_in: Buf,
    pub dlogits: Buf,
    pub dx0: Buf,
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
    ///
    /// Every buffer is sized and checked against the backend's limits first, so a model that
    /// cannot fit fails with the limit, the sizes and what to change, before any memory is
    /// spent on it.
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
        let plan = buffer_plan(&cfg, loss_fn, opt)?;
        check_fits(&plan, batch, be)?;
        Gpt::build(be, cfg, batch, loss_fn, opt)
    }

    fn build(
        be: &mut dyn Backend,
        cfg: GptConfig,
        batch: usize,
        loss_fn: Loss,
        opt: OptConfig,
    ) -> Result<Gpt> {
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
            s: matmul::Shape::dense(1, [bt32, out as u32, inp as u32], false, true, false),
            a: x,
            b: w,
            c: y,
        };
        // dx[bt, in] = dy[bt, out] · W[out, in];  dW[out, in] = dy[bt, out]ᵀ · x[bt, in]
        let linear_bwd = |x: Buf, w: Buf, dy: Buf, dx: Buf, dw: Buf, out: usize, inp: usize| {
            [
                Op::Matmul {
                    s: matmul::Shape::dense(1, [bt32, inp as u32, out as u32], false, false, false),
                    a: dy,
                    b: w,
                    c: dx,
                },
                Op::Matmul {
                    s: matmul::Shape::dense(1, [out as u32, inp as u32, bt32], true, false, false),
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
        // Each residual add is fused into the LayerNorm that reads its sum: `res` holds the
        // (branch, sum) that the next LayerNorm adds to the stream `x` and stores.
        let mut x = x0;
        let mut res: Option<(Buf, Buf)> = None;
        for (l, a) in acts.iter().enumerate() {
            let p = layer_params(l);
            fwd.push(Op::LayerNormFwd {
                rows: bt32,
                cols: c32,
                x,
                residual: res,
                w: params[p.ln_1],
                y: a.ln_1,
                mean: a.ln_1_mean,
                rstd: a.ln_1_rstd,
            });
            if let Some((_, sum)) = res {
                x = sum;
            }
            fwd.push(linear(a.ln_1, params[p.c_attn], a.qkv, 3 * c, c));
            fwd.push(Op::AttentionFwd {
                s: att_shape,
                qkv: a.qkv,
                att: a.att,
                y: a.atty,
            });
            fwd.push(linear(a.atty, params[p.attn_proj], proj, c, c));
            // mid = x + attention branch
            fwd.push(Op::LayerNormFwd {
                rows: bt32,
                cols: c32,
                x,
                residual: Some((proj, a.mid)),
                w: params[p.ln_2],
                y: a.ln_2,
                mean: a.ln_2_mean,
                rstd: a.ln_2_rstd,
            });
            x = a.mid;
            fwd.push(linear(a.ln_2, params[p.c_fc], a.fc, 4 * c, c));
            fwd.push(Op::GeluFwd {
                n: bt32 * 4 * c32,
                x: a.fc,
                y: a.fc_gelu,
            });
            fwd.push(linear(a.fc_gelu, params[p.mlp_proj], proj, c, 4 * c));
            // out = mid + MLP branch, added by the next LayerNorm
            res = Some((proj, a.out));
        }
        let ln_f = params.len() - 1;
        fwd.push(Op::LayerNormFwd {
            rows: bt32,
            cols: c32,
            x,
            residual: res,
            w: params[ln_f],
            y: lnf,
            mean: lnf_mean,
            rstd: lnf_rstd,
        });
        if let Some((_, sum)) = res {
            x = sum;
        }
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
            head_in: lnf,
            dlogits,
            dx0: dres,
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

/// One buffer of the model: `fixed + batch * per_row` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferNeed {
    pub label: String,
    pub fixed: u64,
    pub per_row: u64,
}

impl BufferNeed {
    pub fn bytes(&self, batch: usize) -> u128 {
        self.fixed as u128 + batch as u128 * self.per_row as u128
    }
}

/// Records allocations instead of making them.
#[derive(Default)]
struct Sizer {
    bufs: Vec<(String, usize)>,
}

impl Backend for Sizer {
    fn name(&self) -> String {
        "sizer".into()
    }
    fn alloc(&mut self, label: &str, len: usize, _dtype: Dtype) -> Result<Buf> {
        self.bufs.push((label.to_string(), len));
        Ok(Buf(self.bufs.len() - 1))
    }
    fn len(&self, b: Buf) -> usize {
        self.bufs[b.0].1
    }
    fn write_f32(&mut self, _b: Buf, _data: &[f32]) {}
    fn write_u32(&mut self, _b: Buf, _data: &[u32]) {}
    fn read_f32(&mut self, b: Buf) -> Result<Vec<f32>> {
        Ok(vec![0.0; self.bufs[b.0].1])
    }
    fn compile(&mut self, _ops: &[Op]) -> Result<Seq> {
        Ok(Seq(0))
    }
    fn run(&mut self, _seqs: &[Seq]) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn allocated_bytes(&self) -> u64 {
        self.bufs.iter().map(|b| 4 * b.1 as u64).sum()
    }
    fn mark(&self) -> Mark {
        Mark {
            bufs: self.bufs.len(),
            seqs: 0,
        }
    }
    fn release(&mut self, m: Mark) {
        self.bufs.truncate(m.bufs);
    }
}

/// Every buffer `Gpt::new` allocates, as a function of the batch size. Measured by running
/// the constructor on a recording backend at batch 1 and 2 (every buffer is affine in the
/// batch), so it cannot drift from what the constructor really allocates.
pub fn buffer_plan(cfg: &GptConfig, loss_fn: Loss, opt: OptConfig) -> Result<Vec<BufferNeed>> {
    cfg.validate()?;
    let mut one = Sizer::default();
    Gpt::build(&mut one, *cfg, 1, loss_fn, opt)?;
    let mut two = Sizer::default();
    Gpt::build(&mut two, *cfg, 2, loss_fn, opt)?;
    Ok(one
        .bufs
        .into_iter()
        .zip(two.bufs)
        .map(|((label, a), (_, b))| {
            let (a, b) = (4 * a.max(1) as u64, 4 * b.max(1) as u64);
            BufferNeed {
                label,
                fixed: (2 * a).saturating_sub(b),
                per_row: b - a,
            }
        })
        .collect())
}

fn human(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What to change so that `fixed + batch * per_row <= cap`.
fn batch_fix(fixed: u128, per_row: u128, cap: u128) -> String {
    if per_row == 0 {
        return "lower --n-embd (the parameters alone are too big)".into();
    }
    let most = cap.saturating_sub(fixed) / per_row;
    if most >= 1 {
        format!("lower --batch-size to {most} or less, or lower --block-size")
    } else {
        "even --batch-size 1 does not fit: lower --block-size or --n-embd".into()
    }
}

/// Checks a plan against the kernels' u32 indexing and the backend's buffer and memory limits.
pub fn check_fits(plan: &[BufferNeed], batch: usize, be: &dyn Backend) -> Result<()> {
    let Some(big) = plan.iter().max_by_key(|n| n.bytes(batch)) else {
        return Ok(());
    };
    let bytes = big.bytes(batch);
    let (fixed, per_row) = (big.fixed as u128, big.per_row as u128);
    let kernel_cap = 4 * MAX_BUFFER_VALUES as u128;
    if bytes > kernel_cap {
        bail!(
            "buffer '{}' would hold {} values at batch size {batch}, over the {MAX_BUFFER_VALUES} a kernel can index: {}",
            big.label,
            bytes / 4,
            batch_fix(fixed, per_row, kernel_cap)
        );
    }
    if let Some((cap, limit)) = be.max_buffer_bytes() {
        if bytes > cap as u128 {
            bail!(
                "buffer '{}' needs {bytes} bytes ({}) at batch size {batch}, but {} allows {cap} bytes ({}) per buffer ({limit}): {}",
                big.label,
                human(bytes),
                be.name(),
                human(cap as u128),
                batch_fix(fixed, per_row, cap as u128)
            );
        }
    }
    if let Some((budget, source)) = be.memory_budget() {
        let fixed: u128 = plan.iter().map(|n| n.fixed as u128).sum();
        let per_row: u128 = plan.iter().map(|n| n.per_row as u128).sum();
        let total = fixed + batch as u128 * per_row;
        if total > budget as u128 {
            bail!(
                "the model's buffers need {total} bytes ({}) at batch size {batch}, but only {} is available ({source}): {}",
                human(total),
                human(budget as u128),
                batch_fix(fixed, per_row, budget as u128)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend with a chosen per-buffer limit and memory budget, to test `check_fits`.
    struct Limited {
        cap: Option<u64>,
        budget: Option<u64>,
    }

    impl Backend for Limited {
        fn name(&self) -> String {
            "test adapter".into()
        }
        fn alloc(&mut self, _: &str, _: usize, _: Dtype) -> Result<Buf> {
            unreachable!("check_fits allocates nothing")
        }
        fn len(&self, _: Buf) -> usize {
            0
        }
        fn write_f32(&mut self, _: Buf, _: &[f32]) {}
        fn write_u32(&mut self, _: Buf, _: &[u32]) {}
        fn read_f32(&mut self, _: Buf) -> Result<Vec<f32>> {
            Ok(Vec::new())
        }
        fn compile(&mut self, _: &[Op]) -> Result<Seq> {
            Ok(Seq(0))
        }
        fn run(&mut self, _: &[Seq]) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
        fn max_buffer_bytes(&self) -> Option<(u64, String)> {
            self.cap.map(|c| (c, "its limit max_test_size".into()))
        }
        fn memory_budget(&self) -> Option<(u64, String)> {
            self.budget.map(|b| (b, "test budget".into()))
        }
    }

    fn cfg() -> GptConfig {
        GptConfig {
            vocab_size: 65,
            block_size: 32,
            n_layer: 2,
            n_head: 4,
            n_embd: 64,
        }
    }

    #[test]
    fn plan_matches_what_the_constructor_allocates() {
        let plan = buffer_plan(
            &cfg(),
            Loss::parse("margin:1").unwrap(),
            OptConfig::default(),
        )
        .unwrap();
        for batch in [1, 3, 7] {
            let mut s = Sizer::default();
            Gpt::build(
                &mut s,
                cfg(),
                batch,
                Loss::parse("margin:1").unwrap(),
                OptConfig::default(),
            )
            .unwrap();
            assert_eq!(s.bufs.len(), plan.len());
            for ((label, len), need) in s.bufs.iter().zip(&plan) {
                assert_eq!(label, &need.label);
                assert_eq!(
                    4 * (*len).max(1) as u128,
                    need.bytes(batch),
                    "{label} at {batch}"
                );
            }
        }
    }

    #[test]
    fn fits_says_which_limit_and_a_batch_that_fits() {
        let plan = buffer_plan(&cfg(), Loss::PLAIN, OptConfig::default()).unwrap();
        let be = Limited {
            cap: Some(1 << 20),
            budget: None,
        };
        let e = format!("{:#}", check_fits(&plan, 1000, &be).unwrap_err());
        assert!(
            e.contains("max_test_size") && e.contains("at batch size 1000"),
            "{e}"
        );
        let most: usize = e
            .split("--batch-size to ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no batch size suggested: {e}"));
        check_fits(&plan, most, &be).unwrap();
        assert!(check_fits(&plan, most + 1, &be).is_err());

        let total = |b: usize| plan.iter().map(|n| n.bytes(b)).sum::<u128>() as u64;
        let be = Limited {
            cap: None,
            budget: Some(total(10)),
        };
        check_fits(&plan, 10, &be).unwrap();
        let e = format!("{:#}", check_fits(&plan, 11, &be).unwrap_err());
        assert!(
            e.contains("test budget") && e.contains("--batch-size to 10 or less"),
            "{e}"
        );

        let e = format!("{:#}", check_fits(&plan, 1 << 40, &be).unwrap_err());
        assert!(e.contains("4294967295"), "{e}");
    }

    #[test]
    fn sizes_are_bounded_before_any_arithmetic() {
        let mut c = cfg();
        c.n_layer = MAX_LAYERS + 1;
        assert!(c.validate().unwrap_err().to_string().contains("--n-layer"));
        let mut c = cfg();
        (c.n_embd, c.n_head, c.block_size) = (1 << 20, 1, 1 << 20);
        assert!(c.validate().unwrap_err().to_string().contains("4294967295"));
        let mut c = cfg();
        c.n_embd = usize::MAX;
        c.n_head = 1;
        assert!(c.validate().is_err());
    }
}
