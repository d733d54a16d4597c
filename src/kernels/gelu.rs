//! GELU in its exact erf form (PyTorch's default, not the tanh approximation):
//! `gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) = x Phi(x)`, and its backward
//! `dx = dy (Phi(x) + x phi(x))`. WGSL has no erf (and a loose exp), so `shaders/gelu.wgsl`
//! builds both from fitted polynomials (`tools/fit_erf.py`): erf to ~5e-8 absolute, Phi to
//! ~4e-7 relative even deep in its left tail, where small activations live.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, IntoOp, Kernel, Launch, Shader, Target};

pub const SHADER: Shader = shader!("gelu", Params);

uniform! {
    pub struct Params {
        pub n: u32,
    }
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Phi(x), the standard normal CDF, through erfc so that the left tail keeps its relative
/// accuracy (it equals 0.5 (1 + erf(x / sqrt 2))).
fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

fn gelu(x: f64) -> f64 {
    x * norm_cdf(x)
}

fn gelu_grad(x: f64) -> f64 {
    norm_cdf(x) + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// `y = gelu(x)` over `n` elements.
#[derive(Clone, Copy, Debug)]
pub struct GeluFwd {
    pub n: u32,
    pub x: Buf,
    pub y: Buf,
}

/// `dx = dy · gelu'(x)`, overwriting `dx` (the MLP's hidden activation has no other
/// gradient path).
#[derive(Clone, Copy, Debug)]
pub struct GeluBwd {
    pub n: u32,
    pub x: Buf,
    pub dy: Buf,
    pub dx: Buf,
}

/// `y[i] = erf(x[i])` with the shader's erf, so its accuracy can be measured directly; the
/// CPU twin is libm's erf.
#[derive(Clone, Copy, Debug)]
pub struct ErfProbe {
    pub n: u32,
    pub x: Buf,
    pub y: Buf,
}

impl Kernel for GeluFwd {
    /// Four elements per invocation when `n` allows (the same bits either way).
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let (n, p) = (self.n, Params { n: self.n });
        vec![if n.is_multiple_of(4) {
            Launch::new(&SHADER, "gelu_fwd4", &p, elem_grid(n / 4))
                .bind("x4", self.x)
                .bind("y4", self.y)
        } else {
            Launch::new(&SHADER, "gelu_fwd", &p, elem_grid(n))
                .bind("x", self.x)
                .bind("y", self.y)
        }]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.y, |m, y| cpu_fwd(self.n, m.f(self.x), y));
    }
}

impl Kernel for GeluBwd {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let (n, p) = (self.n, Params { n: self.n });
        vec![if n.is_multiple_of(4) {
            Launch::new(&SHADER, "gelu_bwd4", &p, elem_grid(n / 4))
                .bind("x4", self.x)
                .bind("dy4", self.dy)
                .bind("dx4", self.dx)
        } else {
            Launch::new(&SHADER, "gelu_bwd", &p, elem_grid(n))
                .bind("x", self.x)
                .bind("dy", self.dy)
                .bind("dx", self.dx)
        }]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.dx, |m, dx| {
            cpu_bwd(self.n, m.f(self.x), m.f(self.dy), dx)
        });
    }
}

impl Kernel for ErfProbe {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params { n: self.n };
        vec![
            Launch::new(&SHADER, "gelu_erf_probe", &p, elem_grid(self.n))
                .bind("x", self.x)
                .bind("y", self.y),
        ]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.y, |m, y| {
            for (o, &x) in y.iter_mut().zip(&m.f(self.x)[..self.n as usize]) {
                *o = libm::erf(x as f64) as f32;
            }
        });
    }
}

/// CPU twin, each element in f64 (libm's erfc) rounded once to f32.
pub fn cpu_fwd(n: u32, x: &[f32], y: &mut [f32]) {
    let n = n as usize;
    for (yi, &xi) in y[..n].iter_mut().zip(&x[..n]) {
        *yi = gelu(xi as f64) as f32;
    }
}

/// CPU twin, each element in f64 rounded once to f32; overwrites `dx`.
pub fn cpu_bwd(n: u32, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let n = n as usize;
    for i in 0..n {
        dx[i] = (dy[i] as f64 * gelu_grad(x[i] as f64)) as f32;
    }
}

/// Forward then backward, both entry-point widths (n odd and n a multiple of 4). The
/// element-wise accuracy deep in the tails is `tests/gelu.rs`'s job.
pub fn cases() -> Vec<Case> {
    [1u32, 3, 257, 768 * 512]
        .into_iter()
        .map(|n| {
            let len = n as usize;
            Case::new("gelu fwd+bwd", format!("[{n}]"))
                .input("x", len, Init::Normal(3.0))
                .output("y", len)
                .input("dy", len, Init::Normal(1.0))
                .inout("dx", len, Init::Fill(f32::NAN))
                .ops(move |b| {
                    let x = b["x"];
                    vec![
                        GeluFwd { n, x, y: b["y"] }.op(),
                        GeluBwd {
                            n,
                            x,
                            dy: b["dy"],
                            dx: b["dx"],
                        }
                        .op(),
                    ]
                })
                .tol(1e-6)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn cpu_known_values() {
        let x = [1.0f32, -1.0, 0.0, 3.0];
        let mut y = [0.0f32; 4];
        cpu_fwd(4, &x, &mut y);
        // x * 0.5 * math.erfc(-x / math.sqrt(2)) in Python.
        let want = [
            0.841_344_746_068_543,
            -0.158_655_253_931_457,
            0.0,
            2.995_950_305_905_11,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let n = 200;
        let x: Vec<f32> = (0..n).map(|i| -7.0 + 14.0 * i as f32 / n as f32).collect();
        let mut r = Rng::new(7);
        let wts: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        let loss =
            |xs: &[f64]| -> f64 { xs.iter().zip(&wts).map(|(&v, &w)| w as f64 * gelu(v)).sum() };
        let mut dx = vec![0.0f32; n];
        cpu_bwd(n as u32, &x, &wts, &mut dx);
        let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let h = 1e-5;
        let mut worst = 0.0f64;
        for i in 0..n {
            let v = x64[i];
            x64[i] = v + h;
            let lp = loss(&x64);
            x64[i] = v - h;
            let lm = loss(&x64);
            x64[i] = v;
            let fd = (lp - lm) / (2.0 * h);
            let err = (dx[i] as f64 - fd).abs();
            worst = worst.max(err);
            assert!(
                err <= 1e-6 + 1e-5 * fd.abs(),
                "i={i} x={v} analytic {} vs fd {fd}",
                dx[i]
            );
        }
        eprintln!("gelu fd: max abs err {worst:.2e}");
    }
}
