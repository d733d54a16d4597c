// Token + position embedding (GPT-2's first layer) and its backward.
//
// Shapes (row-major f32 unless noted): idx u32 [B, T] with every id < V; wte [V, C];
// wpe [rows_pe, C] with rows_pe >= T (the model's block size); x, dx [B, T, C];
// dwte [V, C]; dwpe [rows_pe, C] (rows_pe taken from the buffer's length / C).
//
// fwd      (element kernel, one invocation per element of x):
//            x[b, t, c] = wte[idx[b, t], c] + wpe[t, c]
// bwd_wte  (one workgroup of 64 per (vocabulary row v, 64-column chunk)):
//            dwte[v, c] = base + sum over positions n = b*T + t in [pos0, pos1), in
//                         increasing order, with idx[n] == v of dx[n, c]
//            (the host splits long batches into several such dispatches)
//            base = dwte[v, c] when p.accumulate != 0 (the tied head wrote its part), else 0.
//            Rows of tokens that never occur get exactly base. f32 accumulation, fixed order.
// bwd_wpe  (element kernel, one invocation per (t, c) with t < T):
//            dwpe[t, c] = sum over b = 0..B-1 in order of dx[b, t, c]
//            and dwpe[r, c] = 0 for every row T <= r < rows_pe (positions not used).
// bwd_wte_cols (CPU-like adapters; one invocation per column c, 64 per workgroup): the
//            same sums, accumulated straight into dwte in position order:
//            dwte[v, c] = base; then for n = 0, 1, ...: dwte[idx[n], c] += dx[n, c]
//            so no invocation scans positions of other tokens and nothing synchronises.
// No atomics: each output element is owned by exactly one invocation.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    v: u32,
    accumulate: u32,
    // bwd_wte*: the positions [pos0, pos1) this dispatch sums (long batches are split so
    // that no loop runs past what every adapter allows).
    pos0: u32,
    pos1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> wte: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> dwte: array<f32>;
@group(0) @binding(7) var<storage, read_write> dwpe: array<f32>;

@compute @workgroup_size(256)
fn fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i >= p.b * p.t * p.c {
        return;
    }
    let n = i / p.c;
    let col = i % p.c;
    let pos = n % p.t;
    x[i] = wte[idx[n] * p.c + col] + wpe[pos * p.c + col];
}

const WTE_COLS: u32 = 64u;
var<workgroup> tile: array<u32, 64>;

@compute @workgroup_size(64)
fn bwd_wte(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let chunks = (p.c + WTE_COLS - 1u) / WTE_COLS;
    let r = wid.x + wid.y * nwg.x;
    if r >= p.v * chunks {
        return;
    }
    let v = r / chunks;
    let col = (r % chunks) * WTE_COLS + lid.x;
    let npos = p.pos1;
    var acc = 0.0;
    // The ids are staged through workgroup memory, 64 positions at a time; every lane then
    // scans the same tile in order, so the summation order is the position order.
    for (var s = p.pos0; s < npos; s += WTE_COLS) {
        workgroupBarrier();
        let n = s + lid.x;
        tile[lid.x] = select(0xffffffffu, idx[min(n, npos - 1u)], n < npos);
        workgroupBarrier();
        if col < p.c {
            let cnt = min(WTE_COLS, npos - s);
            for (var j = 0u; j < cnt; j++) {
                if tile[j] == v {
                    acc += dx[(s + j) * p.c + col];
                }
            }
        }
    }
    if col < p.c {
        let o = v * p.c + col;
        if p.accumulate != 0u {
            dwte[o] = dwte[o] + acc;
        } else {
            dwte[o] = acc;
        }
    }
}

@compute @workgroup_size(64)
fn bwd_wte_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let col = (wid.x + wid.y * nwg.x) * 64u + li;
    if col >= p.c {
        return;
    }
    if p.accumulate == 0u {
        for (var v = 0u; v < p.v; v++) {
            dwte[v * p.c + col] = 0.0;
        }
    }
    for (var n = p.pos0; n < p.pos1; n++) {
        let o = idx[n] * p.c + col;
        dwte[o] = dwte[o] + dx[n * p.c + col];
    }
}

@compute @workgroup_size(256)
fn bwd_wpe(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i >= p.t * p.c {
        return;
    }
    let pos = i / p.c;
    let col = i % p.c;
    var acc = 0.0;
    for (var b = 0u; b < p.b; b++) {
        acc += dx[(b * p.t + pos) * p.c + col];
    }
    dwpe[i] = acc;
    // Rows past T belong to positions this batch never used: their gradient is zero.
    let rows = arrayLength(&dwpe) / p.c;
    for (var r = pos + p.t; r < rows; r += p.t) {
        dwpe[r * p.c + col] = 0.0;
    }
}
