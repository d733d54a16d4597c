//! Adaptive gradient gating (Yu et al. 2022): the gated copy of `dlogits` the output
//! embedding's gradient is taken from; see `shaders/agg.wgsl`. The gates come from a window
//! of target counts the host keeps (`crate::loss::AggWindow`).

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, IntoOp, Kernel, Launch, Shader, Target};

pub const SHADER: Shader = shader!("agg", Params);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
    }
}

/// `dlogits_w[r, j] = g · dlogits[r, j]` with `g = 1` at the target and
/// `gates[rare[t], j]` elsewhere.
#[derive(Clone, Copy, Debug)]
pub struct AggGate {
    pub rows: u32,
    pub cols: u32,
    pub dlogits: Buf,
    pub targets: Buf,
    /// u32 `[cols]`, 1 for a rare token.
    pub rare: Buf,
    /// f32 `[2, cols]`: the gates of common-target and rare-target positions.
    pub gates: Buf,
    pub dlogits_w: Buf,
}

impl Kernel for AggGate {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            cols: self.cols,
        };
        vec![
            Launch::new(&SHADER, "gate", &p, elem_grid(self.rows * self.cols))
                .bind("dlogits", self.dlogits)
                .bind("targets", self.targets)
                .bind("rare", self.rare)
                .bind("gates", self.gates)
                .bind("dlogits_w", self.dlogits_w),
        ]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.dlogits_w, |m, out| {
            cpu(
                (self.rows as usize, self.cols as usize),
                m.f(self.dlogits),
                m.u(self.targets),
                m.u(self.rare),
                m.f(self.gates),
                out,
            )
        });
    }
}

/// Odd shapes and the paper's; about a third of the tokens rare.
pub fn cases() -> Vec<Case> {
    [(3u32, 7u32), (64, 130), (768, 130), (5, 1030)]
        .into_iter()
        .map(|(rows, cols)| {
            let n = (rows * cols) as usize;
            let rare: Vec<u32> = (0..cols).map(|j| (j % 3 == 1) as u32).collect();
            Case::new("agg gate", format!("[{rows}x{cols}]"))
                .input("dlogits", n, Init::Normal(1.0))
                .words("targets", rows as usize, Init::Tokens(cols))
                .words("rare", cols as usize, Init::Words(rare))
                .input("gates", 2 * cols as usize, Init::Uniform(0.0, 1.0))
                .output("dlogits_w", n)
                .ops(move |b| {
                    vec![AggGate {
                        rows,
                        cols,
                        dlogits: b["dlogits"],
                        targets: b["targets"],
                        rare: b["rare"],
                        gates: b["gates"],
                        dlogits_w: b["dlogits_w"],
                    }
                    .op()]
                })
        })
        .collect()
}

/// CPU twin (one f32 product per entry, as on the GPU).
pub fn cpu(
    (rows, cols): (usize, usize),
    dlogits: &[f32],
    targets: &[u32],
    rare: &[u32],
    gates: &[f32],
    out: &mut [f32],
) {
    for (r, &t) in targets[..rows].iter().enumerate() {
        let t = t as usize;
        let g = &gates[(rare[t].min(1) as usize) * cols..][..cols];
        for j in 0..cols {
            let gj = if j == t { 1.0 } else { g[j] };
            out[r * cols + j] = gj * dlogits[r * cols + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cross_entropy::{self, Keep};
    use crate::rng::Rng;

    /// The gated gradient is the derivative of AGG's surrogate `CE(z0 + g ⊙ (z − z0))` at
    /// `z = z0` (the ungated part held still): central differences against the twin applied
    /// to plain cross-entropy's gradient.
    #[test]
    fn gated_gradient_is_the_surrogates_derivative() {
        let (rows, cols) = (4usize, 9usize);
        let mut rng = Rng::new(4);
        let z0: Vec<f32> = (0..rows * cols)
            .map(|_| 2.0 * rng.normal() as f32)
            .collect();
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
        let rare: Vec<u32> = (0..cols).map(|j| (j % 2) as u32).collect();
        let gates: Vec<f32> = (0..2 * cols).map(|_| rng.uniform() as f32).collect();
        let gate = |r: usize, j: usize| {
            let t = targets[r] as usize;
            if j == t {
                1.0
            } else {
                gates[rare[t] as usize * cols + j] as f64
            }
        };
        let keep = Keep::default();
        let surrogate = |z: &[f32]| -> f64 {
            (0..rows)
                .map(|r| {
                    let row: Vec<f32> = (0..cols)
                        .map(|j| {
                            let i = r * cols + j;
                            (z0[i] as f64 + gate(r, j) * (z[i] - z0[i]) as f64) as f32
                        })
                        .collect();
                    cross_entropy::row(&row, targets[r] as usize, &keep, 1.0, None)
                })
                .sum()
        };
        let mut d = vec![0.0f32; rows * cols];
        for ((z, g), &t) in z0.chunks(cols).zip(d.chunks_mut(cols)).zip(&targets) {
            cross_entropy::row(z, t as usize, &keep, 1.0, Some(g));
        }
        let mut gated = vec![0.0; rows * cols];
        cpu((rows, cols), &d, &targets, &rare, &gates, &mut gated);
        let h = 1e-2f32;
        for i in 0..rows * cols {
            let (mut p, mut m) = (z0.clone(), z0.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (surrogate(&p) - surrogate(&m)) / (p[i] - m[i]) as f64;
            assert!(
                (fd - gated[i] as f64).abs() < 1e-5 + 1e-3 * fd.abs(),
                "d/dz[{i}]: fd {fd} vs {}",
                gated[i]
            );
        }
    }
}
