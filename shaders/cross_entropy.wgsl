// Cross-entropy over a per-row kept set, forward and backward fused, plus a mean.
//
// For row r with target t = targets[r], the candidates are the non-targets the flags allow:
//   C_r = { j != t : (!use_margin or l[r, j] >= l[r, t] - m)       (threshold / selfish tokens)
//                    and (twin_base == 0 or j != twin(t)) }         (counterpart: false negative)
//   twin(t) = t + V if t < V else t - V,  V = twin_base            (the other alphabet, cols = 2V)
// With hard_k = K > 0 only the K best candidates stay (dynamic hard negatives): candidates are
// ranked by value in IEEE totalOrder (so -0 < +0), equal values by lower index first, and the
// first min(K, |C_r|) are kept. Otherwise all of C_r stays. The target is always kept:
//   K_r        = { t } ∪ (hard_k > 0 ? top_K(C_r) : C_r)
//   mx         = max_{j in K_r} l[r, j]
//   Z          = sum_{j in K_r} exp(l[r, j] - mx)
//   losses[r]  = log Z + mx - l[r, t]                      (= -log softmax over K_r at t)
//   dlogits[r, j] = scale * (exp(l[r, j] - mx) / Z - [j == t])   for j in K_r
//   dlogits[r, j] = 0                                               for j not in K_r
// scale is 1 / (number of rows averaged), so dlogits is the gradient of the mean loss.
// Top-K needs no reduction: each candidate counts the candidates ranked before it and stays if
// fewer than K do (exact integer counts, so the set is the CPU twin's bit for bit).
// `mean_rows`: out[0] = (sum_i x[i]) / n, one workgroup, fixed-order tree sum.
// logits/dlogits row-major [rows, cols]; targets u32 [rows]; one workgroup per row.
// `cross_entropy_rows` (CPU-like adapters): the same contract with one invocation per row
// (64 rows per workgroup) and no barrier; sums run over j in order.

struct Params {
    rows: u32,
    cols: u32,
    use_margin: u32,
    margin: f32,
    scale: f32,
    hard_k: u32,
    twin_base: u32,
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

// Monotone map of IEEE totalOrder onto u32 order: flip every bit of negatives, the sign of
// positives.
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Whether candidate j is among the hard_k best candidates of its row: fewer than hard_k
// candidates rank before it (the search stops at hard_k).
fn in_top_k(base: u32, j: u32, t: u32, twin: u32, thr: f32) -> bool {
    let masking = p.use_margin != 0u;
    let v = logits[base + j];
    if (j == t || j == twin || (masking && v < thr)) {
        return false;
    }
    let key = order_key(v);
    var rank = 0u;
    for (var i = 0u; i < p.cols && rank < p.hard_k; i += 1u) {
        let u = logits[base + i];
        let ku = order_key(u);
        if (i != t && i != twin && (!masking || u >= thr)
            && (ku > key || (ku == key && i < j))) {
            rank += 1u;
        }
    }
    return rank < p.hard_k;
}

// Membership of K_r; with ranking on, the flag the calling invocation parked in dlogits.
fn is_kept(base: u32, j: u32, t: u32, twin: u32, v: f32, thr: f32, ranking: bool) -> bool {
    if (j == t) {
        return true;
    }
    if (ranking) {
        return dlogits[base + j] != 0.0;
    }
    return j != twin && (p.use_margin == 0u || v >= thr);
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
    // No index equals 0xffffffff, so "no twin" needs no extra test below.
    var twin = 0xffffffffu;
    if (p.twin_base != 0u) {
        twin = select(t - p.twin_base, t + p.twin_base, t < p.twin_base);
    }

    // Hard negatives: each invocation ranks its own candidates (how many candidates precede
    // it) and parks the kept flag in its own dlogits entries, read back below by the same
    // invocation. A rank search stops at k predecessors, so a row costs ~ cols·k·log(cols/k).
    // k >= cols - 1 keeps every candidate and skips the ranking.
    let ranking = p.hard_k != 0u && p.hard_k < p.cols - 1u;
    if (ranking) {
        for (var j = li; j < p.cols; j += WG) {
            dlogits[base + j] = select(0.0, 1.0, in_top_k(base, j, t, twin, thr));
        }
    }

    // The target is always kept, so lt is a finite lower bound of the kept maximum.
    var mx = lt;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
            mx = max(mx, v);
        }
    }
    mx = reduce_max(li, mx);
    var z = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
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
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
            g = exp(v - mx) * inv;
            if (j == t) {
                g -= 1.0;
            }
            g *= p.scale;
        }
        dlogits[base + j] = g;
    }
}

@compute @workgroup_size(64)
fn cross_entropy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = (wid.x + wid.y * nwg.x) * 64u + li;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let t = targets[row];
    let lt = logits[base + t];
    let thr = lt - p.margin;
    let masking = p.use_margin != 0u;
    var twin = 0xffffffffu;
    if (p.twin_base != 0u) {
        twin = select(t - p.twin_base, t + p.twin_base, t < p.twin_base);
    }
    let ranking = p.hard_k != 0u && p.hard_k < p.cols - 1u;
    if (ranking) {
        for (var j = 0u; j < p.cols; j += 1u) {
            dlogits[base + j] = select(0.0, 1.0, in_top_k(base, j, t, twin, thr));
        }
    }
    var mx = lt;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = logits[base + j];
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
            mx = max(mx, v);
        }
    }
    var z = 0.0;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = logits[base + j];
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
            z += exp(v - mx);
        }
    }
    losses[row] = log(z) + mx - lt;
    let inv = 1.0 / z;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = logits[base + j];
        var g = 0.0;
        if (is_kept(base, j, t, twin, v, thr, ranking)) {
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
