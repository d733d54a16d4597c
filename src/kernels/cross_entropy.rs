//! Fused threshold + softmax + cross-entropy forward and backward; see
//! `shaders/cross_entropy.wgsl`.

use crate::kernels::threshold::kept;
use crate::kernels::{grid, margin_words, w, Launch};
use crate::runtime::Buf;

#[allow(clippy::too_many_arguments)]
pub fn launch(
    rows: u32,
    cols: u32,
    margin: Option<f32>,
    scale: f32,
    logits: Buf,
    targets: Buf,
    losses: Buf,
    dlogits: Buf,
) -> Launch {
    let [on, m] = margin_words(margin);
    Launch {
        shader: "cross_entropy",
        entry: "cross_entropy",
        params: vec![rows, cols, on, m, w(scale)],
        bufs: vec![(1, logits), (2, targets), (3, losses), (4, dlogits)],
        groups: grid(rows),
    }
}

pub fn launch_mean(n: u32, x: Buf, out: Buf) -> Launch {
    Launch {
        shader: "cross_entropy",
        entry: "mean_rows",
        params: vec![n, 0, 0, 0, 0],
        bufs: vec![(5, x), (6, out)],
        groups: [1, 1, 1],
    }
}

/// Loss of one row and, if `grad` is given, its gradient times `scale`; f64 inside.
pub fn row(
    logits: &[f32],
    t: usize,
    margin: Option<f32>,
    scale: f32,
    grad: Option<&mut [f32]>,
) -> f64 {
    let lt = logits[t];
    let mx = logits
        .iter()
        .filter(|&&l| kept(l, lt, margin))
        .fold(lt, |a, &b| a.max(b)) as f64;
    let z: f64 = logits
        .iter()
        .filter(|&&l| kept(l, lt, margin))
        .map(|&l| (l as f64 - mx).exp())
        .sum();
    if let Some(g) = grad {
        for (j, (o, &l)) in g.iter_mut().zip(logits).enumerate() {
            *o = if kept(l, lt, margin) {
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
    margin: Option<f32>,
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
            margin,
            scale,
            Some(&mut dlogits[rg]),
        ) as f32;
    }
}

/// CPU twin of `mean_rows`; f64 sum.
pub fn cpu_mean(n: u32, x: &[f32], out: &mut [f32]) {
    let s: f64 = x[..n as usize].iter().map(|&v| v as f64).sum();
    out[0] = (s / n.max(1) as f64) as f32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Central differences of the mean (thresholded) loss against dlogits. The kept set is
    /// locally constant away from the boundary, so the loss is smooth where we probe it.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(8);
        let (rows, cols) = (4u32, 23u32);
        let n = (rows * cols) as usize;
        let logits: Vec<f32> = (0..n).map(|_| 2.0 * rng.normal() as f32).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols as usize) as u32).collect();
        for margin in [None, Some(0.5), Some(2.0)] {
            // The loss in f64 straight from `row`: f32 losses would drown the difference.
            let loss = |l: &[f32]| {
                (0..rows as usize)
                    .map(|r| {
                        let c = cols as usize;
                        row(
                            &l[r * c..(r + 1) * c],
                            targets[r] as usize,
                            margin,
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
                margin,
                1.0 / rows as f32,
                &logits,
                &targets,
                &mut losses,
                &mut d,
            );
            let h = 1e-3f32;
            for i in 0..n {
                let r = i / cols as usize;
                let lt = logits[r * cols as usize + targets[r] as usize];
                // Skip logits within h of the threshold, where the kept set changes.
                if let Some(m) = margin {
                    if (logits[i] - (lt - m)).abs() < 0.05 {
                        continue;
                    }
                }
                let (mut lp, mut lm) = (logits.clone(), logits.clone());
                lp[i] += h;
                lm[i] -= h;
                // Moving the target logit moves the threshold with it: skip targets under a margin.
                if margin.is_some() && i == r * cols as usize + targets[r] as usize {
                    continue;
                }
                let fd = (loss(&lp) - loss(&lm)) / (lp[i] - lm[i]) as f64;
                assert!(
                    (fd - d[i] as f64).abs() < 2e-5 + 1e-3 * fd.abs(),
                    "margin {margin:?} d/dl[{i}]: fd {fd} vs {}",
                    d[i]
                );
            }
        }
    }
}
