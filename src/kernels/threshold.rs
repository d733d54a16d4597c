//! The standalone threshold mask; `cross_entropy` fuses the same rule into the loss.
//!
//! `out[r, j] = logits[r, j]` if `logits[r, j] >= logits[r, t_r] - margin`, else `-inf`;
//! with no margin it copies. See `shaders/threshold.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::{elem_grid, IntoOp, Kernel, Launch, Shader, Target};

pub const SHADER: Shader = shader!("threshold", Params);

uniform! {
    pub struct Params {
        pub rows: u32,
        pub cols: u32,
        pub use_margin: u32,
        pub margin: f32,
        /// -inf as bits: WGSL has no infinity literal.
        pub neg_inf_bits: u32,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ThresholdMask {
    pub rows: u32,
    pub cols: u32,
    pub margin: Option<f32>,
    pub logits: Buf,
    pub targets: Buf,
    pub out: Buf,
}

impl Kernel for ThresholdMask {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            rows: self.rows,
            cols: self.cols,
            use_margin: self.margin.is_some() as u32,
            margin: self.margin.unwrap_or(0.0),
            neg_inf_bits: f32::NEG_INFINITY.to_bits(),
        };
        let groups = elem_grid(self.rows * self.cols);
        vec![Launch::new(&SHADER, "threshold_mask", &p, groups)
            .bind("logits", self.logits)
            .bind("targets", self.targets)
            .bind("out", self.out)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.out, |m, out| {
            cpu(
                self.rows,
                self.cols,
                self.margin,
                m.f(self.logits),
                m.u(self.targets),
                out,
            )
        });
    }
}

/// Every margin (and none) on odd shapes and the paper's logits; the mask must match exactly.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &(rows, cols) in &[(3u32, 17u32), (7, 257), (768, 130)] {
        for margin in [None, Some(0.0), Some(0.5), Some(2.0), Some(8.0)] {
            let n = (rows * cols) as usize;
            let mtxt = margin.map_or("off".to_string(), |m| m.to_string());
            v.push(
                Case::new("threshold mask", format!("[{rows}x{cols}] m={mtxt}"))
                    .input("logits", n, Init::Normal(2.0))
                    .words("targets", rows as usize, Init::Tokens(cols))
                    .output("masked", n)
                    .ops(move |b| {
                        vec![ThresholdMask {
                            rows,
                            cols,
                            margin,
                            logits: b["logits"],
                            targets: b["targets"],
                            out: b["masked"],
                        }
                        .op()]
                    }),
            );
        }
    }
    v
}

pub fn kept(l: f32, lt: f32, margin: Option<f32>) -> bool {
    match margin {
        Some(m) => l >= lt - m,
        None => true,
    }
}

/// CPU twin (no arithmetic beyond the f32 comparison the GPU makes).
pub fn cpu(
    rows: u32,
    cols: u32,
    margin: Option<f32>,
    logits: &[f32],
    targets: &[u32],
    out: &mut [f32],
) {
    let cols = cols as usize;
    for r in 0..rows as usize {
        let row = &logits[r * cols..(r + 1) * cols];
        let lt = row[targets[r] as usize];
        for (o, &l) in out[r * cols..(r + 1) * cols].iter_mut().zip(row) {
            *o = if kept(l, lt, margin) {
                l
            } else {
                f32::NEG_INFINITY
            };
        }
    }
}
