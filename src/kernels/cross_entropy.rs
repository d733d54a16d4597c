//! Fused kept-set + softmax + cross-entropy forward and backward; see
//! `shaders/cross_entropy.wgsl`.

use std::fmt;

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

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
        pub logit_scale: f32,
        /// What `row_vals` holds: 0 nothing, 1 per-row margins, 2 per-row target offsets.
        pub row_mode: u32,
        /// Soft threshold temperature; 0: off.
        pub soft_c: f32,
        pub detach_tau: u32,
        pub detach_under: u32,
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

/// What `row_vals[r]` holds for the loss of row r.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PerRow {
    #[default]
    Nothing,
    /// The row's margin, in place of `Keep::margin` (margins that follow norms).
    Margin,
    /// Subtracted from the target logit before anything else (the adversarial margin).
    TargetOffset,
}

/// How the kept logits are scored and differentiated: the ablations of the threshold loss.
/// `Shaping::default()` scores plain logits, with the same bits as before it existed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shaping {
    /// Logits times S before anything else (the paper's training temperature).
    pub logit_scale: f32,
    pub per_row: PerRow,
    /// Soft threshold `C·log(exp((l - τ)/C) - 1) + τ` on kept logits, τ the threshold.
    pub softminus: Option<f32>,
    /// The soft threshold's τ carries no gradient to the target.
    pub detach_threshold: bool,
    /// Logits under the threshold stay in the softmax but get no gradient.
    pub detach_under: bool,
}

impl Default for Shaping {
    fn default() -> Shaping {
        Shaping {
            logit_scale: 1.0,
            per_row: PerRow::Nothing,
            softminus: None,
            detach_threshold: false,
            detach_under: false,
        }
    }
}

impl fmt::Display for Shaping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match self.per_row {
            PerRow::Nothing => {}
            PerRow::Margin => parts.push("row margins".to_string()),
            PerRow::TargetOffset => parts.push("target offsets".to_string()),
        }
        if let Some(c) = self.softminus {
            parts.push(format!("softminus:{c}"));
        }
        if self.detach_threshold {
            parts.push("detach-threshold".into());
        }
        if self.detach_under {
            parts.push("detach-under".into());
        }
        if self.logit_scale != 1.0 {
            parts.push(format!("x{}", self.logit_scale));
        }
        write!(f, "{}", parts.join(" "))
    }
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

/// The kept set of one row of plain logits under `keep` (a sort here, rank counting there).
pub fn kept(logits: &[f32], t: usize, keep: &Keep) -> Vec<bool> {
    kept_set(logits, t, keep, keep.margin.map(|m| logits[t] - m), false)
}

/// The kept set over shaped values `v` with threshold `thr`; under `detach_under` the
/// threshold masks nothing (it only takes gradients away).
fn kept_set(v: &[f32], t: usize, keep: &Keep, thr: Option<f32>, detach_under: bool) -> Vec<bool> {
    let tw = keep.counterpart.map(|b| twin(t, b as usize));
    let masks = if detach_under { None } else { thr };
    let mut cand: Vec<usize> = (0..v.len())
        .filter(|&j| j != t && Some(j) != tw && masks.is_none_or(|th| v[j] >= th))
        .collect();
    if let Some(k) = keep.hard {
        // total_cmp is IEEE totalOrder, the shader's order key; ties go to the lower index.
        cand.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        cand.truncate(k as usize);
    }
    let mut out = vec![false; v.len()];
    out[t] = true;
    for j in cand {
        out[j] = true;
    }
    out
}

/// A row as the kernel scores it, in f32 and the kernel's order of operations: the values
/// `v_j = S·(l_j − [j = t]·offset)` and the threshold `v_t − margin` (`None`: no margin).
pub fn shaped(
    logits: &[f32],
    t: usize,
    keep: &Keep,
    sh: &Shaping,
    row_val: f32,
) -> (Vec<f32>, Option<f32>) {
    let off = if sh.per_row == PerRow::TargetOffset {
        row_val
    } else {
        0.0
    };
    let v: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(j, &l)| (if j == t { l - off } else { l }) * sh.logit_scale)
        .collect();
    let margin = match sh.per_row {
        PerRow::Margin => Some(row_val),
        _ => keep.margin,
    };
    let thr = margin.map(|m| v[t] - m);
    (v, thr)
}

/// `ln max(1e-9, e^a − 1)` and the soft score's slope `1 + 1/q` (0 where the floor holds),
/// for `a >= 0`.
pub fn soft_log(a: f64) -> (f64, f64) {
    if a > 30.0 {
        return (a + (-(-a).exp()).ln_1p(), 1.0 / -(-a).exp_m1());
    }
    let q = a.exp_m1();
    if q < 1e-9 {
        (1e-9f64.ln(), 0.0)
    } else {
        (q.ln(), 1.0 + 1.0 / q)
    }
}

/// Per-row softmax cross-entropy over the kept set, forward and backward fused: `losses[r]`
/// and `dlogits` (exactly 0 outside the kept set), times `scale`.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropy {
    pub rows: u32,
    pub cols: u32,
    pub keep: Keep,
    pub shaping: Shaping,
    pub scale: f32,
    pub logits: Buf,
    pub targets: Buf,
    /// f32 `[rows]`, what `shaping.per_row` says; `None` exactly when it says nothing.
    pub row_vals: Option<Buf>,
    pub losses: Buf,
    pub dlogits: Buf,
}

impl CrossEntropy {
    /// Plain scores over `keep`'s kept set.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rows: u32,
        cols: u32,
        keep: Keep,
        scale: f32,
        logits: Buf,
        targets: Buf,
        losses: Buf,
        dlogits: Buf,
    ) -> CrossEntropy {
        CrossEntropy {
            rows,
            cols,
            keep,
            shaping: Shaping::default(),
            scale,
            logits,
            targets,
            row_vals: None,
            losses,
            dlogits,
        }
    }

    fn check(&self) {
        assert_eq!(
            self.row_vals.is_some(),
            self.shaping.per_row != PerRow::Nothing,
            "cross_entropy: row_vals must be given exactly when the shaping reads them"
        );
    }
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
        self.check();
        let (rows, cols, keep, sh) = (self.rows, self.cols, &self.keep, &self.shaping);
        let tau_flows = sh.softminus.is_some() && !sh.detach_threshold;
        // One invocation per row loops over the row, or over it for every candidate to rank.
        let ranks = keep.hard.is_some_and(|k| k < cols.saturating_sub(1));
        let rows_kernel = t.cpu_loop(if ranks {
            cols.saturating_mul(cols)
        } else {
            (3 + tau_flows as u32) * cols
        });
        let p = Params {
            rows,
            cols,
            use_margin: (keep.margin.is_some() || sh.per_row == PerRow::Margin) as u32,
            margin: keep.margin.unwrap_or(0.0),
            scale: self.scale,
            hard_k: keep.hard.unwrap_or(0),
            twin_base: keep.counterpart.unwrap_or(0),
            logit_scale: sh.logit_scale,
            row_mode: match sh.per_row {
                PerRow::Nothing => 0,
                PerRow::Margin => 1,
                PerRow::TargetOffset => 2,
            },
            soft_c: sh.softminus.unwrap_or(0.0),
            detach_tau: sh.detach_threshold as u32,
            detach_under: sh.detach_under as u32,
        };
        let l = if rows_kernel {
            Launch::new(&SHADER, "cross_entropy_rows", &p, grid(rows.div_ceil(64)))
        } else {
            Launch::new(&SHADER, "cross_entropy", &p, grid(rows))
        };
        // Unused, row_vals is bound to the (read-only) logits: the layout wants a buffer.
        vec![l
            .bind("logits", self.logits)
            .bind("targets", self.targets)
            .bind("row_vals", self.row_vals.unwrap_or(self.logits))
            .bind("losses", self.losses)
            .bind("dlogits", self.dlogits)]
    }
    fn cpu(&self, m: &mut HostMem) {
        self.check();
        m.with2([self.losses, self.dlogits], |m, l, d| {
            let rv = self.row_vals.map_or(&[][..], |b| m.f(b));
            cpu(
                self.rows,
                self.cols,
                (&self.keep, &self.shaping),
                self.scale,
                m.f(self.logits),
                m.u(self.targets),
                rv,
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

/// The fused loss and its mean over one kept set and shaping; `row_vals` starts as `rows`.
fn case(rows: u32, cols: u32, keep: Keep, sh: Shaping, logits: Init, row_init: Init) -> Case {
    let n = (rows * cols) as usize;
    let ties = if matches!(logits, Init::Steps(_)) {
        " ties"
    } else {
        ""
    };
    let shaping = sh.to_string();
    let sep = if shaping.is_empty() { "" } else { " " };
    let uses_rows = sh.per_row != PerRow::Nothing;
    let mut c = Case::new(
        "cross_entropy fwd+bwd",
        format!("[{rows}x{cols}] {keep}{sep}{shaping}{ties}"),
    )
    .input("logits", n, logits)
    .words("targets", rows as usize, Init::Tokens(cols));
    if uses_rows {
        c = c.input("row_vals", rows as usize, row_init);
    }
    c.output("losses", rows as usize)
        .inout("dlogits", n, Init::Fill(7.0))
        .output("mean", 1)
        .ops(move |b| {
            let losses = b["losses"];
            vec![
                CrossEntropy {
                    shaping: sh,
                    row_vals: uses_rows.then(|| b["row_vals"]),
                    ..CrossEntropy::new(
                        rows,
                        cols,
                        keep,
                        1.0 / rows as f32,
                        b["logits"],
                        b["targets"],
                        losses,
                        b["dlogits"],
                    )
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

/// The shapings the loss table uses, each with the kept set it comes with.
fn shapings() -> Vec<(Keep, Shaping)> {
    let m = |x| Keep::from_margin(Some(x));
    let sh = Shaping::default();
    vec![
        (
            Keep::default(),
            Shaping {
                logit_scale: 2.5,
                ..sh
            },
        ),
        (
            m(1.0),
            Shaping {
                logit_scale: 0.46,
                ..sh
            },
        ),
        (
            m(2.0),
            Shaping {
                softminus: Some(1.0),
                ..sh
            },
        ),
        (
            m(2.0),
            Shaping {
                softminus: Some(5.0),
                detach_threshold: true,
                ..sh
            },
        ),
        (
            m(1.0),
            Shaping {
                softminus: Some(0.5),
                logit_scale: 0.7,
                ..sh
            },
        ),
        (
            m(2.0),
            Shaping {
                detach_under: true,
                ..sh
            },
        ),
        (
            Keep::default(),
            Shaping {
                per_row: PerRow::Margin,
                ..sh
            },
        ),
        (
            Keep::default(),
            Shaping {
                per_row: PerRow::Margin,
                softminus: Some(2.0),
                ..sh
            },
        ),
        (
            Keep::default(),
            Shaping {
                per_row: PerRow::TargetOffset,
                ..sh
            },
        ),
    ]
}

/// Every kind of kept set (counterpart needs an even, two-alphabet vocabulary), on odd
/// shapes and the paper's logits; then whole-number logits, which tie everywhere, so hard:K
/// must cut ties by index on both sides; then every shaping.
pub fn cases() -> Vec<Case> {
    let keep = |margin: Option<f32>, hard: Option<u32>, twin: bool, cols: u32| Keep {
        margin,
        hard,
        counterpart: twin.then_some(cols / 2),
    };
    let plain = |rows, cols, k, logits| case(rows, cols, k, Shaping::default(), logits, Init::Zero);
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
            v.push(plain(rows, cols, k, Init::Normal(2.0)));
        }
    }
    for &(rows, cols) in &[(7u32, 258u32), (3, 1030), (768, 130)] {
        for (margin, hard, twin) in [
            (None, Some(5), false),
            (None, Some(3), true),
            (Some(1.0), Some(20), false),
        ] {
            v.push(plain(
                rows,
                cols,
                keep(margin, hard, twin, cols),
                Init::Steps(4),
            ));
        }
    }
    for &(rows, cols) in &[(3u32, 17u32), (7, 257), (2, 1030), (768, 130)] {
        for (k, sh) in shapings() {
            v.push(case(
                rows,
                cols,
                k,
                sh,
                Init::Normal(2.0),
                Init::Uniform(0.0, 4.0),
            ));
        }
    }
    v
}

/// Loss of one row of plain logits and, if `grad` is given, its gradient times `scale`;
/// f64 inside.
pub fn row(logits: &[f32], t: usize, keep: &Keep, scale: f32, grad: Option<&mut [f32]>) -> f64 {
    row_shaped(logits, t, keep, &Shaping::default(), 0.0, scale, grad)
}

/// [`row`] under a shaping, with the row's `row_vals` entry (ignored when it reads none).
pub fn row_shaped(
    logits: &[f32],
    t: usize,
    keep: &Keep,
    sh: &Shaping,
    row_val: f32,
    scale: f32,
    grad: Option<&mut [f32]>,
) -> f64 {
    let (v, thr) = shaped(logits, t, keep, sh, row_val);
    let k = kept_set(&v, t, keep, thr, sh.detach_under);
    let soft = sh.softminus.map(|c| {
        let tau = thr.expect("a soft threshold needs a margin") as f64;
        (c as f64, tau)
    });
    // (u_j, du_j/dv_j) of kept entries.
    let score = |j: usize| match soft {
        None => (v[j] as f64, 1.0),
        Some((c, tau)) => {
            let (lq, slope) = soft_log((v[j] as f64 - tau) / c);
            (tau + c * lq, slope)
        }
    };
    let u: Vec<(f64, f64)> = (0..v.len())
        .map(|j| {
            if k[j] {
                score(j)
            } else {
                (f64::NEG_INFINITY, 0.0)
            }
        })
        .collect();
    let ut = u[t].0;
    let mx = u.iter().fold(ut, |a, b| a.max(b.0));
    let z: f64 = u.iter().map(|&(x, _)| (x - mx).exp()).sum();
    if let Some(out) = grad {
        let g = |j: usize| (u[j].0 - mx).exp() / z - if j == t { 1.0 } else { 0.0 };
        // A soft threshold that moves with the target leaves the scores depending on
        // l - l_t only: the target's gradient is minus the others' sum (see the shader).
        let tau_flows = soft.is_some() && !sh.detach_threshold;
        let others: f64 = (0..v.len())
            .filter(|&j| k[j] && j != t)
            .map(|j| g(j) * u[j].1)
            .sum();
        let under = |j: usize| sh.detach_under && j != t && thr.is_some_and(|th| v[j] < th);
        for (j, o) in out.iter_mut().enumerate() {
            *o = if k[j] && !under(j) {
                let d = if j == t && tau_flows {
                    -others
                } else {
                    g(j) * u[j].1
                };
                (d * sh.logit_scale as f64 * scale as f64) as f32
            } else {
                0.0
            };
        }
    }
    z.ln() + mx - ut
}

/// CPU twin; accumulates in f64. `row_vals` is read only when the shaping asks.
#[allow(clippy::too_many_arguments)]
pub fn cpu(
    rows: u32,
    cols: u32,
    (keep, sh): (&Keep, &Shaping),
    scale: f32,
    logits: &[f32],
    targets: &[u32],
    row_vals: &[f32],
    losses: &mut [f32],
    dlogits: &mut [f32],
) {
    let cols = cols as usize;
    for r in 0..rows as usize {
        let rg = r * cols..(r + 1) * cols;
        let rv = if sh.per_row == PerRow::Nothing {
            0.0
        } else {
            row_vals[r]
        };
        losses[r] = row_shaped(
            &logits[rg.clone()],
            targets[r] as usize,
            keep,
            sh,
            rv,
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

    /// Every shaping with a kept set it combines with, and the row values it reads.
    fn shaped_modes() -> Vec<(Keep, Shaping)> {
        let mut v: Vec<(Keep, Shaping)> = modes()
            .into_iter()
            .map(|k| (k, Shaping::default()))
            .collect();
        v.extend(shapings());
        v
    }

    /// Central differences of the mean loss against dlogits, for every kind of kept set and
    /// shaping. The kept set is piecewise constant in the logits; probes that move it are
    /// skipped (the loss jumps there), and everything else, targets and masked entries
    /// included, must match. Two rules are not derivatives of the loss and are checked as
    /// what they are: entries under the threshold of `detach-under` get exactly 0, and a
    /// detached soft threshold is held still by moving a per-row margin with the target.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(8);
        let (rows, cols) = (4u32, 24u32);
        let c = cols as usize;
        let n = (rows * cols) as usize;
        let logits: Vec<f32> = (0..n).map(|_| 2.0 * rng.normal() as f32).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(c) as u32).collect();
        let row_vals: Vec<f32> = (0..rows).map(|_| 3.0 * rng.uniform() as f32).collect();
        for (keep, sh) in shaped_modes() {
            let name = format!("{keep} {sh}");
            // The loss in f64 straight from `row_shaped`: f32 losses would drown the
            // difference. `shift` moves row r's target and, for a detached threshold, its
            // margin with it.
            let loss = |l: &[f32], shift: Option<(usize, f32)>| {
                (0..rows as usize)
                    .map(|r| {
                        let (mut s, mut rv) = (sh, row_vals[r]);
                        if let Some((_, h)) = shift.filter(|x| x.0 == r && s.detach_threshold) {
                            let m = keep.margin.unwrap_or(rv);
                            s.per_row = PerRow::Margin;
                            s.detach_threshold = false;
                            rv = m + h * s.logit_scale;
                        }
                        let k = if s.per_row == PerRow::Margin {
                            Keep {
                                margin: None,
                                ..keep
                            }
                        } else {
                            keep
                        };
                        let rg = r * c..(r + 1) * c;
                        row_shaped(&l[rg], targets[r] as usize, &k, &s, rv, 1.0, None)
                    })
                    .sum::<f64>()
                    / rows as f64
            };
            let mut losses = vec![0.0; rows as usize];
            let mut d = vec![0.0; n];
            cpu(
                rows,
                cols,
                (&keep, &sh),
                1.0 / rows as f32,
                &logits,
                &targets,
                &row_vals,
                &mut losses,
                &mut d,
            );
            let h = 1e-3f32;
            let mut checked = 0;
            for i in 0..n {
                let r = i / c;
                let t = targets[r] as usize;
                let rv = row_vals[r];
                let rg = r * c..(r + 1) * c;
                let (v, thr) = shaped(&logits[rg.clone()], t, &keep, &sh, rv);
                if sh.detach_under && i % c != t && thr.is_some_and(|th| v[i % c] < th) {
                    assert_eq!(d[i], 0.0, "{name}: entry under the threshold has gradient");
                    continue;
                }
                let (mut lp, mut lm) = (logits.clone(), logits.clone());
                lp[i] += h;
                lm[i] -= h;
                let set = |l: &[f32]| {
                    let (v, thr) = shaped(&l[rg.clone()], t, &keep, &sh, rv);
                    (
                        kept_set(&v, t, &keep, thr, false),
                        kept_set(&v, t, &keep, thr, true),
                    )
                };
                if set(&lp) != set(&logits) || set(&lm) != set(&logits) {
                    continue;
                }
                checked += 1;
                let at_target = (i % c == t).then_some(r);
                let step = (lp[i] - lm[i]) as f64;
                let fd = (loss(&lp, at_target.map(|r| (r, lp[i] - logits[i])))
                    - loss(&lm, at_target.map(|r| (r, lm[i] - logits[i]))))
                    / step;
                assert!(
                    (fd - d[i] as f64).abs() < 2e-5 + 1e-3 * fd.abs(),
                    "{name} d/dl[{i}]: fd {fd} vs {}",
                    d[i]
                );
            }
            assert!(checked > n * 6 / 10, "{name}: only {checked} of {n} probed");
        }
    }

    /// A soft threshold far above every logit is the threshold loss again (u - v -> 0), and
    /// a scale of 1 or no offset changes no bit.
    #[test]
    fn shapings_reduce_to_the_plain_loss_at_their_limits() {
        let mut rng = Rng::new(3);
        let l: Vec<f32> = (0..40).map(|_| 2.0 * rng.normal() as f32).collect();
        let keep = Keep::from_margin(Some(30.0));
        let (mut g0, mut g1) = (vec![0.0; 40], vec![0.0; 40]);
        let hard = row(&l, 5, &keep, 1.0, Some(&mut g0));
        let soft = Shaping {
            softminus: Some(0.01),
            ..Shaping::default()
        };
        let s = row_shaped(&l, 5, &keep, &soft, 0.0, 1.0, Some(&mut g1));
        assert!((hard - s).abs() < 1e-9, "{hard} vs {s}");
        for (a, b) in g0.iter().zip(&g1) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let same = Shaping {
            per_row: PerRow::TargetOffset,
            ..Shaping::default()
        };
        let mut g2 = vec![0.0; 40];
        let x = row_shaped(&l, 5, &keep, &same, 0.0, 1.0, Some(&mut g2));
        assert_eq!((x.to_bits(), &g2), (hard.to_bits(), &g0));
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
