// Adaptive gradient gating (Yu et al. 2022): the output embedding's gradient through the
// logits, with each logit's contribution gated.
//
// dlogits, dlogits_w f32 [rows, cols]; targets u32 [rows]; rare u32 [cols] (1: the token is
// rare in the count window); gates f32 [2, cols] (row 0 for positions whose target is common,
// row 1 for those whose target is rare; the host computes them from the window):
//   dlogits_w[r, j] = g * dlogits[r, j],  g = 1 if j == t else gates[rare[t] * cols + j],
//   t = targets[r]
// Element kernel, 256 invocations per workgroup.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read> rare: array<u32>;
@group(0) @binding(4) var<storage, read> gates: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits_w: array<f32>;

@compute @workgroup_size(256)
fn gate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= p.rows * p.cols) {
        return;
    }
    let j = i % p.cols;
    let t = targets[i / p.cols];
    var g = 1.0;
    if (j != t) {
        g = gates[min(rare[t], 1u) * p.cols + j];
    }
    dlogits_w[i] = g * dlogits[i];
}
