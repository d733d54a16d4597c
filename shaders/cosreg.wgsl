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
    var ss = 0.0;
    for (var k = li; k < p.c; k += WG) {
        let x = wte[v * p.c + k];
        ss += x * x;
    }
    ss = reduce_sum(li, ss);
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
    var ss = 0.0;
    for (var k = 0u; k < p.c; k += 1u) {
        let x = wte[v * p.c + k];
        ss += x * x;
    }
    rinv[v] = inv_norm(ss);
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

// k * rinv[v]: row v's factor in bwd.
fn grad_coef(v: u32) -> f32 {
    let vv = f32(p.v);
    return 2.0 * p.gamma / (vv * vv) * rinv[v];
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
    let r = rinv[v];
    var d = 0.0;
    for (var k = li; k < p.c; k += WG) {
        d += wte[v * p.c + k] * s[k];
    }
    d = reduce_sum(li, d) * r;
    let g = grad_coef(v);
    for (var k = li; k < p.c; k += WG) {
        let o = v * p.c + k;
        dwte[o] = dwte[o] + g * (s[k] - d * wte[o] * r);
    }
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
    let r = rinv[v];
    var d = 0.0;
    for (var k = 0u; k < p.c; k += 1u) {
        d += wte[v * p.c + k] * s[k];
    }
    d *= r;
    let g = grad_coef(v);
    for (var k = 0u; k < p.c; k += 1u) {
        let o = v * p.c + k;
        dwte[o] = dwte[o] + g * (s[k] - d * wte[o] * r);
    }
}
