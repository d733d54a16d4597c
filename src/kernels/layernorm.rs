//! LayerNorm over the last dimension with a weight and no bias (eps = 1e-5, biased variance,
//! as PyTorch). The forward saves `mean` and `rstd = 1 / sqrt(var + eps)` per row so the
//! backward need not recompute them. The backward is split in two dispatches: `dx` is a
//! row reduction (one workgroup per row), `dw` a column reduction over all rows. The forward
//! can take the residual add in front of it (`x + branch`, stored), saving a pass.
//! CPU-like adapters get barrier-free versions: one invocation per row (or column).

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, residual, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("layernorm", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
        /// Backward: `dx +=` instead of `dx =`.
        pub accumulate: u32,
    }
}

const EPS: f64 = 1e-5;

/// Columns per `layernorm_bwd_dw` workgroup (`DW_COLS` in the shader).
const DW_COLS: u32 = 8;

/// Rows (or columns) per workgroup of the barrier-free entry points.
const ROWS_WG: u32 = 64;

/// `y = LayerNorm(x) * w` over rows of `[rows, cols]`, saving `mean` and `rstd`. With
/// `residual = Some((branch, sum))` the input is `x + branch`, which is also stored to `sum`.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormFwd {
    pub rows: u32,
    pub cols: u32,
    pub x: Buf,
    pub residual: Option<(Buf, Buf)>,
    pub w: Buf,
    pub y: Buf,
    pub mean: Buf,
    pub rstd: Buf,
}

/// `dx` (`+=` when `accumulate`: the residual stream's gradient is already there) and `dw`
/// (overwritten). `x` is the forward's input (the stored sum when the add was fused).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBwd {
    pub rows: u32,
    pub cols: u32,
    pub accumulate: bool,
    pub x: Buf,
    pub w: Buf,
    pub mean: Buf,
    pub rstd: Buf,
    pub dy: Buf,
    pub dx: Buf,
    pub dw: Buf,
}

impl Kernel for LayerNormFwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (rows, cols) = (self.rows, self.cols);
        let rows_kernel = t.cpu_loop(cols);
        let entry = match (self.residual.is_some(), rows_kernel) {
            (false, false) => "layernorm_fwd",
            (true, false) => "add_layernorm_fwd",
            (false, true) => "layernorm_fwd_rows",
            (true, true) => "add_layernorm_fwd_rows",
        };
        let groups = if rows_kernel {
            grid(rows.div_ceil(ROWS_WG))
        } else {
            grid(rows)
        };
        let p = Params {
            rows,
            cols,
            accumulate: 0,
        };
        let mut l = Launch::new(&SHADER, entry, &p, groups)
            .bind("x", self.x)
            .bind("w", self.w)
            .bind("y", self.y)
            .bind("mean_out", self.mean)
            .bind("rstd_out", self.rstd);
        if let Some((branch, sum)) = self.residual {
            l = l.bind("branch", branch).bind("sum_out", sum);
        }
        vec![l]
    }
    fn cpu(&self, m: &mut HostMem) {
        let input = match self.residual {
            Some((branch, sum)) => {
                let n = self.rows * self.cols;
                m.with(sum, |m, o| {
                    residual::cpu_add(n, m.f(self.x), m.f(branch), o)
                });
                sum
            }
            None => self.x,
        };
        m.with3([self.y, self.mean, self.rstd], |m, y, mean, rstd| {
            cpu_fwd(self.rows, self.cols, m.f(input), m.f(self.w), y, mean, rstd)
        });
    }
}

impl Kernel for LayerNormBwd {
    /// The `dx` launch, then the `dw` launch.
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (rows, cols) = (self.rows, self.cols);
        let p = Params {
            rows,
            cols,
            accumulate: self.accumulate as u32,
        };
        let (dx_entry, dx_groups) = if t.cpu_loop(cols) {
            ("layernorm_bwd_dx_rows", grid(rows.div_ceil(ROWS_WG)))
        } else {
            ("layernorm_bwd_dx", grid(rows))
        };
        let (dw_entry, dw_groups) = if t.cpu_loop(rows) {
            ("layernorm_bwd_dw_cols", grid(cols.div_ceil(ROWS_WG)))
        } else {
            ("layernorm_bwd_dw", grid(cols.div_ceil(DW_COLS)))
        };
        vec![
            Launch::new(&SHADER, dx_entry, &p, dx_groups)
                .bind("x", self.x)
                .bind("w", self.w)
                .bind("mean", self.mean)
                .bind("rstd", self.rstd)
                .bind("dy", self.dy)
                .bind("dx", self.dx),
            Launch::new(&SHADER, dw_entry, &p, dw_groups)
                .bind("x", self.x)
                .bind("mean", self.mean)
                .bind("rstd", self.rstd)
                .bind("dy", self.dy)
                .bind("dw", self.dw),
        ]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.dx, self.dw], |m, dx, dw| {
            cpu_bwd(
                self.rows,
                self.cols,
                self.accumulate,
                m.f(self.x),
                m.f(self.w),
                m.f(self.mean),
                m.f(self.rstd),
                m.f(self.dy),
                dx,
                dw,
            )
        });
    }
}

/// Forward then backward, plain, accumulating into `dx`, and with the residual add fused in
/// front; rows longer than a CPU-like loop may run, and more rows than one grid dimension.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &(rows, cols) in &[
        (1u32, 1u32),
        (3, 17),
        (5, 65),
        (768, 128),
        (4, 700),
        (66_000, 8),
    ] {
        let n = (rows * cols) as usize;
        let (r, c) = (rows as usize, cols as usize);
        for (accumulate, fused) in [(false, false), (true, false), (true, true)] {
            let dx0 = if accumulate {
                Init::Normal(1.0)
            } else {
                Init::Fill(f32::NAN)
            };
            let mut case = Case::new(
                "layernorm fwd+bwd",
                format!(
                    "[{rows}x{cols}]{}{}",
                    if fused { " x+b" } else { "" },
                    if accumulate { " dx+=" } else { "" }
                ),
            )
            .input("x", n, Init::Normal(2.0))
            .input("w", c, Init::Uniform(0.5, 1.5))
            .output("y", n)
            .output("mean", r)
            .output("rstd", r)
            .input("dy", n, Init::Normal(1.0))
            .inout("dx", n, dx0)
            .inout("dw", c, Init::Fill(f32::NAN))
            .input("branch", n, Init::Normal(1.0));
            case = if fused {
                case.output("sum", n)
            } else {
                case.input("sum", n, Init::Zero)
            };
            v.push(
                case.ops(move |b| {
                    let input = if fused { b["sum"] } else { b["x"] };
                    let (w, mean, rstd) = (b["w"], b["mean"], b["rstd"]);
                    vec![
                        LayerNormFwd {
                            rows,
                            cols,
                            x: b["x"],
                            residual: fused.then_some((b["branch"], b["sum"])),
                            w,
                            y: b["y"],
                            mean,
                            rstd,
                        }
                        .op(),
                        LayerNormBwd {
                            rows,
                            cols,
                            accumulate,
                            x: input,
                            w,
                            mean,
                            rstd,
                            dy: b["dy"],
                            dx: b["dx"],
                            dw: b["dw"],
                        }
                        .op(),
                    ]
                })
                .tol(1e-4),
            );
        }
    }
    v
}

/// Mean and rstd of one row, the variance in a second pass for accuracy.
fn row_stats(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, 1.0 / (var + EPS).sqrt())
}

/// CPU twin, in f64 per row (outputs rounded to f32).
pub fn cpu_fwd(
    rows: u32,
    cols: u32,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let cols = cols as usize;
    let mut row = vec![0.0f64; cols];
    for r in 0..rows as usize {
        let xr = &x[r * cols..(r + 1) * cols];
        for (a, &b) in row.iter_mut().zip(xr) {
            *a = b as f64;
        }
        let (m, s) = row_stats(&row);
        for c in 0..cols {
            y[r * cols + c] = ((row[c] - m) * s * w[c] as f64) as f32;
        }
        mean[r] = m as f32;
        rstd[r] = s as f32;
    }
}

/// CPU twin, in f64 (row means for `dx`, the column sums for `dw`), outputs rounded to f32.
#[allow(clippy::too_many_arguments)]
pub fn cpu_bwd(
    rows: u32,
    cols: u32,
    accumulate: bool,
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let cols = cols as usize;
    let mut dw64 = vec![0.0f64; cols];
    let mut xhat = vec![0.0f64; cols];
    let mut g = vec![0.0f64; cols];
    for r in 0..rows as usize {
        let (m, s) = (mean[r] as f64, rstd[r] as f64);
        let i0 = r * cols;
        for c in 0..cols {
            xhat[c] = (x[i0 + c] as f64 - m) * s;
            g[c] = dy[i0 + c] as f64 * w[c] as f64;
            dw64[c] += dy[i0 + c] as f64 * xhat[c];
        }
        let mg = g.iter().sum::<f64>() / cols as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            let d = s * (g[c] - mg - xhat[c] * mgx);
            let out = &mut dx[i0 + c];
            *out = if accumulate {
                (*out as f64 + d) as f32
            } else {
                d as f32
            };
        }
    }
    for (o, v) in dw.iter_mut().zip(dw64) {
        *o = v as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Rows with their own offsets and scales, so the two-pass variance matters.
    fn offset_rows(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let (off, scale) = (rng.normal(), 0.5 + rng.normal().abs());
            out.extend((0..cols).map(|_| (off + scale * rng.normal()) as f32));
        }
        out
    }

    fn around(rng: &mut Rng, n: usize, mean: f32) -> Vec<f32> {
        (0..n).map(|_| mean + rng.normal() as f32 * 0.5).collect()
    }

    /// y in f64 for finite differences.
    fn fwd64(cols: usize, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(cols) {
            let (m, s) = row_stats(row);
            y.extend(row.iter().zip(w).map(|(v, wc)| (v - m) * s * wc));
        }
        y
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        for (k, &(rows, cols)) in [(1usize, 1usize), (2, 5), (3, 17)].iter().enumerate() {
            let mut rng = Rng::new(11 + k as u64);
            let x = offset_rows(&mut rng, rows, cols);
            let w = around(&mut rng, cols, 1.0);
            let wy = around(&mut rng, rows * cols, 0.0); // L = sum wy * y, so dL/dy = wy
            let (mut y, mut mean, mut rstd) =
                (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
            cpu_fwd(
                rows as u32,
                cols as u32,
                &x,
                &w,
                &mut y,
                &mut mean,
                &mut rstd,
            );
            let mut dx = vec![0.0f32; rows * cols];
            let mut dw = vec![0.0f32; cols];
            let (r32, c32) = (rows as u32, cols as u32);
            cpu_bwd(r32, c32, false, &x, &w, &mean, &rstd, &wy, &mut dx, &mut dw);

            // accumulate adds the same dx onto what is there, and dw is overwritten either way
            let base = around(&mut rng, rows * cols, 0.0);
            let mut dx_acc = base.clone();
            let mut dw_acc = vec![f32::NAN; cols];
            cpu_bwd(
                r32,
                c32,
                true,
                &x,
                &w,
                &mean,
                &rstd,
                &wy,
                &mut dx_acc,
                &mut dw_acc,
            );
            for i in 0..rows * cols {
                assert!((dx_acc[i] - (base[i] + dx[i])).abs() <= 1e-6 * (1.0 + dx_acc[i].abs()));
            }
            assert_eq!(dw, dw_acc);

            let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let mut w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let loss = |x: &[f64], w: &[f64]| -> f64 {
                fwd64(cols, x, w)
                    .iter()
                    .zip(&wy)
                    .map(|(a, &b)| a * b as f64)
                    .sum()
            };
            let h = 1e-5;
            let mut worst = 0.0f64;
            let mut check = |what: &str, i: usize, analytic: f32, fd: f64| {
                let err = (analytic as f64 - fd).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-5 + 1e-4 * fd.abs(),
                    "({rows},{cols}) {what}[{i}]: analytic {analytic} vs fd {fd}"
                );
            };
            for i in 0..rows * cols {
                let v = x64[i];
                x64[i] = v + h;
                let lp = loss(&x64, &w64);
                x64[i] = v - h;
                let lm = loss(&x64, &w64);
                x64[i] = v;
                check("dx", i, dx[i], (lp - lm) / (2.0 * h));
            }
            for c in 0..cols {
                let v = w64[c];
                w64[c] = v + h;
                let lp = loss(&x64, &w64);
                w64[c] = v - h;
                let lm = loss(&x64, &w64);
                w64[c] = v;
                check("dw", c, dw[c], (lp - lm) / (2.0 * h));
            }
            eprintln!("layernorm fd ({rows},{cols}): max abs err {worst:.2e}");
        }
    }
}
