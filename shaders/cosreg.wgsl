// Cosine regularization (Gao et al. 2019): gamma times the mean pairwise cosine similarity
// of the embedding rows, added to the loss, and its gradient added to the embedding's.
//
// wte f32 [V, C] rows E_v; rinv f32 [V]; s f32 [C]; loss f32 [1]; dwte f32 [V, C].
//   norms:    rinv[v] = 1 / |E_v|              (0 for a zero row)
//   col_sum:  s[c] = sum over v in [row0, row1), in order, of E[v, c] * rinv[v], added to what
//             the previous chunk left when row0 > 0 (the host splits long vocabularies)
//             s = sum_v Ê_v with Ê_v = E_v / |E_v|
//   penalty:  loss[0] += gamma * (|s|^2 - V) / V^2           (|s|^2 = sum over all pairs of
//             cos(E_u, E_v), the V diagonal terms are 1)
//   bwd:      dwte[v, :] += k * rinv[v] * (s - (Ê_v · s) Ê_v),  k = 2 gamma / V^2
// norms and bwd: one workgroup per row (tree sums), or with `_rows` one invocation per row
// (CPU-like adapters); col_sum: one invocation per column; penalty: one workgroup.

struct Params {
    v: u32,
    c: u32,
    gamma: f32,
    row0: u32,
    row1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wte: array<f32>;
@group(0) @binding(2) var<storage, read_write> rinv: array<f32>;
@group(0) @binding(3) var<storage, read_write> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> dwte: array<f32>;

const WG: u32 = 64u;

fn inv_norm(ss: f32) -> f32 {
    return select(0.0, 1.0 / sqrt(ss), ss > 0.0);
}

// One lane's share of row v, over k = start, start + stride, ... < C: sum of E[v, k]^2.
fn row_sumsq(v: u32, start: u32, stride: u32) -> f32 {
    var ss = 0.0;
    for (var k = start; k < p.c; k += stride) {
        let x = wte[v * p.c + k];
        ss += x * x;
    }
    return ss;
}

// One lane's share of E_v · s.
fn row_dot_s(v: u32, start: u32, stride: u32) -> f32 {
    var d = 0.0;
    for (var k = start; k < p.c; k += stride) {
        d += wte[v * p.c + k] * s[k];
    }
    return d;
}

// One lane's share of row v's gradient, given d = Ê_v · s.
fn add_grad(v: u32, start: u32, stride: u32, d: f32) {
    let vv = f32(p.v);
    let r = rinv[v];
    let g = 2.0 * p.gamma / (vv * vv) * r;
    for (var k = start; k < p.c; k += stride) {
        let o = v * p.c + k;
        dwte[o] = dwte[o] + g * (s[k] - d * wte[o] * r);
    }
}

@compute @workgroup_size(64)
fn norms(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let v = wid.x + wid.y * nwg.x;
    if (v >= p.v) {
        return;
    }
    let ss = reduce_sum(li, row_sumsq(v, li, WG));
    if (li == 0u) {
        rinv[v] = inv_norm(ss);
    }
}

@compute @workgroup_size(64)
fn norms_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let v = (wid.x + wid.y * nwg.x) * 64u + li;
    if (v >= p.v) {
        return;
    }
    rinv[v] = inv_norm(row_sumsq(v, 0u, 1u));
}

@compute @workgroup_size(64)
fn col_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let k = (wid.x + wid.y * nwg.x) * 64u + li;
    if (k >= p.c) {
        return;
    }
    var acc = 0.0;
    if (p.row0 > 0u) {
        acc = s[k];
    }
    for (var v = p.row0; v < p.row1; v += 1u) {
        acc += wte[v * p.c + k] * rinv[v];
    }
    s[k] = acc;
}

@compute @workgroup_size(64)
fn penalty(@builtin(local_invocation_index) li: u32) {
    var ss = 0.0;
    for (var k = li; k < p.c; k += WG) {
        ss += s[k] * s[k];
    }
    ss = reduce_sum(li, ss);
    if (li == 0u) {
        let vv = f32(p.v);
        loss[0] = loss[0] + p.gamma * (ss - vv) / (vv * vv);
    }
}

@compute @workgroup_size(64)
fn bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let v = wid.x + wid.y * nwg.x;
    if (v >= p.v) {
        return;
    }
    add_grad(v, li, WG, reduce_sum(li, row_dot_s(v, li, WG)) * rinv[v]);
}

@compute @workgroup_size(64)
fn bwd_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let v = (wid.x + wid.y * nwg.x) * 64u + li;
    if (v >= p.v) {
        return;
    }
    add_grad(v, 0u, 1u, row_dot_s(v, 0u, 1u) * rinv[v]);
}
