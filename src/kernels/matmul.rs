use crate::kernels::Launch;
use crate::runtime::Buf;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape { pub batch: u32, pub m: u32, pub n: u32, pub k: u32, pub trans_a: bool, pub trans_b: bool, pub accumulate: bool }

pub fn launch(_s: &Shape, _a: Buf, _b: Buf, _c: Buf) -> Launch { todo!() }
pub fn cpu(_s: &Shape, _a: &[f32], _b: &[f32], _c: &mut [f32]) { todo!() }
