// Per-position values from norms, for the losses whose margin or target offset follows the
// size of the embeddings, and the adversarial offset's backward.
//
// h f32 [rows, c] (the final hidden states), w f32 [V, c] (an embedding table), targets u32
// [rows], vals f32 [rows], dlogits f32 [rows, v], dh f32 [rows, c]; |x| the Euclidean norm.
// row_norms:  vals[i] = alpha * (use_w ? |w[t_i]| : 1) * (use_h ? |h_i| : 1),  t_i = targets[i]
// adv_bwd:    dh[i, :] += -dlogits[i, t_i] * vals[i] / |h_i|^2 * h[i, :]    (nothing if h_i = 0)
//   the gradient through |h_i| of the target offset vals[i] = alpha * sg(|w_t|) * |h_i|, whose
//   own gradient is -dlogits[i, t_i] (cross_entropy subtracts it from the target logit).
// One workgroup per row (tree sums); the `_rows` entries (CPU-like adapters) give one
// invocation a row and sum in order.

struct Params {
    rows: u32,
    c: u32,
    v: u32,
    alpha: f32,
    use_w: u32,
    use_h: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read_write> vals: array<f32>;
@group(0) @binding(5) var<storage, read> dlogits: array<f32>;
@group(0) @binding(6) var<storage, read_write> dh: array<f32>;

const WG: u32 = 64u;

fn value(ww: f32, hh: f32) -> f32 {
    var x = p.alpha;
    if (p.use_w != 0u) {
        x *= sqrt(ww);
    }
    if (p.use_h != 0u) {
        x *= sqrt(hh);
    }
    return x;
}

// One lane's share of row i, over k = start, start + stride, ... < c: (|w_t|^2, |h_i|^2).
fn sq_norms(i: u32, start: u32, stride: u32) -> vec2<f32> {
    let wb = targets[i] * p.c;
    var n = vec2<f32>(0.0, 0.0);
    for (var k = start; k < p.c; k += stride) {
        let a = w[wb + k];
        let b = h[i * p.c + k];
        n += vec2<f32>(a * a, b * b);
    }
    return n;
}

fn h_sumsq(i: u32, start: u32, stride: u32) -> f32 {
    var hh = 0.0;
    for (var k = start; k < p.c; k += stride) {
        let b = h[i * p.c + k];
        hh += b * b;
    }
    return hh;
}

// One lane's share of the offset's step on row i, given |h_i|^2.
fn adv_add(i: u32, start: u32, stride: u32, hh: f32) {
    if (hh == 0.0) {
        return;
    }
    let g = -dlogits[i * p.v + targets[i]] * vals[i] / hh;
    for (var k = start; k < p.c; k += stride) {
        let o = i * p.c + k;
        dh[o] = dh[o] + g * h[o];
    }
}

@compute @workgroup_size(64)
fn row_norms(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= p.rows) {
        return;
    }
    let n = sq_norms(i, li, WG);
    let ww = reduce_sum(li, n.x);
    let hh = reduce_sum(li, n.y);
    if (li == 0u) {
        vals[i] = value(ww, hh);
    }
}

@compute @workgroup_size(64)
fn row_norms_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + li;
    if (i >= p.rows) {
        return;
    }
    let n = sq_norms(i, 0u, 1u);
    vals[i] = value(n.x, n.y);
}

@compute @workgroup_size(64)
fn adv_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= p.rows) {
        return;
    }
    adv_add(i, li, WG, reduce_sum(li, h_sumsq(i, li, WG)));
}

@compute @workgroup_size(64)
fn adv_bwd_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + li;
    if (i >= p.rows) {
        return;
    }
    adv_add(i, 0u, 1u, h_sumsq(i, 0u, 1u));
}
