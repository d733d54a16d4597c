// Contrastive weight tying: each position's hidden state scored against the batch's own
// target embeddings, as columns of the logits it already has.
//
// logits, dlogits f32 [n, v]; targets u32 [n]; scores, dscores f32 [n, n].
//   scores:   scores[i, k] = logits[i, targets[k]]            (= h_i · W_{y_k})
//   scatter:  dlogits[i, j] = sum over k in order with targets[k] == j of dscores[i, k]
//   so the head's usual backward turns dlogits into h's and W's gradients. n <= 16384 (the
//   host's LOOP_LIMIT), so no loop runs past what every adapter allows.
// scores: element kernel. scatter: one invocation per (i, j); `scatter_rows` (CPU-like
// adapters): one invocation per row i, zeroing it and adding k = 0.. in order, which sums
// in the same order.

struct Params {
    n: u32,
    v: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read> dscores: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(256)
fn gather_scores(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 256u + li;
    if (e >= p.n * p.n) {
        return;
    }
    let i = e / p.n;
    let k = e % p.n;
    scores[e] = logits[i * p.v + targets[k]];
}

@compute @workgroup_size(256)
fn scatter(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let e = (wid.x + wid.y * nwg.x) * 256u + li;
    if (e >= p.n * p.v) {
        return;
    }
    let i = e / p.v;
    let j = e % p.v;
    var acc = 0.0;
    for (var k = 0u; k < p.n; k += 1u) {
        if (targets[k] == j) {
            acc += dscores[i * p.n + k];
        }
    }
    dlogits[e] = acc;
}

@compute @workgroup_size(64)
fn scatter_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + li;
    if (i >= p.n) {
        return;
    }
    for (var j = 0u; j < p.v; j += 1u) {
        dlogits[i * p.v + j] = 0.0;
    }
    for (var k = 0u; k < p.n; k += 1u) {
        let o = i * p.v + targets[k];
        dlogits[o] = dlogits[o] + dscores[i * p.n + k];
    }
}
