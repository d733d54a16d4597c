//! Causal self-attention core: scores, causal softmax and the weighted sum of values, per
//! head, on the fused `qkv` output of `c_attn` (see `shaders/attention.wgsl` for the math).
//! Like llm.c, the forward keeps the full `att` matrix so the backward needs no recompute.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::matmul::{self, Layout};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("attention", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub b: u32,
        pub t: u32,
        pub c: u32,
        pub nh: u32,
        pub hd: u32,
        pub scale: f32,
    }
}

/// Attention sizes: batch, sequence length, width, heads (head size = c / nh).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub b: u32,
    pub t: u32,
    pub c: u32,
    pub nh: u32,
}

impl Shape {
    /// Head size.
    pub fn hd(&self) -> u32 {
        self.c / self.nh
    }

    /// One row per (batch, head, position): the grid of every entry point.
    fn rows(&self) -> u32 {
        self.b * self.nh * self.t
    }

    fn params(&self) -> Params {
        let hd = self.hd();
        Params {
            b: self.b,
            t: self.t,
            c: self.c,
            nh: self.nh,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        }
    }
}

/// `qkv [B,T,3C]` -> `att [B,NH,T,T]` (causal softmax, zero above the diagonal), `y [B,T,C]`.
/// One fused kernel per query row, or on CPU-like adapters matmuls around a row softmax.
#[derive(Clone, Copy, Debug)]
pub struct AttentionFwd {
    pub s: Shape,
    pub qkv: Buf,
    pub att: Buf,
    pub y: Buf,
}

/// Two fused dispatches: per query row, ds into `datt` and dq; then per key row, dk and dv
/// from the columns of `datt` and `att` (splitting by rows and by columns avoids atomics).
/// On CPU-like adapters: dp, the row softmax backward in place, then dq, dk, dv as matmuls.
/// Writes every element of `dqkv` and `datt`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwd {
    pub s: Shape,
    pub qkv: Buf,
    pub att: Buf,
    pub dy: Buf,
    pub datt: Buf,
    pub dqkv: Buf,
}

impl Kernel for AttentionFwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (s, qkv, att, y) = (&self.s, self.qkv, self.att, self.y);
        if t.cpu_like {
            let p = Products::new(s);
            let mut v = p.launch(t, p.scores, qkv, qkv, att);
            v.push(rows_launch(s, "attention_softmax_rows").bind("att", att));
            v.extend(p.launch(t, p.values, att, qkv, y));
            return v;
        }
        vec![
            Launch::new(&SHADER, "attention_fwd", &s.params(), grid(s.rows()))
                .bind("qkv", qkv)
                .bind("att", att)
                .bind("y", y),
        ]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.att, self.y], |m, att, y| {
            cpu_fwd(&self.s, m.f(self.qkv), att, y)
        });
    }
    fn products(&self, t: &Target) -> Vec<matmul::Shape> {
        if t.cpu_like {
            products(&self.s)
        } else {
            Vec::new()
        }
    }
}

impl Kernel for AttentionBwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (s, qkv, att, dy, datt, dqkv) =
            (&self.s, self.qkv, self.att, self.dy, self.datt, self.dqkv);
        if t.cpu_like {
            let p = Products::new(s);
            let mut v = p.launch(t, p.dp, dy, qkv, datt);
            v.push(
                rows_launch(s, "attention_softmax_bwd_rows")
                    .bind("att", att)
                    .bind("datt", datt),
            );
            v.extend(p.launch(t, p.dq, datt, qkv, dqkv));
            v.extend(p.launch(t, p.dk, datt, qkv, dqkv));
            v.extend(p.launch(t, p.dv, att, dy, dqkv));
            return v;
        }
        ["attention_bwd_q", "attention_bwd_kv"]
            .into_iter()
            .map(|entry| {
                Launch::new(&SHADER, entry, &s.params(), grid(s.rows()))
                    .bind("qkv", qkv)
                    .bind("att", att)
                    .bind("dy", dy)
                    .bind("datt", datt)
                    .bind("dqkv", dqkv)
            })
            .collect()
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with2([self.datt, self.dqkv], |m, datt, dqkv| {
            cpu_bwd(
                &self.s,
                m.f(self.qkv),
                m.f(self.att),
                m.f(self.dy),
                datt,
                dqkv,
            )
        });
    }
    fn products(&self, t: &Target) -> Vec<matmul::Shape> {
        if t.cpu_like {
            products(&self.s)
        } else {
            Vec::new()
        }
    }
}

/// The matmul shapes the CPU-like path runs (for tuning).
pub fn products(s: &Shape) -> Vec<matmul::Shape> {
    let p = Products::new(s);
    vec![p.scores, p.values, p.dp, p.dq, p.dk, p.dv]
}

fn rows_launch(s: &Shape, entry: &'static str) -> Launch {
    Launch::new(&SHADER, entry, &s.params(), grid(s.rows().div_ceil(64)))
}

/// Forward then backward from garbage in every output, on odd shapes, the paper's, t and
/// head sizes past one workgroup's stride, the longest sequence, and 65792 rows (the grid's
/// second dimension).
pub fn cases() -> Vec<Case> {
    [
        (1u32, 1u32, 4u32, 1u32),
        (2, 5, 12, 3),
        (2, 17, 30, 5),
        (12, 64, 128, 4),
        (1, 70, 96, 1),
        (1, 130, 132, 2),
        (1, 256, 32, 1),
        (257, 16, 16, 16),
    ]
    .into_iter()
    .map(|(b, t, c, nh)| {
        let s = Shape { b, t, c, nh };
        let (bu, tu, cu, hu) = (b as usize, t as usize, c as usize, nh as usize);
        Case::new("attention fwd+bwd", format!("B={b} T={t} C={c} nh={nh}"))
            .input("qkv", bu * tu * 3 * cu, Init::Normal(1.0))
            .inout("att", bu * hu * tu * tu, Init::Fill(7.0))
            .inout("y", bu * tu * cu, Init::Fill(7.0))
            .input("dy", bu * tu * cu, Init::Normal(1.0))
            .inout("datt", bu * hu * tu * tu, Init::Fill(7.0))
            .inout("dqkv", bu * tu * 3 * cu, Init::Fill(7.0))
            .ops(move |bf| {
                let (qkv, att) = (bf["qkv"], bf["att"]);
                vec![
                    AttentionFwd {
                        s,
                        qkv,
                        att,
                        y: bf["y"],
                    }
                    .op(),
                    AttentionBwd {
                        s,
                        qkv,
                        att,
                        dy: bf["dy"],
                        datt: bf["datt"],
                        dqkv: bf["dqkv"],
                    }
                    .op(),
                ]
            })
            .tol(1e-4)
    })
    .collect()
}

/// Attention as products per (batch, head): z1 = b, z2 = h. Above-diagonal entries are
/// multiplied too (att and ds are 0 there), trading wasted flops for matmul speed.
struct Products {
    /// `att = scale q kᵀ` (before the softmax)
    scores: matmul::Shape,
    /// `y = att v`
    values: matmul::Shape,
    /// `dp = dy vᵀ`
    dp: matmul::Shape,
    /// `dq = scale ds k`
    dq: matmul::Shape,
    /// `dk = scale dsᵀ q`
    dk: matmul::Shape,
    /// `dv = attᵀ dy`
    dv: matmul::Shape,
}

impl Products {
    fn new(s: &Shape) -> Products {
        let (t, c, nh, hd) = (s.t, s.c, s.nh, s.hd());
        let scale = 1.0 / (hd as f32).sqrt();
        // q, k or v of one head: [T, HD] at column offset `off` of qkv [B, T, 3C]
        let head = |off: u32| Layout {
            off,
            rs: 3 * c,
            cs: 1,
            bs: t * 3 * c,
            bs2: hd,
        };
        let transposed = |l: Layout| Layout {
            rs: l.cs,
            cs: l.rs,
            ..l
        };
        let (q, k, v) = (head(0), head(c), head(2 * c));
        // y and dy [B, T, C], one head's columns
        let yl = Layout {
            off: 0,
            rs: c,
            cs: 1,
            bs: t * c,
            bs2: hd,
        };
        // att and datt [B, NH, T, T]
        let al = Layout {
            off: 0,
            rs: t,
            cs: 1,
            bs: nh * t * t,
            bs2: t * t,
        };
        let product = |m, n, kk, a, b, cl, alpha| matmul::Shape {
            batch: s.b * nh,
            inner: nh,
            m,
            n,
            k: kk,
            a,
            b,
            c: cl,
            alpha,
            accumulate: false,
        };
        Products {
            scores: product(t, t, hd, q, transposed(k), al, scale),
            values: product(t, hd, t, al, v, yl, 1.0),
            dp: product(t, t, hd, yl, transposed(v), al, 1.0),
            dq: product(t, hd, t, al, k, q, scale),
            dk: product(t, hd, t, transposed(al), q, k, scale),
            dv: product(t, hd, t, transposed(al), yl, v, 1.0),
        }
    }

    fn launch(&self, t: &Target, s: matmul::Shape, a: Buf, b: Buf, c: Buf) -> Vec<Launch> {
        matmul::launch_variant(t.matmul_variant(&s), &s, a, b, c)
    }
}

/// Sizes as `usize`: (b, t, c, nh, hd).
fn dims(s: &Shape) -> (usize, usize, usize, usize, usize) {
    let hd = s.hd() as usize;
    (s.b as usize, s.t as usize, s.c as usize, s.nh as usize, hd)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// CPU twin of [`AttentionFwd`]; dot products, softmax and the sum over values run in f64.
pub fn cpu_fwd(s: &Shape, qkv: &[f32], att: &mut [f32], y: &mut [f32]) {
    let (b, t, c, nh, hd) = dims(s);
    let c3 = 3 * c;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut p = vec![0.0f64; t];
    for bi in 0..b {
        let seq = &qkv[bi * t * c3..(bi + 1) * t * c3];
        for h in 0..nh {
            let head = |pos: usize, third: usize| {
                let o = pos * c3 + third * c + h * hd;
                &seq[o..o + hd]
            };
            for ti in 0..t {
                let q = head(ti, 0);
                let mut mx = f64::NEG_INFINITY;
                for (j, pj) in p[..=ti].iter_mut().enumerate() {
                    *pj = scale * dot(q, head(j, 1));
                    mx = mx.max(*pj);
                }
                let mut sum = 0.0;
                for pj in &mut p[..=ti] {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                let row = &mut att[((bi * nh + h) * t + ti) * t..][..t];
                for (j, a) in row.iter_mut().enumerate() {
                    *a = if j <= ti {
                        p[j] /= sum;
                        p[j] as f32
                    } else {
                        0.0
                    };
                }
                let yo = (bi * t + ti) * c + h * hd;
                for (d, yd) in y[yo..yo + hd].iter_mut().enumerate() {
                    let acc: f64 = (0..=ti).map(|j| p[j] * head(j, 2)[d] as f64).sum();
                    *yd = acc as f32;
                }
            }
        }
    }
}

/// CPU twin of [`AttentionBwd`], in the same two passes (ds and dq per query row, then dk and
/// dv per key row from the f32 ds stored in `datt`); all sums run in f64.
pub fn cpu_bwd(
    s: &Shape,
    qkv: &[f32],
    att: &[f32],
    dy: &[f32],
    datt: &mut [f32],
    dqkv: &mut [f32],
) {
    let (b, t, c, nh, hd) = dims(s);
    let c3 = 3 * c;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dp = vec![0.0f64; t];
    for bi in 0..b {
        let seq = &qkv[bi * t * c3..(bi + 1) * t * c3];
        for h in 0..nh {
            let head = |pos: usize, third: usize| {
                let o = pos * c3 + third * c + h * hd;
                &seq[o..o + hd]
            };
            let mat = (bi * nh + h) * t * t;
            for ti in 0..t {
                let g = &dy[(bi * t + ti) * c + h * hd..][..hd];
                let a = &att[mat + ti * t..][..t];
                let mut total = 0.0;
                for j in 0..=ti {
                    dp[j] = dot(g, head(j, 2));
                    total += a[j] as f64 * dp[j];
                }
                let ds = &mut datt[mat + ti * t..][..t];
                for j in 0..t {
                    ds[j] = if j <= ti {
                        (a[j] as f64 * (dp[j] - total)) as f32
                    } else {
                        0.0
                    };
                }
                let dq = (bi * t + ti) * c3 + h * hd;
                for d in 0..hd {
                    let acc: f64 = (0..=ti).map(|j| ds[j] as f64 * head(j, 1)[d] as f64).sum();
                    dqkv[dq + d] = (scale * acc) as f32;
                }
            }
            for j in 0..t {
                let o = (bi * t + j) * c3 + h * hd;
                for d in 0..hd {
                    let (mut dk, mut dv) = (0.0f64, 0.0f64);
                    for ti in j..t {
                        dk += datt[mat + ti * t + j] as f64 * head(ti, 0)[d] as f64;
                        dv += att[mat + ti * t + j] as f64
                            * dy[(bi * t + ti) * c + h * hd + d] as f64;
                    }
                    dqkv[o + c + d] = (scale * dk) as f32;
                    dqkv[o + 2 * c + d] = dv as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn sh(b: u32, t: u32, c: u32, nh: u32) -> Shape {
        Shape { b, t, c, nh }
    }

    fn sizes(s: &Shape) -> (usize, usize, usize) {
        let (b, t, c, nh) = (s.b as usize, s.t as usize, s.c as usize, s.nh as usize);
        (b * t * 3 * c, b * nh * t * t, b * t * c)
    }

    const SHAPES: &[(u32, u32, u32, u32)] = &[
        (1, 1, 4, 1),
        (2, 5, 12, 3),
        (2, 17, 30, 5),
        (1, 64, 128, 4),
        (1, 70, 96, 1),    // t and hd past one workgroup's stride
        (1, 130, 132, 2),  // hd 66: 2*hd outputs per key row > 64
        (1, 256, 32, 1),   // longest supported sequence
        (257, 16, 16, 16), // 65792 rows: the grid's second dimension; head size 1
    ];

    #[test]
    fn cpu_att_rows_are_causal_distributions() {
        let mut rng = Rng::new(7);
        for &(b, t, c, nh) in SHAPES {
            let s = sh(b, t, c, nh);
            let (nq, na, ny) = sizes(&s);
            let qkv = rng.signed(nq, 2.0);
            let (mut att, mut y) = (vec![9.0; na], vec![9.0; ny]);
            cpu_fwd(&s, &qkv, &mut att, &mut y);
            check_causal(&s, &att);
        }
    }

    fn check_causal(s: &Shape, att: &[f32]) {
        let t = s.t as usize;
        for (r, row) in att.chunks(t).enumerate() {
            let ti = r % t;
            let sum: f64 = row[..=ti].iter().map(|&x| x as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{s:?} row {r} sums to {sum}");
            assert!(row[..=ti].iter().all(|&x| x > 0.0 && x <= 1.0));
            assert!(
                row[ti + 1..].iter().all(|&x| x == 0.0),
                "{s:?} row {r} not causal"
            );
        }
    }

    /// y for qkv, and L = sum w*y accumulated in f64.
    fn loss(s: &Shape, qkv: &[f32], wy: &[f32]) -> f64 {
        let (_, na, ny) = sizes(s);
        let (mut att, mut y) = (vec![0.0; na], vec![0.0; ny]);
        cpu_fwd(s, qkv, &mut att, &mut y);
        y.iter().zip(wy).map(|(&y, &w)| y as f64 * w as f64).sum()
    }

    /// Central differences on every qkv element against `cpu_bwd` with dy = w.
    #[test]
    fn cpu_bwd_matches_finite_differences() {
        let mut rng = Rng::new(11);
        for &(b, t, c, nh) in &[(1, 1, 4, 1), (1, 3, 4, 2), (2, 5, 12, 3), (1, 9, 10, 2)] {
            let s = sh(b, t, c, nh);
            let (nq, na, ny) = sizes(&s);
            let qkv = rng.signed(nq, 1.5);
            let wy = rng.signed(ny, 1.0);
            let (mut att, mut y) = (vec![0.0; na], vec![0.0; ny]);
            cpu_fwd(&s, &qkv, &mut att, &mut y);
            let (mut datt, mut dqkv) = (vec![5.0; na], vec![5.0; nq]);
            cpu_bwd(&s, &qkv, &att, &wy, &mut datt, &mut dqkv);
            let h = 1.0 / 64.0;
            let mut worst_ratio = 0.0f64;
            for i in 0..nq {
                let (mut up, mut dn) = (qkv.clone(), qkv.clone());
                up[i] += h;
                dn[i] -= h;
                let fd = (loss(&s, &up, &wy) - loss(&s, &dn, &wy)) / (up[i] as f64 - dn[i] as f64);
                let g = dqkv[i] as f64;
                let ratio = (g - fd).abs() / (2e-4 + 1e-3 * fd.abs());
                assert!(
                    ratio <= 1.0,
                    "{s:?} dqkv[{i}] = {g}, finite difference {fd}"
                );
                worst_ratio = worst_ratio.max(ratio);
            }
            eprintln!("{s:?}: worst gradient error / tolerance = {worst_ratio:.3}");
        }
    }
}
