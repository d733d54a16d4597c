//! The standalone threshold mask; `cross_entropy` fuses the same rule into the loss.

use crate::kernels::{elem_grid, margin_words, Launch};
use crate::runtime::Buf;

pub fn launch(
    rows: u32,
    cols: u32,
    margin: Option<f32>,
    logits: Buf,
    targets: Buf,
    out: Buf,
) -> Launch {
    let [on, m] = margin_words(margin);
    Launch {
        shader: "threshold",
        entry: "threshold_mask",
        params: vec![rows, cols, on, m, f32::NEG_INFINITY.to_bits()],
        bufs: vec![(1, logits), (2, targets), (3, out)],
        groups: elem_grid(rows * cols),
    }
}

/// Whether logit `l` survives in a row whose target logit is `lt`.
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
