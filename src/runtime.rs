//! Two interchangeable executors of the same op lists: the GPU (wgpu) and the CPU twins.
//!
//! A model allocates named buffers, then compiles op lists ("sequences") once. On the GPU,
//! compiling builds every pipeline, uniform buffer and bind group up front, so running a
//! sequence is only `set_pipeline / set_bind_group / dispatch` inside one compute pass.
//! On the CPU, running a sequence calls each kernel's plain-Rust twin in order.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use wgpu::util::DeviceExt;

use crate::gpu::Gpu;
use crate::kernels::{Launch, Op, Target, SHADERS};

/// A buffer handle, valid for the backend that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Buf(pub usize);

/// A compiled op list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    U32,
}

/// What the model is written against.
pub trait Backend {
    /// Adapter or CPU name, for logs.
    fn name(&self) -> String;
    /// Allocates a zero-filled buffer of `len` elements.
    fn alloc(&mut self, label: &str, len: usize, dtype: Dtype) -> Result<Buf>;
    fn len(&self, b: Buf) -> usize;
    fn write_f32(&mut self, b: Buf, data: &[f32]);
    fn write_u32(&mut self, b: Buf, data: &[u32]);
    fn read_f32(&mut self, b: Buf) -> Result<Vec<f32>>;
    /// Builds everything a sequence needs so that running it allocates nothing.
    fn compile(&mut self, ops: &[Op]) -> Result<Seq>;
    /// Runs sequences in order, as one submission on the GPU.
    fn run(&mut self, seqs: &[Seq]) -> Result<()>;
    /// Waits for queued work (a no-op on the CPU).
    fn finish(&mut self) -> Result<()>;
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

/// Host memory available to a new allocation (Linux `MemAvailable`), so a model too big for
/// the machine is refused with a message instead of being killed by the OOM killer.
pub fn available_memory() -> Option<(u64, String)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        kib.saturating_mul(1024),
        "MemAvailable in /proc/meminfo".into(),
    ))
}

// ---------------------------------------------------------------------------------------------
// CPU

/// Host memory for the CPU twins.
#[derive(Default)]
pub struct HostMem {
    f: Vec<Vec<f32>>,
    u: Vec<Vec<u32>>,
    dtype: Vec<Dtype>,
}

impl HostMem {
    pub fn f(&self, b: Buf) -> &[f32] {
        &self.f[b.0]
    }
    pub fn u(&self, b: Buf) -> &[u32] {
        &self.u[b.0]
    }
    /// Moves an output out so inputs can be borrowed while it is written; see `put`.
    pub fn take(&mut self, b: Buf) -> Vec<f32> {
        std::mem::take(&mut self.f[b.0])
    }
    pub fn put(&mut self, b: Buf, v: Vec<f32>) {
        self.f[b.0] = v;
    }
}

pub struct CpuBackend {
    mem: HostMem,
    seqs: Vec<Vec<Op>>,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend {
            mem: HostMem::default(),
            seqs: Vec::new(),
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu (plain-Rust twins)".into()
    }
    fn alloc(&mut self, _label: &str, len: usize, dtype: Dtype) -> Result<Buf> {
        let id = self.mem.f.len();
        match dtype {
            Dtype::F32 => {
                self.mem.f.push(vec![0.0; len]);
                self.mem.u.push(Vec::new());
            }
            Dtype::U32 => {
                self.mem.f.push(Vec::new());
                self.mem.u.push(vec![0; len]);
            }
        }
        self.mem.dtype.push(dtype);
        Ok(Buf(id))
    }
    fn len(&self, b: Buf) -> usize {
        match self.mem.dtype[b.0] {
            Dtype::F32 => self.mem.f[b.0].len(),
            Dtype::U32 => self.mem.u[b.0].len(),
        }
    }
    fn write_f32(&mut self, b: Buf, data: &[f32]) {
        self.mem.f[b.0][..data.len()].copy_from_slice(data);
    }
    fn write_u32(&mut self, b: Buf, data: &[u32]) {
        self.mem.u[b.0][..data.len()].copy_from_slice(data);
    }
    fn read_f32(&mut self, b: Buf) -> Result<Vec<f32>> {
        Ok(self.mem.f[b.0].clone())
    }
    fn compile(&mut self, ops: &[Op]) -> Result<Seq> {
        self.seqs.push(ops.to_vec());
        Ok(Seq(self.seqs.len() - 1))
    }
    fn run(&mut self, seqs: &[Seq]) -> Result<()> {
        for s in seqs {
            for op in &self.seqs[s.0] {
                op.run_cpu(&mut self.mem);
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn allocated_bytes(&self) -> u64 {
        let f: usize = self.mem.f.iter().map(Vec::len).sum();
        let u: usize = self.mem.u.iter().map(Vec::len).sum();
        4 * (f + u) as u64
    }
    fn mark(&self) -> Mark {
        Mark {
            bufs: self.mem.f.len(),
            seqs: self.seqs.len(),
        }
    }
    fn release(&mut self, m: Mark) {
        self.mem.f.truncate(m.bufs);
        self.mem.u.truncate(m.bufs);
        self.mem.dtype.truncate(m.bufs);
        self.seqs.truncate(m.seqs);
    }
    fn memory_budget(&self) -> Option<(u64, String)> {
        available_memory()
    }
}

// ---------------------------------------------------------------------------------------------
// GPU

struct Prepared {
    /// `shader::entry`, for profiles.
    label: String,
    pipeline: usize,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    /// Kept alive for the bind group.
    uniform: wgpu::Buffer,
}

pub struct GpuBackend {
    pub gpu: Gpu,
    /// Kernel choice for this adapter; set before `compile` to force another (checks, benches).
    pub target: Target,
    /// Every matmul shape compiled so far, by [`matmul::Shape::key`] (what `selfish tune` times).
    pub matmul_shapes: std::collections::BTreeMap<String, crate::kernels::matmul::Shape>,
    bufs: Vec<(wgpu::Buffer, usize, Dtype)>,
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: Vec<wgpu::ComputePipeline>,
    pipeline_ids: HashMap<(&'static str, &'static str), usize>,
    seqs: Vec<Vec<Prepared>>,
}

impl GpuBackend {
    /// Kernel choice from the adapter and, unless `SELFISH_TUNED=0`, `selfish tune`'s cache.
    pub fn new(gpu: Gpu) -> GpuBackend {
        let mut target = gpu.target();
        if std::env::var("SELFISH_TUNED").as_deref() != Ok("0") {
            target.tuned = crate::tune::load(&gpu, &crate::kernels::matmul::available(&target));
        }
        GpuBackend {
            target,
            matmul_shapes: Default::default(),
            gpu,
            bufs: Vec::new(),
            modules: HashMap::new(),
            pipelines: Vec::new(),
            pipeline_ids: HashMap::new(),
            seqs: Vec::new(),
        }
    }

    /// Opens the adapter named by `--backend` (see [`Gpu::new`]).
    pub fn open(backend: Option<&str>) -> Result<GpuBackend> {
        Ok(GpuBackend::new(Gpu::new(backend)?))
    }

    fn pipeline(&mut self, shader: &'static str, entry: &'static str) -> Result<usize> {
        if let Some(&id) = self.pipeline_ids.get(&(shader, entry)) {
            return Ok(id);
        }
        let device = &self.gpu.device;
        if !self.modules.contains_key(shader) {
            let src = SHADERS
                .iter()
                .find(|(n, _)| *n == shader)
                .map(|(_, s)| *s)
                .ok_or_else(|| anyhow!("no shader named '{shader}'"))?;
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            if let Some(e) = pollster::block_on(scope.pop()) {
                bail!("shaders/{shader}.wgsl failed to compile: {e}");
            }
            self.modules.insert(shader, module);
        }
        let module = &self.modules[shader];
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("pipeline {shader}::{entry} failed: {e}");
        }
        self.pipelines.push(pipeline);
        let id = self.pipelines.len() - 1;
        self.pipeline_ids.insert((shader, entry), id);
        Ok(id)
    }

    fn prepare(&mut self, l: &Launch) -> Result<Prepared> {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension;
        if l.groups.iter().any(|&g| g > max) {
            bail!(
                "{}::{} needs {:?} workgroups, over the adapter's {max} per dimension: use smaller batch or block sizes",
                l.shader,
                l.entry,
                l.groups
            );
        }
        let pipeline = self.pipeline(l.shader, l.entry)?;
        let mut words = l.params.clone();
        while words.is_empty() || !words.len().is_multiple_of(4) {
            words.push(0);
        }
        let device = &self.gpu.device;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(l.entry),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for &(binding, b) in &l.bufs {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: self.bufs[b.0].0.as_entire_binding(),
            });
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(l.entry),
            layout: &self.pipelines[pipeline].get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("bind group for {}::{} failed: {e}", l.shader, l.entry);
        }
        Ok(Prepared {
            label: format!("{}::{}", l.shader, l.entry),
            pipeline,
            bind_group,
            groups: l.groups,
            uniform,
        })
    }
}

/// Time spent in one kind of dispatch over a profiled run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    /// `shader::entry`
    pub kernel: String,
    /// Seconds per run of the profiled sequences.
    pub seconds: f64,
    /// Dispatches per run.
    pub dispatches: usize,
}

impl GpuBackend {
    /// Time per kernel over `reps` runs of `seqs`, largest first, and whether it came from
    /// GPU timestamps (each dispatch in its own pass, all submitted together) or, where the
    /// adapter has none, from the wall clock around each dispatch submitted and waited for alone.
    pub fn profile(&mut self, seqs: &[Seq], reps: usize) -> Result<(Vec<KernelTime>, bool)> {
        let list: Vec<(usize, usize)> = seqs
            .iter()
            .flat_map(|s| (0..self.seqs[s.0].len()).map(move |i| (s.0, i)))
            .collect();
        let mut totals: Vec<KernelTime> = Vec::new();
        let mut add = |label: &str, secs: f64| match totals.iter_mut().find(|t| t.kernel == label) {
            Some(t) => {
                t.seconds += secs;
                t.dispatches += 1;
            }
            None => totals.push(KernelTime {
                kernel: label.to_string(),
                seconds: secs,
                dispatches: 1,
            }),
        };
        let timestamps = self.gpu.timestamps && !list.is_empty();
        for _ in 0..reps {
            if timestamps {
                for (label, secs) in self.time_with_queries(&list)? {
                    add(&label, secs);
                }
            } else {
                for &(s, i) in &list {
                    let p = &self.seqs[s][i];
                    let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&self.pipelines[p.pipeline]);
                        pass.set_bind_group(0, &p.bind_group, &[]);
                        pass.dispatch_workgroups(p.groups[0], p.groups[1], p.groups[2]);
                    }
                    let label = p.label.clone();
                    let t0 = std::time::Instant::now();
                    self.gpu.queue.submit([enc.finish()]);
                    self.finish()?;
                    add(&label, t0.elapsed().as_secs_f64());
                }
            }
        }
        for t in &mut totals {
            t.seconds /= reps.max(1) as f64;
            t.dispatches /= reps.max(1);
        }
        totals.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok((totals, timestamps))
    }

    /// Runs every listed dispatch in its own pass between two timestamps, in one submission.
    fn time_with_queries(&mut self, list: &[(usize, usize)]) -> Result<Vec<(String, f64)>> {
        let device = &self.gpu.device;
        // WebGPU caps a query set at 4096 queries: two per dispatch.
        let mut out = Vec::new();
        for chunk in list.chunks(2048) {
            let n = 2 * chunk.len() as u32;
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let bytes = n as u64 * 8;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = device.create_command_encoder(&Default::default());
            for (q, &(s, i)) in chunk.iter().enumerate() {
                let p = &self.seqs[s][i];
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * q as u32),
                        end_of_pass_write_index: Some(2 * q as u32 + 1),
                    }),
                });
                pass.set_pipeline(&self.pipelines[p.pipeline]);
                pass.set_bind_group(0, &p.bind_group, &[]);
                pass.dispatch_workgroups(p.groups[0], p.groups[1], p.groups[2]);
            }
            enc.resolve_query_set(&set, 0..n, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
            self.gpu.queue.submit([enc.finish()]);
            let ticks: Vec<u64> = map_read(&self.gpu, &staging)?;
            let period = self.gpu.queue.get_timestamp_period() as f64 * 1e-9;
            for (q, &(s, i)) in chunk.iter().enumerate() {
                let dt = ticks[2 * q + 1].saturating_sub(ticks[2 * q]) as f64 * period;
                out.push((self.seqs[s][i].label.clone(), dt));
            }
        }
        Ok(out)
    }
}

/// Waits for the queue, then copies a `MAP_READ` buffer out; a lost device or failed
/// operation becomes a one-line error.
fn map_read<T: bytemuck::Pod>(gpu: &Gpu, staging: &wgpu::Buffer) -> Result<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    let polled = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    gpu.check()?;
    polled.map_err(|e| anyhow!("GPU wait failed: {e}: {}", crate::gpu::RETRY))?;
    let mapped = rx
        .recv()
        .map_err(|_| anyhow!("a GPU readback never completed: {}", crate::gpu::RETRY))?;
    gpu.check()?;
    mapped.map_err(|e| anyhow!("reading a GPU buffer failed: {e}: {}", crate::gpu::RETRY))?;
    let out = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("mapping a GPU buffer failed: {e}"))?;
        bytemuck::cast_slice(&view).to_vec()
    };
    staging.unmap();
    Ok(out)
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.gpu.describe()
    }
    fn alloc(&mut self, label: &str, len: usize, dtype: Dtype) -> Result<Buf> {
        let bytes = (len.max(1) as u64).saturating_mul(4);
        let l = &self.gpu.limits;
        if bytes > l.max_storage_buffer_binding_size || bytes > l.max_buffer_size {
            bail!(
                "buffer '{label}' needs {bytes} bytes but the adapter allows {} per storage binding and {} per buffer: \
                 reduce batch_size, block_size or n_embd",
                l.max_storage_buffer_binding_size,
                l.max_buffer_size
            );
        }
        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            let held: u64 = self.bufs.iter().map(|b| b.0.size()).sum();
            bail!(
                "the GPU ran out of memory for buffer '{label}' ({bytes} bytes, with {held} bytes \
                 already allocated): {e}: lower --batch-size, --block-size or --n-embd"
            );
        }
        self.gpu.check()?;
        self.bufs.push((buffer, len, dtype));
        Ok(Buf(self.bufs.len() - 1))
    }
    fn max_buffer_bytes(&self) -> Option<(u64, String)> {
        let l = &self.gpu.limits;
        let (cap, name) = if l.max_storage_buffer_binding_size <= l.max_buffer_size {
            (
                l.max_storage_buffer_binding_size,
                "max_storage_buffer_binding_size",
            )
        } else {
            (l.max_buffer_size, "max_buffer_size")
        };
        Some((cap, format!("its limit {name}")))
    }
    fn memory_budget(&self) -> Option<(u64, String)> {
        // A software adapter (lavapipe, llvmpipe, WARP) keeps its buffers in host memory.
        if self.gpu.info.device_type == wgpu::DeviceType::Cpu {
            available_memory()
                .map(|(b, s)| (b, format!("{s}; this software adapter uses host memory")))
        } else {
            None
        }
    }
    fn len(&self, b: Buf) -> usize {
        self.bufs[b.0].1
    }
    fn write_f32(&mut self, b: Buf, data: &[f32]) {
        if !data.is_empty() {
            self.gpu
                .queue
                .write_buffer(&self.bufs[b.0].0, 0, bytemuck::cast_slice(data));
        }
    }
    fn write_u32(&mut self, b: Buf, data: &[u32]) {
        if !data.is_empty() {
            self.gpu
                .queue
                .write_buffer(&self.bufs[b.0].0, 0, bytemuck::cast_slice(data));
        }
    }
    fn read_f32(&mut self, b: Buf) -> Result<Vec<f32>> {
        let (src, len, _) = &self.bufs[b.0];
        let bytes = (*len * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let device = &self.gpu.device;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        let out = map_read(&self.gpu, &staging)?;
        Ok(out)
    }
    fn compile(&mut self, ops: &[Op]) -> Result<Seq> {
        let mut prepared = Vec::new();
        for op in ops {
            for s in op.matmul_shapes(&self.target) {
                self.matmul_shapes.insert(s.key(), s);
            }
            for l in op.launches(&self.target) {
                prepared.push(self.prepare(&l)?);
            }
        }
        self.seqs.push(prepared);
        Ok(Seq(self.seqs.len() - 1))
    }
    fn run(&mut self, seqs: &[Seq]) -> Result<()> {
        let device = &self.gpu.device;
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for s in seqs {
                for p in &self.seqs[s.0] {
                    pass.set_pipeline(&self.pipelines[p.pipeline]);
                    pass.set_bind_group(0, &p.bind_group, &[]);
                    pass.dispatch_workgroups(p.groups[0], p.groups[1], p.groups[2]);
                }
            }
        }
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.check()
    }
    fn finish(&mut self) -> Result<()> {
        let polled = self.gpu.device.poll(wgpu::PollType::wait_indefinitely());
        self.gpu.check()?;
        polled.map_err(|e| anyhow!("GPU wait failed: {e}: {}", crate::gpu::RETRY))?;
        Ok(())
    }
    fn allocated_bytes(&self) -> u64 {
        let bufs: u64 = self.bufs.iter().map(|b| b.0.size()).sum();
        let uniforms: u64 = self.seqs.iter().flatten().map(|p| p.uniform.size()).sum();
        bufs + uniforms
    }
    fn mark(&self) -> Mark {
        Mark {
            bufs: self.bufs.len(),
            seqs: self.seqs.len(),
        }
    }
    fn release(&mut self, m: Mark) {
        for (b, _, _) in self.bufs.drain(m.bufs.min(self.bufs.len())..) {
            b.destroy();
        }
        self.seqs.truncate(m.seqs);
    }
}

/// Opens `cpu` or a GPU backend by name.
pub fn open_backend(name: Option<&str>) -> Result<Box<dyn Backend>> {
    match name {
        Some(n) if n.eq_ignore_ascii_case("cpu") => Ok(Box::new(CpuBackend::new())),
        _ => Ok(Box::new(GpuBackend::open(name)?)),
    }
}
