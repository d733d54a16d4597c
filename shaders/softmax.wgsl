// Row softmax, numerically stable, and its backward.
//
//   forward:  y[r, j] = exp(x[r, j] - max_j x[r, :]) / sum_j exp(x[r, j] - max_j x[r, :])
//             entries at or below -3.0e38 (the threshold mask's -inf) count as exp(...) = 0.
//   backward: dx[r, j] = y[r, j] * (dy[r, j] - sum_j' y[r, j'] * dy[r, j'])
//
// x, y, dy, dx are row-major [rows, cols]. One workgroup of 256 invocations per row; sums and
// maxima are fixed-order tree reductions in workgroup memory, so results are deterministic.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// backward
@group(0) @binding(3) var<storage, read> y_in: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
const MASKED: f32 = -3.0e38;

@compute @workgroup_size(256)
fn softmax_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = MASKED;
    for (var j = li; j < p.cols; j += WG) {
        m = max(m, x[base + j]);
    }
    m = reduce_max(li, m);
    var s = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = x[base + j];
        if (v > MASKED) {
            s += exp(v - m);
        }
    }
    s = reduce_sum(li, s);
    let inv = 1.0 / s;
    for (var j = li; j < p.cols; j += WG) {
        let v = x[base + j];
        y[base + j] = select(0.0, exp(v - m) * inv, v > MASKED);
    }
}

@compute @workgroup_size(256)
fn softmax_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        s += y_in[base + j] * dy[base + j];
    }
    s = reduce_sum(li, s);
    for (var j = li; j < p.cols; j += WG) {
        dx[base + j] = y_in[base + j] * (dy[base + j] - s);
    }
}
