//! Time per kernel: GPU timestamps around each dispatch where the adapter has them, else the
//! wall clock around each dispatch submitted and waited for alone.

use anyhow::Result;

use crate::runtime::{GpuBackend, Seq};

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
    /// GPU timestamps (each dispatch in its own pass, all submitted together).
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
        let timestamps = self.gpu().timestamps && !list.is_empty();
        for _ in 0..reps {
            if timestamps {
                for (label, secs) in self.time_with_queries(&list)? {
                    add(&label, secs);
                }
            } else {
                for &(s, i) in &list {
                    let p = &self.seqs[s][i];
                    let gpu = self.gpu();
                    let mut enc = gpu.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        self.record(&mut pass, p);
                    }
                    let t0 = std::time::Instant::now();
                    gpu.queue.submit([enc.finish()]);
                    pollster::block_on(gpu.wait())?;
                    add(&p.label, t0.elapsed().as_secs_f64());
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
        let gpu = self.gpu();
        let device = &gpu.device;
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
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * q as u32),
                        end_of_pass_write_index: Some(2 * q as u32 + 1),
                    }),
                });
                self.record(&mut pass, &self.seqs[s][i]);
            }
            enc.resolve_query_set(&set, 0..n, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
            gpu.queue.submit([enc.finish()]);
            let ticks: Vec<u64> = pollster::block_on(gpu.map_read(&staging))?;
            let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
            for (q, &(s, i)) in chunk.iter().enumerate() {
                let dt = ticks[2 * q + 1].saturating_sub(ticks[2 * q]) as f64 * period;
                out.push((self.seqs[s][i].label.clone(), dt));
            }
        }
        Ok(out)
    }
}
