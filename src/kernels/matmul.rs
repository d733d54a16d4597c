//! Batched matmul `C (+)= op(A) · op(B)`; see `shaders/matmul.wgsl` for the exact contract.

use crate::kernels::{Launch, MAX_GROUPS};
use crate::runtime::Buf;

/// `C[batch, m, n] (+)= A[batch, m, k] · B[batch, k, n]`, where A is stored `[k, m]` when
/// `trans_a` and B is stored `[n, k]` when `trans_b` (PyTorch's `x @ W.T` for a `[out, in]`
/// weight is `trans_b`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub batch: u32,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub trans_a: bool,
    pub trans_b: bool,
    pub accumulate: bool,
}

impl Shape {
    /// Row, column and batch strides of A and B, in elements.
    fn strides(&self) -> [u32; 6] {
        let (m, n, k) = (self.m, self.n, self.k);
        let (a_rs, a_cs) = if self.trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self.trans_b { (1, k) } else { (n, 1) };
        [a_rs, a_cs, m * k, b_rs, b_cs, k * n]
    }

    /// Multiply-adds, for GFLOP/s figures (2 flops each).
    pub fn macs(&self) -> f64 {
        self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }

    fn params(&self) -> Vec<u32> {
        let [a_rs, a_cs, a_bs, b_rs, b_cs, b_bs] = self.strides();
        vec![
            self.m,
            self.n,
            self.k,
            self.batch,
            a_rs,
            a_cs,
            a_bs,
            b_rs,
            b_cs,
            b_bs,
            self.accumulate as u32,
        ]
    }
}

/// Kernel versions, slowest first.
pub const VARIANTS: &[&str] = &["naive", "tiled", "reg"];

/// Variant the model uses: fastest on lavapipe (see BENCHMARKS.md).
pub const DEFAULT_VARIANT: &str = "reg";

/// The default (fastest) variant.
pub fn launch(s: &Shape, a: Buf, b: Buf, c: Buf) -> Launch {
    launch_variant(DEFAULT_VARIANT, s, a, b, c)
}

pub fn launch_variant(variant: &str, s: &Shape, a: Buf, b: Buf, c: Buf) -> Launch {
    assert!(s.batch <= MAX_GROUPS, "matmul batch over {MAX_GROUPS}");
    // (entry point, rows, columns) of C per workgroup
    let (entry, tm, tn) = match variant {
        "naive" => ("matmul_naive", 16, 16),
        "tiled" => ("matmul_tiled", 64, 64),
        _ => ("matmul_reg", 64, 32),
    };
    Launch {
        shader: "matmul",
        entry,
        params: s.params(),
        bufs: vec![(1, a), (2, b), (3, c)],
        groups: [s.n.div_ceil(tn), s.m.div_ceil(tm), s.batch],
    }
}

/// CPU twin: `matrixmultiply::sgemm` (f32 accumulation, like the GPU) per batch.
pub fn cpu(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let [a_rs, a_cs, a_bs, b_rs, b_cs, b_bs] = s.strides().map(|x| x as usize);
    let (m, n, k) = (s.m as usize, s.n as usize, s.k as usize);
    let beta = if s.accumulate { 1.0 } else { 0.0 };
    for bi in 0..s.batch as usize {
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        if k == 0 {
            if !s.accumulate {
                cb.fill(0.0);
            }
            continue;
        }
        let ab = &a[bi * a_bs..bi * a_bs + m * k];
        let bb = &b[bi * b_bs..bi * b_bs + k * n];
        // SAFETY: the slices above hold exactly the m*k, k*n and m*n elements the strides reach.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                ab.as_ptr(),
                a_rs as isize,
                a_cs as isize,
                bb.as_ptr(),
                b_rs as isize,
                b_cs as isize,
                beta,
                cb.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
}
