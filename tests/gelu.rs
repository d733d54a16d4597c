//! GELU on the GPU, element by element: relative accuracy down into the left tail (where
//! small activations live) and the shader's erf against libm, stricter than the
//! scale-relative check cases.

use selfish::kernels::gelu::{self, ErfProbe, GeluBwd, GeluFwd};
use selfish::kernels::IntoOp;
use selfish::rng::Rng;
use selfish::runtime::{Backend, CpuBackend, Dtype, GpuBackend, Wait};

/// Random inputs with a few extremes that exercise the shader's saturation and clamps.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let special = [
        0.0, -0.0, 1e30, -1e30, 12.0, -12.0, 4.0, -4.0, 0.875, -2.0, 1e-20,
    ];
    (0..n)
        .map(|i| {
            if i % 97 == 5 {
                special[(i / 97) % special.len()]
            } else {
                r.normal() as f32 * 3.4
            }
        })
        .collect()
}

/// Forward and backward of `x` (with upstream `dy`) on one backend.
fn run(be: &mut dyn Backend, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = x.len();
    let mut a = |l| be.alloc(l, n, Dtype::F32).unwrap();
    let (bx, by, bdy, bdx) = (a("x"), a("y"), a("dy"), a("dx"));
    be.write_f32(bx, x);
    be.write_f32(bdy, dy);
    be.write_f32(bdx, &vec![f32::NAN; n]); // must be overwritten
    let n = n as u32;
    let ops = vec![
        GeluFwd { n, x: bx, y: by }.op(),
        GeluBwd {
            n,
            x: bx,
            dy: bdy,
            dx: bdx,
        }
        .op(),
    ];
    let s = be.compile(ops).unwrap();
    be.run(&[s]).unwrap();
    (be.read_now(by).unwrap(), be.read_now(bdx).unwrap())
}

/// |gpu - cpu| <= tol(i) everywhere.
fn close(what: &str, gpu: &[f32], cpu: &[f32], tol: impl Fn(usize) -> f64) {
    assert_eq!(gpu.len(), cpu.len());
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g as f64 - c as f64).abs();
        assert!(
            err <= tol(i),
            "{what}[{i}]: gpu {g} vs cpu {c} (err / tol {})",
            err / tol(i)
        );
    }
}

#[test]
fn gpu_matches_cpu_element_by_element() {
    let mut gpu = GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)");
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
        let (gy, gdx) = run(&mut gpu, x, dy);
        let (cy, cdx) = run(&mut CpuBackend::new(), x, dy);
        // Relative accuracy, down into the left tail (the shader's Phi keeps it there),
        // except that dx may be off by ~1e-7 |dy| where Phi(x) + x phi(x) crosses zero.
        close(&format!("gelu fwd {name}"), &gy, &cy, |i| {
            1e-6 * cy[i].abs() as f64 + 1e-35
        });
        close(&format!("gelu bwd {name}"), &gdx, &cdx, |i| {
            let (xi, dyi) = (x[i] as f64, dy[i].abs() as f64);
            2e-6 * cdx[i].abs() as f64 + 1e-7 * dyi * (-0.5 * xi * xi).exp() + 1e-35
        });
    }
    // The CPU twin itself against the definition at known points.
    let mut y = [0.0f32; 3];
    gelu::cpu_fwd(3, &[1.0, -1.0, 3.0], &mut y);
    assert!((y[0] as f64 - 0.841_344_746_068_543).abs() < 1e-7);
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
    let mut gpu = GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)");
    let n = x.len();
    let (bx, by) = (
        gpu.alloc("x", n, Dtype::F32).unwrap(),
        gpu.alloc("y", n, Dtype::F32).unwrap(),
    );
    gpu.write_f32(bx, &x);
    let s = gpu
        .compile(vec![ErfProbe {
            n: n as u32,
            x: bx,
            y: by,
        }
        .op()])
        .unwrap();
    gpu.run(&[s]).unwrap();
    let y = gpu.read_now(by).unwrap();
    let (mut worst, mut at) = (0.0f64, 0.0f32);
    for (&xi, &yi) in x.iter().zip(&y) {
        let err = (yi as f64 - libm::erf(xi as f64)).abs();
        if err > worst || err.is_nan() {
            worst = err;
            at = xi;
        }
    }
    assert!(worst < 2e-7, "erf error {worst:e} at x = {at}");
}
