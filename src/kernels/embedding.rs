//! Token + position embedding: `x[b, t, :] = wte[idx[b, t], :] + wpe[t, :]`, and its backward.
//!
//! The backward is a scatter (many positions share a token), done without atomics: every
//! `dwte` element is owned by one invocation that scans all positions in order, which keeps
//! the result deterministic. `B * T` is a few thousand at most, so the scan is cheap.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, grid, IntoOp, Kernel, Launch, Shader, Target, LOOP_LIMIT};

pub const SHADER: Shader = shader!("embedding", Params);

uniform! {
    pub struct Params {
        pub b: u32,
        pub t: u32,
        pub c: u32,
        pub v: u32,
        pub accumulate: u32,
        /// The positions `[pos0, pos1)` a `bwd_wte*` dispatch sums.
        pub pos0: u32,
        pub pos1: u32,
    }
}

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
fn params(s: &Shape, accumulate: bool, pos: (u32, u32)) -> Params {
    Params {
        b: s.b,
        t: s.t,
        c: s.c,
        v: s.v,
        accumulate: accumulate as u32,
        pos0: pos.0,
        pos1: pos.1,
    }
}

/// `x [B, T, C]` from `idx [B, T]`, `wte [V, C]` and `wpe [>= T, C]`.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingFwd {
    pub s: Shape,
    pub idx: Buf,
    pub wte: Buf,
    pub wpe: Buf,
    pub x: Buf,
}

/// `dwte [V, C]` (overwritten, or added to when `accumulate`: the tied head wrote its part
/// first) and `dwpe`: rows `< T` get the batch sum of `dx`, rows `T..` (when the buffer holds
/// a whole block) are zeroed.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingBwd {
    pub s: Shape,
    pub accumulate: bool,
    pub idx: Buf,
    pub dx: Buf,
    pub dwte: Buf,
    pub dwpe: Buf,
}

impl Kernel for EmbeddingFwd {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let s = &self.s;
        let p = params(s, false, (0, s.b * s.t));
        vec![Launch::new(&SHADER, "fwd", &p, elem_grid(s.b * s.t * s.c))
            .bind("idx", self.idx)
            .bind("wte", self.wte)
            .bind("wpe", self.wpe)
            .bind("x", self.x)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.x, |m, x| {
            cpu_fwd(&self.s, m.u(self.idx), m.f(self.wte), m.f(self.wpe), x)
        });
    }
}

impl Kernel for EmbeddingBwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let s = &self.s;
        // The wte sums run over positions in order, in chunks of at most LOOP_LIMIT positions
        // per dispatch; every chunk after the first adds to what the ones before left.
        let npos = s.b * s.t;
        let mut v: Vec<Launch> = (0..npos.max(1))
            .step_by(LOOP_LIMIT as usize)
            .map(|p0| {
                let p = params(
                    s,
                    self.accumulate || p0 > 0,
                    (p0, (p0 + LOOP_LIMIT).min(npos)),
                );
                let l = if t.cpu_loop(s.v) {
                    Launch::new(&SHADER, "bwd_wte_cols", &p, grid(s.c.div_ceil(64)))
                } else {
                    Launch::new(&SHADER, "bwd_wte", &p, grid(s.v * s.c.div_ceil(WTE_COLS)))
                };
                l.bind("idx", self.idx)
                    .bind("dx", self.dx)
                    .bind("dwte", self.dwte)
            })
            .collect();
        let p = params(s, self.accumulate, (0, npos));
        v.push(
            Launch::new(&SHADER, "bwd_wpe", &p, elem_grid(s.t * s.c))
                .bind("dx", self.dx)
                .bind("dwpe", self.dwpe),
        );
        v
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.dwte, self.dwpe], |m, dwte, dwpe| {
            cpu_bwd(
                &self.s,
                self.accumulate,
                m.u(self.idx),
                m.f(self.dx),
                dwte,
                dwpe,
            )
        });
    }
}

/// Forward then backward (overwriting and accumulating `dwte`) on odd shapes, the paper's,
/// more positions than one dispatch's loop may run, ids from only the first few tokens (rows
/// no position touches, and many repeats), and position tables longer than T.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // (B, T, C, V, wpe rows, tokens used)
    for &(bb, t, c, vv, block, used) in &[
        (1u32, 1u32, 1u32, 2u32, 1u32, 2u32),
        (1, 1, 1, 1, 1, 1),
        (2, 3, 17, 5, 4, 3),
        (2, 5, 7, 13, 5, 13),
        (3, 17, 65, 7, 20, 7),
        (2, 65, 130, 3, 65, 3),
        (4, 257, 3, 300, 300, 290),
        (1, 130, 257, 65, 257, 1),
        (12, 64, 128, 130, 64, 130),
        (3, 7000, 3, 5, 7000, 5), // more positions than one dispatch's loop may run
    ] {
        let s = Shape { b: bb, t, c, v: vv };
        let (n, cu) = ((bb * t * c) as usize, c as usize);
        for accumulate in [false, true] {
            let dwte0 = if accumulate {
                Init::Normal(1.0)
            } else {
                Init::Fill(3.0)
            };
            v.push(
                Case::new(
                    "embedding fwd+bwd",
                    format!(
                        "B={bb} T={t} C={c} V={vv} wpe={block} used={used}{}",
                        if accumulate { " dwte+=" } else { "" }
                    ),
                )
                .words("idx", (bb * t) as usize, Init::Tokens(used))
                .input("wte", vv as usize * cu, Init::Normal(1.0))
                .input("wpe", block as usize * cu, Init::Normal(1.0))
                .output("x", n)
                .input("dx", n, Init::Normal(1.0))
                .inout("dwte", vv as usize * cu, dwte0)
                .inout("dwpe", block as usize * cu, Init::Fill(3.0))
                .ops(move |b| {
                    let idx = b["idx"];
                    vec![
                        EmbeddingFwd {
                            s,
                            idx,
                            wte: b["wte"],
                            wpe: b["wpe"],
                            x: b["x"],
                        }
                        .op(),
                        EmbeddingBwd {
                            s,
                            accumulate,
                            idx,
                            dx: b["dx"],
                            dwte: b["dwte"],
                            dwpe: b["dwpe"],
                        }
                        .op(),
                    ]
                })
                .tol(1e-5),
            );
        }
    }
    v
}

/// CPU twin of [`EmbeddingFwd`] (one f32 add per element, as on the GPU).
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

/// CPU twin of [`EmbeddingBwd`]; sums in f64 over positions in order, then stores f32
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
    use crate::rng::Rng;

    /// Ids drawn from the first `used` tokens only, so some rows of `dwte` see no position
    /// and others see many (repeated tokens).
    fn ids(rng: &mut Rng, s: &Shape, used: u32) -> Vec<u32> {
        (0..s.b * s.t)
            .map(|_| rng.below(used.max(1) as usize) as u32)
            .collect()
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
        let mut rng = Rng::new(7);
        let idx = ids(&mut rng, &s, 4); // tokens 4 and 5 never occur
        let (c, n) = (s.c as usize, (s.b * s.t * s.c) as usize);
        let wte = rng.signed((s.v * s.c) as usize, 1.0);
        let wpe = rng.signed(block * c, 1.0);
        let wts: Vec<f64> = (0..n).map(|_| 2.0 * rng.uniform() - 1.0).collect();
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
        let base = rng.signed(dwte.len(), 1.0);
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
}
