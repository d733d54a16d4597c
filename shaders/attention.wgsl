// Causal self-attention core, per head (nanoGPT's q @ k^T * scale, causal mask, softmax, @ v).
//
// Sizes: B batch, T sequence, C width, NH heads, HD = C / NH head size, scale = 1 / sqrt(HD).
// qkv  [B, T, 3C] row-major (output of c_attn): q = columns [0, C), k = [C, 2C), v = [2C, 3C);
//      head h uses columns h*HD .. (h+1)*HD within each third. q_t, k_j, v_j below are those
//      HD-vectors of batch b, head h, position t or j.
// att, datt  [B, NH, T, T];  y, dy  [B, T, C] (heads merged: column h*HD + d).
//
// attention_fwd: one workgroup per query row r = (b*NH + h)*T + t, B*NH*T rows.
//   s_j = scale * (q_t . k_j)                                        for j <= t
//   att[b,h,t,j] = exp(s_j - max_j' s_j') / sum_{j'<=t} exp(s_j' - max)  for j <= t, 0 for j > t
//   y[b,t,h*HD+d] = sum_{j<=t} att[b,h,t,j] * v_j[d]
// attention_bwd_q: one workgroup per query row r (as above), given qkv, att and dy:
//   dp_j = dy_t . v_j,  ds_j = att[b,h,t,j] * (dp_j - sum_{j'<=t} att[b,h,t,j'] dp_j')
//   datt[b,h,t,j] = ds_j for j <= t, 0 for j > t
//   dqkv[b,t,h*HD+d] = scale * sum_{j<=t} ds_j * k_j[d]               (q third)
// attention_bwd_kv: one workgroup per key row r = (b*NH + h)*T + j; runs after attention_bwd_q
//   because it reads the ds that landed in datt:
//   dqkv[b,j,C+h*HD+d]  = scale * sum_{t>=j} datt[b,h,t,j] * q_t[d]    (k third)
//   dqkv[b,j,2C+h*HD+d] = sum_{t>=j} att[b,h,t,j] * dy_t[d]             (v third)
// Together the two backward entry points write every element of dqkv (no accumulation).
// No atomics; every sum runs in a fixed order, so results are deterministic.
//
// On CPU-like adapters the same contract is met by batched matmuls (shaders/matmul*.wgsl,
// one product per (b, h)) around two row kernels, one invocation per row r and no barriers:
// attention_softmax_rows (in place on att, which holds s_j for all j < T):
//   att[r, j] = exp(s_j - max_{j'<=t} s_j') / sum_{j'<=t} exp(s_j' - max)  for j <= t, 0 above
// attention_softmax_bwd_rows (in place on datt, which holds dp_j for all j < T):
//   datt[r, j] = att[r, j] * (dp_j - sum_{j'<=t} att[r, j'] dp_j')  for j <= t, 0 above

struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    hd: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
// Written by attention_fwd, only read by the backward entry points.
@group(0) @binding(2) var<storage, read_write> att: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> datt: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

const WG: u32 = 64u;
// Scores are finite, so this stands in for -inf as the identity of max.
const LOWEST: f32 = -3.0e38;

// Where one workgroup's row lives; `row` indexes (b, h, pos) as (b*NH + h)*T + pos.
struct Row {
    pos: u32,   // t for query rows, j for key rows
    bh: u32,    // b*NH + h
    seq: u32,   // offset of qkv[b, 0, h*HD] (add C for k, 2C for v, pos*3C for a position)
    ycol: u32,  // offset of y[b, 0, h*HD] (add pos*C for a position)
}

fn locate(row: u32) -> Row {
    let pos = row % p.t;
    let bh = row / p.t;
    let h = bh % p.nh;
    let b = bh / p.nh;
    return Row(pos, bh, b * p.t * 3u * p.c + h * p.hd, b * p.t * p.c + h * p.hd);
}

@compute @workgroup_size(64)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let lid = lid3.x;
    let r = locate(row);
    let t = r.pos;
    let c3 = 3u * p.c;
    let q = r.seq + t * c3;
    let k = r.seq + p.c;
    let v = r.seq + 2u * p.c;
    let a = row * p.t;

    // Scaled scores go straight into the att row; each invocation revisits only its own j's
    // until the barrier, so no synchronisation is needed before then.
    var mx = LOWEST;
    for (var j = lid; j <= t; j += WG) {
        var s = 0.0;
        let kj = k + j * c3;
        for (var d = 0u; d < p.hd; d++) {
            s += qkv[q + d] * qkv[kj + d];
        }
        s *= p.scale;
        att[a + j] = s;
        mx = max(mx, s);
    }
    let m = reduce_max(lid, mx);
    var sum = 0.0;
    for (var j = lid; j <= t; j += WG) {
        let e = exp(att[a + j] - m);
        att[a + j] = e;
        sum += e;
    }
    // The maximum contributes exp(0) = 1, so the total is at least 1.
    let inv = 1.0 / reduce_sum(lid, sum);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= t) {
            att[a + j] *= inv;
        } else {
            att[a + j] = 0.0;
        }
    }
    // y needs the whole row, written by the other invocations.
    storageBarrier();
    workgroupBarrier();
    let yo = r.ycol + t * p.c;
    for (var d = lid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= t; j++) {
            acc += att[a + j] * qkv[v + j * c3 + d];
        }
        y[yo + d] = acc;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let lid = lid3.x;
    let r = locate(row);
    let t = r.pos;
    let c3 = 3u * p.c;
    let q = r.seq + t * c3;
    let k = r.seq + p.c;
    let v = r.seq + 2u * p.c;
    let g = r.ycol + t * p.c;
    let a = row * p.t;

    // dp goes into the datt row first and is turned into ds in place.
    var part = 0.0;
    for (var j = lid; j <= t; j += WG) {
        var dp = 0.0;
        let vj = v + j * c3;
        for (var d = 0u; d < p.hd; d++) {
            dp += dy[g + d] * qkv[vj + d];
        }
        datt[a + j] = dp;
        part += att[a + j] * dp;
    }
    let total = reduce_sum(lid, part);
    for (var j = lid; j < p.t; j += WG) {
        if (j <= t) {
            datt[a + j] = att[a + j] * (datt[a + j] - total);
        } else {
            datt[a + j] = 0.0;
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var d = lid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= t; j++) {
            acc += datt[a + j] * qkv[k + j * c3 + d];
        }
        dqkv[q + d] = p.scale * acc;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let r = locate(row);
    let j = r.pos;
    let c3 = 3u * p.c;
    // Column j of the (b, h) att and datt matrices, walked down from the diagonal.
    let col = r.bh * p.t * p.t + j;
    let out = r.seq + j * c3;
    // Invocations split the 2*HD outputs: e < HD is dk[e], the rest dv[e - HD].
    for (var e = lid3.x; e < 2u * p.hd; e += WG) {
        var acc = 0.0;
        if (e < p.hd) {
            for (var t = j; t < p.t; t++) {
                acc += datt[col + t * p.t] * qkv[r.seq + t * c3 + e];
            }
            dqkv[out + p.c + e] = p.scale * acc;
        } else {
            let d = e - p.hd;
            for (var t = j; t < p.t; t++) {
                acc += att[col + t * p.t] * dy[r.ycol + t * p.c + d];
            }
            dqkv[out + 2u * p.c + d] = acc;
        }
    }
}

@compute @workgroup_size(64)
fn attention_softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + li;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let t = row % p.t;
    let a = row * p.t;
    var mx = LOWEST;
    for (var j = 0u; j <= t; j++) {
        mx = max(mx, att[a + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j <= t; j++) {
        let e = exp(att[a + j] - mx);
        att[a + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j <= t; j++) {
        att[a + j] *= inv;
    }
    for (var j = t + 1u; j < p.t; j++) {
        att[a + j] = 0.0;
    }
}

@compute @workgroup_size(64)
fn attention_softmax_bwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) li: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + li;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let t = row % p.t;
    let a = row * p.t;
    var total = 0.0;
    for (var j = 0u; j <= t; j++) {
        total += att[a + j] * datt[a + j];
    }
    for (var j = 0u; j <= t; j++) {
        datt[a + j] = att[a + j] * (datt[a + j] - total);
    }
    for (var j = t + 1u; j < p.t; j++) {
        datt[a + j] = 0.0;
    }
}
