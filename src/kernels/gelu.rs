use crate::kernels::Launch;
use crate::runtime::Buf;

pub fn launch_fwd(_n: u32, _x: Buf, _y: Buf) -> Launch { todo!() }
pub fn launch_bwd(_n: u32, _x: Buf, _dy: Buf, _dx: Buf) -> Launch { todo!() }
pub fn cpu_fwd(_n: u32, _x: &[f32], _y: &mut [f32]) { todo!() }
pub fn cpu_bwd(_n: u32, _x: &[f32], _dy: &[f32], _dx: &mut [f32]) { todo!() }
