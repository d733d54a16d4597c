//! The GPU executor. Compiling a sequence builds every pipeline, uniform and bind group up
//! front; running sequences records them into one compute pass and one submission.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};
use wgpu::util::DeviceExt;

use crate::buffers::{Buf, Dtype};
use crate::gpu::Gpu;
use crate::kernels::{matmul, Launch, Op, Shader, Target};
use crate::runtime::{available_memory, Backend, Mark, Pending, Seq};

/// One dispatch, ready to record.
pub(crate) struct Prepared {
    /// `shader::entry`, for profiles (native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub label: String,
    pub pipeline: usize,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// Kept alive for the bind group.
    uniform: wgpu::Buffer,
}

/// A compiled shader and where its storage variables are bound.
struct Module {
    module: wgpu::ShaderModule,
    bindings: HashMap<String, u32>,
}

pub struct GpuBackend {
    gpu: Gpu,
    target: Target,
    /// Every matmul product compiled so far, by [`matmul::Shape::key`].
    products: BTreeMap<String, matmul::Shape>,
    bufs: Vec<(wgpu::Buffer, usize, Dtype)>,
    modules: HashMap<&'static str, Module>,
    pub(crate) pipelines: Vec<wgpu::ComputePipeline>,
    pipeline_ids: HashMap<(&'static str, &'static str), usize>,
    pub(crate) seqs: Vec<Vec<Prepared>>,
}

impl GpuBackend {
    /// Kernels chosen by `target` (see [`Gpu::target`] and `selfish tune`).
    pub fn new(gpu: Gpu, target: Target) -> GpuBackend {
        GpuBackend {
            gpu,
            target,
            products: BTreeMap::new(),
            bufs: Vec::new(),
            modules: HashMap::new(),
            pipelines: Vec::new(),
            pipeline_ids: HashMap::new(),
            seqs: Vec::new(),
        }
    }

    /// Opens the adapter named by `--backend` (see [`Gpu::open`]) with its own kernel choice.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(backend: Option<&str>) -> Result<GpuBackend> {
        let gpu = Gpu::open(backend)?;
        let target = gpu.target();
        Ok(GpuBackend::new(gpu, target))
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The kernel choice sequences compile with.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Changes the kernel choice for sequences compiled from now on (checks run every
    /// flavour; tuning installs its measurements).
    pub fn set_target(&mut self, t: Target) {
        self.target = t;
    }

    /// Every matmul product compiled so far (what `selfish tune` times).
    pub fn products(&self) -> Vec<matmul::Shape> {
        self.products.values().copied().collect()
    }

    fn module(&mut self, shader: &'static Shader) -> Result<&Module> {
        if !self.modules.contains_key(shader.name) {
            let bindings = shader
                .bindings()
                .map_err(|e| anyhow!("shaders/{}.wgsl does not parse: {e}", shader.name))?;
            let source = shader.full_source();
            let (module, err) = self.gpu.scoped(wgpu::ErrorFilter::Validation, |d| {
                d.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
            });
            if let Some(e) = err {
                bail!("shaders/{}.wgsl failed to compile: {e}", shader.name);
            }
            self.modules
                .insert(shader.name, Module { module, bindings });
        }
        Ok(&self.modules[shader.name])
    }

    fn pipeline(&mut self, shader: &'static Shader, entry: &'static str) -> Result<usize> {
        if let Some(&id) = self.pipeline_ids.get(&(shader.name, entry)) {
            return Ok(id);
        }
        self.module(shader)?;
        let module = &self.modules[shader.name].module;
        let (pipeline, err) = self.gpu.scoped(wgpu::ErrorFilter::Validation, |d| {
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        });
        if let Some(e) = err {
            bail!("pipeline {}::{entry} failed: {e}", shader.name);
        }
        self.pipelines.push(pipeline);
        let id = self.pipelines.len() - 1;
        self.pipeline_ids.insert((shader.name, entry), id);
        Ok(id)
    }

    fn prepare(&mut self, l: &Launch) -> Result<Prepared> {
        let name = l.shader.name;
        let max = self.gpu.limits.max_compute_workgroups_per_dimension;
        if l.groups.iter().any(|&g| g > max) {
            bail!(
                "{name}::{} needs {:?} workgroups, over the adapter's {max} per dimension: use smaller batch or block sizes",
                l.entry,
                l.groups
            );
        }
        let pipeline = self.pipeline(l.shader, l.entry)?;
        // A uniform is read in 16-byte units.
        let mut words = l.params.clone();
        words.resize(words.len().max(1).next_multiple_of(4), 0);
        let uniform = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(l.entry),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        let bindings = &self.modules[name].bindings;
        for &(var, b) in &l.bufs {
            let binding = *bindings.get(var).ok_or_else(|| {
                anyhow!(
                    "{name}::{} binds '{var}', which shaders/{name}.wgsl does not declare",
                    l.entry
                )
            })?;
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: self.bufs[b.0].0.as_entire_binding(),
            });
        }
        let layout = self.pipelines[pipeline].get_bind_group_layout(0);
        let (bind_group, err) = self.gpu.scoped(wgpu::ErrorFilter::Validation, |d| {
            d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(l.entry),
                layout: &layout,
                entries: &entries,
            })
        });
        if let Some(e) = err {
            bail!("bind group for {name}::{} failed: {e}", l.entry);
        }
        Ok(Prepared {
            label: format!("{name}::{}", l.entry),
            pipeline,
            bind_group,
            groups: l.groups,
            uniform,
        })
    }

    /// Records one dispatch into a pass.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, p: &Prepared) {
        pass.set_pipeline(&self.pipelines[p.pipeline]);
        pass.set_bind_group(0, &p.bind_group, &[]);
        pass.dispatch_workgroups(p.groups[0], p.groups[1], p.groups[2]);
    }
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
        let (buffer, err) = self.gpu.scoped(wgpu::ErrorFilter::OutOfMemory, |d| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if let Some(e) = err {
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
            let bytes = bytemuck::cast_slice(data);
            self.gpu.queue.write_buffer(&self.bufs[b.0].0, 0, bytes);
        }
    }
    fn write_u32(&mut self, b: Buf, data: &[u32]) {
        if !data.is_empty() {
            let bytes = bytemuck::cast_slice(data);
            self.gpu.queue.write_buffer(&self.bufs[b.0].0, 0, bytes);
        }
    }
    fn read_f32(&mut self, b: Buf) -> Pending<'_, Vec<f32>> {
        let (src, len, _) = &self.bufs[b.0];
        let bytes = (*len * 4) as u64;
        if bytes == 0 {
            return crate::runtime::ready(Ok(Vec::new()));
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
        Box::pin(async move { self.gpu.map_read(&staging).await })
    }
    fn compile(&mut self, ops: Vec<Op>) -> Result<Seq> {
        let mut prepared = Vec::new();
        for op in &ops {
            for s in op.products(&self.target) {
                self.products.insert(s.key(), s);
            }
            for l in op.launches(&self.target) {
                prepared.push(self.prepare(&l)?);
            }
        }
        self.seqs.push(prepared);
        Ok(Seq(self.seqs.len() - 1))
    }
    fn run(&mut self, seqs: &[Seq]) -> Result<()> {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for s in seqs {
                for p in &self.seqs[s.0] {
                    self.record(&mut pass, p);
                }
            }
        }
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.check()
    }
    fn finish(&mut self) -> Pending<'_, ()> {
        Box::pin(async move { self.gpu.wait().await })
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
