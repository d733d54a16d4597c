//! Two interchangeable executors of the same op lists: the GPU (wgpu) and the CPU twins.
//!
//! A model allocates named buffers, then compiles op lists ("sequences") once. On the GPU,
//! compiling builds every pipeline, uniform buffer and bind group up front, so running a
//! sequence is only `set_pipeline / set_bind_group / dispatch` inside one compute pass.
//! On the CPU, running a sequence calls each kernel's plain-Rust twin in order.
//!
//! Reading a buffer back is asynchronous, because a browser can only map GPU memory from its
//! event loop; native callers wait with [`Wait`], which blocks.

pub mod cpu;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;

use std::future::Future;
use std::pin::Pin;

use anyhow::Result;

pub use crate::buffers::{Buf, Dtype};
use crate::kernels::Op;
pub use cpu::CpuBackend;
pub use gpu::GpuBackend;

/// A compiled op list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq(pub usize);

/// A result that is ready once the device has finished (a readback, a wait).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// What the model is written against.
pub trait Backend {
    /// Adapter or CPU name, for logs.
    fn name(&self) -> String;
    /// Allocates a zero-filled buffer of `len` elements.
    fn alloc(&mut self, label: &str, len: usize, dtype: Dtype) -> Result<Buf>;
    fn len(&self, b: Buf) -> usize;
    fn write_f32(&mut self, b: Buf, data: &[f32]);
    fn write_u32(&mut self, b: Buf, data: &[u32]);
    /// The buffer's contents once every queued op has run.
    fn read_f32(&mut self, b: Buf) -> Pending<'_, Vec<f32>>;
    /// Builds everything a sequence needs so that running it allocates nothing.
    fn compile(&mut self, ops: Vec<Op>) -> Result<Seq>;
    /// Runs sequences in order, as one submission on the GPU.
    fn run(&mut self, seqs: &[Seq]) -> Result<()>;
    /// Waits for queued work (ready at once on the CPU).
    fn finish(&mut self) -> Pending<'_, ()>;
    /// Bytes this backend holds for buffers (and, on the GPU, dispatch uniforms); 0 where
    /// it does not count.
    fn allocated_bytes(&self) -> u64 {
        0
    }
    /// A point to return to with [`Backend::release`].
    fn mark(&self) -> Mark {
        Mark { bufs: 0, seqs: 0 }
    }
    /// Frees every buffer and sequence made after `m`; their handles become invalid. A
    /// backend that cannot free keeps everything.
    fn release(&mut self, _m: Mark) {}
    /// The largest single buffer in bytes, and the limit that sets it; `None`: no such limit.
    fn max_buffer_bytes(&self) -> Option<(u64, String)> {
        None
    }
    /// Bytes all buffers together may take, and where that figure comes from; `None`: unknown.
    fn memory_budget(&self) -> Option<(u64, String)> {
        None
    }
}

/// Counts of buffers and sequences at some moment; see [`Backend::mark`].
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub bufs: usize,
    pub seqs: usize,
}

/// A ready result, for backends that never wait.
pub fn ready<'a, T: 'a>(v: Result<T>) -> Pending<'a, T> {
    Box::pin(std::future::ready(v))
}

/// Blocking reads for native callers (the command line, benchmarks, tests).
#[cfg(not(target_arch = "wasm32"))]
pub trait Wait: Backend {
    fn read_now(&mut self, b: Buf) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(b))
    }
    fn finish_now(&mut self) -> Result<()> {
        pollster::block_on(self.finish())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<B: Backend + ?Sized> Wait for B {}

/// Host memory available to a new allocation (Linux `MemAvailable`), so a model too big for
/// the machine is refused with a message instead of being killed by the OOM killer.
pub fn available_memory() -> Option<(u64, String)> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            kib.saturating_mul(1024),
            "MemAvailable in /proc/meminfo".into(),
        ))
    }
    #[cfg(target_arch = "wasm32")]
    None
}

/// Opens `cpu` or a GPU backend by name (see [`crate::gpu::Gpu::open`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn open_backend(name: Option<&str>) -> Result<Box<dyn Backend>> {
    match name {
        Some(n) if n.eq_ignore_ascii_case("cpu") => Ok(Box::new(CpuBackend::new())),
        _ => Ok(Box::new(GpuBackend::open(name)?)),
    }
}
