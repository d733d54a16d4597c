//! Row softmax and its backward; see `shaders/softmax.wgsl`.

use crate::kernels::{grid, Launch};
use crate::runtime::Buf;

/// Inputs at or below this are masked (the threshold mask writes -inf).
pub const MASKED: f32 = -3.0e38;

pub fn launch_fwd(rows: u32, cols: u32, x: Buf, y: Buf) -> Launch {
    Launch {
        shader: "softmax",
        entry: "softmax_fwd",
        params: vec![rows, cols],
        bufs: vec![(1, x), (2, y)],
        groups: grid(rows),
    }
}

pub fn launch_bwd(rows: u32, cols: u32, y: Buf, dy: Buf, dx: Buf) -> Launch {
    Launch {
        shader: "softmax",
        entry: "softmax_bwd",
        params: vec![rows, cols],
        bufs: vec![(3, y), (4, dy), (5, dx)],
        groups: grid(rows),
    }
}

/// CPU twin; sums in f64.
pub fn cpu_fwd(rows: u32, cols: u32, x: &[f32], y: &mut [f32]) {
    let cols = cols as usize;
    for r in 0..rows as usize {
        let xr = &x[r * cols..(r + 1) * cols];
        let m = xr.iter().fold(MASKED, |a, &b| a.max(b)) as f64;
        let s: f64 = xr
            .iter()
            .filter(|&&v| v > MASKED)
            .map(|&v| (v as f64 - m).exp())
            .sum();
        for (o, &v) in y[r * cols..(r + 1) * cols].iter_mut().zip(xr) {
            *o = if v > MASKED {
                ((v as f64 - m).exp() / s) as f32
            } else {
                0.0
            };
        }
    }
}

/// CPU twin; sums in f64.
pub fn cpu_bwd(rows: u32, cols: u32, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let cols = cols as usize;
    for r in 0..rows as usize {
        let rg = r * cols..(r + 1) * cols;
        let (yr, dyr) = (&y[rg.clone()], &dy[rg.clone()]);
        let s: f64 = yr.iter().zip(dyr).map(|(&a, &b)| a as f64 * b as f64).sum();
        for ((o, &yv), &g) in dx[rg].iter_mut().zip(yr).zip(dyr) {
            *o = (yv as f64 * (g as f64 - s)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Central differences of L = sum_j w_j y_j against the CPU backward.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(4);
        for &(rows, cols) in &[(1u32, 1u32), (2, 3), (3, 17)] {
            let n = (rows * cols) as usize;
            let x: Vec<f32> = (0..n).map(|_| 2.0 * rng.normal() as f32).collect();
            let wts: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let loss = |x: &[f32]| {
                let mut y = vec![0.0; n];
                cpu_fwd(rows, cols, x, &mut y);
                y.iter()
                    .zip(&wts)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
            };
            let mut y = vec![0.0; n];
            cpu_fwd(rows, cols, &x, &mut y);
            let mut dx = vec![0.0; n];
            cpu_bwd(rows, cols, &y, &wts, &mut dx);
            for i in 0..n {
                let h = 1e-2f32;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let fd = (loss(&xp) - loss(&xm)) / (xp[i] - xm[i]) as f64;
                assert!(
                    (fd - dx[i] as f64).abs() < 1e-4 + 1e-3 * fd.abs(),
                    "d/dx[{i}]: fd {fd} vs {}",
                    dx[i]
                );
            }
        }
    }
}
