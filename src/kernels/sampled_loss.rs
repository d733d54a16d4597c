//! Skip-gram negative-sampling loss, forward and backward fused; see
//! `shaders/sampled_loss.wgsl`.
//!
//! The draws are integer-only (a counter hash, then a binary search in an integer cumulative
//! table), so the GPU and this twin pick the same negatives bit for bit and a run is
//! reproducible and resumable from `(step, seed)` alone.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("sampled_loss", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
        pub k: u32,
        pub scale: f32,
        pub logit_scale: f32,
    }
}

/// Most negatives per position: the shader keeps a row's draws in workgroup memory.
pub const MAX_K: u32 = 1024;

/// The cumulative table's total: draws use 31 bits so `cdf[last] = 2^31` fits a u32.
pub const CDF_TOTAL: u32 = 1 << 31;

const P2: u32 = 2_246_822_519;
const P3: u32 = 3_266_489_917;
const P4: u32 = 668_265_263;
const P5: u32 = 374_761_393;

/// xxHash32's 4-byte rounds and avalanche over four words, as the shader computes it.
pub fn hash4(words: [u32; 4]) -> u32 {
    let mut h = P5;
    for x in words {
        h = h
            .wrapping_add(x.wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
    }
    h = (h ^ (h >> 15)).wrapping_mul(P2);
    h = (h ^ (h >> 13)).wrapping_mul(P3);
    h ^ (h >> 16)
}

/// The noise token of slot `k` of `row` under `seeds = [step, run seed]`: the first `j`
/// with `u < cdf[j]`.
pub fn draw(seeds: [u32; 2], row: u32, k: u32, cdf: &[u32]) -> u32 {
    let u = hash4([seeds[0], seeds[1], row, k]) >> 1;
    let (mut lo, mut hi) = (0usize, cdf.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if u < cdf[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo as u32
}

/// Integer cumulative table of `weights` (normalised), ending at exactly [`CDF_TOTAL`].
/// Zero weights get an empty interval and are never drawn. Built once on the host in f64,
/// then shared as integers, so no float rounding can differ between devices.
pub fn cdf(weights: &[f64]) -> Vec<u32> {
    let total: f64 = weights.iter().sum();
    assert!(
        !weights.is_empty()
            && total > 0.0
            && total.is_finite()
            && weights.iter().all(|&x| x >= 0.0),
        "noise weights must be finite, non-negative and not all zero"
    );
    let mut acc = 0.0f64;
    let mut out: Vec<u32> = weights
        .iter()
        .map(|&x| {
            acc += x;
            ((acc / total * CDF_TOTAL as f64).round() as u64).min(CDF_TOTAL as u64) as u32
        })
        .collect();
    // Trailing zero weights keep the last positive token's end, which must be the total.
    let last_pos = weights.iter().rposition(|&x| x > 0.0).unwrap();
    for c in &mut out[last_pos..] {
        *c = CDF_TOTAL;
    }
    out
}

/// Negative sampling: `k` noise tokens per row drawn from `cdf` (u32 `[cols]`, see [`cdf`])
/// with the `seeds` words (u32 `[step, run seed]`; the host writes the step every step).
#[derive(Clone, Copy, Debug)]
pub struct SampledLoss {
    pub rows: u32,
    pub cols: u32,
    pub k: u32,
    pub scale: f32,
    /// Logits times S first (the paper's training temperature); 1: off.
    pub logit_scale: f32,
    pub logits: Buf,
    pub targets: Buf,
    pub cdf: Buf,
    pub seeds: Buf,
    pub losses: Buf,
    pub dlogits: Buf,
}

impl Kernel for SampledLoss {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        assert!(
            (1..=MAX_K).contains(&self.k),
            "sampled loss: K = {} outside 1..={MAX_K}",
            self.k
        );
        let p = Params {
            rows: self.rows,
            cols: self.cols,
            k: self.k,
            scale: self.scale,
            logit_scale: self.logit_scale,
        };
        vec![Launch::new(&SHADER, "sampled_loss", &p, grid(self.rows))
            .bind("logits", self.logits)
            .bind("targets", self.targets)
            .bind("cdf", self.cdf)
            .bind("seeds", self.seeds)
            .bind("losses", self.losses)
            .bind("dlogits", self.dlogits)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.losses, self.dlogits], |m, l, d| {
            cpu(
                self.rows,
                self.cols,
                self.k,
                (self.scale, self.logit_scale),
                m.f(self.logits),
                m.u(self.targets),
                m.u(self.cdf),
                m.u(self.seeds),
                l,
                d,
            )
        });
    }
}

/// A noise table over `cols` tokens with skewed weights, about a fifth of them zero (never
/// drawn); fixed per shape so every seed checks the same table.
fn skewed_cdf(cols: u32) -> Vec<u32> {
    let mut rng = crate::rng::Rng::new(cols as u64);
    let mut w: Vec<f64> = (0..cols)
        .map(|_| {
            let x = rng.uniform();
            if rng.uniform() < 0.2 {
                0.0
            } else {
                x * x * x
            }
        })
        .collect();
    if w.iter().all(|&x| x == 0.0) {
        w[0] = 1.0;
    }
    cdf(&w)
}

/// The loss and its mean (through `cross_entropy`'s mean) for K from 1 to [`MAX_K`].
pub fn cases() -> Vec<Case> {
    [
        (1u32, 1u32, 3u32),
        (3, 17, 1),
        (5, 34, 5),
        (2, 9, MAX_K),
        (7, 257, 20),
        (768, 130, 5),
        (768, 130, 64),
    ]
    .into_iter()
    .flat_map(|(rows, cols, k)| [(rows, cols, k, 1.0), (rows, cols, k, 0.46)])
    .map(|(rows, cols, k, logit_scale)| {
        let n = (rows * cols) as usize;
        let x = if logit_scale == 1.0 {
            String::new()
        } else {
            format!(" x{logit_scale}")
        };
        Case::new(
            "sampled_loss fwd+bwd",
            format!("[{rows}x{cols}] sampled:{k}{x}"),
        )
        .input("logits", n, Init::Normal(2.0))
        .words("targets", rows as usize, Init::Tokens(cols))
        .words("cdf", cols as usize, Init::Words(skewed_cdf(cols)))
        .words("seeds", 2, Init::Tokens(u32::MAX))
        .output("losses", rows as usize)
        .inout("dlogits", n, Init::Fill(7.0))
        .output("mean", 1)
        .ops(move |b| {
            let losses = b["losses"];
            vec![
                SampledLoss {
                    rows,
                    cols,
                    k,
                    scale: 1.0 / rows as f32,
                    logit_scale,
                    logits: b["logits"],
                    targets: b["targets"],
                    cdf: b["cdf"],
                    seeds: b["seeds"],
                    losses,
                    dlogits: b["dlogits"],
                }
                .op(),
                crate::kernels::cross_entropy::Mean {
                    n: rows,
                    x: losses,
                    out: b["mean"],
                }
                .op(),
            ]
        })
        .tol(2e-5)
    })
    .collect()
}

/// -log σ(-x), stable for any x.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Loss of one row and, if `grad` is given, its gradient times `scale`; f64 inside.
pub fn row(
    logits: &[f32],
    t: usize,
    negatives: &[u32],
    scale: f32,
    grad: Option<&mut [f32]>,
) -> f64 {
    let lt = logits[t] as f64;
    let mut loss = softplus(-lt);
    let mut count = vec![0u32; logits.len()];
    for &n in negatives {
        let n = n as usize;
        if n != t {
            loss += softplus(logits[n] as f64);
            count[n] += 1;
        }
    }
    if let Some(g) = grad {
        let s = scale as f64;
        for (j, (o, &l)) in g.iter_mut().zip(logits).enumerate() {
            *o = if j == t {
                (-sigmoid(-lt) * s) as f32
            } else if count[j] > 0 {
                (count[j] as f64 * sigmoid(l as f64) * s) as f32
            } else {
                0.0
            };
        }
    }
    loss
}

/// CPU twin; accumulates in f64. The logits are scaled in f32, as the shader does, and the
/// gradient's factor takes the scale with it.
#[allow(clippy::too_many_arguments)]
pub fn cpu(
    rows: u32,
    cols: u32,
    k: u32,
    (scale, logit_scale): (f32, f32),
    logits: &[f32],
    targets: &[u32],
    cdf: &[u32],
    seeds: &[u32],
    losses: &mut [f32],
    dlogits: &mut [f32],
) {
    let cols = cols as usize;
    let seeds = [seeds[0], seeds[1]];
    let cdf = &cdf[..cols];
    for r in 0..rows as usize {
        let negs: Vec<u32> = (0..k).map(|i| draw(seeds, r as u32, i, cdf)).collect();
        let rg = r * cols..(r + 1) * cols;
        let v: Vec<f32> = logits[rg.clone()]
            .iter()
            .map(|&l| l * logit_scale)
            .collect();
        losses[r] = row(
            &v,
            targets[r] as usize,
            &negs,
            scale * logit_scale,
            Some(&mut dlogits[rg]),
        ) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Central differences of the mean loss (draws held fixed) against dlogits, with repeated
    /// negatives and negatives equal to the target among the draws.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(3);
        let (rows, cols, k) = (5usize, 9usize, 6u32);
        let logits: Vec<f32> = (0..rows * cols)
            .map(|_| 3.0 * rng.normal() as f32)
            .collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
        let table = cdf(&[5.0, 1.0, 0.0, 3.0, 2.0, 0.5, 4.0, 1.0, 2.0]);
        let seeds = [11, 4];
        let negs: Vec<Vec<u32>> = (0..rows)
            .map(|r| (0..k).map(|i| draw(seeds, r as u32, i, &table)).collect())
            .collect();
        let repeated = negs
            .iter()
            .any(|n| (0..n.len()).any(|a| n[a + 1..].contains(&n[a])));
        let hit_target = negs.iter().zip(&targets).any(|(n, &t)| n.contains(&t));
        assert!(
            repeated && hit_target,
            "draws exercise neither rule: {negs:?}"
        );
        let loss = |l: &[f32]| {
            (0..rows)
                .map(|r| {
                    row(
                        &l[r * cols..(r + 1) * cols],
                        targets[r] as usize,
                        &negs[r],
                        1.0,
                        None,
                    )
                })
                .sum::<f64>()
                / rows as f64
        };
        let mut losses = vec![0.0; rows];
        let mut d = vec![0.0; rows * cols];
        cpu(
            rows as u32,
            cols as u32,
            k,
            (1.0 / rows as f32, 1.0),
            &logits,
            &targets,
            &table,
            &seeds,
            &mut losses,
            &mut d,
        );
        let h = 1e-3f32;
        for i in 0..rows * cols {
            let (mut lp, mut lm) = (logits.clone(), logits.clone());
            lp[i] += h;
            lm[i] -= h;
            let fd = (loss(&lp) - loss(&lm)) / (lp[i] - lm[i]) as f64;
            assert!(
                (fd - d[i] as f64).abs() < 2e-6 + 1e-3 * fd.abs(),
                "d/dl[{i}]: fd {fd} vs {}",
                d[i]
            );
        }
    }

    /// Reference values from an independent (Python) implementation of the same rounds, so
    /// the draws of a seed never change silently.
    #[test]
    fn hash_matches_reference_values() {
        assert_eq!(hash4([0, 0, 0, 0]), 1_078_847_289);
        assert_eq!(hash4([1, 2, 3, 4]), 4_289_889_000);
        assert_eq!(hash4([u32::MAX, 7, 767, 1023]), 2_779_499_518);
    }

    #[test]
    fn cdf_is_exact_and_skips_zero_weights() {
        let table = cdf(&[0.0, 1.0, 0.0, 3.0, 0.0]);
        assert_eq!(table, vec![0, 1 << 29, 1 << 29, CDF_TOTAL, CDF_TOTAL]);
        for r in 0..2000 {
            let n = draw([1, 2], r, 0, &table);
            assert!(n == 1 || n == 3, "drew zero-weight token {n}");
        }
        // Every u in [0, 2^31) maps to a token with a non-empty interval.
        assert_eq!(cdf(&[2.0]), vec![CDF_TOTAL]);
    }

    #[test]
    fn softplus_and_sigmoid_are_stable() {
        assert_eq!(softplus(-800.0), 0.0);
        assert_eq!(softplus(800.0), 800.0);
        assert!((softplus(-40.0) - (-40.0f64).exp()).abs() < 1e-30);
        assert_eq!(sigmoid(-800.0), 0.0);
        assert_eq!(sigmoid(800.0), 1.0);
        assert!((sigmoid(0.3) + sigmoid(-0.3) - 1.0).abs() < 1e-15);
    }
}
