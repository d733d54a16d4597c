// GELU, exact (erf) form as PyTorch's default, element-wise on n f32 values.
//
//   gelu_fwd:       y[i]  = 0.5 * x[i] * (1 + erf(x[i] / sqrt 2)) = x[i] * Phi(x[i])
//   gelu_bwd:       dx[i] = dy[i] * (Phi(x[i]) + x[i] * phi(x[i]))   (overwrites dx)
//   gelu_erf_probe: y[i]  = erf(x[i])                                (for tests)
// with Phi the standard normal CDF and phi(x) = exp(-x^2 / 2) / sqrt(2 pi) its density.
// Bindings: gelu_fwd and the probe: x = 1, y = 2; gelu_bwd: x = 1, dy = 3, dx = 4.
// 256 invocations per workgroup, i = (wid.x + wid.y * nwg.x) * 256 + lid.x, i < n.
// gelu_fwd4 / gelu_bwd4: the same, four elements per invocation through vec4 views (x4 5,
// y4 6, dy4 7, dx4 8) for n a multiple of 4; each element gets the very same arithmetic.
//
// WGSL has no erf, and its exp() may be off by 3 + 2|x| ulp, so both are built here from
// multiplies, adds and ldexp. With a = |x| (for erf) or |x| / sqrt 2 (for Phi):
//   a < 0.875:          erf(x)  = x + x * S(x^2)
//   0.875 <= a < 1.25:  erfc(a) = M(a - 1.0625)
//   1.25 <= a < 9:      erfc(a) = exp(-a^2) * T(1 / a)
//   a >= 9:             erfc(a) = 0   (erfc(9) = 4e-37)
// and exp(-r) = E(r) for -0.5 <= r <= 0.6 (exp_neg_sq builds exp(-v^2) from it).
// S, M, T and E are least-squares fits in f64 at Chebyshev nodes, weighted for relative
// error, rounded to f32: made and checked by tools/fit_erf.py, which runs this arithmetic in
// float32 and finds max abs error 4.8e-8 for erf, max relative error 4.0e-7 for Phi and
// 9.9e-8 for exp(-x^2 / 2). Phi(x) = 0.5 * erfc(-x / sqrt 2) is taken from the erfc pieces,
// so its left tail keeps its relative accuracy instead of cancelling in 1 + erf, and its
// exp(-x^2 / 2) comes from x itself, not from a rounded x / sqrt 2.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dx4: array<vec4<f32>>;

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;
const LOG2E: f32 = 1.442695041;
// ln 2 = LN2_HI + LN2_LO, LN2_HI = 355 / 512 with 9 significant bits.
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.121944417e-04;

// exp(-r) for -0.5 <= r <= 0.6.
fn exp_small(r: f32) -> f32 {
    var q = -2.601577535e-06;
    q = q * r + 2.495870831e-05;
    q = q * r + -1.985061535e-04;
    q = q * r + 1.388858422e-03;
    q = q * r + -8.333315141e-03;
    q = q * r + 4.166666791e-02;
    q = q * r + -1.666666716e-01;
    q = q * r + 5.000000000e-01;
    q = q * r + -1.000000000e+00;
    q = q * r + 1.000000000e+00;
    return q;
}

// exp(-s v^2) for v >= 0, s a power of two, s v^2 <= 87, to ~1e-7 relative. v = h + (v - h)
// with h keeping 12 significant bits makes s v^2 = hi + lo with hi = s h^2 exact, so v^2 is
// never rounded as a whole (that alone would cost up to v^2 * 6e-8); then with
// k = round(hi / ln 2), k LN2_HI and hi - k LN2_HI are exact (k <= 126 has 7 bits) and
// exp(-s v^2) = 2^-k exp(-r), r = (hi - k LN2_HI) - k LN2_LO + lo in [-0.35, 0.35].
// Nothing subtracts nearly equal rounded values, so a compiler that reassociates float math
// (Mesa's does) cannot spoil the result, and no lane indexes a table.
fn exp_neg_sq(v: f32, s: f32) -> f32 {
    let h = bitcast<f32>(bitcast<u32>(v) & 0xfffff000u);
    let hi = s * (h * h);
    let lo = s * ((v - h) * (v + h));
    let k = round(hi * LOG2E);
    let r = (hi - k * LN2_HI) - k * LN2_LO + lo;
    return ldexp(exp_small(r), -i32(k));
}

// erf(x) for |x| < 0.875.
fn erf_small(x: f32) -> f32 {
    let u = x * x;
    var q = 8.713623538e-05;
    q = q * u + -8.216522401e-04;
    q = q * u + 5.206875503e-03;
    q = q * u + -2.686147951e-02;
    q = q * u + 1.128372848e-01;
    q = q * u + -3.761263490e-01;
    q = q * u + 1.283791661e-01;
    return x + x * q;
}

// erfc(a) for 0.875 <= a, given e = exp(-a^2) for a < 9 (the caller computes it from its own,
// unrounded argument).
fn erfc_large(a: f32, e: f32) -> f32 {
    if a < 1.25 {
        let t = a - 1.0625;
        var q = 5.564567167e-03;
        q = q * t + -1.245030761e-02;
        q = q * t + -1.068566367e-02;
        q = q * t + 6.627818942e-02;
        q = q * t + -4.795879498e-02;
        q = q * t + -1.529931128e-01;
        q = q * t + 3.877093196e-01;
        q = q * t + -3.649028838e-01;
        q = q * t + 1.329417378e-01;
        return q;
    }
    if a >= 9.0 {
        return 0.0;
    }
    let t = 1.0 / a;
    var q = -1.332918704e-01;
    q = q * t + 6.150479913e-01;
    q = q * t + -1.121841192e+00;
    q = q * t + 8.433716297e-01;
    q = q * t + 2.316419929e-01;
    q = q * t + -1.021047592e+00;
    q = q * t + 8.092288375e-01;
    q = q * t + -8.995131403e-02;
    q = q * t + -2.686014771e-01;
    q = q * t + -1.270460780e-03;
    q = q * t + 5.642578602e-01;
    q = q * t + -1.592589797e-06;
    return e * q;
}

fn erf(x: f32) -> f32 {
    let a = abs(x);
    if a < 0.875 {
        return erf_small(x);
    }
    let ac = min(a, 9.0);
    let e = 1.0 - erfc_large(ac, exp_neg_sq(ac, 1.0));
    return select(-e, e, x >= 0.0);
}

// exp(-x^2 / 2), held at its |x| = 13 value beyond (where Phi is 0 or 1 in f32 and
// x phi(x) is under 1e-36).
fn exp_half_sq(x: f32) -> f32 {
    return exp_neg_sq(min(abs(x), 13.0), 0.5);
}

// Standard normal CDF, Phi(x) = 0.5 * erfc(-x / sqrt 2), given e = exp_half_sq(x).
fn norm_cdf(x: f32, e: f32) -> f32 {
    let z = x * FRAC_1_SQRT_2;
    let a = abs(z);
    if a < 0.875 {
        return 0.5 + 0.5 * erf_small(z);
    }
    // exp(-z^2) = exp(-x^2 / 2); erfc_large gives 0 from a = 9 (|x| = 12.73) on.
    let c = 0.5 * erfc_large(min(a, 9.0), e);
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
    y[i] = gelu1(x[i]);
}

fn gelu1(v: f32) -> f32 {
    return v * norm_cdf(v, exp_half_sq(v));
}

// d gelu / dx = Phi(x) + x phi(x); one exp(-x^2 / 2) serves both, and x phi(x) is below
// 1e-36 past |x| = 13: call it 0 there.
fn gelu_grad1(v: f32) -> f32 {
    let e = exp_half_sq(v);
    let x_density = select(0.0, v * FRAC_1_SQRT_2PI * e, abs(v) < 13.0);
    return norm_cdf(v, e) + x_density;
}

@compute @workgroup_size(256)
fn gelu_fwd4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n / 4u {
        return;
    }
    let v = x4[i];
    y4[i] = vec4<f32>(gelu1(v.x), gelu1(v.y), gelu1(v.z), gelu1(v.w));
}

@compute @workgroup_size(256)
fn gelu_bwd4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n / 4u {
        return;
    }
    let v = x4[i];
    let d = vec4<f32>(gelu_grad1(v.x), gelu_grad1(v.y), gelu_grad1(v.z), gelu_grad1(v.w));
    dx4[i] = dy4[i] * d;
}

@compute @workgroup_size(256)
fn gelu_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = elem_index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    dx[i] = dy[i] * gelu_grad1(x[i]);
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
