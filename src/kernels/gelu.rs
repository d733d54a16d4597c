//! GELU in its exact erf form (PyTorch's default, not the tanh approximation):
//! `gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) = x Phi(x)`, and its backward
//! `dx = dy (Phi(x) + x phi(x))`. WGSL has no erf (and a loose exp), so `shaders/gelu.wgsl`
//! builds both from fitted polynomials (`tools/fit_erf.py`): erf to ~5e-8 absolute, Phi to
//! ~4e-7 relative even deep in its left tail, where small activations live.

use crate::kernels::{elem_grid, Launch};
use crate::runtime::Buf;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Phi(x), the standard normal CDF, through erfc so that the left tail keeps its relative
/// accuracy (it equals 0.5 (1 + erf(x / sqrt 2))).
fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

fn gelu(x: f64) -> f64 {
    x * norm_cdf(x)
}

fn gelu_grad(x: f64) -> f64 {
    norm_cdf(x) + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// Four elements per invocation when `n` allows (the same bits either way).
pub fn launch_fwd(n: u32, x: Buf, y: Buf) -> Launch {
    if n.is_multiple_of(4) {
        return Launch {
            shader: "gelu",
            entry: "gelu_fwd4",
            params: vec![n],
            bufs: vec![(5, x), (6, y)],
            groups: elem_grid(n / 4),
        };
    }
    Launch {
        shader: "gelu",
        entry: "gelu_fwd",
        params: vec![n],
        bufs: vec![(1, x), (2, y)],
        groups: elem_grid(n),
    }
}

/// Overwrites `dx` (the MLP's hidden activation has no other gradient path).
pub fn launch_bwd(n: u32, x: Buf, dy: Buf, dx: Buf) -> Launch {
    if n.is_multiple_of(4) {
        return Launch {
            shader: "gelu",
            entry: "gelu_bwd4",
            params: vec![n],
            bufs: vec![(5, x), (7, dy), (8, dx)],
            groups: elem_grid(n / 4),
        };
    }
    Launch {
        shader: "gelu",
        entry: "gelu_bwd",
        params: vec![n],
        bufs: vec![(1, x), (3, dy), (4, dx)],
        groups: elem_grid(n),
    }
}

/// `y[i] = erf(x[i])` with the shader's erf, so tests can measure it directly.
pub fn launch_erf_probe(n: u32, x: Buf, y: Buf) -> Launch {
    Launch {
        shader: "gelu",
        entry: "gelu_erf_probe",
        params: vec![n],
        bufs: vec![(1, x), (2, y)],
        groups: elem_grid(n),
    }
}

/// CPU twin, each element in f64 (libm's erfc) rounded once to f32.
pub fn cpu_fwd(n: u32, x: &[f32], y: &mut [f32]) {
    let n = n as usize;
    for (yi, &xi) in y[..n].iter_mut().zip(&x[..n]) {
        *yi = gelu(xi as f64) as f32;
    }
}

/// CPU twin, each element in f64 rounded once to f32; overwrites `dx`.
pub fn cpu_bwd(n: u32, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let n = n as usize;
    for i in 0..n {
        dx[i] = (dy[i] as f64 * gelu_grad(x[i] as f64)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Op, SHADERS};
    use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend};
    use wgpu::util::DeviceExt;

    /// splitmix64, mapped to roughly N(0, 1) by summing uniforms.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f32 {
            ((0..4).map(|_| self.uniform()).sum::<f64>() - 2.0) as f32 * 1.7
        }
    }

    /// Random inputs with a few extremes that exercise the shader's saturation and clamps.
    fn inputs(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        let special = [
            0.0, -0.0, 1e30, -1e30, 12.0, -12.0, 4.0, -4.0, 0.875, -2.0, 1e-20,
        ];
        (0..n)
            .map(|i| {
                if i % 97 == 5 {
                    special[(i / 97) % special.len()]
                } else {
                    r.normal() * 2.0
                }
            })
            .collect()
    }

    #[test]
    fn cpu_known_values() {
        let x = [1.0f32, -1.0, 0.0, 3.0];
        let mut y = [0.0f32; 4];
        cpu_fwd(4, &x, &mut y);
        // x * 0.5 * math.erfc(-x / math.sqrt(2)) in Python.
        let want = [
            0.841_344_746_068_543,
            -0.158_655_253_931_457,
            0.0,
            2.995_950_305_905_11,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
    }

    #[test]
    fn cpu_backward_matches_finite_differences() {
        let n = 200;
        let x: Vec<f32> = (0..n).map(|i| -7.0 + 14.0 * i as f32 / n as f32).collect();
        let mut r = Rng(7);
        let wts: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        let loss =
            |xs: &[f64]| -> f64 { xs.iter().zip(&wts).map(|(&v, &w)| w as f64 * gelu(v)).sum() };
        let mut dx = vec![0.0f32; n];
        cpu_bwd(n as u32, &x, &wts, &mut dx);
        let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let h = 1e-5;
        let mut worst = 0.0f64;
        for i in 0..n {
            let v = x64[i];
            x64[i] = v + h;
            let lp = loss(&x64);
            x64[i] = v - h;
            let lm = loss(&x64);
            x64[i] = v;
            let fd = (lp - lm) / (2.0 * h);
            let err = (dx[i] as f64 - fd).abs();
            worst = worst.max(err);
            assert!(
                err <= 1e-6 + 1e-5 * fd.abs(),
                "i={i} x={v} analytic {} vs fd {fd}",
                dx[i]
            );
        }
        eprintln!("gelu fd: max abs err {worst:.2e}");
    }

    /// |gpu - cpu| <= tol[i] everywhere; prints the largest error relative to the tolerance.
    fn close(what: &str, gpu: &[f32], cpu: &[f32], tol: impl Fn(usize) -> f64) {
        assert_eq!(gpu.len(), cpu.len());
        let (mut worst, mut worst_ratio) = (0.0f64, 0.0f64);
        for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
            let err = (g as f64 - c as f64).abs();
            assert!(
                err <= tol(i),
                "{what}[{i}]: gpu {g} vs cpu {c} (err / tol {})",
                err / tol(i)
            );
            worst = worst.max(err);
            worst_ratio = worst_ratio.max(err / tol(i));
        }
        eprintln!("{what}: max abs err {worst:.2e}, max err / tolerance {worst_ratio:.2}");
    }

    #[test]
    fn gpu_matches_cpu() {
        let mut gpu = GpuBackend::open(None).unwrap();
        eprintln!("adapter: {}", gpu.name());
        let mut cpu = CpuBackend::new();
        let mut cases: Vec<(String, Vec<f32>, Vec<f32>)> = [1usize, 3, 257, 100_000]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                (
                    format!("n={n}"),
                    inputs(n, 100 + k as u64),
                    inputs(n, 200 + k as u64),
                )
            })
            .collect();
        let grid: Vec<f32> = (-14_000..=14_000).map(|i| i as f32 * 1e-3).collect();
        let ones = vec![1.0; grid.len()];
        cases.push(("grid -14..14".into(), grid, ones));
        for (name, x, dy) in &cases {
            let n = x.len();
            let mut outs = Vec::new();
            let backends: [&mut dyn Backend; 2] = [&mut gpu, &mut cpu];
            for be in backends {
                let bx = be.alloc("x", n, Dtype::F32).unwrap();
                let by = be.alloc("y", n, Dtype::F32).unwrap();
                let bdy = be.alloc("dy", n, Dtype::F32).unwrap();
                let bdx = be.alloc("dx", n, Dtype::F32).unwrap();
                be.write_f32(bx, x);
                be.write_f32(bdy, dy);
                be.write_f32(bdx, &vec![f32::NAN; n]); // must be overwritten
                let ops = [
                    Op::GeluFwd {
                        n: n as u32,
                        x: bx,
                        y: by,
                    },
                    Op::GeluBwd {
                        n: n as u32,
                        x: bx,
                        dy: bdy,
                        dx: bdx,
                    },
                ];
                let s = be.compile(&ops).unwrap();
                be.run(&[s]).unwrap();
                outs.push((be.read_f32(by).unwrap(), be.read_f32(bdx).unwrap()));
            }
            // Relative accuracy, down into the left tail (the shader's Phi keeps it there),
            // except that dx may be off by ~1e-7 |dy| where Phi(x) + x phi(x) crosses zero.
            let (fwd, cpu_fwd) = (&outs[0].0, &outs[1].0);
            close(&format!("gelu fwd {name}"), fwd, cpu_fwd, |i| {
                1e-6 * cpu_fwd[i].abs() as f64 + 1e-35
            });
            let (bwd, cpu_bwd) = (&outs[0].1, &outs[1].1);
            close(&format!("gelu bwd {name}"), bwd, cpu_bwd, |i| {
                let (xi, dyi) = (x[i] as f64, dy[i].abs() as f64);
                2e-6 * cpu_bwd[i].abs() as f64 + 1e-7 * dyi * (-0.5 * xi * xi).exp() + 1e-35
            });
        }
    }

    /// Runs one launch on fresh buffers holding `data` (buffer `Buf(i)` is `data[i]`) and
    /// returns buffer `out`. The runtime only runs `Op`s, and the erf probe is not one.
    fn run_launch(l: &Launch, data: &[Vec<f32>], out: usize) -> Vec<f32> {
        let gpu = GpuBackend::open(None).unwrap().gpu;
        let dev = &gpu.device;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let bufs: Vec<wgpu::Buffer> = data
            .iter()
            .map(|d| {
                dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(d),
                    usage,
                })
            })
            .collect();
        let mut words = l.params.clone();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        let uniform = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let src = SHADERS.iter().find(|(n, _)| *n == l.shader).unwrap().1;
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some(l.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for &(binding, b) in &l.bufs {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: bufs[b.0].as_entire_binding(),
            });
        }
        let bind_group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let bytes = (data[out].len() * 4) as u64;
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(l.groups[0], l.groups[1], l.groups[2]);
        }
        enc.copy_buffer_to_buffer(&bufs[out], 0, &staging, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
        dev.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        let view = staging.get_mapped_range(..).unwrap();
        bytemuck::cast_slice(&view).to_vec()
    }

    #[test]
    fn gpu_erf_is_accurate() {
        let mut x: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 1e-3).collect();
        for k in -38..=38 {
            let v = 10f32.powi(k);
            x.extend([v, -v, 3.7 * v, -3.7 * v]);
        }
        // Piece boundaries, and their neighbours on either side.
        for b in [0.875f32, 2.0, 4.0] {
            for v in [b.next_down(), b, b.next_up()] {
                x.extend([v, -v]);
            }
        }
        x.extend([f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45]);
        let n = x.len();
        let y = run_launch(
            &launch_erf_probe(n as u32, Buf(0), Buf(1)),
            &[x.clone(), vec![0.0; n]],
            1,
        );
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        for (&xi, &yi) in x.iter().zip(&y) {
            let err = (yi as f64 - libm::erf(xi as f64)).abs();
            if err > worst || err.is_nan() {
                worst = err;
                at = xi;
            }
        }
        eprintln!("gpu erf: max abs err {worst:.2e} at x = {at} over {n} points");
        assert!(worst < 2e-7, "erf error {worst:e} at x = {at}");
    }
}
