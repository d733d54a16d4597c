// Per-row threshold mask (the "selfish token" margin).
//
// For row r with target t = targets[r] and margin m >= 0:
//   out[r, j] = -inf          if use_margin and logits[r, j] < logits[r, t] - m
//   out[r, j] = logits[r, j]  otherwise
// With use_margin = 0 ("margin off") the row is copied unchanged. The target itself is never
// masked since l_t >= l_t - m. logits/out are row-major [rows, cols]; targets u32 [rows].
// -inf arrives as a uniform bit pattern so no infinite constant appears in the shader.

struct Params {
    rows: u32,
    cols: u32,
    use_margin: u32,
    margin: f32,
    neg_inf_bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn threshold_mask(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= p.rows * p.cols) {
        return;
    }
    let row = i / p.cols;
    let v = logits[i];
    let lt = logits[row * p.cols + targets[row]];
    if (p.use_margin != 0u && v < lt - p.margin) {
        out[i] = bitcast<f32>(p.neg_inf_bits);
    } else {
        out[i] = v;
    }
}
