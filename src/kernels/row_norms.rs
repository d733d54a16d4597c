//! Per-position values from embedding norms (margins that follow `‖W_y‖` and `‖h‖`, the
//! adversarial target offset), and the offset's backward; see `shaders/row_norms.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{grid, IntoOp, Kernel, Launch, Shader, Target, REDUCE};

pub const SHADER: Shader = shader!("row_norms", Params, &REDUCE);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub c: u32,
        /// Columns of `dlogits` (the vocabulary).
        pub v: u32,
        pub alpha: f32,
        pub use_w: u32,
        pub use_h: u32,
    }
}

/// `vals[i] = alpha · ‖w[targets[i]]‖ · ‖h[i]‖`, each norm only where asked.
#[derive(Clone, Copy, Debug)]
pub struct RowNorms {
    pub rows: u32,
    pub c: u32,
    pub alpha: f32,
    pub use_w: bool,
    pub use_h: bool,
    pub h: Buf,
    pub w: Buf,
    pub targets: Buf,
    pub vals: Buf,
}

/// `dh[i] += -dlogits[i, t_i] · vals[i] / ‖h_i‖² · h_i`: the gradient through `‖h_i‖` of a
/// target offset `vals[i]` proportional to it.
#[derive(Clone, Copy, Debug)]
pub struct AdvBwd {
    pub rows: u32,
    pub c: u32,
    pub v: u32,
    pub h: Buf,
    pub targets: Buf,
    pub vals: Buf,
    pub dlogits: Buf,
    pub dh: Buf,
}

/// A row kernel: one invocation per row on CPU-like adapters, a workgroup per row elsewhere.
fn row_launch(t: &Target, entry: &'static str, rows_entry: &'static str, p: &Params) -> Launch {
    if t.cpu_loop(2 * p.c) {
        Launch::new(&SHADER, rows_entry, p, grid(p.rows.div_ceil(64)))
    } else {
        Launch::new(&SHADER, entry, p, grid(p.rows))
    }
}

impl Kernel for RowNorms {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            c: self.c,
            v: 0,
            alpha: self.alpha,
            use_w: self.use_w as u32,
            use_h: self.use_h as u32,
        };
        vec![row_launch(t, "row_norms", "row_norms_rows", &p)
            .bind("h", self.h)
            .bind("w", self.w)
            .bind("targets", self.targets)
            .bind("vals", self.vals)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.vals, |m, vals| {
            cpu_fwd(self, m.f(self.h), m.f(self.w), m.u(self.targets), vals)
        });
    }
}

impl Kernel for AdvBwd {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            c: self.c,
            v: self.v,
            ..Params::default()
        };
        vec![row_launch(t, "adv_bwd", "adv_bwd_rows", &p)
            .bind("h", self.h)
            .bind("targets", self.targets)
            .bind("vals", self.vals)
            .bind("dlogits", self.dlogits)
            .bind("dh", self.dh)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.dh, |m, dh| {
            cpu_adv_bwd(
                self,
                m.f(self.h),
                m.u(self.targets),
                m.f(self.vals),
                m.f(self.dlogits),
                dh,
            )
        });
    }
}

/// Every mix of norms on odd widths (past one workgroup's 64 lanes) and the paper's, then
/// the offset's backward after its forward.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for &(rows, c, v) in &[(3u32, 5u32, 7u32), (5, 300, 11), (768, 128, 130)] {
        let (n, cu) = (rows as usize, c as usize);
        for (use_w, use_h) in [(true, false), (false, true), (true, true)] {
            out.push(
                Case::new(
                    "row_norms fwd",
                    format!("rows={rows} C={c} V={v} w={use_w} h={use_h}"),
                )
                .input("h", n * cu, Init::Normal(1.0))
                .input("w", v as usize * cu, Init::Normal(0.5))
                .words("targets", n, Init::Tokens(v))
                .output("vals", n)
                .ops(move |b| {
                    vec![RowNorms {
                        rows,
                        c,
                        alpha: 0.3,
                        use_w,
                        use_h,
                        h: b["h"],
                        w: b["w"],
                        targets: b["targets"],
                        vals: b["vals"],
                    }
                    .op()]
                })
                .tol(1e-5),
            );
        }
        out.push(
            Case::new("row_norms adv fwd+bwd", format!("rows={rows} C={c} V={v}"))
                .input("h", n * cu, Init::Normal(1.0))
                .input("w", v as usize * cu, Init::Normal(0.5))
                .words("targets", n, Init::Tokens(v))
                .input("dlogits", n * v as usize, Init::Normal(0.1))
                .output("vals", n)
                .inout("dh", n * cu, Init::Normal(0.01))
                .ops(move |b| {
                    let (h, targets, vals) = (b["h"], b["targets"], b["vals"]);
                    vec![
                        RowNorms {
                            rows,
                            c,
                            alpha: 0.5,
                            use_w: true,
                            use_h: true,
                            h,
                            w: b["w"],
                            targets,
                            vals,
                        }
                        .op(),
                        AdvBwd {
                            rows,
                            c,
                            v,
                            h,
                            targets,
                            vals,
                            dlogits: b["dlogits"],
                            dh: b["dh"],
                        }
                        .op(),
                    ]
                })
                .tol(1e-5),
        );
    }
    out
}

fn sq(x: &[f32]) -> f64 {
    x.iter().map(|&a| a as f64 * a as f64).sum()
}

/// CPU twin of [`RowNorms`]; f64 sums.
pub fn cpu_fwd(k: &RowNorms, h: &[f32], w: &[f32], targets: &[u32], vals: &mut [f32]) {
    let c = k.c as usize;
    for (i, o) in vals[..k.rows as usize].iter_mut().enumerate() {
        let t = targets[i] as usize;
        let mut x = k.alpha as f64;
        if k.use_w {
            x *= sq(&w[t * c..][..c]).sqrt();
        }
        if k.use_h {
            x *= sq(&h[i * c..][..c]).sqrt();
        }
        *o = x as f32;
    }
}

/// CPU twin of [`AdvBwd`]; the step is formed in f64 and added to `dh` in f32.
pub fn cpu_adv_bwd(
    k: &AdvBwd,
    h: &[f32],
    targets: &[u32],
    vals: &[f32],
    dlogits: &[f32],
    dh: &mut [f32],
) {
    let (c, v) = (k.c as usize, k.v as usize);
    for i in 0..k.rows as usize {
        let hi = &h[i * c..][..c];
        let hh = sq(hi);
        if hh == 0.0 {
            continue;
        }
        let g = -(dlogits[i * v + targets[i] as usize] as f64) * vals[i] as f64 / hh;
        for (o, &x) in dh[i * c..][..c].iter_mut().zip(hi) {
            *o += (g * x as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The offset `o_i = alpha·‖w_t‖·‖h_i‖` with upstream gradient `-dlogits[i, t_i]`: its
    /// gradient in `h` against central differences of `Σ_i -dlogits[i, t_i]·o_i(h)`.
    #[test]
    fn adv_backward_matches_finite_differences() {
        let (rows, c, v) = (4usize, 6usize, 5usize);
        let mut rng = Rng::new(11);
        let h: Vec<f32> = (0..rows * c).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..v * c).map(|_| rng.normal() as f32).collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(v) as u32).collect();
        let dlogits: Vec<f32> = (0..rows * v).map(|_| rng.normal() as f32).collect();
        let alpha = 0.7f64;
        let objective = |h: &[f32]| -> f64 {
            (0..rows)
                .map(|i| {
                    let t = targets[i] as usize;
                    let o = alpha * sq(&w[t * c..][..c]).sqrt() * sq(&h[i * c..][..c]).sqrt();
                    -(dlogits[i * v + t] as f64) * o
                })
                .sum()
        };
        let fwd = RowNorms {
            rows: rows as u32,
            c: c as u32,
            alpha: alpha as f32,
            use_w: true,
            use_h: true,
            h: Buf(0),
            w: Buf(1),
            targets: Buf(2),
            vals: Buf(3),
        };
        let mut vals = vec![0.0; rows];
        cpu_fwd(&fwd, &h, &w, &targets, &mut vals);
        let bwd = AdvBwd {
            rows: rows as u32,
            c: c as u32,
            v: v as u32,
            h: Buf(0),
            targets: Buf(2),
            vals: Buf(3),
            dlogits: Buf(4),
            dh: Buf(5),
        };
        let mut dh = vec![0.0; rows * c];
        cpu_adv_bwd(&bwd, &h, &targets, &vals, &dlogits, &mut dh);
        let step = 1e-3f32;
        for i in 0..rows * c {
            let (mut hp, mut hm) = (h.clone(), h.clone());
            hp[i] += step;
            hm[i] -= step;
            let fd = (objective(&hp) - objective(&hm)) / (hp[i] - hm[i]) as f64;
            assert!(
                (fd - dh[i] as f64).abs() < 1e-5 + 1e-4 * fd.abs(),
                "d/dh[{i}]: fd {fd} vs {}",
                dh[i]
            );
        }
    }
}
