//! Fused kept-set + softmax + cross-entropy forward and backward; see
//! `shaders/cross_entropy.wgsl`.

use std::fmt;

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, threshold, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("cross_entropy", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
        pub use_margin: u32,
        pub margin: f32,
        /// The gradient's factor, normally 1 / rows.
        pub scale: f32,
        /// Top-K hard negatives; 0: off.
        pub hard_k: u32,
        /// Base alphabet size for the counterpart rule; 0: off.
        pub twin_base: u32,
    }
}

/// Which non-target logits of a row enter the softmax; every filter that is on applies, and
/// the target always stays. `Keep::default()` is plain cross-entropy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Keep {
    /// Threshold ("selfish tokens"): only `l_j >= l_t - margin`.
    pub margin: Option<f32>,
    /// Dynamic hard negatives: only the K best remaining non-targets.
    pub hard: Option<u32>,
    /// Base alphabet size V: the target's twin `t ± V` is a false negative and is dropped.
    pub counterpart: Option<u32>,
}

impl Keep {
    /// The threshold loss alone (`None`: plain cross-entropy).
    pub fn from_margin(margin: Option<f32>) -> Keep {
        Keep {
            margin,
            ..Keep::default()
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = self.hard {
            parts.push(format!("hard:{k}"));
        }
        if let Some(v) = self.counterpart {
            parts.push(format!("counterpart(V={v})"));
        }
        if let Some(m) = self.margin {
            parts.push(format!("margin:{m}"));
        }
        if parts.is_empty() {
            parts.push("plain".into());
        }
        write!(f, "{}", parts.join("+"))
    }
}

/// The target's counterpart in the other alphabet of a `2 * base` vocabulary.
pub fn twin(t: usize, base: usize) -> usize {
    if t < base {
        t + base
    } else {
        t - base
    }
}

/// The kept set of one row, as the shader defines it (a sort here, rank counting there).
pub fn kept(logits: &[f32], t: usize, keep: &Keep) -> Vec<bool> {
    let lt = logits[t];
    let tw = keep.counterpart.map(|v| twin(t, v as usize));
    let mut cand: Vec<usize> = (0..logits.len())
        .filter(|&j| j != t && Some(j) != tw && threshold::kept(logits[j], lt, keep.margin))
        .collect();
    if let Some(k) = keep.hard {
        // total_cmp is IEEE totalOrder, the shader's order key; ties go to the lower index.
        cand.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        cand.truncate(k as usize);
    }
    let mut out = vec![false; logits.len()];
    out[t] = true;
    for j in cand {
        out[j] = true;
    }
    out
}

/// Per-row softmax cross-entropy over the kept set, forward and backward fused: `losses[r]`
/// and `dlogits` (exactly 0 outside the kept set), times `scale`.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropy {
    pub rows: u32,
    pub cols: u32,
    pub keep: Keep,
    pub scale: f32,
    pub logits: Buf,
    pub targets: Buf,
    pub losses: Buf,
    pub dlogits: Buf,
}

/// `out[0] = mean(x[..n])`, a fixed-order sum.
#[derive(Clone, Copy, Debug)]
pub struct Mean {
    pub n: u32,
    pub x: Buf,
    pub out: Buf,
}

impl Kernel for CrossEntropy {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (rows, cols, keep) = (self.rows, self.cols, &self.keep);
        // One invocation per row loops over the row, or over it for every candidate to rank.
        let ranks = keep.hard.is_some_and(|k| k < cols.saturating_sub(1));
        let rows_kernel = t.cpu_loop(if ranks {
            cols.saturating_mul(cols)
        } else {
            3 * cols
        });
        let p = Params {
            rows,
            cols,
            use_margin: keep.margin.is_some() as u32,
            margin: keep.margin.unwrap_or(0.0),
            scale: self.scale,
            hard_k: keep.hard.unwrap_or(0),
            twin_base: keep.counterpart.unwrap_or(0),
        };
        let l = if rows_kernel {
            Launch::new(&SHADER, "cross_entropy_rows", &p, grid(rows.div_ceil(64)))
        } else {
            Launch::new(&SHADER, "cross_entropy", &p, grid(rows))
        };
        vec![l
            .bind("logits", self.logits)
            .bind("targets", self.targets)
            .bind("losses", self.losses)
            .bind("dlogits", self.dlogits)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.losses, self.dlogits], |m, l, d| {
            cpu(
                self.rows,
                self.cols,
                &self.keep,
                self.scale,
                m.f(self.logits),
                m.u(self.targets),
                l,
                d,
            )
        });
    }
}

impl Kernel for Mean {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.n,
            ..Params::default()
        };
        vec![Launch::new(&SHADER, "mean_rows", &p, [1, 1, 1])
            .bind("xs", self.x)
            .bind("mean_out", self.out)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.out, |m, o| cpu_mean(self.n, m.f(self.x), o));
    }
}

/// The fused loss and its mean over one kept set.
fn case(rows: u32, cols: u32, keep: Keep, logits: Init) -> Case {
    let n = (rows * cols) as usize;
    let ties = if matches!(logits, Init::Steps(_)) {
        " ties"
    } else {
        ""
    };
    Case::new(
        "cross_entropy fwd+bwd",
        format!("[{rows}x{cols}] {keep}{ties}"),
    )
    .input("logits", n, logits)
    .words("targets", rows as usize, Init::Tokens(cols))
    .output("losses", rows as usize)
    .inout("dlogits", n, Init::Fill(7.0))
    .output("mean", 1)
    .ops(move |b| {
        let losses = b["losses"];
        vec![
            CrossEntropy {
                rows,
                cols,
                keep,
                scale: 1.0 / rows as f32,
                logits: b["logits"],
                targets: b["targets"],
                losses,
                dlogits: b["dlogits"],
            }
            .op(),
            Mean {
                n: rows,
                x: losses,
                out: b["mean"],
            }
            .op(),
        ]
    })
    .tol(2e-5)
}

/// Every kind of kept set (counterpart needs an even, two-alphabet vocabulary), on odd
/// shapes and the paper's logits; then whole-number logits, which tie everywhere, so hard:K
/// must cut ties by index on both sides.
pub fn cases() -> Vec<Case> {
    let keep = |margin: Option<f32>, hard: Option<u32>, twin: bool, cols: u32| Keep {
        margin,
        hard,
        counterpart: twin.then_some(cols / 2),
    };
    let mut v = Vec::new();
    for &(rows, cols) in &[(3u32, 17u32), (5, 34), (7, 257), (2, 1030), (768, 130)] {
        for (margin, hard, twin) in [
            (None, None, false),
            (Some(0.0), None, false),
            (Some(0.5), None, false),
            (Some(2.0), None, false),
            (Some(8.0), None, false),
            (None, Some(1), false),
            (None, Some(5), false),
            (None, Some(300), false),
            (None, None, true),
            (Some(1.0), None, true),
            (None, Some(3), true),
            (Some(1.0), Some(4), false),
            // drops exactly one non-target: the last K that needs ranking
            (None, Some(cols.saturating_sub(2).max(1)), false),
        ] {
            if twin && !cols.is_multiple_of(2) {
                continue;
            }
            let k = keep(margin, hard, twin, cols);
            v.push(case(rows, cols, k, Init::Normal(2.0)));
        }
    }
    for &(rows, cols) in &[(7u32, 258u32), (3, 1030), (768, 130)] {
        for (margin, hard, twin) in [
            (None, Some(5), false),
            (None, Some(3), true),
            (Some(1.0), Some(20), false),
        ] {
            v.push(case(
                rows,
                cols,
                keep(margin, hard, twin, cols),
                Init::Steps(4),
            ));
        }
    }
    v
}

/// Loss of one row and, if `grad` is given, its gradient times `scale`; f64 inside.
pub fn row(logits: &[f32], t: usize, keep: &Keep, scale: f32, grad: Option<&mut [f32]>) -> f64 {
    let lt = logits[t];
    let k = kept(logits, t, keep);
    let mx = logits
        .iter()
        .zip(&k)
        .filter(|p| *p.1)
        .fold(lt, |a, (&b, _)| a.max(b)) as f64;
    let z: f64 = logits
        .iter()
        .zip(&k)
        .filter(|p| *p.1)
        .map(|(&l, _)| (l as f64 - mx).exp())
        .sum();
    if let Some(g) = grad {
        for (j, (o, &l)) in g.iter_mut().zip(logits).enumerate() {
            *o = if k[j] {
                let p = (l as f64 - mx).exp() / z - if j == t { 1.0 } else { 0.0 };
                (p * scale as f64) as f32
            } else {
                0.0
            };
        }
    }
    z.ln() + mx - lt as f64
}

/// CPU twin; accumulates in f64.
#[allow(clippy::too_many_arguments)]
pub fn cpu(
    rows: u32,
    cols: u32,
    keep: &Keep,
    scale: f32,
    logits: &[f32],
    targets: &[u32],
    losses: &mut [f32],
    dlogits: &mut [f32],
) {
    let cols = cols as usize;
    for r in 0..rows as usize {
        let rg = r * cols..(r + 1) * cols;
        losses[r] = row(
            &logits[rg.clone()],
            targets[r] as usize,
            keep,
            scale,
            Some(&mut dlogits[rg]),
        ) as f32;
    }
}

/// CPU twin of [`Mean`]; f64 sum.
pub fn cpu_mean(n: u32, x: &[f32], out: &mut [f32]) {
    let s: f64 = x[..n as usize].iter().map(|&v| v as f64).sum();
    out[0] = (s / n.max(1) as f64) as f32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn modes() -> Vec<Keep> {
        let (m, h, c) = (Some(1.0), Some(3), Some(12));
        vec![
            Keep::default(),
            Keep::from_margin(Some(0.5)),
            Keep::from_margin(Some(2.0)),
            Keep {
                hard: Some(1),
                ..Keep::default()
            },
            Keep {
                hard: Some(5),
                ..Keep::default()
            },
            Keep {
                counterpart: c,
                ..Keep::default()
            },
            Keep {
                margin: m,
                counterpart: c,
                ..Keep::default()
            },
            Keep {
                margin: Some(2.0),
                hard: h,
                counterpart: c,
            },
        ]
    }

    /// Central differences of the mean loss against dlogits, for every kind of kept set. The
    /// kept set is piecewise constant in the logits; probes that move it are skipped (the loss
    /// jumps there), and everything else, targets and masked entries included, must match.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(8);
        let (rows, cols) = (4u32, 24u32);
        let c = cols as usize;
        let n = (rows * cols) as usize;
        let logits: Vec<f32> = (0..n).map(|_| 2.0 * rng.normal() as f32).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(c) as u32).collect();
        for keep in modes() {
            // The loss in f64 straight from `row`: f32 losses would drown the difference.
            let loss = |l: &[f32]| {
                (0..rows as usize)
                    .map(|r| {
                        row(
                            &l[r * c..(r + 1) * c],
                            targets[r] as usize,
                            &keep,
                            1.0,
                            None,
                        )
                    })
                    .sum::<f64>()
                    / rows as f64
            };
            let mut losses = vec![0.0; rows as usize];
            let mut d = vec![0.0; n];
            cpu(
                rows,
                cols,
                &keep,
                1.0 / rows as f32,
                &logits,
                &targets,
                &mut losses,
                &mut d,
            );
            let h = 1e-3f32;
            let mut checked = 0;
            for i in 0..n {
                let r = i / c;
                let t = targets[r] as usize;
                let (mut lp, mut lm) = (logits.clone(), logits.clone());
                lp[i] += h;
                lm[i] -= h;
                let rg = r * c..(r + 1) * c;
                let k0 = kept(&logits[rg.clone()], t, &keep);
                if kept(&lp[rg.clone()], t, &keep) != k0 || kept(&lm[rg], t, &keep) != k0 {
                    continue;
                }
                checked += 1;
                let fd = (loss(&lp) - loss(&lm)) / (lp[i] - lm[i]) as f64;
                assert!(
                    (fd - d[i] as f64).abs() < 2e-5 + 1e-3 * fd.abs(),
                    "{keep} d/dl[{i}]: fd {fd} vs {}",
                    d[i]
                );
            }
            assert!(checked > n * 9 / 10, "{keep}: only {checked} of {n} probed");
        }
    }

    #[test]
    fn kept_set_rules() {
        // Ties at the cut go to the lower index; -0 ranks below +0 (IEEE totalOrder).
        let l = [1.0, 3.0, 2.0, 2.0, 2.0, -0.0, 0.0, 5.0];
        let hard = |k| Keep {
            hard: Some(k),
            ..Keep::default()
        };
        let idx = |m: Vec<bool>| -> Vec<usize> { (0..m.len()).filter(|&j| m[j]).collect() };
        assert_eq!(idx(kept(&l, 0, &hard(1))), vec![0, 7]);
        assert_eq!(idx(kept(&l, 0, &hard(3))), vec![0, 1, 2, 7]);
        assert_eq!(idx(kept(&l, 0, &hard(4))), vec![0, 1, 2, 3, 7]);
        assert_eq!(idx(kept(&l, 7, &hard(6))), vec![0, 1, 2, 3, 4, 6, 7]);
        assert_eq!(idx(kept(&l, 7, &hard(99))), (0..8).collect::<Vec<_>>());
        // The twin of 1 in a 2 x 4 vocabulary is 5 and of 6 is 2.
        let cp = Keep {
            counterpart: Some(4),
            ..Keep::default()
        };
        assert_eq!(idx(kept(&l, 1, &cp)), vec![0, 1, 2, 3, 4, 6, 7]);
        assert_eq!(idx(kept(&l, 6, &cp)), vec![0, 1, 3, 4, 5, 6, 7]);
        // The twin is dropped before the top K are chosen, so K others stay.
        let both = Keep {
            hard: Some(2),
            counterpart: Some(4),
            ..Keep::default()
        };
        assert_eq!(idx(kept(&l, 3, &both)), vec![1, 2, 3]);
        let with_margin = Keep {
            margin: Some(0.5),
            hard: Some(2),
            counterpart: Some(4),
        };
        assert_eq!(idx(kept(&l, 0, &with_margin)), vec![0, 1, 7]);
    }
}
