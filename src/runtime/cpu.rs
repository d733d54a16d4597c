//! The CPU executor: every op's plain-Rust twin, in order, on host memory.

use anyhow::Result;

use crate::buffers::{Buf, Dtype, HostMem};
use crate::kernels::Op;
use crate::runtime::{available_memory, ready, Backend, Mark, Pending, Seq};

#[derive(Default)]
pub struct CpuBackend {
    mem: HostMem,
    seqs: Vec<Vec<Op>>,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu (plain-Rust twins)".into()
    }
    fn alloc(&mut self, _label: &str, len: usize, dtype: Dtype) -> Result<Buf> {
        Ok(self.mem.alloc(len, dtype))
    }
    fn len(&self, b: Buf) -> usize {
        self.mem.len(b)
    }
    fn write_f32(&mut self, b: Buf, data: &[f32]) {
        self.mem.f_mut(b)[..data.len()].copy_from_slice(data);
    }
    fn write_u32(&mut self, b: Buf, data: &[u32]) {
        self.mem.u_mut(b)[..data.len()].copy_from_slice(data);
    }
    fn read_f32(&mut self, b: Buf) -> Pending<'_, Vec<f32>> {
        ready(Ok(self.mem.f(b).to_vec()))
    }
    fn compile(&mut self, ops: Vec<Op>) -> Result<Seq> {
        self.seqs.push(ops);
        Ok(Seq(self.seqs.len() - 1))
    }
    fn run(&mut self, seqs: &[Seq]) -> Result<()> {
        for s in seqs {
            for op in &self.seqs[s.0] {
                op.cpu(&mut self.mem);
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Pending<'_, ()> {
        ready(Ok(()))
    }
    fn allocated_bytes(&self) -> u64 {
        4 * self.mem.total_len() as u64
    }
    fn mark(&self) -> Mark {
        Mark {
            bufs: self.mem.count(),
            seqs: self.seqs.len(),
        }
    }
    fn release(&mut self, m: Mark) {
        self.mem.truncate(m.bufs);
        self.seqs.truncate(m.seqs);
    }
    fn memory_budget(&self) -> Option<(u64, String)> {
        available_memory()
    }
}
