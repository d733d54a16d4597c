//! Cosine regularization (Gao et al. 2019): the mean pairwise cosine similarity of the token
//! embeddings, scaled, added to the loss, and its gradient; see `shaders/cosreg.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, LOOP_LIMIT, REDUCE};

pub const SHADER: Shader = shader!("cosreg", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub v: u32,
        pub c: u32,
        pub gamma: f32,
        /// The rows `[row0, row1)` a `col_sum` dispatch adds.
        pub row0: u32,
        pub row1: u32,
    }
}

/// The penalty's operands: the table `wte [V, C]`, its inverse row norms `rinv [V]` and the
/// sum of its normalized rows `s [C]` (the forward writes them, the backward reads them).
#[derive(Clone, Copy, Debug)]
pub struct CosReg {
    pub v: u32,
    pub c: u32,
    pub gamma: f32,
    pub wte: Buf,
    pub rinv: Buf,
    pub s: Buf,
}

/// `loss[0] += gamma · (‖Σ_v E_v/‖E_v‖‖² − V) / V²`.
#[derive(Clone, Copy, Debug)]
pub struct CosRegFwd {
    pub reg: CosReg,
    pub loss: Buf,
}

/// `dwte +=` the penalty's gradient, from what [`CosRegFwd`] left.
#[derive(Clone, Copy, Debug)]
pub struct CosRegBwd {
    pub reg: CosReg,
    pub dwte: Buf,
}

fn params(v: u32, c: u32, gamma: f32, rows: (u32, u32)) -> Params {
    Params {
        v,
        c,
        gamma,
        row0: rows.0,
        row1: rows.1,
    }
}

/// One workgroup per embedding row, or one invocation per row on CPU-like adapters.
fn per_row(t: &Target, p: &Params, loops: u32, entry: &'static str, rows: &'static str) -> Launch {
    if t.cpu_loop(loops) {
        Launch::new(&SHADER, rows, p, grid(p.v.div_ceil(64)))
    } else {
        Launch::new(&SHADER, entry, p, grid(p.v))
    }
}

impl Kernel for CosRegFwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let r = &self.reg;
        let (v, c) = (r.v, r.c);
        let p = params(v, c, r.gamma, (0, v));
        let mut out = vec![per_row(t, &p, c, "norms", "norms_rows")
            .bind("wte", r.wte)
            .bind("rinv", r.rinv)];
        // The column sums run over rows in order, LOOP_LIMIT rows per dispatch.
        for r0 in (0..v.max(1)).step_by(LOOP_LIMIT as usize) {
            let p = params(v, c, r.gamma, (r0, (r0 + LOOP_LIMIT).min(v)));
            out.push(
                Launch::new(&SHADER, "col_sum", &p, grid(c.div_ceil(64)))
                    .bind("wte", r.wte)
                    .bind("rinv", r.rinv)
                    .bind("s", r.s),
            );
        }
        out.push(
            Launch::new(&SHADER, "penalty", &p, [1, 1, 1])
                .bind("s", r.s)
                .bind("loss", self.loss),
        );
        out
    }
    fn cpu(&self, m: &mut HostMem) {
        let r = &self.reg;
        m.with3([r.rinv, r.s, self.loss], |m, rinv, s, loss| {
            cpu_fwd(r, m.f(r.wte), rinv, s, loss)
        });
    }
}

impl Kernel for CosRegBwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let r = &self.reg;
        let p = params(r.v, r.c, r.gamma, (0, r.v));
        vec![per_row(t, &p, 2 * r.c, "bwd", "bwd_rows")
            .bind("wte", r.wte)
            .bind("rinv", r.rinv)
            .bind("s", r.s)
            .bind("dwte", self.dwte)]
    }
    fn cpu(&self, m: &mut HostMem) {
        let r = &self.reg;
        m.with(self.dwte, |m, d| {
            cpu_bwd(r, m.f(r.wte), m.f(r.rinv), m.f(r.s), d)
        });
    }
}

/// Forward then backward on odd shapes, the paper's embedding, rows wider than a workgroup,
/// and more rows than one dispatch's loop may run.
pub fn cases() -> Vec<Case> {
    [(3u32, 5u32), (130, 32), (130, 128), (7, 300), (20000, 3)]
        .into_iter()
        .map(|(v, c)| {
            let n = (v * c) as usize;
            Case::new("cosreg fwd+bwd", format!("V={v} C={c}"))
                .input("wte", n, Init::Normal(0.5))
                .output("rinv", v as usize)
                .output("s", c as usize)
                .inout("loss", 1, Init::Values(vec![2.5]))
                .inout("dwte", n, Init::Normal(0.01))
                .ops(move |b| {
                    let reg = CosReg {
                        v,
                        c,
                        gamma: 3.0,
                        wte: b["wte"],
                        rinv: b["rinv"],
                        s: b["s"],
                    };
                    let (loss, dwte) = (b["loss"], b["dwte"]);
                    vec![CosRegFwd { reg, loss }.op(), CosRegBwd { reg, dwte }.op()]
                })
                .tol(2e-5)
        })
        .collect()
}

/// CPU twin of [`CosRegFwd`]; f64 sums, stored in f32 between the steps as the shader does.
pub fn cpu_fwd(k: &CosReg, wte: &[f32], rinv: &mut [f32], s: &mut [f32], loss: &mut [f32]) {
    let (v, c) = (k.v as usize, k.c as usize);
    for (r, row) in rinv[..v].iter_mut().zip(wte.chunks(c)) {
        let ss: f64 = row.iter().map(|&x| x as f64 * x as f64).sum();
        *r = if ss > 0.0 {
            (1.0 / ss.sqrt()) as f32
        } else {
            0.0
        };
    }
    for (col, o) in s[..c].iter_mut().enumerate() {
        let acc: f64 = (0..v)
            .map(|r| wte[r * c + col] as f64 * rinv[r] as f64)
            .sum();
        *o = acc as f32;
    }
    let ss: f64 = s[..c].iter().map(|&x| x as f64 * x as f64).sum();
    let vv = v as f64;
    loss[0] += (k.gamma as f64 * (ss - vv) / (vv * vv)) as f32;
}

/// CPU twin of [`CosRegBwd`]; the step is formed in f64 and added in f32.
pub fn cpu_bwd(k: &CosReg, wte: &[f32], rinv: &[f32], s: &[f32], dwte: &mut [f32]) {
    let (v, c) = (k.v as usize, k.c as usize);
    let vv = v as f64;
    for r in 0..v {
        let row = &wte[r * c..][..c];
        let ri = rinv[r] as f64;
        let d = ri
            * row
                .iter()
                .zip(s)
                .map(|(&e, &x)| e as f64 * x as f64)
                .sum::<f64>();
        let g = 2.0 * k.gamma as f64 / (vv * vv) * ri;
        for ((o, &e), &x) in dwte[r * c..][..c].iter_mut().zip(row).zip(s) {
            *o += (g * (x as f64 - d * e as f64 * ri)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The penalty straight from its definition, the mean over all ordered pairs (the
    /// diagonal removed) of cosine similarities, in f64.
    fn penalty(wte: &[f32], v: usize, c: usize, gamma: f64) -> f64 {
        let row = |r: usize| &wte[r * c..][..c];
        let norm = |r: usize| {
            row(r)
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut sum = 0.0;
        for a in 0..v {
            for b in 0..v {
                if a != b {
                    let dot: f64 = row(a)
                        .iter()
                        .zip(row(b))
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum();
                    sum += dot / (norm(a) * norm(b));
                }
            }
        }
        gamma * sum / (v * v) as f64
    }

    #[test]
    fn value_and_gradient_match_the_definition() {
        let (v, c, gamma) = (6usize, 4usize, 2.5f32);
        let mut rng = Rng::new(5);
        let wte: Vec<f32> = (0..v * c).map(|_| rng.normal() as f32).collect();
        let reg = CosReg {
            v: v as u32,
            c: c as u32,
            gamma,
            wte: Buf(0),
            rinv: Buf(1),
            s: Buf(2),
        };
        let (mut rinv, mut s, mut loss) = (vec![0.0; v], vec![0.0; c], vec![1.0f32]);
        cpu_fwd(&reg, &wte, &mut rinv, &mut s, &mut loss);
        let want = penalty(&wte, v, c, gamma as f64);
        assert!(
            (loss[0] as f64 - 1.0 - want).abs() < 1e-6,
            "{} vs {want}",
            loss[0] - 1.0
        );
        let mut dwte = vec![0.0; v * c];
        cpu_bwd(&reg, &wte, &rinv, &s, &mut dwte);
        let h = 1e-3f32;
        for i in 0..v * c {
            let (mut p, mut m) = (wte.clone(), wte.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (penalty(&p, v, c, gamma as f64) - penalty(&m, v, c, gamma as f64))
                / (p[i] - m[i]) as f64;
            assert!(
                (fd - dwte[i] as f64).abs() < 1e-6 + 1e-4 * fd.abs(),
                "d/dE[{i}]: fd {fd} vs {}",
                dwte[i]
            );
        }
    }
}
