//! The kernel library. Each kernel has three faces under one name: `shaders/<op>.wgsl`, the
//! host function here that records its dispatch (`launch*`), and a plain-Rust CPU twin
//! (`cpu*`) with the same contract. [`Op`] ties them together so a model is written once.
//!
//! Conventions shared by every shader: binding 0 is a uniform of 32-bit words (the op's
//! sizes and scalars), storage buffers follow at bindings 1..; row kernels run one workgroup
//! per row and element kernels 256 invocations per workgroup, both on a 2-D grid so that
//! large tensors stay under the 65535-workgroups-per-dimension limit.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod sampled_loss;
pub mod softmax;
pub mod threshold;

use crate::runtime::{Buf, HostMem};

/// Every WGSL file, by name. `tests/shaders.rs` checks this list matches `shaders/`.
pub const SHADERS: &[(&str, &str)] = &[
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    (
        "cross_entropy",
        include_str!("../../shaders/cross_entropy.wgsl"),
    ),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    ("gelu", include_str!("../../shaders/gelu.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_sg", include_str!("../../shaders/matmul_sg.wgsl")),
    ("residual", include_str!("../../shaders/residual.wgsl")),
    (
        "sampled_loss",
        include_str!("../../shaders/sampled_loss.wgsl"),
    ),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("threshold", include_str!("../../shaders/threshold.wgsl")),
];

/// Shaders that need the subgroup feature; the runtime only picks them where subgroups are
/// exactly 8 wide.
pub const SUBGROUP_SHADERS: &[&str] = &["matmul_sg"];

/// One dispatch: which entry point, its uniform words, its storage buffers and grid.
#[derive(Clone, Debug)]
pub struct Launch {
    pub shader: &'static str,
    pub entry: &'static str,
    pub params: Vec<u32>,
    /// (binding, buffer) pairs; binding 0 is the uniform and is filled in by the runtime.
    pub bufs: Vec<(u32, Buf)>,
    pub groups: [u32; 3],
}

/// The most iterations a kernel's loops run in one invocation. lavapipe (Mesa's llvmpipe)
/// silently ends any shader loop after 65535 iterations, so longer reductions are split
/// across dispatches, or take a kernel whose loops stay short.
pub const LOOP_LIMIT: u32 = 16384;

/// Largest workgroup count per grid dimension that WebGPU guarantees.
pub const MAX_GROUPS: u32 = 65535;

/// A 2-D grid of `n` workgroups; shaders recover the index as `wid.x + wid.y * nwg.x`.
pub fn grid(n: u32) -> [u32; 3] {
    let n = n.max(1);
    let x = n.min(MAX_GROUPS);
    [x, n.div_ceil(x), 1]
}

/// Grid for an element-wise kernel with 256 invocations per workgroup.
pub fn elem_grid(n: u32) -> [u32; 3] {
    grid(n.div_ceil(256))
}

/// Bits of an f32 for a uniform word.
pub fn w(x: f32) -> u32 {
    x.to_bits()
}

/// The threshold margin as two uniform words: `(enabled, margin)`.
pub fn margin_words(margin: Option<f32>) -> [u32; 2] {
    match margin {
        Some(m) => [1, w(m)],
        None => [0, 0],
    }
}

/// What kernel choice depends on. Every choice computes the same contract; they differ in
/// speed, so the runtime sets this from the adapter and checks run every choice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    /// A CPU-like adapter (lavapipe, llvmpipe, WARP, SwiftShader), where a workgroup barrier
    /// costs microseconds and every non-uniform load is a per-lane gather: prefer kernels that
    /// give one invocation a whole row and never synchronise.
    pub cpu_like: bool,
    /// Subgroup operations are on and subgroups are exactly 8 lanes (for `matmul_sg`).
    pub subgroup8: bool,
    /// Matmul variant per shape, measured by `selfish tune`; see [`matmul::Shape::key`].
    pub tuned: std::collections::BTreeMap<String, &'static str>,
}

impl Target {
    /// Whether to take a CPU-like kernel whose invocation loops `len` times; past
    /// [`LOOP_LIMIT`] the workgroup kernel, whose loops are shorter, is taken instead.
    pub fn cpu_loop(&self, len: u32) -> bool {
        self.cpu_like && len <= LOOP_LIMIT
    }

    /// The matmul variant for one shape.
    pub fn matmul_variant(&self, s: &matmul::Shape) -> &'static str {
        if let Some(v) = self.tuned.get(&s.key()) {
            return v;
        }
        matmul::default_variant(self, s)
    }
}

/// A kernel invocation on named buffers; see each module for the contract.
#[derive(Clone, Debug)]
pub enum Op {
    Matmul {
        s: matmul::Shape,
        a: Buf,
        b: Buf,
        c: Buf,
    },
    /// A named rung of the matmul ladder (`matmul::VARIANTS`), for checks and benchmarks.
    MatmulVariant {
        variant: &'static str,
        s: matmul::Shape,
        a: Buf,
        b: Buf,
        c: Buf,
    },
    SoftmaxFwd {
        rows: u32,
        cols: u32,
        x: Buf,
        y: Buf,
    },
    SoftmaxBwd {
        rows: u32,
        cols: u32,
        y: Buf,
        dy: Buf,
        dx: Buf,
    },
    ThresholdMask {
        rows: u32,
        cols: u32,
        margin: Option<f32>,
        logits: Buf,
        targets: Buf,
        out: Buf,
    },
    CrossEntropy {
        rows: u32,
        cols: u32,
        /// Which non-targets enter the softmax (default: all).
        keep: cross_entropy::Keep,
        /// Gradient scale, normally 1 / rows.
        scale: f32,
        logits: Buf,
        targets: Buf,
        losses: Buf,
        dlogits: Buf,
    },
    /// Negative sampling: `k` noise tokens per row drawn from `cdf` with the `seeds` words.
    SampledLoss {
        rows: u32,
        cols: u32,
        k: u32,
        scale: f32,
        logits: Buf,
        targets: Buf,
        /// u32 [cols], see `sampled_loss::cdf`.
        cdf: Buf,
        /// u32 [2]: `[step, run seed]`; the host writes the step every step.
        seeds: Buf,
        losses: Buf,
        dlogits: Buf,
    },
    Mean {
        n: u32,
        x: Buf,
        out: Buf,
    },
    LayerNormFwd {
        rows: u32,
        cols: u32,
        x: Buf,
        /// `(branch, sum)`: normalise `x + branch`, also stored to `sum` (the residual add).
        residual: Option<(Buf, Buf)>,
        w: Buf,
        y: Buf,
        mean: Buf,
        rstd: Buf,
    },
    LayerNormBwd {
        rows: u32,
        cols: u32,
        /// `dx += ...` instead of `dx = ...` (the residual stream's gradient is already there).
        accumulate: bool,
        x: Buf,
        w: Buf,
        mean: Buf,
        rstd: Buf,
        dy: Buf,
        dx: Buf,
        dw: Buf,
    },
    GeluFwd {
        n: u32,
        x: Buf,
        y: Buf,
    },
    GeluBwd {
        n: u32,
        x: Buf,
        dy: Buf,
        dx: Buf,
    },
    AttentionFwd {
        s: attention::Shape,
        qkv: Buf,
        att: Buf,
        y: Buf,
    },
    AttentionBwd {
        s: attention::Shape,
        qkv: Buf,
        att: Buf,
        dy: Buf,
        datt: Buf,
        dqkv: Buf,
    },
    EmbeddingFwd {
        s: embedding::Shape,
        idx: Buf,
        wte: Buf,
        wpe: Buf,
        x: Buf,
    },
    EmbeddingBwd {
        s: embedding::Shape,
        /// `dwte += ...` (the tied output head wrote its part first).
        accumulate: bool,
        idx: Buf,
        dx: Buf,
        dwte: Buf,
        dwpe: Buf,
    },
    Add {
        n: u32,
        a: Buf,
        b: Buf,
        out: Buf,
    },
    AddInPlace {
        n: u32,
        acc: Buf,
        a: Buf,
    },
    SumSquares {
        n: u32,
        slot: u32,
        g: Buf,
        partials: Buf,
    },
    GradNorm {
        count: u32,
        clip: f32,
        partials: Buf,
        norm: Buf,
    },
    AdamW {
        n: u32,
        h: adamw::Hyper,
        p: Buf,
        g: Buf,
        m: Buf,
        v: Buf,
        norm: Buf,
        step: Buf,
    },
}

impl Op {
    /// The matmul products this op runs on an adapter described by `t` (for tuning).
    pub fn matmul_shapes(&self, t: &Target) -> Vec<matmul::Shape> {
        match *self {
            Op::Matmul { s, .. } => vec![s],
            Op::AttentionFwd { ref s, .. } | Op::AttentionBwd { ref s, .. } if t.cpu_like => {
                attention::products(s)
            }
            _ => Vec::new(),
        }
    }

    /// The GPU dispatches this op records on an adapter described by `t`.
    pub fn launches(&self, t: &Target) -> Vec<Launch> {
        use Op::*;
        match *self {
            Matmul { ref s, a, b, c } => matmul::launch_variant(t.matmul_variant(s), s, a, b, c),
            MatmulVariant {
                variant,
                ref s,
                a,
                b,
                c,
            } => matmul::launch_variant(variant, s, a, b, c),
            SoftmaxFwd { rows, cols, x, y } => vec![softmax::launch_fwd(rows, cols, x, y)],
            SoftmaxBwd {
                rows,
                cols,
                y,
                dy,
                dx,
            } => {
                vec![softmax::launch_bwd(rows, cols, y, dy, dx)]
            }
            ThresholdMask {
                rows,
                cols,
                margin,
                logits,
                targets,
                out,
            } => vec![threshold::launch(rows, cols, margin, logits, targets, out)],
            CrossEntropy {
                rows,
                cols,
                ref keep,
                scale,
                logits,
                targets,
                losses,
                dlogits,
            } => vec![cross_entropy::launch(
                t, rows, cols, keep, scale, logits, targets, losses, dlogits,
            )],
            SampledLoss {
                rows,
                cols,
                k,
                scale,
                logits,
                targets,
                cdf,
                seeds,
                losses,
                dlogits,
            } => vec![sampled_loss::launch(
                rows, cols, k, scale, logits, targets, cdf, seeds, losses, dlogits,
            )],
            Mean { n, x, out } => vec![cross_entropy::launch_mean(n, x, out)],
            LayerNormFwd {
                rows,
                cols,
                x,
                residual,
                w,
                y,
                mean,
                rstd,
            } => vec![layernorm::launch_fwd(
                t, rows, cols, x, residual, w, y, mean, rstd,
            )],
            LayerNormBwd {
                rows,
                cols,
                accumulate,
                x,
                w,
                mean,
                rstd,
                dy,
                dx,
                dw,
            } => layernorm::launch_bwd(t, rows, cols, accumulate, x, w, mean, rstd, dy, dx, dw),
            GeluFwd { n, x, y } => vec![gelu::launch_fwd(n, x, y)],
            GeluBwd { n, x, dy, dx } => vec![gelu::launch_bwd(n, x, dy, dx)],
            AttentionFwd { ref s, qkv, att, y } => attention::launch_fwd(t, s, qkv, att, y),
            AttentionBwd {
                ref s,
                qkv,
                att,
                dy,
                datt,
                dqkv,
            } => attention::launch_bwd(t, s, qkv, att, dy, datt, dqkv),
            EmbeddingFwd {
                ref s,
                idx,
                wte,
                wpe,
                x,
            } => vec![embedding::launch_fwd(s, idx, wte, wpe, x)],
            EmbeddingBwd {
                ref s,
                accumulate,
                idx,
                dx,
                dwte,
                dwpe,
            } => embedding::launch_bwd(t, s, accumulate, idx, dx, dwte, dwpe),
            Add { n, a, b, out } => vec![residual::launch_add(n, a, b, out)],
            AddInPlace { n, acc, a } => vec![residual::launch_add_in_place(n, acc, a)],
            SumSquares {
                n,
                slot,
                g,
                partials,
            } => {
                vec![adamw::launch_sum_squares(t, n, slot, g, partials)]
            }
            GradNorm {
                count,
                clip,
                partials,
                norm,
            } => vec![adamw::launch_grad_norm(count, clip, partials, norm)],
            AdamW {
                n,
                ref h,
                p,
                g,
                m,
                v,
                norm,
                step,
            } => vec![adamw::launch_step(n, h, p, g, m, v, norm, step)],
        }
    }

    /// Runs the CPU twin on host memory.
    pub fn run_cpu(&self, mem: &mut HostMem) {
        use Op::*;
        match *self {
            Matmul { ref s, a, b, c } | MatmulVariant { ref s, a, b, c, .. } => {
                let mut out = mem.take(c);
                matmul::cpu(s, mem.f(a), mem.f(b), &mut out);
                mem.put(c, out);
            }
            SoftmaxFwd { rows, cols, x, y } => {
                let mut out = mem.take(y);
                softmax::cpu_fwd(rows, cols, mem.f(x), &mut out);
                mem.put(y, out);
            }
            SoftmaxBwd {
                rows,
                cols,
                y,
                dy,
                dx,
            } => {
                let mut out = mem.take(dx);
                softmax::cpu_bwd(rows, cols, mem.f(y), mem.f(dy), &mut out);
                mem.put(dx, out);
            }
            ThresholdMask {
                rows,
                cols,
                margin,
                logits,
                targets,
                out,
            } => {
                let mut o = mem.take(out);
                threshold::cpu(rows, cols, margin, mem.f(logits), mem.u(targets), &mut o);
                mem.put(out, o);
            }
            CrossEntropy {
                rows,
                cols,
                ref keep,
                scale,
                logits,
                targets,
                losses,
                dlogits,
            } => {
                let mut l = mem.take(losses);
                let mut d = mem.take(dlogits);
                cross_entropy::cpu(
                    rows,
                    cols,
                    keep,
                    scale,
                    mem.f(logits),
                    mem.u(targets),
                    &mut l,
                    &mut d,
                );
                mem.put(losses, l);
                mem.put(dlogits, d);
            }
            SampledLoss {
                rows,
                cols,
                k,
                scale,
                logits,
                targets,
                cdf,
                seeds,
                losses,
                dlogits,
            } => {
                let mut l = mem.take(losses);
                let mut d = mem.take(dlogits);
                sampled_loss::cpu(
                    rows,
                    cols,
                    k,
                    scale,
                    mem.f(logits),
                    mem.u(targets),
                    mem.u(cdf),
                    mem.u(seeds),
                    &mut l,
                    &mut d,
                );
                mem.put(losses, l);
                mem.put(dlogits, d);
            }
            Mean { n, x, out } => {
                let mut o = mem.take(out);
                cross_entropy::cpu_mean(n, mem.f(x), &mut o);
                mem.put(out, o);
            }
            LayerNormFwd {
                rows,
                cols,
                x,
                residual,
                w,
                y,
                mean,
                rstd,
            } => {
                let input = match residual {
                    Some((branch, sum)) => {
                        let mut so = mem.take(sum);
                        let n = rows * cols;
                        residual::cpu_add(n, mem.f(x), mem.f(branch), &mut so);
                        mem.put(sum, so);
                        sum
                    }
                    None => x,
                };
                let (mut yo, mut mo, mut ro) = (mem.take(y), mem.take(mean), mem.take(rstd));
                layernorm::cpu_fwd(
                    rows,
                    cols,
                    mem.f(input),
                    mem.f(w),
                    &mut yo,
                    &mut mo,
                    &mut ro,
                );
                mem.put(y, yo);
                mem.put(mean, mo);
                mem.put(rstd, ro);
            }
            LayerNormBwd {
                rows,
                cols,
                accumulate,
                x,
                w,
                mean,
                rstd,
                dy,
                dx,
                dw,
            } => {
                let (mut dxo, mut dwo) = (mem.take(dx), mem.take(dw));
                layernorm::cpu_bwd(
                    rows,
                    cols,
                    accumulate,
                    mem.f(x),
                    mem.f(w),
                    mem.f(mean),
                    mem.f(rstd),
                    mem.f(dy),
                    &mut dxo,
                    &mut dwo,
                );
                mem.put(dx, dxo);
                mem.put(dw, dwo);
            }
            GeluFwd { n, x, y } => {
                let mut o = mem.take(y);
                gelu::cpu_fwd(n, mem.f(x), &mut o);
                mem.put(y, o);
            }
            GeluBwd { n, x, dy, dx } => {
                let mut o = mem.take(dx);
                gelu::cpu_bwd(n, mem.f(x), mem.f(dy), &mut o);
                mem.put(dx, o);
            }
            AttentionFwd { ref s, qkv, att, y } => {
                let (mut a, mut yo) = (mem.take(att), mem.take(y));
                attention::cpu_fwd(s, mem.f(qkv), &mut a, &mut yo);
                mem.put(att, a);
                mem.put(y, yo);
            }
            AttentionBwd {
                ref s,
                qkv,
                att,
                dy,
                datt,
                dqkv,
            } => {
                let (mut da, mut dq) = (mem.take(datt), mem.take(dqkv));
                attention::cpu_bwd(s, mem.f(qkv), mem.f(att), mem.f(dy), &mut da, &mut dq);
                mem.put(datt, da);
                mem.put(dqkv, dq);
            }
            EmbeddingFwd {
                ref s,
                idx,
                wte,
                wpe,
                x,
            } => {
                let mut o = mem.take(x);
                embedding::cpu_fwd(s, mem.u(idx), mem.f(wte), mem.f(wpe), &mut o);
                mem.put(x, o);
            }
            EmbeddingBwd {
                ref s,
                accumulate,
                idx,
                dx,
                dwte,
                dwpe,
            } => {
                let (mut a, mut b) = (mem.take(dwte), mem.take(dwpe));
                embedding::cpu_bwd(s, accumulate, mem.u(idx), mem.f(dx), &mut a, &mut b);
                mem.put(dwte, a);
                mem.put(dwpe, b);
            }
            Add { n, a, b, out } => {
                let mut o = mem.take(out);
                residual::cpu_add(n, mem.f(a), mem.f(b), &mut o);
                mem.put(out, o);
            }
            AddInPlace { n, acc, a } => {
                let mut o = mem.take(acc);
                residual::cpu_add_in_place(n, &mut o, mem.f(a));
                mem.put(acc, o);
            }
            SumSquares {
                n,
                slot,
                g,
                partials,
            } => {
                let mut o = mem.take(partials);
                adamw::cpu_sum_squares(n, slot, mem.f(g), &mut o);
                mem.put(partials, o);
            }
            GradNorm {
                count,
                clip,
                partials,
                norm,
            } => {
                let mut o = mem.take(norm);
                adamw::cpu_grad_norm(count, clip, mem.f(partials), &mut o);
                mem.put(norm, o);
            }
            AdamW {
                n,
                ref h,
                p,
                g,
                m,
                v,
                norm,
                step,
            } => {
                let (mut po, mut mo, mut vo) = (mem.take(p), mem.take(m), mem.take(v));
                adamw::cpu_step(
                    n,
                    h,
                    &mut po,
                    mem.f(g),
                    &mut mo,
                    &mut vo,
                    mem.f(norm),
                    mem.f(step),
                );
                mem.put(p, po);
                mem.put(m, mo);
                mem.put(v, vo);
            }
        }
    }
}
