use crate::kernels::Launch;
use crate::runtime::Buf;

pub fn launch(_rows: u32, _cols: u32, _margin: Option<f32>, _logits: Buf, _targets: Buf, _out: Buf) -> Launch { todo!() }
pub fn cpu(_rows: u32, _cols: u32, _margin: Option<f32>, _logits: &[f32], _targets: &[u32], _out: &mut [f32]) { todo!() }
