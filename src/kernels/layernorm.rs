use crate::kernels::Launch;
use crate::runtime::Buf;

pub fn launch_fwd(_rows: u32, _cols: u32, _x: Buf, _w: Buf, _y: Buf, _mean: Buf, _rstd: Buf) -> Launch { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn launch_bwd(_rows: u32, _cols: u32, _accumulate: bool, _x: Buf, _w: Buf, _mean: Buf, _rstd: Buf, _dy: Buf, _dx: Buf, _dw: Buf) -> Vec<Launch> { todo!() }
pub fn cpu_fwd(_rows: u32, _cols: u32, _x: &[f32], _w: &[f32], _y: &mut [f32], _mean: &mut [f32], _rstd: &mut [f32]) { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn cpu_bwd(_rows: u32, _cols: u32, _accumulate: bool, _x: &[f32], _w: &[f32], _mean: &[f32], _rstd: &[f32], _dy: &[f32], _dx: &mut [f32], _dw: &mut [f32]) { todo!() }
