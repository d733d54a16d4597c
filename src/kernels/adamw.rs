use crate::kernels::Launch;
use crate::runtime::Buf;

/// Fixed AdamW hyper-parameters; lr and bias corrections change per step and live in the
/// `step` buffer: `[lr, 1 - beta1^t, sqrt(1 - beta2^t), 0]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper { pub beta1: f32, pub beta2: f32, pub eps: f32, pub weight_decay: f32 }

/// Partial sums per tensor: `partials[slot .. slot + SUMSQ_GROUPS]`.
pub const SUMSQ_GROUPS: u32 = 32;

pub fn launch_sum_squares(_n: u32, _slot: u32, _g: Buf, _partials: Buf) -> Launch { todo!() }
pub fn launch_grad_norm(_count: u32, _clip: f32, _partials: Buf, _norm: Buf) -> Launch { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn launch_step(_n: u32, _h: &Hyper, _p: Buf, _g: Buf, _m: Buf, _v: Buf, _norm: Buf, _step: Buf) -> Launch { todo!() }
pub fn cpu_sum_squares(_n: u32, _slot: u32, _g: &[f32], _partials: &mut [f32]) { todo!() }
pub fn cpu_grad_norm(_count: u32, _clip: f32, _partials: &[f32], _norm: &mut [f32]) { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn cpu_step(_n: u32, _h: &Hyper, _p: &mut [f32], _g: &[f32], _m: &mut [f32], _v: &mut [f32], _norm: &[f32], _step: &[f32]) { todo!() }
