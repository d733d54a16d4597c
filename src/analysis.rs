//! What the experiment measures beyond evaluation: loss per token-frequency group, the three
//! roles in the tied embedding's gradient, and the isotropy of each alphabet's embeddings.
//!
//! All of it runs on the host from buffers read back at log intervals, so training itself
//! is untouched; sums run in f64.

use serde::{Deserialize, Serialize};

/// Tokens grouped by training frequency: ranks 1-10, 11-20, ... of each alphabet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FreqGroups {
    /// Group of each model token id.
    pub group_of: Vec<usize>,
    /// "base 1-10", ..., then "shifted 1-10", ... when the model has the second alphabet.
    pub names: Vec<String>,
    /// Training count of each base character (the shifted alphabet is the same text).
    pub counts: Vec<u64>,
}

impl FreqGroups {
    /// Ranks the `base` characters by their count in `train` (ties: lower id first) and cuts
    /// the ranking into groups of `size`; with `shifted`, ids `base..2*base` get the same
    /// ranks in groups of their own.
    pub fn new(train: &[u32], base: usize, shifted: bool, size: usize) -> FreqGroups {
        let size = size.max(1);
        let mut counts = vec![0u64; base];
        for &t in train {
            counts[t as usize % base] += 1;
        }
        let mut order: Vec<usize> = (0..base).collect();
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let per_alphabet = base.div_ceil(size);
        let alphabets = if shifted { 2 } else { 1 };
        let mut group_of = vec![0; base * alphabets];
        for (rank, &id) in order.iter().enumerate() {
            for a in 0..alphabets {
                group_of[id + a * base] = a * per_alphabet + rank / size;
            }
        }
        let mut names = Vec::new();
        for a in ["base", "shifted"].iter().take(alphabets) {
            for g in 0..per_alphabet {
                let hi = ((g + 1) * size).min(base);
                names.push(format!("{a} {}-{hi}", g * size + 1));
            }
        }
        FreqGroups {
            group_of,
            names,
            counts,
        }
    }

    /// Mean loss per group over positions whose target falls in it (NaN for a group with no
    /// such position).
    pub fn mean_losses(&self, losses: &[f32], targets: &[u32]) -> Vec<f64> {
        let mut sum = vec![0.0f64; self.names.len()];
        let mut n = vec![0usize; self.names.len()];
        for (&l, &t) in losses.iter().zip(targets) {
            let g = self.group_of[t as usize];
            sum[g] += l as f64;
            n[g] += 1;
        }
        sum.iter()
            .zip(&n)
            .map(|(&s, &k)| if k == 0 { f64::NAN } else { s / k as f64 })
            .collect()
    }
}

/// The tied embedding's gradient row of each token, split by where it comes from, as L2
/// norms for one training step:
/// - `context`: through the input lookup, from positions where the token is the input;
/// - `target`: through the output head, from positions where the token is the target;
/// - `nontarget`: through the output head, from every other position (after the threshold:
///   masked logits contribute nothing).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Roles {
    pub context: Vec<f64>,
    pub target: Vec<f64>,
    pub nontarget: Vec<f64>,
}

/// Inputs of [`roles`]: one step's buffers, read back after its backward pass.
pub struct StepBuffers<'a> {
    /// Input ids and targets, `[n]`.
    pub idx: &'a [u32],
    pub targets: &'a [u32],
    /// Gradient at the embedding output (`d(wte[idx] + wpe)`), `[n, c]`.
    pub dx0: &'a [f32],
    /// Gradient of the loss at the logits, `[n, v]`.
    pub dlogits: &'a [f32],
    /// The final LayerNorm's output (the head's input), `[n, c]`.
    pub h: &'a [f32],
    pub v: usize,
    pub c: usize,
}

/// Splits one step's embedding gradient into the three roles (see [`Roles`]).
pub fn roles(s: &StepBuffers) -> Roles {
    let (v, c) = (s.v, s.c);
    let mut ctx = vec![0.0f64; v * c];
    let mut tgt = vec![0.0f64; v * c];
    let mut non = vec![0.0f64; v * c];
    for (n, (&i, &t)) in s.idx.iter().zip(s.targets).enumerate() {
        let dx = &s.dx0[n * c..(n + 1) * c];
        for (a, &d) in ctx[i as usize * c..][..c].iter_mut().zip(dx) {
            *a += d as f64;
        }
        let h = &s.h[n * c..(n + 1) * c];
        let dl = &s.dlogits[n * v..(n + 1) * v];
        for (tok, &g) in dl.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            let row = if tok == t as usize {
                &mut tgt[tok * c..][..c]
            } else {
                &mut non[tok * c..][..c]
            };
            for (a, &x) in row.iter_mut().zip(h) {
                *a += g as f64 * x as f64;
            }
        }
    }
    let norms = |m: &[f64]| -> Vec<f64> {
        m.chunks(c)
            .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
            .collect()
    };
    Roles {
        context: norms(&ctx),
        target: norms(&tgt),
        nontarget: norms(&non),
    }
}

/// Running mean of [`Roles`] over logged steps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RolesMean {
    pub steps: usize,
    pub sum: Roles,
}

impl RolesMean {
    pub fn add(&mut self, r: &Roles) {
        if self.sum.context.is_empty() {
            self.sum = Roles {
                context: vec![0.0; r.context.len()],
                target: vec![0.0; r.target.len()],
                nontarget: vec![0.0; r.nontarget.len()],
            };
        }
        for (acc, x) in [
            (&mut self.sum.context, &r.context),
            (&mut self.sum.target, &r.target),
            (&mut self.sum.nontarget, &r.nontarget),
        ] {
            for (a, b) in acc.iter_mut().zip(x) {
                *a += b;
            }
        }
        self.steps += 1;
    }

    pub fn mean(&self) -> Roles {
        let k = self.steps.max(1) as f64;
        let div = |v: &Vec<f64>| v.iter().map(|x| x / k).collect();
        Roles {
            context: div(&self.sum.context),
            target: div(&self.sum.target),
            nontarget: div(&self.sum.nontarget),
        }
    }
}

/// (context + target) / nontarget summed over the tokens `ids`: how much of their gradient
/// comes from their own contexts rather than from being pushed down elsewhere.
pub fn own_signal_ratio(r: &Roles, ids: std::ops::Range<usize>) -> f64 {
    let own: f64 = ids.clone().map(|i| r.context[i] + r.target[i]).sum();
    let push: f64 = ids.map(|i| r.nontarget[i]).sum();
    own / push
}

/// Eigenvalues and eigenvectors (columns of the returned `n x n` row-major matrix) of a
/// symmetric matrix, by cyclic Jacobi rotations in f64.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan's symmetric Schur step).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Isotropy of embeddings `w` (`rows x c`, row-major): with `Z(a) = sum_i exp(w_i . a)`,
/// `min_a Z(a) / max_a Z(a)` over the eigenvectors `a` of `WᵀW`, each taken with both signs
/// (an eigenvector's sign is arbitrary). 1 means the embeddings spread evenly in every
/// direction; near 0, they crowd along a few.
pub fn isotropy(w: &[f32], rows: usize, c: usize) -> f64 {
    let mut wtw = vec![0.0f64; c * c];
    for r in w.chunks(c).take(rows) {
        for i in 0..c {
            for j in 0..c {
                wtw[i * c + j] += r[i] as f64 * r[j] as f64;
            }
        }
    }
    let (_, vecs) = symmetric_eigen(&wtw, c);
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for k in 0..c {
        for sign in [1.0, -1.0] {
            let z: f64 = w
                .chunks(c)
                .take(rows)
                .map(|r| {
                    let dot: f64 = (0..c).map(|i| r[i] as f64 * vecs[i * c + k]).sum();
                    (sign * dot).exp()
                })
                .sum();
            lo = lo.min(z);
            hi = hi.max(z);
        }
    }
    lo / hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn groups_rank_by_training_count() {
        // counts: id0 1, id1 3, id2 2, id3 0 (vocab 4), groups of 2
        let train = [1, 1, 1, 2, 2, 0, 5, 6]; // 5 and 6 are the shifted 1 and 2
        let g = FreqGroups::new(&train, 4, true, 2);
        assert_eq!(g.counts, vec![1, 4, 3, 0]);
        assert_eq!(
            g.names,
            vec!["base 1-2", "base 3-4", "shifted 1-2", "shifted 3-4"]
        );
        // ranks: 1, 2, 0, 3
        assert_eq!(g.group_of, vec![1, 0, 0, 1, 3, 2, 2, 3]);
        let m = g.mean_losses(&[1.0, 3.0, 5.0, 7.0], &[1, 2, 0, 6]);
        assert_eq!(m[0], 2.0);
        assert_eq!(m[1], 5.0);
        assert!(m[3].is_nan());
        assert_eq!(m[2], 7.0);
    }

    #[test]
    fn roles_split_the_head_gradient_exactly() {
        let (n, v, c) = (6, 5, 3);
        let mut rng = Rng::new(3);
        let mut f = |k: usize| -> Vec<f32> { (0..k).map(|_| rng.normal() as f32).collect() };
        let (dx0, mut dlogits, h) = (f(n * c), f(n * v), f(n * c));
        dlogits[7] = 0.0; // a masked logit
        let idx = [0u32, 1, 1, 4, 2, 0];
        let targets = [1u32, 1, 3, 0, 0, 2];
        let r = roles(&StepBuffers {
            idx: &idx,
            targets: &targets,
            dx0: &dx0,
            dlogits: &dlogits,
            h: &h,
            v,
            c,
        });
        // Head gradient of token 1: positions 0 and 1 have it as target.
        let mut tgt = [0.0f64; 3];
        let mut non = [0.0f64; 3];
        for pos in 0..n {
            for k in 0..c {
                let g = dlogits[pos * v + 1] as f64 * h[pos * c + k] as f64;
                if targets[pos] == 1 {
                    tgt[k] += g;
                } else {
                    non[k] += g;
                }
            }
        }
        let norm = |x: [f64; 3]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!((r.target[1] - norm(tgt)).abs() < 1e-9);
        assert!((r.nontarget[1] - norm(non)).abs() < 1e-9);
        // Context of token 1: inputs at positions 1 and 2. Token 3 never is an input.
        let ctx: [f64; 3] = std::array::from_fn(|k| (dx0[c + k] + dx0[2 * c + k]) as f64);
        assert!((r.context[1] - norm(ctx)).abs() < 1e-6);
        assert_eq!(r.context[3], 0.0);
        // Token 4 is never a target: no target role.
        assert_eq!(r.target[4], 0.0);
        let mut mean = RolesMean::default();
        mean.add(&r);
        mean.add(&r);
        assert_eq!(mean.mean(), r);
    }

    #[test]
    fn jacobi_diagonalises() {
        let n = 6;
        let mut rng = Rng::new(9);
        let b: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum();
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, n);
        for k in 0..n {
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vecs[j * n + k]).sum();
                assert!(
                    (av - vals[k] * vecs[i * n + k]).abs() < 1e-9,
                    "A v != lambda v"
                );
            }
        }
    }

    #[test]
    fn isotropy_of_spread_and_crowded_embeddings() {
        // +-e_i in every direction: Z is the same along every axis.
        let c = 4;
        let mut spread = vec![0.0f32; 2 * c * c];
        for i in 0..c {
            spread[(2 * i) * c + i] = 1.0;
            spread[(2 * i + 1) * c + i] = -1.0;
        }
        assert!((isotropy(&spread, 2 * c, c) - 1.0).abs() < 1e-9);
        // Every row near one direction: strongly anisotropic.
        let mut rng = Rng::new(1);
        let crowded: Vec<f32> = (0..20 * c)
            .map(|i| {
                if i % c == 0 {
                    3.0
                } else {
                    0.1 * rng.normal() as f32
                }
            })
            .collect();
        assert!(isotropy(&crowded, 20, c) < 0.01);
    }
}
