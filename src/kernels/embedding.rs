//! Token + position embedding: `x[b, t, :] = wte[idx[b, t], :] + wpe[t, :]`, and its backward.
//!
//! The backward is a scatter (many positions share a token), done without atomics: every
//! `dwte` element is owned by one invocation that scans all positions in order, which keeps
//! the result deterministic. `B * T` is a few thousand at most, so the scan is cheap.

use crate::kernels::{elem_grid, grid, Launch, Target, LOOP_LIMIT};
use crate::runtime::Buf;

/// Embedding sizes: batch, sequence length, width, vocabulary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub b: u32,
    pub t: u32,
    pub c: u32,
    pub v: u32,
}

/// Columns of `dwte` per workgroup in `bwd_wte` (its workgroup size).
const WTE_COLS: u32 = 64;

/// `pos` is the range of positions a `bwd_wte*` dispatch sums (all of them elsewhere).
fn params(s: &Shape, accumulate: bool, pos: (u32, u32)) -> Vec<u32> {
    vec![s.b, s.t, s.c, s.v, accumulate as u32, pos.0, pos.1]
}

/// `x [B, T, C]` from `idx [B, T]`, `wte [V, C]` and `wpe [>= T, C]`.
pub fn launch_fwd(s: &Shape, idx: Buf, wte: Buf, wpe: Buf, x: Buf) -> Launch {
    Launch {
        shader: "embedding",
        entry: "fwd",
        params: params(s, false, (0, s.b * s.t)),
        bufs: vec![(1, idx), (2, wte), (3, wpe), (4, x)],
        groups: elem_grid(s.b * s.t * s.c),
    }
}

/// `dwte [V, C]` (overwritten, or added to when `accumulate`) and `dwpe`: rows `< T` get the
/// batch sum of `dx`, rows `T..` (when the buffer holds a whole block) are zeroed.
pub fn launch_bwd(
    t: &Target,
    s: &Shape,
    accumulate: bool,
    idx: Buf,
    dx: Buf,
    dwte: Buf,
    dwpe: Buf,
) -> Vec<Launch> {
    // The wte sums run over positions in order, in chunks of at most LOOP_LIMIT positions
    // per dispatch; every chunk after the first adds to what the ones before left.
    let npos = s.b * s.t;
    let mut v: Vec<Launch> = (0..npos.max(1))
        .step_by(LOOP_LIMIT as usize)
        .map(|p0| {
            let p = params(s, accumulate || p0 > 0, (p0, (p0 + LOOP_LIMIT).min(npos)));
            let bufs = vec![(1, idx), (5, dx), (6, dwte)];
            if t.cpu_loop(s.v) {
                Launch {
                    shader: "embedding",
                    entry: "bwd_wte_cols",
                    params: p,
                    bufs,
                    groups: grid(s.c.div_ceil(64)),
                }
            } else {
                Launch {
                    shader: "embedding",
                    entry: "bwd_wte",
                    params: p,
                    bufs,
                    groups: grid(s.v * s.c.div_ceil(WTE_COLS)),
                }
            }
        })
        .collect();
    v.push(Launch {
        shader: "embedding",
        entry: "bwd_wpe",
        params: params(s, accumulate, (0, npos)),
        bufs: vec![(5, dx), (7, dwpe)],
        groups: elem_grid(s.t * s.c),
    });
    v
}

/// CPU twin of [`launch_fwd`] (one f32 add per element, as on the GPU).
pub fn cpu_fwd(s: &Shape, idx: &[u32], wte: &[f32], wpe: &[f32], x: &mut [f32]) {
    let c = s.c as usize;
    let t = s.t as usize;
    for n in 0..(s.b * s.t) as usize {
        let tok = idx[n] as usize;
        let pos = n % t;
        let (e, p) = (&wte[tok * c..][..c], &wpe[pos * c..][..c]);
        for (o, (a, b)) in x[n * c..][..c].iter_mut().zip(e.iter().zip(p)) {
            *o = a + b;
        }
    }
}

/// CPU twin of [`launch_bwd`]; sums in f64 over positions in order, then stores f32
/// (added in f32 to the old `dwte` when accumulating). `dwpe`'s row count is its length / C.
pub fn cpu_bwd(
    s: &Shape,
    accumulate: bool,
    idx: &[u32],
    dx: &[f32],
    dwte: &mut [f32],
    dwpe: &mut [f32],
) {
    let (b, t, c, v) = (s.b as usize, s.t as usize, s.c as usize, s.v as usize);
    let mut acc = vec![0f64; v * c];
    for n in 0..b * t {
        let row = &mut acc[idx[n] as usize * c..][..c];
        for (a, d) in row.iter_mut().zip(&dx[n * c..][..c]) {
            *a += *d as f64;
        }
    }
    for (o, a) in dwte[..v * c].iter_mut().zip(&acc) {
        *o = if accumulate {
            *o + *a as f32
        } else {
            *a as f32
        };
    }
    for pos in 0..t {
        for col in 0..c {
            let sum: f64 = (0..b).map(|bi| dx[(bi * t + pos) * c + col] as f64).sum();
            dwpe[pos * c + col] = sum as f32;
        }
    }
    let rows = dwpe.len() / c.max(1);
    if rows > t {
        dwpe[t * c..rows * c].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Op;
    use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        fn f(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f()).collect()
        }
        fn below(&mut self, n: u32) -> u32 {
            (self.next() % n as u64) as u32
        }
    }

    /// Ids drawn from the first `used` tokens only, so some rows of `dwte` see no position
    /// and others see many (repeated tokens).
    fn ids(rng: &mut Rng, s: &Shape, used: u32) -> Vec<u32> {
        (0..s.b * s.t).map(|_| rng.below(used.max(1))).collect()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let s = Shape {
            b: 2,
            t: 5,
            c: 3,
            v: 6,
        };
        let block = 7; // wpe has more rows than T
        let mut rng = Rng(7);
        let idx = ids(&mut rng, &s, 4); // tokens 4 and 5 never occur
        let (c, n) = (s.c as usize, (s.b * s.t * s.c) as usize);
        let wte = rng.vec((s.v * s.c) as usize);
        let wpe = rng.vec(block * c);
        let wts: Vec<f64> = (0..n).map(|_| rng.f() as f64).collect();
        let loss = |wte: &[f32], wpe: &[f32]| {
            let mut x = vec![0f32; n];
            cpu_fwd(&s, &idx, wte, wpe, &mut x);
            x.iter().zip(&wts).map(|(a, w)| *a as f64 * w).sum::<f64>()
        };
        let dx: Vec<f32> = wts.iter().map(|w| *w as f32).collect();
        let mut dwte = vec![f32::NAN; wte.len()];
        let mut dwpe = vec![f32::NAN; wpe.len()];
        cpu_bwd(&s, false, &idx, &dx, &mut dwte, &mut dwpe);

        // The loss is linear in the weights, so a large step costs no truncation error and
        // keeps the f32 rounding of the forward small against 2h.
        let h = 0.1f32;
        let mut worst = 0f64;
        let mut check = |analytic: &[f32], which: usize| {
            for (i, &a) in analytic.iter().enumerate() {
                let mut l = [0f64; 2];
                let mut at = [0f32; 2];
                for (k, sign) in [1f32, -1.0].into_iter().enumerate() {
                    let (mut e, mut p) = (wte.clone(), wpe.clone());
                    let buf = if which == 0 { &mut e } else { &mut p };
                    buf[i] += sign * h;
                    at[k] = buf[i];
                    l[k] = loss(&e, &p);
                }
                // divide by the step actually taken after rounding to f32
                let fd = (l[0] - l[1]) / (at[0] as f64 - at[1] as f64);
                let err = (fd - a as f64).abs();
                assert!(
                    err <= 1e-5 + 1e-4 * (a as f64).abs(),
                    "param {which} element {i}: finite difference {fd}, backward {a}"
                );
                worst = worst.max(err);
            }
        };
        check(&dwte, 0);
        check(&dwpe, 1);
        eprintln!("embedding finite differences: max abs error {worst:e}");
        // Unused tokens and positions past T get exactly zero.
        assert!(dwte[4 * c..].iter().all(|&g| g == 0.0));
        assert!(dwpe[s.t as usize * c..].iter().all(|&g| g == 0.0));

        // Accumulating adds the same gradient on top of what is there.
        let base = rng.vec(dwte.len());
        let mut acc = base.clone();
        cpu_bwd(&s, true, &idx, &dx, &mut acc, &mut dwpe);
        for i in 0..acc.len() {
            assert_eq!(acc[i], base[i] + dwte[i]);
        }
    }

    #[test]
    fn repeated_tokens_sum_their_positions() {
        let s = Shape {
            b: 2,
            t: 3,
            c: 2,
            v: 4,
        };
        let idx = [1, 1, 3, 1, 0, 3];
        let dx: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut dwte = vec![9.0; 8];
        let mut dwpe = vec![9.0; 8]; // block 4 > T
        cpu_bwd(&s, false, &idx, &dx, &mut dwte, &mut dwpe);
        // token 0: position 4; token 1: positions 0, 1, 3; token 2: none; token 3: 2, 5.
        assert_eq!(dwte, [8.0, 9.0, 8.0, 11.0, 0.0, 0.0, 14.0, 16.0]);
        // dwpe[t] = dx[0, t] + dx[1, t]
        assert_eq!(dwpe, [6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 0.0, 0.0]);
    }

    fn close(name: &str, g: &[f32], c: &[f32], atol: f32, rtol: f32) -> f32 {
        assert_eq!(g.len(), c.len());
        let mut worst = 0f32;
        for (i, (a, b)) in g.iter().zip(c).enumerate() {
            let err = (a - b).abs();
            assert!(
                err <= atol + rtol * b.abs(),
                "{name}[{i}]: gpu {a} vs cpu {b}"
            );
            worst = worst.max(err);
        }
        worst
    }

    struct Case {
        s: Shape,
        accumulate: bool,
        idx: Vec<u32>,
        wte: Vec<f32>,
        wpe: Vec<f32>,
        dx: Vec<f32>,
        dwte0: Vec<f32>,
        dwpe0: Vec<f32>,
    }

    /// Forward and backward on one backend; returns `[x, dwte, dwpe]`.
    fn run(be: &mut dyn Backend, k: &Case) -> [Vec<f32>; 3] {
        let n = (k.s.b * k.s.t * k.s.c) as usize;
        let idx = be.alloc("idx", k.idx.len(), Dtype::U32).unwrap();
        let wte = be.alloc("wte", k.wte.len(), Dtype::F32).unwrap();
        let wpe = be.alloc("wpe", k.wpe.len(), Dtype::F32).unwrap();
        let x = be.alloc("x", n, Dtype::F32).unwrap();
        let dx = be.alloc("dx", n, Dtype::F32).unwrap();
        let dwte = be.alloc("dwte", k.wte.len(), Dtype::F32).unwrap();
        let dwpe = be.alloc("dwpe", k.wpe.len(), Dtype::F32).unwrap();
        be.write_u32(idx, &k.idx);
        be.write_f32(wte, &k.wte);
        be.write_f32(wpe, &k.wpe);
        be.write_f32(dx, &k.dx);
        be.write_f32(dwte, &k.dwte0);
        be.write_f32(dwpe, &k.dwpe0);
        let s = k.s;
        let seq = be
            .compile(&[
                Op::EmbeddingFwd {
                    s,
                    idx,
                    wte,
                    wpe,
                    x,
                },
                Op::EmbeddingBwd {
                    s,
                    accumulate: k.accumulate,
                    idx,
                    dx,
                    dwte,
                    dwpe,
                },
            ])
            .unwrap();
        be.run(&[seq]).unwrap();
        [
            be.read_f32(x).unwrap(),
            be.read_f32(dwte).unwrap(),
            be.read_f32(dwpe).unwrap(),
        ]
    }

    #[test]
    fn gpu_matches_cpu() {
        let mut gpu = GpuBackend::open(None).unwrap();
        // (shape, wpe rows, number of distinct tokens used)
        let shapes = [
            (
                Shape {
                    b: 1,
                    t: 1,
                    c: 1,
                    v: 1,
                },
                1,
                1,
            ),
            (
                Shape {
                    b: 2,
                    t: 3,
                    c: 17,
                    v: 5,
                },
                4,
                3,
            ),
            (
                Shape {
                    b: 3,
                    t: 17,
                    c: 65,
                    v: 7,
                },
                20,
                7,
            ),
            (
                Shape {
                    b: 2,
                    t: 65,
                    c: 130,
                    v: 3,
                },
                65,
                3,
            ),
            (
                Shape {
                    b: 4,
                    t: 257,
                    c: 3,
                    v: 300,
                },
                300,
                290,
            ),
            (
                Shape {
                    b: 1,
                    t: 130,
                    c: 257,
                    v: 65,
                },
                257,
                1,
            ),
        ];
        let mut rng = Rng(42);
        let mut worst = 0f32;
        for (s, block, used) in shapes {
            let (n, c, v) = ((s.b * s.t * s.c) as usize, s.c as usize, s.v as usize);
            for accumulate in [false, true] {
                let k = Case {
                    s,
                    accumulate,
                    idx: ids(&mut rng, &s, used),
                    wte: rng.vec(v * c),
                    wpe: rng.vec(block * c),
                    dx: rng.vec(n),
                    dwte0: rng.vec(v * c),
                    // stale values that must be overwritten
                    dwpe0: rng.vec(block * c),
                };
                let g = run(&mut gpu, &k);
                let r = run(&mut CpuBackend::new(), &k);
                worst = worst.max(close("x", &g[0], &r[0], 0.0, 0.0));
                worst = worst.max(close("dwte", &g[1], &r[1], 1e-5, 1e-5));
                worst = worst.max(close("dwpe", &g[2], &r[2], 1e-5, 1e-5));
                // Rows of unused tokens: zero, or untouched when accumulating.
                let unused = used as usize * c..v * c;
                let want = if accumulate {
                    &k.dwte0[unused.clone()]
                } else {
                    &vec![0.0; unused.len()][..]
                };
                assert_eq!(&g[1][unused], want);
                assert!(g[2][s.t as usize * c..].iter().all(|&x| x == 0.0));
            }
        }
        eprintln!(
            "embedding gpu vs cpu on {}: max abs error {worst:e}",
            gpu.name()
        );
    }
}
