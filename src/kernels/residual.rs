//! Residual connections: `out = a + b` on the forward pass and `acc += a` where two
//! gradient paths meet on the backward pass.

use crate::kernels::{elem_grid, Launch};
use crate::runtime::Buf;

/// `out[i] = a[i] + b[i]` for `i < n`.
pub fn launch_add(n: u32, a: Buf, b: Buf, out: Buf) -> Launch {
    Launch {
        shader: "residual",
        entry: "add",
        params: vec![n],
        bufs: vec![(1, a), (2, b), (3, out)],
        groups: elem_grid(n),
    }
}

/// `acc[i] += a[i]` for `i < n`.
pub fn launch_add_in_place(n: u32, acc: Buf, a: Buf) -> Launch {
    Launch {
        shader: "residual",
        entry: "add_in_place",
        params: vec![n],
        bufs: vec![(1, a), (4, acc)],
        groups: elem_grid(n),
    }
}

/// CPU twin of [`launch_add`] (f32, bit-identical to the GPU).
pub fn cpu_add(n: u32, a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = n as usize;
    for (o, (x, y)) in out[..n].iter_mut().zip(a[..n].iter().zip(&b[..n])) {
        *o = x + y;
    }
}

/// CPU twin of [`launch_add_in_place`] (f32, bit-identical to the GPU).
pub fn cpu_add_in_place(n: u32, acc: &mut [f32], a: &[f32]) {
    let n = n as usize;
    for (o, x) in acc[..n].iter_mut().zip(&a[..n]) {
        *o += x;
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::Op;
    use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend};

    fn rng_vec(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                // xorshift64
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Runs `out = a + b` and then `acc += a` (only the first `n` of `len` elements) on one
    /// backend; returns `[out, acc]`.
    fn run(be: &mut dyn Backend, n: u32, a: &[f32], b: &[f32], acc0: &[f32]) -> [Vec<f32>; 2] {
        let len = a.len();
        let (ba, bb) = (
            be.alloc("a", len, Dtype::F32).unwrap(),
            be.alloc("b", len, Dtype::F32).unwrap(),
        );
        let (out, acc) = (
            be.alloc("out", len, Dtype::F32).unwrap(),
            be.alloc("acc", len, Dtype::F32).unwrap(),
        );
        be.write_f32(ba, a);
        be.write_f32(bb, b);
        be.write_f32(acc, acc0);
        be.write_f32(out, acc0);
        let seq = be
            .compile(&[
                Op::Add {
                    n,
                    a: ba,
                    b: bb,
                    out,
                },
                Op::AddInPlace { n, acc, a: ba },
            ])
            .unwrap();
        be.run(&[seq]).unwrap();
        [be.read_f32(out).unwrap(), be.read_f32(acc).unwrap()]
    }

    #[test]
    fn gpu_matches_cpu() {
        let mut gpu = GpuBackend::open(None).unwrap();
        let mut seed = 0x1234_5678_9abc_def1u64;
        for n in [1u32, 3, 17, 255, 256, 257, 1000, 65 * 256 + 3] {
            // The buffers are longer than n: elements past n must stay as they were.
            let len = n as usize + 5;
            let (a, b, acc0) = (
                rng_vec(&mut seed, len),
                rng_vec(&mut seed, len),
                rng_vec(&mut seed, len),
            );
            let g = run(&mut gpu, n, &a, &b, &acc0);
            let c = run(&mut CpuBackend::new(), n, &a, &b, &acc0);
            assert_eq!(g, c, "n = {n}");
            for i in 0..len {
                let (want_out, want_acc) = if i < n as usize {
                    (a[i] + b[i], acc0[i] + a[i])
                } else {
                    (acc0[i], acc0[i])
                };
                assert_eq!(c[0][i], want_out, "out[{i}], n = {n}");
                assert_eq!(c[1][i], want_acc, "acc[{i}], n = {n}");
            }
        }
    }
}
