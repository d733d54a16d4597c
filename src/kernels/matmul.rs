//! Batched, strided matmul `C (+)= alpha · op(A) · op(B)`; see `shaders/matmul.wgsl` for the
//! exact contract. Every operand is read and written through strides, so transposes, the
//! heads of attention and column slices of `qkv` cost no copies.

use crate::kernels::{w, Launch, Target, LOOP_LIMIT, MAX_GROUPS};
use crate::runtime::Buf;

/// Where a batched matrix lives in its buffer: element `(z1, z2, row, col)` is at
/// `off + z1 * bs + z2 * bs2 + row * rs + col * cs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub off: u32,
    pub rs: u32,
    pub cs: u32,
    pub bs: u32,
    pub bs2: u32,
}

impl Layout {
    /// Contiguous `[batch, rows, cols]`, read transposed when `trans` (stored `[cols, rows]`).
    pub fn dense(rows: u32, cols: u32, trans: bool) -> Layout {
        let (rs, cs) = if trans { (1, rows) } else { (cols, 1) };
        Layout {
            off: 0,
            rs,
            cs,
            bs: rows * cols,
            bs2: 0,
        }
    }

    /// Element index of `(z1, z2, row, col)`.
    pub fn at(&self, z1: usize, z2: usize, row: usize, col: usize) -> usize {
        self.off as usize
            + z1 * self.bs as usize
            + z2 * self.bs2 as usize
            + row * self.rs as usize
            + col * self.cs as usize
    }

    fn words(&self) -> [u32; 5] {
        [self.off, self.rs, self.cs, self.bs, self.bs2]
    }
}

/// `C[z] (+)= alpha · A[z] · B[z]` for the `batch` products z = z1 · inner + z2, with
/// A `m x k`, B `k x n` and C `m x n` placed by their layouts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub batch: u32,
    /// Products per outer index (attention: heads); 1 for a plain batch.
    pub inner: u32,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a: Layout,
    pub b: Layout,
    pub c: Layout,
    pub alpha: f32,
    pub accumulate: bool,
}

impl Shape {
    /// Contiguous operands: A `[batch, m, k]` (stored `[k, m]` when `trans_a`), B
    /// `[batch, k, n]` (stored `[n, k]` when `trans_b`: PyTorch's `x @ W.T` for a
    /// `[out, in]` weight), C `[batch, m, n]`.
    pub fn dense(
        batch: u32,
        [m, n, k]: [u32; 3],
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Shape {
        Shape {
            batch,
            inner: 1,
            m,
            n,
            k,
            a: Layout::dense(m, k, trans_a),
            b: Layout::dense(k, n, trans_b),
            c: Layout::dense(m, n, false),
            alpha: 1.0,
            accumulate,
        }
    }

    /// Names the shape for tuning tables: `BxMxNxK`, then `t` for an operand read
    /// transposed (column stride not 1).
    pub fn key(&self) -> String {
        format!(
            "{}x{}x{}x{}{}{}",
            self.batch,
            self.m,
            self.n,
            self.k,
            if self.a.cs != 1 { "ta" } else { "" },
            if self.b.cs != 1 { "tb" } else { "" }
        )
    }

    /// Multiply-adds, for GFLOP/s figures (2 flops each).
    pub fn macs(&self) -> f64 {
        self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// One more than the largest element index each operand reaches: the buffer lengths
    /// it needs.
    pub fn extents(&self) -> [usize; 3] {
        let (z1, z2) = (
            (self.batch / self.inner.max(1)) as usize,
            self.inner.max(1) as usize,
        );
        let last = |l: &Layout, r: u32, c: u32| {
            if z1 == 0 || r == 0 || c == 0 {
                0
            } else {
                l.at(z1 - 1, z2 - 1, r as usize - 1, c as usize - 1) + 1
            }
        };
        [
            last(&self.a, self.m, self.k),
            last(&self.b, self.k, self.n),
            last(&self.c, self.m, self.n),
        ]
    }

    fn params(&self) -> Vec<u32> {
        let mut v = vec![self.m, self.n, self.k, self.inner.max(1)];
        v.extend(self.a.words());
        v.extend(self.b.words());
        v.extend(self.c.words());
        v.push(self.accumulate as u32);
        v.push(w(self.alpha));
        v
    }
}

/// The ladder, slowest first: one invocation per element; 64x64 tiles through workgroup
/// memory; 8x4 register blocks straight from storage; subgroup shuffles (8-wide subgroups)
/// on 64x32 and on 128x64 tiles.
pub const VARIANTS: &[&str] = &["naive", "tiled", "reg", "sg_small", "sg"];

/// Whether a variant needs 8-wide subgroups.
pub fn needs_subgroup8(variant: &str) -> bool {
    variant.starts_with("sg")
}

/// Variants an adapter described by `t` can run.
pub fn available(t: &Target) -> Vec<&'static str> {
    VARIANTS
        .iter()
        .copied()
        .filter(|&v| !needs_subgroup8(v) || t.subgroup8)
        .collect()
}

/// Untuned choice for a shape: the fastest measured on each kind of adapter (BENCHMARKS.md).
/// Big tiles waste work on small products, so those get the small subgroup tiles.
pub fn default_variant(t: &Target, s: &Shape) -> &'static str {
    if t.subgroup8 {
        if s.m <= 64 || s.n <= 32 {
            "sg_small"
        } else {
            "sg"
        }
    } else if t.cpu_like {
        "reg"
    } else {
        "tiled"
    }
}

/// The dispatches of one product with the named variant. A product longer than
/// [`LOOP_LIMIT`] in k is split into k-chunks that accumulate into C one after another.
pub fn launch_variant(variant: &str, s: &Shape, a: Buf, b: Buf, c: Buf) -> Vec<Launch> {
    if s.k <= LOOP_LIMIT {
        return vec![launch_one(variant, s, a, b, c)];
    }
    (0..s.k)
        .step_by(LOOP_LIMIT as usize)
        .map(|k0| {
            let chunk = Shape {
                k: LOOP_LIMIT.min(s.k - k0),
                a: Layout {
                    off: s.a.off + k0 * s.a.cs,
                    ..s.a
                },
                b: Layout {
                    off: s.b.off + k0 * s.b.rs,
                    ..s.b
                },
                accumulate: s.accumulate || k0 > 0,
                ..*s
            };
            launch_one(variant, &chunk, a, b, c)
        })
        .collect()
}

fn launch_one(variant: &str, s: &Shape, a: Buf, b: Buf, c: Buf) -> Launch {
    assert!(s.batch <= MAX_GROUPS, "matmul batch over {MAX_GROUPS}");
    // (shader, entry point, rows, columns) of C per workgroup
    let (shader, entry, tm, tn) = match variant {
        "naive" => ("matmul", "matmul_naive", 16, 16),
        "tiled" => ("matmul", "matmul_tiled", 64, 64),
        "sg" => ("matmul_sg", "matmul_sg", 128, 64),
        "sg_small" => ("matmul_sg", "matmul_sg_small", 64, 32),
        _ => ("matmul", "matmul_reg", 64, 32),
    };
    Launch {
        shader,
        entry,
        params: s.params(),
        bufs: vec![(1, a), (2, b), (3, c)],
        groups: [s.n.div_ceil(tn), s.m.div_ceil(tm), s.batch],
    }
}

/// CPU twin: `matrixmultiply::sgemm` (f32 accumulation, like the GPU) per product.
pub fn cpu(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (m, n, k) = (s.m as usize, s.n as usize, s.k as usize);
    let inner = s.inner.max(1) as usize;
    let [ea, eb, ec] = s.extents();
    assert!(
        ea <= a.len() && eb <= b.len() && ec <= c.len(),
        "matmul operands shorter than their layouts"
    );
    let beta = if s.accumulate { 1.0 } else { 0.0 };
    for z in 0..s.batch as usize {
        let (z1, z2) = (z / inner, z % inner);
        if m == 0 || n == 0 {
            continue;
        }
        let c0 = s.c.at(z1, z2, 0, 0);
        if k == 0 {
            if !s.accumulate {
                for i in 0..m {
                    for j in 0..n {
                        c[s.c.at(z1, z2, i, j)] = 0.0;
                    }
                }
            }
            continue;
        }
        // SAFETY: `extents` bounds every index these strides reach, checked above.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                s.alpha,
                a.as_ptr().add(s.a.at(z1, z2, 0, 0)),
                s.a.rs as isize,
                s.a.cs as isize,
                b.as_ptr().add(s.b.at(z1, z2, 0, 0)),
                s.b.rs as isize,
                s.b.cs as isize,
                beta,
                c.as_mut_ptr().add(c0),
                s.c.rs as isize,
                s.c.cs as isize,
            );
        }
    }
}
