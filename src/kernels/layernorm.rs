//! LayerNorm over the last dimension with a weight and no bias (eps = 1e-5, biased variance,
//! as PyTorch). The forward saves `mean` and `rstd = 1 / sqrt(var + eps)` per row so the
//! backward need not recompute them. The backward is split in two dispatches: `dx` is a
//! row reduction (one workgroup per row), `dw` a column reduction over all rows. The forward
//! can take the residual add in front of it (`x + branch`, stored), saving a pass.
//! CPU-like adapters get barrier-free versions: one invocation per row (or column).

use crate::kernels::{grid, Launch, Target};
use crate::runtime::Buf;

const EPS: f64 = 1e-5;

/// Columns per `layernorm_bwd_dw` workgroup (`DW_COLS` in the shader).
const DW_COLS: u32 = 8;

/// Rows (or columns) per workgroup of the barrier-free entry points.
const ROWS_WG: u32 = 64;

/// `y = LayerNorm(x) * w`, saving `mean` and `rstd`. With `residual = Some((branch, sum))`
/// the input is `x + branch`, which is also stored to `sum`.
#[allow(clippy::too_many_arguments)]
pub fn launch_fwd(
    t: &Target,
    rows: u32,
    cols: u32,
    x: Buf,
    residual: Option<(Buf, Buf)>,
    w: Buf,
    y: Buf,
    mean: Buf,
    rstd: Buf,
) -> Launch {
    let mut bufs = vec![(1, x), (2, w), (3, y), (4, mean), (5, rstd)];
    if let Some((branch, sum)) = residual {
        bufs.extend([(11, branch), (12, sum)]);
    }
    let rows_kernel = t.cpu_loop(cols);
    let entry = match (residual.is_some(), rows_kernel) {
        (false, false) => "layernorm_fwd",
        (true, false) => "add_layernorm_fwd",
        (false, true) => "layernorm_fwd_rows",
        (true, true) => "add_layernorm_fwd_rows",
    };
    Launch {
        shader: "layernorm",
        entry,
        params: vec![rows, cols, 0],
        bufs,
        groups: if rows_kernel {
            grid(rows.div_ceil(ROWS_WG))
        } else {
            grid(rows)
        },
    }
}

/// The `dx` launch, then the `dw` launch (which overwrites `dw`).
#[allow(clippy::too_many_arguments)]
pub fn launch_bwd(
    t: &Target,
    rows: u32,
    cols: u32,
    accumulate: bool,
    x: Buf,
    w: Buf,
    mean: Buf,
    rstd: Buf,
    dy: Buf,
    dx: Buf,
    dw: Buf,
) -> Vec<Launch> {
    let params = vec![rows, cols, accumulate as u32];
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
        Launch {
            shader: "layernorm",
            entry: dx_entry,
            params: params.clone(),
            bufs: vec![(1, x), (2, w), (6, mean), (7, rstd), (8, dy), (9, dx)],
            groups: dx_groups,
        },
        Launch {
            shader: "layernorm",
            entry: dw_entry,
            params,
            bufs: vec![(1, x), (6, mean), (7, rstd), (8, dy), (10, dw)],
            groups: dw_groups,
        },
    ]
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
    use crate::kernels::Op;
    use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend};

    /// splitmix64, mapped to roughly N(0, 1) by summing uniforms.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn normal(&mut self) -> f32 {
            let u: f64 = (0..4)
                .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
                .sum();
            ((u - 2.0) * 1.7) as f32
        }
        /// Rows with their own offsets and scales, so the two-pass variance matters.
        fn rows(&mut self, rows: usize, cols: usize) -> Vec<f32> {
            let mut out = Vec::with_capacity(rows * cols);
            for _ in 0..rows {
                let (off, scale) = (self.normal(), 0.5 + self.normal().abs());
                out.extend((0..cols).map(|_| off + scale * self.normal()));
            }
            out
        }
        fn vec(&mut self, n: usize, mean: f32) -> Vec<f32> {
            (0..n).map(|_| mean + self.normal() * 0.5).collect()
        }
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
            let mut rng = Rng(11 + k as u64);
            let x = rng.rows(rows, cols);
            let w = rng.vec(cols, 1.0);
            let wy = rng.vec(rows * cols, 0.0); // L = sum wy * y, so dL/dy = wy
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
            let base = rng.vec(rows * cols, 0.0);
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

    fn close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
        assert_eq!(gpu.len(), cpu.len());
        let mut worst = 0.0f32;
        for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
            let err = (g - c).abs();
            assert!(
                err <= atol + rtol * c.abs(),
                "{what}[{i}]: gpu {g} vs cpu {c}"
            );
            worst = worst.max(err);
        }
        eprintln!("{what}: max abs err {worst:.2e}");
    }

    #[test]
    fn gpu_matches_cpu() {
        let mut gpu = GpuBackend::open(None).unwrap();
        eprintln!("adapter: {}", gpu.name());
        let mut cpu = CpuBackend::new();
        let shapes = [
            (1usize, 1usize),
            (3, 17),
            (5, 65),
            (768, 128),
            (4, 700),
            (66_000, 8), // more rows than one grid dimension holds
        ];
        for (k, &(rows, cols)) in shapes.iter().enumerate() {
            let n = rows * cols;
            let mut rng = Rng(1000 + k as u64);
            let x = rng.rows(rows, cols);
            let w = rng.vec(cols, 1.0);
            let dy = rng.vec(n, 0.0);
            let dx0 = rng.vec(n, 0.0);
            let mut outs = Vec::new();
            let backends: [&mut dyn Backend; 2] = [&mut gpu, &mut cpu];
            for be in backends {
                let mut a = |len: usize| be.alloc("t", len, Dtype::F32).unwrap();
                let (bx, bw, by, bm, br) = (a(n), a(cols), a(n), a(rows), a(rows));
                let (bdy, bdx, bdxa, bdw, bdwa) = (a(n), a(n), a(n), a(cols), a(cols));
                be.write_f32(bx, &x);
                be.write_f32(bw, &w);
                be.write_f32(bdy, &dy);
                be.write_f32(bdx, &vec![f32::NAN; n]); // overwritten
                be.write_f32(bdxa, &dx0); // accumulated into
                be.write_f32(bdw, &vec![f32::NAN; cols]);
                be.write_f32(bdwa, &vec![f32::NAN; cols]);
                let (r, c) = (rows as u32, cols as u32);
                let bwd = |accumulate, dx, dw| Op::LayerNormBwd {
                    rows: r,
                    cols: c,
                    accumulate,
                    x: bx,
                    w: bw,
                    mean: bm,
                    rstd: br,
                    dy: bdy,
                    dx,
                    dw,
                };
                let ops = [
                    Op::LayerNormFwd {
                        rows: r,
                        cols: c,
                        x: bx,
                        residual: None,
                        w: bw,
                        y: by,
                        mean: bm,
                        rstd: br,
                    },
                    bwd(false, bdx, bdw),
                    bwd(true, bdxa, bdwa),
                ];
                let s = be.compile(&ops).unwrap();
                be.run(&[s]).unwrap();
                let read = |be: &mut dyn Backend, b| be.read_f32(b).unwrap();
                let got: Vec<Vec<f32>> = [by, bm, br, bdx, bdxa, bdw, bdwa]
                    .iter()
                    .map(|&b| read(&mut *be, b))
                    .collect();
                // Deterministic: running again gives the same bits (skipped where slow).
                if n <= 200_000 {
                    be.write_f32(bdxa, &dx0);
                    be.run(&[s]).unwrap();
                    for (b, first) in [by, bm, br, bdx, bdxa, bdw, bdwa].into_iter().zip(&got) {
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&read(&mut *be, b)), bits(first));
                    }
                }
                outs.push(got);
            }
            let (g, c) = (&outs[0], &outs[1]);
            let names = [
                "y",
                "mean",
                "rstd",
                "dx",
                "dx (accumulate)",
                "dw",
                "dw (accumulate)",
            ];
            for (i, name) in names.iter().enumerate() {
                let what = format!("layernorm ({rows},{cols}) {name}");
                close(&what, &g[i], &c[i], 1e-5, 5e-5);
            }
        }
    }
}
