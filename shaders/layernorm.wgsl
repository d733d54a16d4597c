// LayerNorm over the last dimension, weight only (no bias), eps = 1e-5, biased variance
// (PyTorch's F.layer_norm with bias=None). x, y, dy, dx are [rows, cols] row-major, w and dw
// are [cols], mean and rstd are [rows].
//
// layernorm_fwd (one workgroup per row; bindings x 1, w 2, y 3, mean_out 4, rstd_out 5):
//   mean[r] = sum_c x[r,c] / cols
//   rstd[r] = 1 / sqrt(sum_c (x[r,c] - mean[r])^2 / cols + eps)      (two passes over the row)
//   y[r,c]  = (x[r,c] - mean[r]) * rstd[r] * w[c]
// layernorm_bwd_dx (one workgroup per row; bindings x 1, w 2, mean 6, rstd 7, dy 8, dx 9):
//   xhat = (x[r,c] - mean[r]) * rstd[r],  g = dy[r,c] * w[c]
//   d = rstd[r] * (g - mean_c(g) - xhat * mean_c(g * xhat))
//   dx[r,c] = d, or dx[r,c] += d when p.accumulate != 0
// layernorm_bwd_dw (one workgroup per 8 columns; bindings x 1, mean 6, rstd 7, dy 8, dw 10):
//   dw[c] = sum_r dy[r,c] * xhat[r,c]   (overwritten)
//   32 lanes per column each sum a fixed stride of rows, then a fixed tree adds the lanes,
//   so the result is deterministic.
// add_layernorm_fwd (bindings as layernorm_fwd plus branch 11, sum_out 12): the residual
//   add fused in front: xs[r,c] = x[r,c] + branch[r,c] is stored to sum_out and normalised
//   as above, saving a pass over memory.
// Sums run in f32 in a fixed order; row-kernel sums use a 256-wide tree in workgroup memory.
//
// On CPU-like adapters, where barriers are expensive, the `_rows` entry points give one
// invocation a whole row (64 rows per workgroup, sums in column order) and
// layernorm_bwd_dw_cols one invocation a whole column (sums of 64-row blocks, in row order,
// then of the blocks); same contracts.

struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(6) var<storage, read> mean: array<f32>;
@group(0) @binding(7) var<storage, read> rstd: array<f32>;
@group(0) @binding(8) var<storage, read> dy: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx: array<f32>;
@group(0) @binding(10) var<storage, read_write> dw: array<f32>;
@group(0) @binding(11) var<storage, read> branch: array<f32>;
@group(0) @binding(12) var<storage, read_write> sum_out: array<f32>;

const EPS: f32 = 1e-5;
const WG: u32 = 256u;
// layernorm_bwd_dw: columns per workgroup and lanes (row strides) per column; COLS * LANES = WG.
const DW_COLS: u32 = 8u;
const DW_LANES: u32 = 32u;

var<workgroup> red_b: array<f32, 256>;

// Two reduce_sum at once (the same tree).
fn block_sum2(lid: u32, a: f32, b: f32) -> vec2<f32> {
    red[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
            red_b[lid] += red_b[lid + s];
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red[0], red_b[0]);
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn layernorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let lid = lid3.x;
    let base = row * p.cols;
    let n = f32(p.cols);

    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += x[base + c];
    }
    let mu = reduce_sum(lid, s) / n;

    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = x[base + c] - mu;
        q += d * d;
    }
    let r = inverseSqrt(reduce_sum(lid, q) / n + EPS);

    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = (x[base + c] - mu) * r * w[c];
    }
    if lid == 0u {
        mean_out[row] = mu;
        rstd_out[row] = r;
    }
}

@compute @workgroup_size(256)
fn layernorm_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let lid = lid3.x;
    let base = row * p.cols;
    let n = f32(p.cols);
    let mu = mean[row];
    let r = rstd[row];

    var sg = 0.0;
    var sgx = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let xhat = (x[base + c] - mu) * r;
        let g = dy[base + c] * w[c];
        sg += g;
        sgx += g * xhat;
    }
    let sums = block_sum2(lid, sg, sgx);
    let mg = sums.x / n;
    let mgx = sums.y / n;

    for (var c = lid; c < p.cols; c += WG) {
        let xhat = (x[base + c] - mu) * r;
        let g = dy[base + c] * w[c];
        let d = r * (g - mg - xhat * mgx);
        if p.accumulate != 0u {
            dx[base + c] += d;
        } else {
            dx[base + c] = d;
        }
    }
}

@compute @workgroup_size(256)
fn layernorm_bwd_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    let block = wid.x + wid.y * nwg.x;
    if block * DW_COLS >= p.cols {
        return;
    }
    let lid = lid3.x;
    let col = block * DW_COLS + lid % DW_COLS;
    let lane = lid / DW_COLS;

    var acc = 0.0;
    if col < p.cols {
        for (var r = lane; r < p.rows; r += DW_LANES) {
            let i = r * p.cols + col;
            acc += dy[i] * ((x[i] - mean[r]) * rstd[r]);
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = DW_LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[lid] += red[lid + s * DW_COLS];
        }
        workgroupBarrier();
    }
    if lane == 0u && col < p.cols {
        dw[col] = red[lid];
    }
}

@compute @workgroup_size(256)
fn add_layernorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.rows {
        return;
    }
    let lid = lid3.x;
    let base = row * p.cols;
    let n = f32(p.cols);

    // Each invocation re-reads only the sums it wrote itself.
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c] + branch[base + c];
        sum_out[base + c] = v;
        s += v;
    }
    let mu = reduce_sum(lid, s) / n;

    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = sum_out[base + c] - mu;
        q += d * d;
    }
    let r = inverseSqrt(reduce_sum(lid, q) / n + EPS);

    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = (sum_out[base + c] - mu) * r * w[c];
    }
    if lid == 0u {
        mean_out[row] = mu;
        rstd_out[row] = r;
    }
}

const ROWS_WG: u32 = 64u;

fn row_of(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * ROWS_WG + li;
}

@compute @workgroup_size(64)
fn layernorm_fwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let row = row_of(wid, nwg, li);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        s += x[base + c];
    }
    let mu = s / n;
    var q = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = x[base + c] - mu;
        q += d * d;
    }
    let r = inverseSqrt(q / n + EPS);
    for (var c = 0u; c < p.cols; c++) {
        y[base + c] = (x[base + c] - mu) * r * w[c];
    }
    mean_out[row] = mu;
    rstd_out[row] = r;
}

@compute @workgroup_size(64)
fn add_layernorm_fwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32) {
    let row = row_of(wid, nwg, li);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = x[base + c] + branch[base + c];
        sum_out[base + c] = v;
        s += v;
    }
    let mu = s / n;
    var q = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = sum_out[base + c] - mu;
        q += d * d;
    }
    let r = inverseSqrt(q / n + EPS);
    for (var c = 0u; c < p.cols; c++) {
        y[base + c] = (sum_out[base + c] - mu) * r * w[c];
    }
    mean_out[row] = mu;
    rstd_out[row] = r;
}

@compute @workgroup_size(64)
fn layernorm_bwd_dx_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) li: u32) {
    let row = row_of(wid, nwg, li);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    let mu = mean[row];
    let r = rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let xhat = (x[base + c] - mu) * r;
        let g = dy[base + c] * w[c];
        sg += g;
        sgx += g * xhat;
    }
    let mg = sg / n;
    let mgx = sgx / n;
    for (var c = 0u; c < p.cols; c++) {
        let xhat = (x[base + c] - mu) * r;
        let g = dy[base + c] * w[c];
        let d = r * (g - mg - xhat * mgx);
        if p.accumulate != 0u {
            dx[base + c] += d;
        } else {
            dx[base + c] = d;
        }
    }
}

@compute @workgroup_size(64)
fn layernorm_bwd_dw_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) li: u32) {
    let col = row_of(wid, nwg, li);
    if col >= p.cols {
        return;
    }
    // Blocks of 64 rows are summed first, then the block sums: a long column summed
    // straight into one f32 would lose digits with every row.
    var acc = 0.0;
    for (var r0 = 0u; r0 < p.rows; r0 += 64u) {
        var block = 0.0;
        for (var r = r0; r < min(r0 + 64u, p.rows); r++) {
            let i = r * p.cols + col;
            block += dy[i] * ((x[i] - mean[r]) * rstd[r]);
        }
        acc += block;
    }
    dw[col] = acc;
}
