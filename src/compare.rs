//! The one tensor comparison the crate uses, for GPU against CPU (`selfish check`) and for
//! the model against PyTorch (`check --fixture`, the browser's fixture check).
//!
//! Errors are measured against the scale of the reference (its largest finite magnitude),
//! since f32 sums in different orders differ by a few ulps of the largest terms, not of each
//! entry. Non-finite values must match exactly: the same infinity, or NaN against NaN (an
//! entry both sides left alone); anything else is an infinite error.

use serde::Serialize;

/// How far `got` is from `want`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diff {
    pub max_abs: f64,
    /// Over the entries of `want` larger than 1e-3 of its scale.
    pub max_rel: f64,
    /// Largest finite |want|.
    pub scale: f64,
}

impl Diff {
    /// Within `tol` relative to the scale (an exact match always is).
    pub fn within(&self, tol: f64) -> bool {
        self.max_abs == 0.0 || self.max_abs <= tol * self.scale.max(1e-30)
    }

    /// The worse of two diffs.
    pub fn max(self, o: Diff) -> Diff {
        Diff {
            max_abs: self.max_abs.max(o.max_abs),
            max_rel: self.max_rel.max(o.max_rel),
            scale: self.scale.max(o.scale),
        }
    }
}

pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |a, &b| a.max(b.abs() as f64));
    let mut d = Diff {
        max_abs: if got.len() == want.len() {
            0.0
        } else {
            f64::INFINITY
        },
        max_rel: 0.0,
        scale,
    };
    for (&x, &y) in got.iter().zip(want) {
        let e = if x.is_finite() && y.is_finite() {
            (x as f64 - y as f64).abs()
        } else if x == y || (x.is_nan() && y.is_nan()) {
            0.0
        } else {
            f64::INFINITY
        };
        d.max_abs = d.max_abs.max(e);
        if y.is_finite() && (y.abs() as f64) > 1e-3 * scale {
            d.max_rel = d.max_rel.max(e / y.abs() as f64);
        } else if !e.is_finite() {
            d.max_rel = f64::INFINITY;
        }
    }
    d
}

/// One line of a check report.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// What was compared: an op and direction, or a model quantity.
    pub op: String,
    pub shape: String,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub tol: f64,
    pub ok: bool,
}

impl Row {
    pub fn new(op: impl Into<String>, shape: impl Into<String>, d: Diff, tol: f64) -> Row {
        Row {
            op: op.into(),
            shape: shape.into(),
            max_abs_err: d.max_abs,
            max_rel_err: d.max_rel,
            tol,
            ok: d.within(tol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_relative_with_exact_non_finite_rules() {
        let d = diff(&[1.0, 2.0, 100.0], &[1.0, 2.001, 100.0]);
        assert!((d.max_abs - 0.001).abs() < 1e-6 && d.scale == 100.0);
        assert!(d.within(1e-4) && !d.within(1e-6));
        assert!(diff(&[f32::NAN, 1.0], &[f32::NAN, 1.0]).within(0.0));
        assert!(diff(&[f32::INFINITY], &[f32::INFINITY]).within(0.0));
        assert!(!diff(&[f32::NAN], &[1.0]).within(1.0));
        assert!(!diff(&[1.0], &[f32::NEG_INFINITY]).within(1.0));
        assert!(!diff(&[1.0], &[1.0, 2.0]).within(1.0));
        assert!(diff(&[0.0], &[0.0]).within(0.0));
    }
}
