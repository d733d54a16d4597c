use crate::kernels::Launch;
use crate::runtime::Buf;

#[allow(clippy::too_many_arguments)]
pub fn launch(_rows: u32, _cols: u32, _margin: Option<f32>, _scale: f32, _logits: Buf, _targets: Buf, _losses: Buf, _dlogits: Buf) -> Launch { todo!() }
pub fn launch_mean(_n: u32, _x: Buf, _out: Buf) -> Launch { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn cpu(_rows: u32, _cols: u32, _margin: Option<f32>, _scale: f32, _logits: &[f32], _targets: &[u32], _losses: &mut [f32], _dlogits: &mut [f32]) { todo!() }
pub fn cpu_mean(_n: u32, _x: &[f32], _out: &mut [f32]) { todo!() }
