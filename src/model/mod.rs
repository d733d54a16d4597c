//! nanoGPT's GPT (`bias=False`, no dropout), written once against [`Backend`].
//!
//!   x = wte[idx] + wpe[pos]
//!   per layer: x += c_proj(attn(ln_1(x)));  x += mlp.c_proj(gelu(c_fc(ln_2(x))))
//!   logits = ln_f(x) · Wᵀ       (W = wte, the tied head, or lm_head when untied)
//!
//! Like llm.c, [`Gpt::forward`] and [`Gpt::backward`] read top to bottom, one line per op,
//! the backward mirroring the forward in reverse; [`Gpt::update`] is the clip and AdamW.
//! Each is compiled once into an op sequence; a training step is the three sequences in one
//! submission, with the batch and the step's learning rate written into their buffers first.
//! Memory is planned before anything is allocated ([`plan`]).

pub mod params;
pub mod plan;

use anyhow::{bail, Result};

use crate::buffers::{Buf, Dtype};
use crate::kernels::adamw::{self, AdamW, GradNorm, SumSquares};
use crate::kernels::attention::{self, AttentionBwd, AttentionFwd};
use crate::kernels::cross_entropy::{CrossEntropy, Keep, Mean};
use crate::kernels::embedding::{self, EmbeddingBwd, EmbeddingFwd};
use crate::kernels::gelu::{GeluBwd, GeluFwd};
use crate::kernels::layernorm::{LayerNormBwd, LayerNormFwd};
use crate::kernels::matmul::{Matmul, Shape};
use crate::kernels::{IntoOp, Kernel, Op};
use crate::loss::{self, Loss, LossBufs, LossIo, Plan};
use crate::rng::Rng;
use crate::runtime::{Backend, Seq};
pub use params::{specs, Block, ParamSpec, Params};

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
    /// A separate output head (`lm_head.weight`) instead of the tied `wte`.
    #[serde(default)]
    pub untied: bool,
}

/// A named model size with the batch it trains with: the one table the command line,
/// benchmarks and the browser read.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub batch_size: usize,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "paper",
        about: "the paper's model: 4 layers, 4 heads, width 128, block 64, batch 12",
        block_size: 64,
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        batch_size: 12,
    },
    Preset {
        name: "large",
        about: "nanoGPT's shakespeare_char: 6 layers, 6 heads, width 384, block 256, batch 64",
        block_size: 256,
        n_layer: 6,
        n_head: 6,
        n_embd: 384,
        batch_size: 64,
    },
    Preset {
        name: "tiny",
        about:
            "for slow devices and the browser test: 2 layers, 2 heads, width 64, block 32, batch 8",
        block_size: 32,
        n_layer: 2,
        n_head: 2,
        n_embd: 64,
        batch_size: 8,
    },
];

impl Preset {
    pub fn find(name: &str) -> Result<&'static Preset> {
        PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            anyhow::anyhow!("unknown config '{name}': use {}", names.join(" or "))
        })
    }

    pub fn config(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            block_size: self.block_size,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            untied: false,
        }
    }
}

impl GptConfig {
    /// The paper's model for a vocabulary.
    pub fn paper(vocab_size: usize) -> Self {
        PRESETS[0].config(vocab_size)
    }

    /// The sizes by name, as checkpoint metadata and the flags spell them.
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in self.sizes() {
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
        specs(self).iter().map(|p| p.numel()).sum()
    }
}

/// nanoGPT's initialisation, drawn in parameter order from `rng`.
pub fn init_params(cfg: &GptConfig, rng: &mut Rng) -> Params<Vec<f32>> {
    specs(cfg).map(|s| {
        if s.init_std == 0.0 {
            vec![1.0; s.numel()]
        } else {
            (0..s.numel())
                .map(|_| (rng.normal() * s.init_std as f64) as f32)
                .collect()
        }
    })
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

/// LayerNorm's output and the statistics its backward reuses.
#[derive(Clone, Copy, Debug)]
pub struct Ln {
    pub y: Buf,
    pub mean: Buf,
    pub rstd: Buf,
}

/// What one block keeps for its backward.
#[derive(Clone, Copy, Debug)]
pub struct BlockActs {
    pub ln_1: Ln,
    pub qkv: Buf,
    pub att: Buf,
    pub atty: Buf,
    /// Residual stream after attention.
    pub mid: Buf,
    pub ln_2: Ln,
    pub fc: Buf,
    pub fc_gelu: Buf,
    /// Residual stream after the MLP (the next block's input).
    pub out: Buf,
}

/// Every activation, gradient scratch and per-step buffer, allocated in one place.
#[derive(Clone, Debug)]
pub struct Acts {
    /// Input ids and targets, u32 `[batch, block]`.
    pub idx: Buf,
    pub targets: Buf,
    /// The embedding's output, the first block's input.
    pub x0: Buf,
    pub h: Vec<BlockActs>,
    /// ln_f's output: the head's input.
    pub ln_f: Ln,
    pub logits: Buf,
    /// Per-position loss under the training loss, and their mean.
    pub losses: Buf,
    pub loss: Buf,
    /// Per-position plain cross-entropy and its mean (validation; same positions).
    pub plain_losses: Buf,
    pub plain_loss: Buf,
    /// A branch's output before the residual add that the next LayerNorm fuses.
    pub proj: Buf,
    /// The loss gradient at the logits.
    pub dlogits: Buf,
    /// The residual stream's gradient; after the backward, the gradient at the embedding.
    pub dres: Buf,
    pub dln: Buf,
    pub datty: Buf,
    pub dqkv: Buf,
    pub datt: Buf,
    pub dfc_gelu: Buf,
    pub dfc: Buf,
    /// Sum-of-squares partials of every gradient, and `[norm, clip scale]`.
    pub partials: Buf,
    pub norm: Buf,
    /// `[lr, 1 - β1^t, √(1 - β2^t), 0]`, written by the host every step.
    pub step_scalars: Buf,
}

impl Acts {
    fn alloc(be: &mut dyn Backend, cfg: &GptConfig, batch: usize, tensors: usize) -> Result<Acts> {
        let (b, t, c, v, nh) = (
            batch,
            cfg.block_size,
            cfg.n_embd,
            cfg.vocab_size,
            cfg.n_head,
        );
        let bt = b * t;
        let mut f = |label: &str, n: usize| be.alloc(label, n, Dtype::F32);
        let x0 = f("x0", bt * c)?;
        let ln = |f: &mut dyn FnMut(&str, usize) -> Result<Buf>, name: &str| -> Result<Ln> {
            Ok(Ln {
                y: f(name, bt * c)?,
                mean: f(&format!("{name} mean"), bt)?,
                rstd: f(&format!("{name} rstd"), bt)?,
            })
        };
        let mut h = Vec::new();
        for _ in 0..cfg.n_layer {
            h.push(BlockActs {
                ln_1: ln(&mut f, "ln_1")?,
                qkv: f("qkv", bt * 3 * c)?,
                att: f("att", b * nh * t * t)?,
                atty: f("atty", bt * c)?,
                mid: f("mid", bt * c)?,
                ln_2: ln(&mut f, "ln_2")?,
                fc: f("fc", bt * 4 * c)?,
                fc_gelu: f("fc gelu", bt * 4 * c)?,
                out: f("out", bt * c)?,
            });
        }
        let ln_f = ln(&mut f, "ln_f")?;
        let acts = Acts {
            idx: be.alloc("idx", bt, Dtype::U32)?,
            targets: be.alloc("targets", bt, Dtype::U32)?,
            x0,
            h,
            ln_f,
            logits: be.alloc("logits", bt * v, Dtype::F32)?,
            losses: be.alloc("losses", bt, Dtype::F32)?,
            loss: be.alloc("loss", 1, Dtype::F32)?,
            plain_losses: be.alloc("plain losses", bt, Dtype::F32)?,
            plain_loss: be.alloc("plain loss", 1, Dtype::F32)?,
            proj: be.alloc("proj", bt * c, Dtype::F32)?,
            dlogits: be.alloc("dlogits", bt * v, Dtype::F32)?,
            dres: be.alloc("dres", bt * c, Dtype::F32)?,
            dln: be.alloc("dln", bt * c, Dtype::F32)?,
            datty: be.alloc("datty", bt * c, Dtype::F32)?,
            dqkv: be.alloc("dqkv", bt * 3 * c, Dtype::F32)?,
            datt: be.alloc("datt", b * nh * t * t, Dtype::F32)?,
            dfc_gelu: be.alloc("dfc gelu", bt * 4 * c, Dtype::F32)?,
            dfc: be.alloc("dfc", bt * 4 * c, Dtype::F32)?,
            partials: be.alloc(
                "norm partials",
                tensors * adamw::SUMSQ_GROUPS as usize,
                Dtype::F32,
            )?,
            norm: be.alloc("norm", 2, Dtype::F32)?,
            step_scalars: be.alloc("step scalars", 4, Dtype::F32)?,
        };
        Ok(acts)
    }
}

/// Builds the model's ops: the sizes every op shares, and the layer helpers the model is
/// written in.
struct Rec {
    ops: Vec<Op>,
    /// B·T rows of width C.
    bt: u32,
    c: u32,
    v: u32,
    emb: embedding::Shape,
    att: attention::Shape,
}

impl Rec {
    fn push(&mut self, k: impl Kernel + 'static) {
        self.ops.push(k.op());
    }

    /// `y[BT, out] = x[BT, in] · W[out, in]ᵀ`
    fn linear(&mut self, x: Buf, w: Buf, y: Buf, [out, inp]: [u32; 2]) {
        let s = Shape::dense(1, [self.bt, out, inp], false, true, false);
        self.push(Matmul::new(s, x, w, y));
    }

    /// `dx[BT, in] = dy · W`, `dW[out, in] = dyᵀ · x` (`+=` when `acc_w`).
    fn linear_bwd(&mut self, x: Buf, w: Buf, dy: Buf, dx: Buf, dw: Buf, [out, inp]: [u32; 2]) {
        self.linear_dx(w, dy, dx, [out, inp]);
        self.linear_dw(x, dy, dw, [out, inp], false);
    }

    fn linear_dx(&mut self, w: Buf, dy: Buf, dx: Buf, [out, inp]: [u32; 2]) {
        let s = Shape::dense(1, [self.bt, inp, out], false, false, false);
        self.push(Matmul::new(s, dy, w, dx));
    }

    fn linear_dw(&mut self, x: Buf, dy: Buf, dw: Buf, [out, inp]: [u32; 2], acc: bool) {
        let s = Shape::dense(1, [out, inp, self.bt], true, false, acc);
        self.push(Matmul::new(s, dy, x, dw));
    }

    /// LayerNorm of `x`, or of `x + branch` stored to `sum` when `residual` is given.
    fn layernorm(&mut self, x: Buf, residual: Option<(Buf, Buf)>, w: Buf, ln: &Ln) {
        self.push(LayerNormFwd {
            rows: self.bt,
            cols: self.c,
            x,
            residual,
            w,
            y: ln.y,
            mean: ln.mean,
            rstd: ln.rstd,
        });
    }

    /// `dx (+)= ...` and `dw` of a LayerNorm whose input was `x`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(&mut self, x: Buf, w: Buf, ln: &Ln, dy: Buf, dx: Buf, dw: Buf, acc: bool) {
        self.push(LayerNormBwd {
            rows: self.bt,
            cols: self.c,
            accumulate: acc,
            x,
            w,
            mean: ln.mean,
            rstd: ln.rstd,
            dy,
            dx,
            dw,
        });
    }

    fn gelu(&mut self, x: Buf, y: Buf) {
        self.push(GeluFwd {
            n: self.bt * 4 * self.c,
            x,
            y,
        });
    }

    fn gelu_bwd(&mut self, x: Buf, dy: Buf, dx: Buf) {
        self.push(GeluBwd {
            n: self.bt * 4 * self.c,
            x,
            dy,
            dx,
        });
    }

    fn take(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }
}

/// A GPT with its parameters, gradients, optimizer state and activations on one backend.
pub struct Gpt {
    pub cfg: GptConfig,
    pub batch: usize,
    pub opt: OptConfig,
    pub specs: Params<ParamSpec>,
    pub params: Params<Buf>,
    pub grads: Params<Buf>,
    pub adam_m: Params<Buf>,
    pub adam_v: Params<Buf>,
    pub acts: Acts,
    pub loss_fn: Loss,
    pub loss_plan: Plan,
    pub loss_bufs: LossBufs,
    pub forward: Seq,
    /// Loss and backward (needs `forward` first).
    pub backward: Seq,
    /// Clip and AdamW (needs `backward` first).
    pub optimize: Seq,
    /// Plain cross-entropy of the current logits (needs `forward` first).
    pub eval_loss: Seq,
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
        loss_fn: &Loss,
        opt: OptConfig,
    ) -> Result<Gpt> {
        cfg.validate()?;
        if batch == 0 {
            bail!("batch_size must be at least 1 (got 0): pass a positive --batch-size");
        }
        let plan = plan::buffer_plan(&cfg, loss_fn, opt)?;
        plan::check_fits(&plan, batch, be)?;
        Gpt::build(be, cfg, batch, loss_fn, opt)
    }

    fn build(
        be: &mut dyn Backend,
        cfg: GptConfig,
        batch: usize,
        loss_fn: &Loss,
        opt: OptConfig,
    ) -> Result<Gpt> {
        let specs = specs(&cfg);
        let loss_plan = loss_fn.plan(cfg.vocab_size)?;
        let mut alloc = |prefix: &str| {
            specs.try_map(|s| be.alloc(&format!("{prefix}{}", s.name), s.numel(), Dtype::F32))
        };
        let params = alloc("")?;
        let grads = alloc("grad ")?;
        let adam_m = alloc("adam_m ")?;
        let adam_v = alloc("adam_v ")?;
        let acts = Acts::alloc(be, &cfg, batch, specs.len())?;
        let rows = batch * cfg.block_size;
        let loss_bufs = LossBufs::alloc(&loss_plan, be, cfg.vocab_size, cfg.n_embd, rows)?;
        let (b, t, c, v) = (
            batch as u32,
            cfg.block_size as u32,
            cfg.n_embd as u32,
            cfg.vocab_size as u32,
        );
        let mut model = Gpt {
            cfg,
            batch,
            opt,
            specs,
            params,
            grads,
            adam_m,
            adam_v,
            acts,
            loss_fn: loss_fn.clone(),
            loss_plan,
            loss_bufs,
            forward: Seq(0),
            backward: Seq(0),
            optimize: Seq(0),
            eval_loss: Seq(0),
        };
        let mut rec = Rec {
            ops: Vec::new(),
            bt: b * t,
            c,
            v,
            emb: embedding::Shape { b, t, c, v },
            att: attention::Shape {
                b,
                t,
                c,
                nh: cfg.n_head as u32,
            },
        };
        model.forward_ops(&mut rec);
        model.forward = be.compile(rec.take())?;
        model.backward_ops(&mut rec);
        model.backward = be.compile(rec.take())?;
        model.update_ops(&mut rec);
        model.optimize = be.compile(rec.take())?;
        model.eval_ops(&mut rec);
        model.eval_loss = be.compile(rec.take())?;
        Ok(model)
    }

    /// The residual stream entering block `l`, and the branch the next LayerNorm adds to it
    /// (every residual add is fused into the LayerNorm that reads its sum).
    fn stream(&self, l: usize) -> (Buf, Option<(Buf, Buf)>) {
        let a = &self.acts;
        match l {
            0 => (a.x0, None),
            _ => (a.h[l - 1].mid, Some((a.proj, a.h[l - 1].out))),
        }
    }

    /// The residual stream *after* block `l - 1`'s add (what block `l`'s LayerNorm read).
    fn block_input(&self, l: usize) -> Buf {
        let a = &self.acts;
        if l == 0 {
            a.x0
        } else {
            a.h[l - 1].out
        }
    }

    fn forward_ops(&self, f: &mut Rec) {
        let (p, a, c) = (&self.params, &self.acts, f.c);
        let (s, att) = (f.emb, f.att);
        f.push(EmbeddingFwd {
            s,
            idx: a.idx,
            wte: p.wte,
            wpe: p.wpe,
            x: a.x0,
        });
        for (l, (w, h)) in p.h.iter().zip(&a.h).enumerate() {
            let (x, res) = self.stream(l);
            f.layernorm(x, res, w.ln_1, &h.ln_1);
            f.linear(h.ln_1.y, w.c_attn, h.qkv, [3 * c, c]);
            f.push(AttentionFwd {
                s: att,
                qkv: h.qkv,
                att: h.att,
                y: h.atty,
            });
            f.linear(h.atty, w.c_proj, a.proj, [c, c]);
            f.layernorm(self.block_input(l), Some((a.proj, h.mid)), w.ln_2, &h.ln_2);
            f.linear(h.ln_2.y, w.c_fc, h.fc, [4 * c, c]);
            f.gelu(h.fc, h.fc_gelu);
            f.linear(h.fc_gelu, w.mlp_proj, a.proj, [c, 4 * c]);
        }
        let (x, res) = self.stream(p.h.len());
        f.layernorm(x, res, p.ln_f, &a.ln_f);
        f.linear(a.ln_f.y, *p.head(), a.logits, [f.v, c]);
    }

    fn backward_ops(&self, f: &mut Rec) {
        let (p, g, a, c) = (&self.params, &self.grads, &self.acts, f.c);
        let (s, att) = (f.emb, f.att);
        let lo = loss::record(&self.loss_plan, &self.loss_bufs, &self.loss_io(f));
        f.ops.extend(lo.loss);
        // The tied head writes dwte first; the embedding's backward adds its part at the end.
        f.linear_dx(*p.head(), a.dlogits, a.dln, [f.v, c]);
        f.linear_dw(a.ln_f.y, lo.head_dw, *g.head(), [f.v, c], false);
        f.ops.extend(lo.hidden);
        let last = self.block_input(p.h.len());
        f.layernorm_bwd(last, p.ln_f, &a.ln_f, a.dln, a.dres, g.ln_f, false);
        for (l, ((w, gw), h)) in p.h.iter().zip(&g.h).zip(&a.h).enumerate().rev() {
            // dres holds d(out); the MLP branch adds into it to give d(mid)
            f.linear_bwd(
                h.fc_gelu,
                w.mlp_proj,
                a.dres,
                a.dfc_gelu,
                gw.mlp_proj,
                [c, 4 * c],
            );
            f.gelu_bwd(h.fc, a.dfc_gelu, a.dfc);
            f.linear_bwd(h.ln_2.y, w.c_fc, a.dfc, a.dln, gw.c_fc, [4 * c, c]);
            f.layernorm_bwd(h.mid, w.ln_2, &h.ln_2, a.dln, a.dres, gw.ln_2, true);
            // dres holds d(mid); the attention branch adds into it to give d(block input)
            f.linear_bwd(h.atty, w.c_proj, a.dres, a.datty, gw.c_proj, [c, c]);
            let (qkv, at, datt, dqkv) = (h.qkv, h.att, a.datt, a.dqkv);
            f.push(AttentionBwd {
                s: att,
                qkv,
                att: at,
                dy: a.datty,
                datt,
                dqkv,
            });
            f.linear_bwd(h.ln_1.y, w.c_attn, a.dqkv, a.dln, gw.c_attn, [3 * c, c]);
            f.layernorm_bwd(
                self.block_input(l),
                w.ln_1,
                &h.ln_1,
                a.dln,
                a.dres,
                gw.ln_1,
                true,
            );
        }
        let tied = p.lm_head.is_none();
        f.push(EmbeddingBwd {
            s,
            accumulate: tied,
            idx: a.idx,
            dx: a.dres,
            dwte: g.wte,
            dwpe: g.wpe,
        });
        f.ops.extend(lo.params);
    }

    fn update_ops(&self, f: &mut Rec) {
        let (a, o) = (&self.acts, &self.opt);
        let groups = adamw::SUMSQ_GROUPS;
        for (i, (g, s)) in self.grads.iter().zip(self.specs.iter()).enumerate() {
            let (n, slot) = (s.numel() as u32, i as u32 * groups);
            f.push(SumSquares {
                n,
                slot,
                g: *g,
                partials: a.partials,
            });
        }
        let count = self.specs.len() as u32 * groups;
        f.push(GradNorm {
            count,
            clip: o.grad_clip,
            partials: a.partials,
            norm: a.norm,
        });
        let tensors = self.params.iter().zip(self.grads.iter());
        let moments = self.adam_m.iter().zip(self.adam_v.iter());
        for (((p, g), (m, v)), s) in tensors.zip(moments).zip(self.specs.iter()) {
            let h = adamw::Hyper {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: if s.decays() { o.weight_decay } else { 0.0 },
            };
            let (p, g, m, v, norm, step) = (*p, *g, *m, *v, a.norm, a.step_scalars);
            f.push(AdamW {
                n: s.numel() as u32,
                h,
                p,
                g,
                m,
                v,
                norm,
                step,
            });
        }
    }

    /// Plain cross-entropy of the logits, whatever the training loss.
    fn eval_ops(&self, f: &mut Rec) {
        let a = &self.acts;
        let (rows, cols) = (f.bt, f.v);
        let scale = 1.0 / rows as f32;
        f.push(CrossEntropy::new(
            rows,
            cols,
            Keep::default(),
            scale,
            a.logits,
            a.targets,
            a.plain_losses,
            a.dlogits,
        ));
        f.push(Mean {
            n: rows,
            x: a.plain_losses,
            out: a.plain_loss,
        });
    }

    fn loss_io(&self, f: &Rec) -> LossIo {
        let a = &self.acts;
        LossIo {
            rows: f.bt,
            cols: f.v,
            c: f.c,
            logits: a.logits,
            targets: a.targets,
            losses: a.losses,
            loss: a.loss,
            dlogits: a.dlogits,
            h: a.ln_f.y,
            dh: a.dln,
            head: *self.params.head(),
            wte: self.params.wte,
            dwte: self.grads.wte,
        }
    }

    /// Uploads parameter values.
    pub fn set_params(&self, be: &mut dyn Backend, values: &Params<Vec<f32>>) -> Result<()> {
        if values.len() != self.params.len() {
            bail!(
                "expected {} parameter tensors, got {}",
                self.params.len(),
                values.len()
            );
        }
        for ((b, v), s) in self.params.iter().zip(values.iter()).zip(self.specs.iter()) {
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

    /// Reads back every tensor of a layout (parameters, gradients, moments).
    pub async fn read(&self, be: &mut dyn Backend, bufs: &Params<Buf>) -> Result<Params<Vec<f32>>> {
        let mut out = Vec::with_capacity(bufs.len());
        for &b in bufs.iter() {
            out.push(be.read_f32(b).await?);
        }
        Ok(Params::from_vec(bufs, out).expect("one value per tensor"))
    }

    /// Writes one batch of ids and targets (`batch * block` each).
    pub fn set_batch(&self, be: &mut dyn Backend, x: &[u32], y: &[u32]) {
        be.write_u32(self.acts.idx, x);
        be.write_u32(self.acts.targets, y);
    }

    /// Writes the per-step scalars for 1-based step `t`: AdamW's, and the loss's own.
    pub fn set_step(&self, be: &mut dyn Backend, lr: f32, t: u64) {
        let h = adamw::Hyper {
            beta1: self.opt.beta1,
            beta2: self.opt.beta2,
            eps: self.opt.eps,
            weight_decay: self.opt.weight_decay,
        };
        be.write_f32(self.acts.step_scalars, &adamw::step_scalars(lr, &h, t));
        self.loss_bufs.before_step(be, t);
    }

    /// One full training step (forward, loss, backward, clip, AdamW) as one submission.
    pub fn train_step(&self, be: &mut dyn Backend) -> Result<()> {
        be.run(&[self.forward, self.backward, self.optimize])
    }
}
