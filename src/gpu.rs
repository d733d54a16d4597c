//! The GPU context: instance, adapter choice, device with the limits we need.
//!
//! Plain setup in the spirit of wgpu's `hello_compute`: one adapter, one device, one queue.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::kernels::Target;

/// The fix for a failed GPU operation, appended to its message.
pub const RETRY: &str = "the GPU or its driver failed; rerun the command, and if it fails \
     again update the driver or pick another --backend (or --backend cpu)";

/// Backends a user can name on the command line.
pub const BACKEND_NAMES: &str = "vulkan, metal, dx12, gl";

/// Parses `--backend`. `None` means "wgpu's choice", honouring `WGPU_BACKEND`.
#[cfg(not(target_arch = "wasm32"))]
pub fn parse_backends(name: Option<&str>) -> Result<wgpu::Backends> {
    Ok(match name.map(|s| s.to_ascii_lowercase()) {
        None => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
        Some(n) => match n.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            other => bail!("unknown backend '{other}': use one of {BACKEND_NAMES} (or cpu where a command allows it)"),
        },
    })
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    #[cfg(not(target_arch = "wasm32"))]
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    #[cfg(target_arch = "wasm32")]
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn no_adapter_message(backends: wgpu::Backends) -> String {
    let mut msg = format!("no GPU adapter found for backends {backends:?}");
    if cfg!(target_os = "linux") {
        msg.push_str(
            ": install a Vulkan or GL driver (without a GPU, Mesa's software ones: \
             `apt-get install mesa-vulkan-drivers libegl1 libegl-mesa0 libgles2`), \
             or train on the CPU with `--backend cpu`",
        );
    } else {
        msg.push_str(": update the GPU driver, pick another `--backend`, or use `--backend cpu`");
    }
    msg
}

/// A device and queue plus what we learned about the adapter.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub timestamps: bool,
    /// Subgroup operations are enabled (kernels that need them are picked only then).
    pub subgroups: bool,
    /// The device loss and the first uncaptured GPU error, reported by [`Gpu::check`]. wgpu's
    /// own default would panic from inside the driver callback instead.
    fault: Arc<Mutex<Fault>>,
}

#[derive(Default)]
struct Fault {
    lost: Option<String>,
    error: Option<String>,
}

impl Gpu {
    /// Opens the adapter chosen by `--backend` (or `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`),
    /// waiting for it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(backend: Option<&str>) -> Result<Gpu> {
        pollster::block_on(Gpu::request(parse_backends(backend)?))
    }

    /// Requests an adapter among `backends` and a device with everything it offers.
    pub async fn request(backends: wgpu::Backends) -> Result<Gpu> {
        let inst = instance(backends);
        #[cfg(not(target_arch = "wasm32"))]
        let by_name = std::env::var_os("WGPU_ADAPTER_NAME").is_some();
        #[cfg(target_arch = "wasm32")]
        let by_name = false;
        let adapter = if by_name {
            wgpu::util::initialize_adapter_from_env(&inst, None)
                .await
                .ok()
        } else {
            inst.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .ok()
        }
        .ok_or_else(|| anyhow!(no_adapter_message(backends)))?;
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            bail!(
                "adapter '{}' ({:?}) cannot run compute shaders: pick another `--backend`",
                info.name,
                info.backend
            );
        }
        // Ask for everything the adapter offers: the defaults cap storage bindings at 128 MiB,
        // which the `large` config's attention buffers exceed. Kernels themselves stay within
        // the default workgroup limits so they run everywhere.
        let limits = adapter.limits();
        if limits.max_compute_invocations_per_workgroup < 256
            || limits.max_compute_workgroup_storage_size < 16384
            || limits.max_storage_buffers_per_shader_stage < 8
        {
            bail!(
                "adapter '{}' offers {} invocations per workgroup, {} bytes of workgroup storage and \
                 {} storage buffers per stage; selfish needs 256, 16384 and 8: pick another `--backend`",
                info.name,
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size,
                limits.max_storage_buffers_per_shader_stage
            );
        }
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let mut features = wgpu::Features::empty();
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("selfish"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("could not open a device on adapter '{}'", info.name))?;
        let fault: Arc<Mutex<Fault>> = Arc::default();
        let slot = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            let words: Vec<String> = e.to_string().split_whitespace().map(String::from).collect();
            f.error
                .get_or_insert(format!("GPU error: {}", words.join(" ")));
        }));
        let slot = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            let why = if msg.is_empty() {
                format!("{reason:?}")
            } else {
                format!("{reason:?}: {msg}")
            };
            f.lost
                .get_or_insert(format!("the GPU device was lost ({why})"));
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            timestamps,
            subgroups,
            fault,
        })
    }

    /// Runs `f` inside an error scope and returns the error it raised. In a browser the scope
    /// answers only later, so there the error goes to the uncaptured-error handler instead and
    /// surfaces at the next [`Gpu::check`].
    pub fn scoped<T>(
        &self,
        filter: wgpu::ErrorFilter,
        f: impl FnOnce(&wgpu::Device) -> T,
    ) -> (T, Option<wgpu::Error>) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self.device.push_error_scope(filter);
            let out = f(&self.device);
            (out, pollster::block_on(scope.pop()))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = filter;
            (f(&self.device), None)
        }
    }

    /// Waits until the queue is idle.
    pub async fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
            self.check()?;
            polled.map_err(|e| anyhow!("GPU wait failed: {e}: {RETRY}"))?;
        }
        #[cfg(target_arch = "wasm32")]
        {
            // The browser calls back from its event loop once the queue has drained.
            let (tx, rx) = futures_channel::oneshot::channel();
            self.queue.on_submitted_work_done(move || {
                let _ = tx.send(());
            });
            rx.await
                .map_err(|_| anyhow!("the GPU queue never drained: {RETRY}"))?;
        }
        self.check()
    }

    /// Maps a `MAP_READ` buffer once the queue reaches it and copies it out; a lost device
    /// or failed operation becomes a one-line error.
    pub async fn map_read<T: bytemuck::Pod>(&self, staging: &wgpu::Buffer) -> Result<Vec<T>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        {
            let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
            self.check()?;
            polled.map_err(|e| anyhow!("GPU wait failed: {e}: {RETRY}"))?;
        }
        let mapped = rx
            .await
            .map_err(|_| anyhow!("a GPU readback never completed: {RETRY}"))?;
        self.check()?;
        mapped.map_err(|e| anyhow!("reading a GPU buffer failed: {e}: {RETRY}"))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| anyhow!("mapping a GPU buffer failed: {e}"))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// The kernel choice this adapter gets. `SELFISH_KERNELS=cpu|gpu` forces the row-kernel
    /// flavour, to compare them on one adapter.
    pub fn target(&self) -> Target {
        let cpu_like = match std::env::var("SELFISH_KERNELS").ok().as_deref() {
            Some("cpu") => true,
            Some("gpu") => false,
            _ => self.info.device_type == wgpu::DeviceType::Cpu,
        };
        Target {
            cpu_like,
            subgroup8: self.subgroups
                && self.info.subgroup_min_size == 8
                && self.info.subgroup_max_size == 8,
            tuned: Default::default(),
        }
    }

    /// Fails once the device is lost or an operation failed outside an error scope; every
    /// later operation fails the same way.
    pub fn check(&self) -> Result<()> {
        let f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        // A loss explains every error after it, so it is named first.
        match f.lost.as_deref().or(f.error.as_deref()) {
            Some(what) => bail!("{what}: {RETRY}"),
            None => Ok(()),
        }
    }

    /// One line naming the adapter, for logs and reports. A browser tells neither the
    /// adapter's name nor its driver to wgpu; the page shows its own view of the adapter.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let name = if i.name.is_empty() {
            "unnamed adapter"
        } else {
            &i.name
        };
        let driver = format!("{} {}", i.driver, i.driver_info);
        if driver.trim().is_empty() {
            format!("{name} ({:?}, {:?})", i.backend, i.device_type)
        } else {
            format!(
                "{name} ({:?}, {:?}, driver {driver})",
                i.backend, i.device_type
            )
        }
    }
}

/// What `selfish devices` prints for one adapter.
#[derive(Serialize)]
pub struct DeviceReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub compute_shaders: bool,
    pub timestamp_query: bool,
}

/// Every adapter wgpu can see on the given backends.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_devices(backend: Option<&str>) -> Result<Vec<DeviceReport>> {
    let backends = parse_backends(backend)?;
    let inst = instance(backends);
    let adapters = pollster::block_on(inst.enumerate_adapters(backends));
    Ok(adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            let l = a.limits();
            DeviceReport {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: info.driver.clone(),
                driver_info: info.driver_info.clone(),
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
                subgroup_min_size: info.subgroup_min_size,
                subgroup_max_size: info.subgroup_max_size,
                compute_shaders: a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
                timestamp_query: a.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            }
        })
        .collect())
}
