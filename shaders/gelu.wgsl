// GELU, exact (erf) form as PyTorch's default, element-wise on n f32 values.
//
//   gelu_fwd:       y[i]  = 0.5 * x[i] * (1 + erf(x[i] / sqrt 2)) = x[i] * Phi(x[i])
//   gelu_bwd:       dx[i] = dy[i] * (Phi(x[i]) + x[i] * phi(x[i]))   (overwrites dx)
//   gelu_erf_probe: y[i]  = erf(x[i])                                (for tests)
// with Phi the standard normal CDF and phi(x) = exp(-x^2 / 2) / sqrt(2 pi) its density.
// Bindings: gelu_fwd and the probe: x = 1, y = 2; gelu_bwd: x = 1, dy = 3, dx = 4.
// 256 invocations per workgroup, i = (wid.x + wid.y * nwg.x) * 256 + lid.x, i < n.
//
// WGSL has no erf. Ours uses only multiplies and adds (so its accuracy does not depend on
// the driver's exp) in three pieces on a = |x|; the coefficients are least-squares fits in
// f64 at Chebyshev nodes, rounded to f32, made and checked by tools/fit_erf.py (max abs error
// 5e-8 simulated in f32 over -6..6 and huge values):
//   a < 0.875:       erf(x)  = x + x * S(x^2)
//   0.875 <= a < 2:  erfc(a) = M(a - 1.4375)
//   2 <= a < 4:      erfc(a) = T(a - 3)
//   a >= 4:          erfc(a) = 0   (erfc(4) = 1.5e-8, under half an f32 ulp of 1)
// Phi(x) = 0.5 * erfc(-x / sqrt 2) is taken from the same pieces, so its left tail keeps
// its relative accuracy instead of cancelling in 1 + erf.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

// erf(x) for |x| < 0.875.
fn erf_small(x: f32) -> f32 {
    let u = x * x;
    var r = 8.737627650e-05;
    r = r * u + -8.225873462e-04;
    r = r * u + 5.208075512e-03;
    r = r * u + -2.686214447e-02;
    r = r * u + 1.128374413e-01;
    r = r * u + -3.761263788e-01;
    r = r * u + 1.283791661e-01;
    return x + x * r;
}

// erfc(a) for a >= 0.875.
fn erfc_large(a: f32) -> f32 {
    if a >= 4.0 {
        return 0.0;
    }
    if a < 2.0 {
        let t = a - 1.4375;
        var r = -1.482801454e-04;
        r = r * t + -1.457560691e-03;
        r = r * t + 3.346098820e-03;
        r = r * t + 3.241761355e-03;
        r = r * t + -2.111017145e-02;
        r = r * t + 2.247778513e-02;
        r = r * t + 3.878314048e-02;
        r = r * t + -1.492248476e-01;
        r = r * t + 2.054159045e-01;
        r = r * t + -1.428980231e-01;
        r = r * t + 4.205939546e-02;
        return r;
    }
    let t = a - 3.0;
    var r = 9.467147720e-06;
    r = r * t + -2.211729043e-05;
    r = r * t + -1.189712657e-05;
    r = r * t + 1.411225967e-04;
    r = r * t + -3.918769071e-04;
    r = r * t + 7.350007072e-04;
    r = r * t + -1.016149879e-03;
    r = r * t + 1.045075478e-03;
    r = r * t + -7.891516434e-04;
    r = r * t + 4.177030642e-04;
    r = r * t + -1.392511913e-04;
    r = r * t + 2.209125705e-05;
    return r;
}

fn erf(x: f32) -> f32 {
    let a = abs(x);
    if a < 0.875 {
        return erf_small(x);
    }
    let e = 1.0 - erfc_large(a);
    return select(-e, e, x >= 0.0);
}

// Standard normal CDF.
fn norm_cdf(x: f32) -> f32 {
    let z = x * FRAC_1_SQRT_2;
    let a = abs(z);
    if a < 0.875 {
        return 0.5 + 0.5 * erf_small(z);
    }
    let c = 0.5 * erfc_large(a);
    return select(1.0 - c, c, z < 0.0);
}

fn elem_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

@compute @workgroup_size(256)
fn gelu_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let v = x[i];
    y[i] = v * norm_cdf(v);
}

@compute @workgroup_size(256)
fn gelu_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let v = x[i];
    // x * phi(x) is below 1e-21 past |x| = 10, so call it 0 there; the clamp keeps x * x
    // finite for huge x.
    let c = clamp(v, -10.0, 10.0);
    let x_density = select(0.0, c * FRAC_1_SQRT_2PI * exp(-0.5 * c * c), abs(v) < 10.0);
    dx[i] = dy[i] * (norm_cdf(v) + x_density);
}

@compute @workgroup_size(256)
fn gelu_erf_probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    y[i] = erf(x[i]);
}
