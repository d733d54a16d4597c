use crate::kernels::Launch;
use crate::runtime::Buf;

/// Attention sizes: batch, sequence length, width, heads (head size = c / nh).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape { pub b: u32, pub t: u32, pub c: u32, pub nh: u32 }

pub fn launch_fwd(_s: &Shape, _qkv: Buf, _att: Buf, _y: Buf) -> Launch { todo!() }
pub fn launch_bwd(_s: &Shape, _qkv: Buf, _att: Buf, _dy: Buf, _datt: Buf, _dqkv: Buf) -> Vec<Launch> { todo!() }
pub fn cpu_fwd(_s: &Shape, _qkv: &[f32], _att: &mut [f32], _y: &mut [f32]) { todo!() }
pub fn cpu_bwd(_s: &Shape, _qkv: &[f32], _att: &[f32], _dy: &[f32], _datt: &mut [f32], _dqkv: &mut [f32]) { todo!() }
