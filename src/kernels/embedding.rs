use crate::kernels::Launch;
use crate::runtime::Buf;

/// Embedding sizes: batch, sequence length, width, vocabulary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape { pub b: u32, pub t: u32, pub c: u32, pub v: u32 }

pub fn launch_fwd(_s: &Shape, _idx: Buf, _wte: Buf, _wpe: Buf, _x: Buf) -> Launch { todo!() }
pub fn launch_bwd(_s: &Shape, _accumulate: bool, _idx: Buf, _dx: Buf, _dwte: Buf, _dwpe: Buf) -> Vec<Launch> { todo!() }
pub fn cpu_fwd(_s: &Shape, _idx: &[u32], _wte: &[f32], _wpe: &[f32], _x: &mut [f32]) { todo!() }
pub fn cpu_bwd(_s: &Shape, _accumulate: bool, _idx: &[u32], _dx: &[f32], _dwte: &mut [f32], _dwpe: &mut [f32]) { todo!() }
