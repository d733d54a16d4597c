// Global gradient-norm clipping and the AdamW update, without atomics and without a readback.
//
// Params: n (elements), slot (first partial of this tensor), clip (max norm, 0 = off),
// beta1, beta2, eps, weight_decay. Every entry point receives all seven words.
//
// sum_squares (G = num_workgroups.x workgroups of 256; the host launches G = SUMSQ_GROUPS):
//   partials[slot + k] = sum over i < n with (i / 256) % G == k of g[i]^2,   k = 0..G-1
//   Each lane sums its grid-stride elements i = k*256 + lane + j*G*256 in increasing j,
//   then the workgroup tree-reduces its 256 lane sums in workgroup memory. f32.
// sum_squares_lanes (CPU-like adapters; one workgroup of G = 32 invocations): the same
//   partials, invocation k summing its chunks i = (k + j*G)*256 + l in increasing j, then l,
//   with no barrier.
// grad_norm (one workgroup of 256; n = number of partials):
//   total = sum of partials[0..n] (lane l sums l, l+256, ..., then a tree reduction)
//   norm[0] = sqrt(total)
//   norm[1] = min(1, clip / (norm[0] + 1e-6)) if clip > 0, else 1   (clip_grad_norm_ scale)
// step (element kernel over n; step = [lr, bc1 = 1 - beta1^t, sqrt_bc2 = sqrt(1 - beta2^t), 0]):
//   gi = g[i] * norm[1]
//   m[i] = beta1 * m[i] + (1 - beta1) * gi
//   v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
//   p[i] = p[i] * (1 - lr * weight_decay)                      (decoupled decay, old p)
//   p[i] = p[i] - (lr / bc1) * m[i] / (sqrt(v[i]) / sqrt_bc2 + eps)
// step4: the same update four elements at a time through vec4 views of g, p, m and v (for n a
//   multiple of 4; every operation is element-wise, so the bits are step's).
// All arrays are f32; partials holds at least slot + G (sum_squares) or n (grad_norm) values.

struct Params {
    n: u32,
    slot: u32,
    clip: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> norm: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;
@group(0) @binding(7) var<storage, read> step_info: array<f32>;
@group(0) @binding(8) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> v4: array<vec4<f32>>;

var<workgroup> red: array<f32, 256>;

// Fixed-order tree reduction of red[0..256]; the result ends in red[0].
fn reduce_red(lane: u32) {
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lane < stride {
            red[lane] += red[lane + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn sum_squares(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    var acc = 0.0;
    for (var i = wid.x * 256u + lid.x; i < p.n; i += nwg.x * 256u) {
        let x = g[i];
        acc += x * x;
    }
    red[lid.x] = acc;
    reduce_red(lid.x);
    if lid.x == 0u {
        partials[p.slot + wid.x] = red[0];
    }
}

@compute @workgroup_size(32)
fn sum_squares_lanes(@builtin(local_invocation_index) k: u32) {
    // Each 256-element chunk is summed on its own, then the chunk sums: one running f32
    // total over a big tensor would lose digits.
    var acc = 0.0;
    for (var chunk = k * 256u; chunk < p.n; chunk += 32u * 256u) {
        let end = min(chunk + 256u, p.n);
        var part = 0.0;
        for (var i = chunk; i < end; i++) {
            let x = g[i];
            part += x * x;
        }
        acc += part;
    }
    partials[p.slot + k] = acc;
}

@compute @workgroup_size(256)
fn grad_norm(@builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = 0.0;
    for (var i = lid.x; i < p.n; i += 256u) {
        acc += partials[i];
    }
    red[lid.x] = acc;
    reduce_red(lid.x);
    if lid.x == 0u {
        let total = sqrt(red[0]);
        var scale = 1.0;
        if p.clip > 0.0 {
            scale = min(1.0, p.clip / (total + 1e-6));
        }
        norm[0] = total;
        norm[1] = scale;
    }
}

@compute @workgroup_size(256)
fn step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i >= p.n {
        return;
    }
    let lr = step_info[0];
    let bc1 = step_info[1];
    let sqrt_bc2 = step_info[2];
    let gi = g[i] * norm[1];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * gi;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    let decayed = param[i] * (1.0 - lr * p.weight_decay);
    param[i] = decayed - (lr / bc1) * mi / (sqrt(vi) / sqrt_bc2 + p.eps);
}

@compute @workgroup_size(256)
fn step4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i >= p.n / 4u {
        return;
    }
    let lr = step_info[0];
    let bc1 = step_info[1];
    let sqrt_bc2 = step_info[2];
    let gi = g4[i] * norm[1];
    let mi = p.beta1 * m4[i] + (1.0 - p.beta1) * gi;
    let vi = p.beta2 * v4[i] + (1.0 - p.beta2) * gi * gi;
    m4[i] = mi;
    v4[i] = vi;
    let decayed = param4[i] * (1.0 - lr * p.weight_decay);
    param4[i] = decayed - (lr / bc1) * mi / (sqrt(vi) / sqrt_bc2 + p.eps);
}
