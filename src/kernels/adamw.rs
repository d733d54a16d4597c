//! Global gradient-norm clipping and AdamW, entirely on the device.
//!
//! The norm is reduced in two deterministic stages so no float atomics and no readback are
//! needed: `sum_squares` leaves `SUMSQ_GROUPS` partial sums per gradient tensor at its own
//! `slot`, `grad_norm` folds all partials into `[norm, clip scale]`, and `step` applies the
//! scale while updating. The update follows PyTorch's `AdamW` (decoupled weight decay on the
//! old parameter, then the bias-corrected Adam step) with `clip_grad_norm_`'s scale.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, IntoOp, Kernel, Launch, Shader, Target};

pub const SHADER: Shader = shader!("adamw", Params);

uniform! {
    pub struct Params {
        pub n: u32,
        /// `sum_squares`: where its partials go.
        pub slot: u32,
        pub clip: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
    }
}

/// Fixed AdamW hyper-parameters; lr and bias corrections change per step and live in the
/// `step` buffer: `[lr, 1 - beta1^t, sqrt(1 - beta2^t), 0]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Partial sums per tensor: `partials[slot .. slot + SUMSQ_GROUPS]`.
pub const SUMSQ_GROUPS: u32 = 32;

/// Lanes per workgroup of `sum_squares` and `grad_norm`.
const LANES: usize = 256;

/// The shader's shared `Params`: `[n, slot, clip, beta1, beta2, eps, weight_decay]`.
fn params(n: u32, slot: u32, clip: f32, h: Option<&Hyper>) -> Params {
    let h = h.copied().unwrap_or(Hyper {
        beta1: 0.0,
        beta2: 0.0,
        eps: 0.0,
        weight_decay: 0.0,
    });
    Params {
        n,
        slot,
        clip,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
    }
}

/// `SUMSQ_GROUPS` partial sums of `g[..n]²` into `partials[slot..]`.
#[derive(Clone, Copy, Debug)]
pub struct SumSquares {
    pub n: u32,
    pub slot: u32,
    pub g: Buf,
    pub partials: Buf,
}

/// `norm = [√Σ partials[..count], min(1, clip / (norm + 1e-6))]` (scale 1 when `clip` is 0).
#[derive(Clone, Copy, Debug)]
pub struct GradNorm {
    pub count: u32,
    pub clip: f32,
    pub partials: Buf,
    pub norm: Buf,
}

/// One AdamW update of `p[..n]` with the clip scale `norm[1]` and the step scalars
/// `step = [lr, 1 - β1^t, √(1 - β2^t), 0]`.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub n: u32,
    pub h: Hyper,
    pub p: Buf,
    pub g: Buf,
    pub m: Buf,
    pub v: Buf,
    pub norm: Buf,
    pub step: Buf,
}

impl Kernel for SumSquares {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let p = params(self.n, self.slot, 0.0, None);
        let l = if t.cpu_loop(self.n / SUMSQ_GROUPS) {
            Launch::new(&SHADER, "sum_squares_lanes", &p, [1, 1, 1])
        } else {
            Launch::new(&SHADER, "sum_squares", &p, [SUMSQ_GROUPS, 1, 1])
        };
        vec![l.bind("g", self.g).bind("partials", self.partials)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.partials, |m, o| {
            cpu_sum_squares(self.n, self.slot, m.f(self.g), o)
        });
    }
}

impl Kernel for GradNorm {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = params(self.count, 0, self.clip, None);
        vec![Launch::new(&SHADER, "grad_norm", &p, [1, 1, 1])
            .bind("partials", self.partials)
            .bind("norm", self.norm)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.norm, |m, o| {
            cpu_grad_norm(self.count, self.clip, m.f(self.partials), o)
        });
    }
}

impl Kernel for AdamW {
    /// Four elements per invocation when `n` allows (the same arithmetic per element).
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let (n, p) = (self.n, params(self.n, 0, 0.0, Some(&self.h)));
        let l = if n.is_multiple_of(4) {
            Launch::new(&SHADER, "step4", &p, elem_grid(n / 4))
                .bind("g4", self.g)
                .bind("param4", self.p)
                .bind("m4", self.m)
                .bind("v4", self.v)
        } else {
            Launch::new(&SHADER, "step", &p, elem_grid(n))
                .bind("g", self.g)
                .bind("param", self.p)
                .bind("m", self.m)
                .bind("v", self.v)
        };
        vec![l.bind("norm", self.norm).bind("step_info", self.step)]
    }
    fn cpu(&self, mem: &mut HostMem) {
        mem.with3([self.p, self.m, self.v], |mem, p, m, v| {
            cpu_step(
                self.n,
                &self.h,
                p,
                mem.f(self.g),
                m,
                v,
                mem.f(self.norm),
                mem.f(self.step),
            )
        });
    }
}

/// Step scalars `[lr, 1 - β1^t, √(1 - β2^t), 0]` for 1-based step `t`.
pub fn step_scalars(lr: f32, h: &Hyper, t: u64) -> [f32; 4] {
    let bc1 = 1.0 - (h.beta1 as f64).powf(t as f64);
    let bc2 = 1.0 - (h.beta2 as f64).powf(t as f64);
    [lr, bc1 as f32, bc2.sqrt() as f32, 0.0]
}

/// The global norm over three tensors, the clip, then AdamW on each, at step 3; sizes from
/// one element to past one dispatch's loop, with the clip on, off, and never reached.
pub fn cases() -> Vec<Case> {
    let h = Hyper {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let groups = SUMSQ_GROUPS;
    let mut v = Vec::new();
    for &(ns, clip) in &[
        ([1u32, 3, 17], 1.0f32),
        ([257, 1000, 49152], 1.0),
        ([130, 4096, 65], 0.0),
        ([8193, 1, 256], 5.0),
        ([70001, 3000, 2], 1e9),
    ] {
        const P: [&str; 3] = ["p0", "p1", "p2"];
        const G: [&str; 3] = ["g0", "g1", "g2"];
        const M: [&str; 3] = ["m0", "m1", "m2"];
        const V: [&str; 3] = ["v0", "v1", "v2"];
        let mut case = Case::new(
            "adamw gradnorm+clip+step",
            format!("[{}] [{}] [{}] clip={clip}", ns[0], ns[1], ns[2]),
        )
        .output("partials", 3 * groups as usize)
        .output("norm", 2)
        .input("step", 4, Init::Values(step_scalars(1e-3, &h, 3).to_vec()));
        for (i, &n) in ns.iter().enumerate() {
            let n = n as usize;
            case = case
                .inout(P[i], n, Init::Normal(1.0))
                .input(G[i], n, Init::Normal(0.5))
                .inout(M[i], n, Init::Normal(0.1))
                .inout(V[i], n, Init::Uniform(0.0, 0.1));
        }
        v.push(
            case.ops(move |b| {
                let (partials, norm) = (b["partials"], b["norm"]);
                let mut ops = Vec::new();
                for (i, &n) in ns.iter().enumerate() {
                    let slot = i as u32 * groups;
                    ops.push(
                        SumSquares {
                            n,
                            slot,
                            g: b[G[i]],
                            partials,
                        }
                        .op(),
                    );
                }
                let count = 3 * groups;
                ops.push(
                    GradNorm {
                        count,
                        clip,
                        partials,
                        norm,
                    }
                    .op(),
                );
                for (i, &n) in ns.iter().enumerate() {
                    ops.push(
                        AdamW {
                            n,
                            h,
                            p: b[P[i]],
                            g: b[G[i]],
                            m: b[M[i]],
                            v: b[V[i]],
                            norm,
                            step: b["step"],
                        }
                        .op(),
                    );
                }
                ops
            })
            .tol(1e-5),
        );
    }
    v
}

pub fn cpu_sum_squares(n: u32, slot: u32, g: &[f32], partials: &mut [f32]) {
    let groups = SUMSQ_GROUPS as usize;
    let mut acc = [0f64; SUMSQ_GROUPS as usize];
    for (i, &x) in g[..n as usize].iter().enumerate() {
        acc[(i / LANES) % groups] += x as f64 * x as f64;
    }
    for (o, a) in partials[slot as usize..][..groups].iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// CPU twin of [`launch_grad_norm`], summing and taking the root in f64.
pub fn cpu_grad_norm(count: u32, clip: f32, partials: &[f32], norm: &mut [f32]) {
    let total: f64 = partials[..count as usize].iter().map(|&x| x as f64).sum();
    let nrm = total.sqrt();
    let scale = if clip > 0.0 {
        (clip as f64 / (nrm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    norm[0] = nrm as f32;
    norm[1] = scale as f32;
}

/// CPU twin of [`launch_step`]: element-wise f32, the same operations in the same order.
#[allow(clippy::too_many_arguments)]
pub fn cpu_step(
    n: u32,
    h: &Hyper,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    norm: &[f32],
    step: &[f32],
) {
    let (lr, bc1, sqrt_bc2) = (step[0], step[1], step[2]);
    let scale = norm[1];
    for i in 0..n as usize {
        let gi = g[i] * scale;
        let mi = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        let vi = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let decayed = p[i] * (1.0 - lr * h.weight_decay);
        p[i] = decayed - (lr / bc1) * mi / (vi.sqrt() / sqrt_bc2 + h.eps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::Dtype;
    use crate::kernels::Op;
    use crate::rng::Rng;

    const H: Hyper = Hyper {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    /// Host-side step words for step `t` (1-based), as the trainer writes them.
    fn step_words(lr: f64, t: i32) -> [f32; 4] {
        let bc1 = 1.0 - (H.beta1 as f64).powi(t);
        let bc2 = 1.0 - (H.beta2 as f64).powi(t);
        [lr as f32, bc1 as f32, bc2.sqrt() as f32, 0.0]
    }

    /// Several parameter tensors, each with one gradient per step.
    struct Problem {
        sizes: Vec<usize>,
        params: Vec<Vec<f32>>,
        /// grads[step][tensor]
        grads: Vec<Vec<Vec<f32>>>,
        clip: f32,
        lr: f64,
    }

    fn problem(rng: &mut Rng, sizes: &[usize], steps: usize, clip: f32) -> Problem {
        Problem {
            sizes: sizes.to_vec(),
            params: sizes.iter().map(|&n| rng.signed(n, 1.0)).collect(),
            grads: (0..steps)
                .map(|s| {
                    // vary the scale so clipping is active on some steps and not others
                    let k = [3.0, 0.01, 1.0][s % 3];
                    sizes
                        .iter()
                        .map(|&n| rng.signed(n, 1.0).iter().map(|x| x * k).collect())
                        .collect()
                })
                .collect(),
            clip,
            lr: 1e-2,
        }
    }

    /// Runs every step on one backend; returns per tensor `[p, m, v]`, and the last
    /// `partials` and `norm`.
    /// Runs the problem's steps through the kernels' CPU twins.
    fn run(pr: &Problem) -> (Vec<[Vec<f32>; 3]>, Vec<f32>, Vec<f32>) {
        let mut mem = HostMem::default();
        let k = pr.sizes.len();
        let count = k as u32 * SUMSQ_GROUPS;
        let partials = mem.alloc(count as usize, Dtype::F32);
        let norm = mem.alloc(2, Dtype::F32);
        let step = mem.alloc(4, Dtype::F32);
        let mut bufs = Vec::new();
        let mut ops: Vec<Op> = Vec::new();
        for (j, &n) in pr.sizes.iter().enumerate() {
            let b: Vec<_> = (0..4).map(|_| mem.alloc(n, Dtype::F32)).collect();
            mem.f_mut(b[0]).copy_from_slice(&pr.params[j]);
            let slot = j as u32 * SUMSQ_GROUPS;
            ops.push(
                SumSquares {
                    n: n as u32,
                    slot,
                    g: b[1],
                    partials,
                }
                .op(),
            );
            bufs.push(b);
        }
        let clip = pr.clip;
        ops.push(
            GradNorm {
                count,
                clip,
                partials,
                norm,
            }
            .op(),
        );
        for (j, b) in bufs.iter().enumerate() {
            let (p, g, m, v) = (b[0], b[1], b[2], b[3]);
            let n = pr.sizes[j] as u32;
            ops.push(
                AdamW {
                    n,
                    h: H,
                    p,
                    g,
                    m,
                    v,
                    norm,
                    step,
                }
                .op(),
            );
        }
        for (s, grads) in pr.grads.iter().enumerate() {
            for (b, gr) in bufs.iter().zip(grads) {
                mem.f_mut(b[1]).copy_from_slice(gr);
            }
            mem.f_mut(step)
                .copy_from_slice(&step_words(pr.lr, s as i32 + 1));
            for op in &ops {
                op.cpu(&mut mem);
            }
        }
        let out = bufs
            .iter()
            .map(|b| [0, 2, 3].map(|i| mem.f(b[i]).to_vec()))
            .collect();
        (out, mem.f(partials).to_vec(), mem.f(norm).to_vec())
    }

    fn reference(pr: &Problem) -> (Vec<[Vec<f64>; 3]>, f64) {
        let mut st: Vec<[Vec<f64>; 3]> = pr
            .params
            .iter()
            .map(|p| {
                [
                    p.iter().map(|&x| x as f64).collect(),
                    vec![0.0; p.len()],
                    vec![0.0; p.len()],
                ]
            })
            .collect();
        let (b1, b2, eps, wd) = (
            H.beta1 as f64,
            H.beta2 as f64,
            H.eps as f64,
            H.weight_decay as f64,
        );
        let mut last_norm = 0.0;
        for (s, grads) in pr.grads.iter().enumerate() {
            let t = s as i32 + 1;
            let sumsq: f64 = grads.iter().flatten().map(|&x| x as f64 * x as f64).sum();
            let nrm = sumsq.sqrt();
            let scale = if pr.clip > 0.0 {
                (pr.clip as f64 / (nrm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            last_norm = nrm;
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for ([p, m, v], g) in st.iter_mut().zip(grads) {
                for i in 0..p.len() {
                    let gi = g[i] as f64 * scale;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    p[i] *= 1.0 - pr.lr * wd;
                    p[i] -= pr.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
                }
            }
        }
        (st, last_norm)
    }

    fn close(
        name: &str,
        got: &[f32],
        want: impl Iterator<Item = f64>,
        atol: f64,
        rtol: f64,
    ) -> f64 {
        let mut worst = 0f64;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (*g as f64 - w).abs();
            assert!(
                err <= atol + rtol * w.abs(),
                "{name}[{i}]: got {g}, want {w}"
            );
            worst = worst.max(err);
        }
        worst
    }

    #[test]
    fn grad_norm_is_the_l2_norm_over_all_tensors() {
        let mut rng = Rng::new(3);
        let sizes = [1usize, 17, 256, 257, 8193, 20000];
        let tensors: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.signed(n, 1.0)).collect();
        let count = sizes.len() as u32 * SUMSQ_GROUPS;
        let mut partials = vec![f32::NAN; count as usize];
        for (j, t) in tensors.iter().enumerate() {
            cpu_sum_squares(t.len() as u32, j as u32 * SUMSQ_GROUPS, t, &mut partials);
        }
        let want: f64 = tensors
            .iter()
            .flatten()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt();
        for (clip, scale) in [(0.0f32, 1.0f64), (1e9, 1.0), (2.0, 2.0 / (want + 1e-6))] {
            let mut norm = [0f32; 2];
            cpu_grad_norm(count, clip, &partials, &mut norm);
            assert!(
                (norm[0] as f64 - want).abs() <= 1e-6 * want,
                "norm {} vs {want}",
                norm[0]
            );
            assert!(
                (norm[1] as f64 - scale).abs() <= 1e-6 * scale,
                "scale {} vs {scale}",
                norm[1]
            );
        }
    }

    #[test]
    fn adamw_matches_f64_reference() {
        for clip in [0.0, 1.0] {
            let pr = problem(&mut Rng::new(11), &[1, 17, 300], 3, clip);
            let (got, _, norm) = run(&pr);
            let (want, nrm) = reference(&pr);
            assert!((norm[0] as f64 - nrm).abs() <= 1e-6 * nrm);
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                close(&format!("p{j}"), &g[0], w[0].iter().copied(), 1e-6, 1e-5);
                close(&format!("m{j}"), &g[1], w[1].iter().copied(), 1e-7, 1e-5);
                close(&format!("v{j}"), &g[2], w[2].iter().copied(), 1e-9, 1e-5);
            }
        }
    }
}
