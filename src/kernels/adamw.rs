//! Global gradient-norm clipping and AdamW, entirely on the device.
//!
//! The norm is reduced in two deterministic stages so no float atomics and no readback are
//! needed: `sum_squares` leaves `SUMSQ_GROUPS` partial sums per gradient tensor at its own
//! `slot`, `grad_norm` folds all partials into `[norm, clip scale]`, and `step` applies the
//! scale while updating. The update follows PyTorch's `AdamW` (decoupled weight decay on the
//! old parameter, then the bias-corrected Adam step) with `clip_grad_norm_`'s scale.

use crate::kernels::{elem_grid, w, Launch, Target};
use crate::runtime::Buf;

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
fn params(n: u32, slot: u32, clip: f32, h: Option<&Hyper>) -> Vec<u32> {
    let h = h.copied().unwrap_or(Hyper {
        beta1: 0.0,
        beta2: 0.0,
        eps: 0.0,
        weight_decay: 0.0,
    });
    vec![
        n,
        slot,
        w(clip),
        w(h.beta1),
        w(h.beta2),
        w(h.eps),
        w(h.weight_decay),
    ]
}

/// `partials[slot + k]` = sum of `g[i]^2` over the `i < n` with `(i / 256) % SUMSQ_GROUPS == k`.
/// CPU-like adapters get one workgroup whose invocations each own one partial.
pub fn launch_sum_squares(t: &Target, n: u32, slot: u32, g: Buf, partials: Buf) -> Launch {
    // Each invocation of the lanes kernel loops over n / SUMSQ_GROUPS elements.
    let (entry, groups) = if t.cpu_loop(n / SUMSQ_GROUPS) {
        ("sum_squares_lanes", [1, 1, 1])
    } else {
        ("sum_squares", [SUMSQ_GROUPS, 1, 1])
    };
    Launch {
        shader: "adamw",
        entry,
        params: params(n, slot, 0.0, None),
        bufs: vec![(1, g), (2, partials)],
        groups,
    }
}

/// `norm = [sqrt(sum of partials[..count]), clip scale]`; `clip <= 0` disables clipping.
pub fn launch_grad_norm(count: u32, clip: f32, partials: Buf, norm: Buf) -> Launch {
    Launch {
        shader: "adamw",
        entry: "grad_norm",
        params: params(count, 0, clip, None),
        bufs: vec![(2, partials), (3, norm)],
        groups: [1, 1, 1],
    }
}

/// One AdamW update of `p` (and its moments `m`, `v`) from `g * norm[1]`; four elements per
/// invocation when `n` allows.
#[allow(clippy::too_many_arguments)]
pub fn launch_step(
    n: u32,
    h: &Hyper,
    p: Buf,
    g: Buf,
    m: Buf,
    v: Buf,
    norm: Buf,
    step: Buf,
) -> Launch {
    if n.is_multiple_of(4) {
        return Launch {
            shader: "adamw",
            entry: "step4",
            params: params(n, 0, 0.0, Some(h)),
            bufs: vec![(8, g), (3, norm), (9, p), (10, m), (11, v), (7, step)],
            groups: elem_grid(n / 4),
        };
    }
    Launch {
        shader: "adamw",
        entry: "step",
        params: params(n, 0, 0.0, Some(h)),
        bufs: vec![(1, g), (3, norm), (4, p), (5, m), (6, v), (7, step)],
        groups: elem_grid(n),
    }
}

/// CPU twin of [`launch_sum_squares`]: the same assignment of elements to partials, each
/// partial summed in f64 and stored as f32.
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
    use crate::kernels::Op;
    use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
                .collect()
        }
    }

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
            params: sizes.iter().map(|&n| rng.vec(n)).collect(),
            grads: (0..steps)
                .map(|s| {
                    // vary the scale so clipping is active on some steps and not others
                    let k = [3.0, 0.01, 1.0][s % 3];
                    sizes
                        .iter()
                        .map(|&n| rng.vec(n).iter().map(|x| x * k).collect())
                        .collect()
                })
                .collect(),
            clip,
            lr: 1e-2,
        }
    }

    /// Runs every step on one backend; returns per tensor `[p, m, v]`, and the last
    /// `partials` and `norm`.
    fn run(be: &mut dyn Backend, pr: &Problem) -> (Vec<[Vec<f32>; 3]>, Vec<f32>, Vec<f32>) {
        let k = pr.sizes.len();
        let count = k as u32 * SUMSQ_GROUPS;
        let partials = be.alloc("partials", count as usize, Dtype::F32).unwrap();
        let norm = be.alloc("norm", 2, Dtype::F32).unwrap();
        let step = be.alloc("step", 4, Dtype::F32).unwrap();
        let mut bufs = Vec::new();
        let mut ops = Vec::new();
        for (j, &n) in pr.sizes.iter().enumerate() {
            let b: Vec<_> = ["p", "g", "m", "v"]
                .iter()
                .map(|l| be.alloc(l, n, Dtype::F32).unwrap())
                .collect();
            be.write_f32(b[0], &pr.params[j]);
            let slot = j as u32 * SUMSQ_GROUPS;
            ops.push(Op::SumSquares {
                n: n as u32,
                slot,
                g: b[1],
                partials,
            });
            bufs.push(b);
        }
        ops.push(Op::GradNorm {
            count,
            clip: pr.clip,
            partials,
            norm,
        });
        for (j, b) in bufs.iter().enumerate() {
            ops.push(Op::AdamW {
                n: pr.sizes[j] as u32,
                h: H,
                p: b[0],
                g: b[1],
                m: b[2],
                v: b[3],
                norm,
                step,
            });
        }
        let seq = be.compile(&ops).unwrap();
        for (s, grads) in pr.grads.iter().enumerate() {
            for (b, gr) in bufs.iter().zip(grads) {
                be.write_f32(b[1], gr);
            }
            be.write_f32(step, &step_words(pr.lr, s as i32 + 1));
            be.run(&[seq]).unwrap();
        }
        let out = bufs
            .iter()
            .map(|b| [0, 2, 3].map(|i| be.read_f32(b[i]).unwrap()))
            .collect();
        (
            out,
            be.read_f32(partials).unwrap(),
            be.read_f32(norm).unwrap(),
        )
    }

    /// The formula in f64, straight from the definition.
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
        let mut rng = Rng(3);
        let sizes = [1usize, 17, 256, 257, 8193, 20000];
        let tensors: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n)).collect();
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
            let pr = problem(&mut Rng(11), &[1, 17, 300], 3, clip);
            let (got, _, norm) = run(&mut CpuBackend::new(), &pr);
            let (want, nrm) = reference(&pr);
            assert!((norm[0] as f64 - nrm).abs() <= 1e-6 * nrm);
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                close(&format!("p{j}"), &g[0], w[0].iter().copied(), 1e-6, 1e-5);
                close(&format!("m{j}"), &g[1], w[1].iter().copied(), 1e-7, 1e-5);
                close(&format!("v{j}"), &g[2], w[2].iter().copied(), 1e-9, 1e-5);
            }
        }
    }

    #[test]
    fn gpu_matches_cpu() {
        let mut gpu = GpuBackend::open(None).unwrap();
        let mut rng = Rng(5);
        let mut worst = [0f64; 3];
        for (sizes, clip) in [
            (vec![1usize], 1.0f32),
            (vec![3, 17, 65], 0.0),
            (vec![256, 257, 130], 5.0),
            (vec![8193, 1], 1.0),
            (vec![70001, 3000], 1e9),
        ] {
            let pr = problem(&mut rng, &sizes, 3, clip);
            let (g, gp, gn) = run(&mut gpu, &pr);
            let (c, cp, cn) = run(&mut CpuBackend::new(), &pr);
            let f = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>().into_iter();
            worst[0] = worst[0].max(close("partials", &gp, f(&cp), 1e-6, 1e-5));
            worst[1] = worst[1].max(close("norm", &gn, f(&cn), 0.0, 1e-5));
            for (j, (a, b)) in g.iter().zip(&c).enumerate() {
                worst[2] = worst[2].max(close(&format!("p{j}"), &a[0], f(&b[0]), 1e-6, 1e-5));
                close(&format!("m{j}"), &a[1], f(&b[1]), 1e-7, 1e-4);
                close(&format!("v{j}"), &a[2], f(&b[2]), 1e-9, 1e-4);
            }
        }
        eprintln!(
            "adamw gpu vs cpu: max abs error partials {:e}, norm {:e}, params {:e}",
            worst[0], worst[1], worst[2]
        );
    }
}
