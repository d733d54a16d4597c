//! Row softmax and its backward; see `shaders/softmax.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("softmax", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
    }
}

/// Inputs at or below this are masked (the threshold mask writes -inf).
pub const MASKED: f32 = -3.0e38;

/// `y = softmax(x)` per row of `[rows, cols]`.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxFwd {
    pub rows: u32,
    pub cols: u32,
    pub x: Buf,
    pub y: Buf,
}

/// `dx = y ⊙ (dy − Σ y·dy)` per row.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxBwd {
    pub rows: u32,
    pub cols: u32,
    pub y: Buf,
    pub dy: Buf,
    pub dx: Buf,
}

impl Kernel for SoftmaxFwd {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            cols: self.cols,
        };
        vec![Launch::new(&SHADER, "softmax_fwd", &p, grid(self.rows))
            .bind("x", self.x)
            .bind("y", self.y)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.y, |m, y| cpu_fwd(self.rows, self.cols, m.f(self.x), y));
    }
}

impl Kernel for SoftmaxBwd {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            cols: self.cols,
        };
        vec![Launch::new(&SHADER, "softmax_bwd", &p, grid(self.rows))
            .bind("y_in", self.y)
            .bind("dy", self.dy)
            .bind("dx", self.dx)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.dx, |m, dx| {
            cpu_bwd(self.rows, self.cols, m.f(self.y), m.f(self.dy), dx)
        });
    }
}

/// Forward then backward on odd shapes and the paper's logits.
pub fn cases() -> Vec<Case> {
    [(1u32, 1u32), (3, 17), (5, 257), (768, 130)]
        .into_iter()
        .map(|(rows, cols)| {
            let n = (rows * cols) as usize;
            Case::new("softmax fwd+bwd", format!("[{rows}x{cols}]"))
                .input("x", n, Init::Normal(3.0))
                .output("y", n)
                .input("dy", n, Init::Normal(1.0))
                .output("dx", n)
                .ops(move |b| {
                    let (x, y, dy, dx) = (b["x"], b["y"], b["dy"], b["dx"]);
                    vec![
                        SoftmaxFwd { rows, cols, x, y }.op(),
                        SoftmaxBwd {
                            rows,
                            cols,
                            y,
                            dy,
                            dx,
                        }
                        .op(),
                    ]
                })
                .tol(1e-5)
        })
        .collect()
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
