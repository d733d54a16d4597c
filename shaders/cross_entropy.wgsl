// Cross-entropy over threshold-masked logits, forward and backward fused, plus a mean.
//
// For row r with target t = targets[r], K_r = { j : !use_margin or l[r, j] >= l[r, t] - m }:
//   mx         = max_{j in K_r} l[r, j]
//   Z          = sum_{j in K_r} exp(l[r, j] - mx)
//   losses[r]  = log Z + mx - l[r, t]                      (= -log softmax over K_r at t)
//   dlogits[r, j] = scale * (exp(l[r, j] - mx) / Z - [j == t])   for j in K_r
//   dlogits[r, j] = 0                                               for j not in K_r
// scale is 1 / (number of rows averaged), so dlogits is the gradient of the mean loss.
// `mean_rows`: out[0] = (sum_i x[i]) / n, one workgroup, fixed-order tree sum.
// logits/dlogits row-major [rows, cols]; targets u32 [rows]; one workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    use_margin: u32,
    margin: f32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
// mean_rows
@group(0) @binding(5) var<storage, read> xs: array<f32>;
@group(0) @binding(6) var<storage, read_write> mean_out: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let t = targets[row];
    let lt = logits[base + t];
    let thr = lt - p.margin;
    let masking = p.use_margin != 0u;
    // The target is always kept, so lt is a finite lower bound of the kept maximum.
    var mx = lt;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        if (!masking || v >= thr) {
            mx = max(mx, v);
        }
    }
    mx = reduce_max(li, mx);
    var z = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        if (!masking || v >= thr) {
            z += exp(v - mx);
        }
    }
    z = reduce_sum(li, z);
    if (li == 0u) {
        losses[row] = log(z) + mx - lt;
    }
    let inv = 1.0 / z;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        var g = 0.0;
        if (!masking || v >= thr) {
            g = exp(v - mx) * inv;
            if (j == t) {
                g -= 1.0;
            }
            g *= p.scale;
        }
        dlogits[base + j] = g;
    }
}

@compute @workgroup_size(256)
fn mean_rows(@builtin(local_invocation_index) li: u32) {
    // p.rows holds n here.
    var s = 0.0;
    for (var i = li; i < p.rows; i += WG) {
        s += xs[i];
    }
    s = reduce_sum(li, s);
    if (li == 0u) {
        mean_out[0] = s / f32(p.rows);
    }
}
