//! Residual connections: `out = a + b` on the forward pass and `acc += a` where two
//! gradient paths meet on the backward pass; see `shaders/residual.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, IntoOp, Kernel, Launch, Shader, Target};

pub const SHADER: Shader = shader!("residual", Params);

uniform! {
    pub struct Params {
        pub n: u32,
    }
}

/// `out[i] = a[i] + b[i]` for `i < n`.
#[derive(Clone, Copy, Debug)]
pub struct Add {
    pub n: u32,
    pub a: Buf,
    pub b: Buf,
    pub out: Buf,
}

/// `acc[i] += a[i]` for `i < n`.
#[derive(Clone, Copy, Debug)]
pub struct AddInPlace {
    pub n: u32,
    pub acc: Buf,
    pub a: Buf,
}

impl Kernel for Add {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params { n: self.n };
        vec![Launch::new(&SHADER, "add", &p, elem_grid(self.n))
            .bind("a", self.a)
            .bind("b", self.b)
            .bind("out", self.out)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.out, |m, o| {
            cpu_add(self.n, m.f(self.a), m.f(self.b), o)
        });
    }
}

impl Kernel for AddInPlace {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params { n: self.n };
        vec![Launch::new(&SHADER, "add_in_place", &p, elem_grid(self.n))
            .bind("a", self.a)
            .bind("acc", self.acc)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.acc, |m, acc| {
            cpu_add_in_place(self.n, acc, m.f(self.a))
        });
    }
}

pub fn cpu_add(n: u32, a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = n as usize;
    for (o, (x, y)) in out[..n].iter_mut().zip(a[..n].iter().zip(&b[..n])) {
        *o = x + y;
    }
}

pub fn cpu_add_in_place(n: u32, acc: &mut [f32], a: &[f32]) {
    let n = n as usize;
    for (o, x) in acc[..n].iter_mut().zip(&a[..n]) {
        *o += x;
    }
}

/// Both adds; the buffers are 5 longer than `n`, and what lies past `n` must stay. One f32
/// add per element on both sides, so the results must match exactly.
pub fn cases() -> Vec<Case> {
    [1u32, 3, 17, 255, 256, 257, 1000, 65 * 256 + 3, 768 * 128]
        .into_iter()
        .map(|n| {
            let len = n as usize + 5;
            Case::new("residual add", format!("[{n}]"))
                .input("a", len, Init::Normal(1.0))
                .input("b", len, Init::Normal(1.0))
                .inout("out", len, Init::Fill(7.0))
                .inout("acc", len, Init::Normal(1.0))
                .ops(move |b| {
                    let (a, acc) = (b["a"], b["acc"]);
                    vec![
                        Add {
                            n,
                            a,
                            b: b["b"],
                            out: b["out"],
                        }
                        .op(),
                        AddInPlace { n, acc, a }.op(),
                    ]
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_stop_at_n() {
        let (a, b) = ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]);
        let mut out = [0.0; 3];
        cpu_add(2, &a, &b, &mut out);
        assert_eq!(out, [11.0, 22.0, 0.0]);
        let mut acc = [5.0; 3];
        cpu_add_in_place(2, &mut acc, &a);
        assert_eq!(acc, [6.0, 7.0, 5.0]);
    }
}
