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

// What every invocation of a row needs: where it lives, its target, threshold and twin.
struct Row {
    base: u32,
    t: u32,
    lt: f32,
    thr: f32,
    // No index equals 0xffffffff, so "no twin" needs no extra test.
    twin: u32,
    // Hard negatives are ranked (k >= cols - 1 keeps every candidate and skips the ranking).
    ranking: bool,
}

fn row_setup(row: u32) -> Row {
    var r: Row;
    r.base = row * p.cols;
    r.t = targets[row];
    r.lt = logits[r.base + r.t];
    r.thr = r.lt - p.margin;
    r.twin = 0xffffffffu;
    if (p.twin_base != 0u) {
        r.twin = select(r.t - p.twin_base, r.t + p.twin_base, r.t < p.twin_base);
    }
    r.ranking = p.hard_k != 0u && p.hard_k < p.cols - 1u;
    return r;
}

// Hard negatives: each invocation ranks its own candidates (how many candidates precede it)
// and parks the kept flag in its own dlogits entry, read back later by the same invocation.
// A rank search stops at k predecessors, so a row costs ~ cols·k·log(cols/k).
fn park_rank(r: Row, j: u32) {
    dlogits[r.base + j] = select(0.0, 1.0, in_top_k(r.base, j, r.t, r.twin, r.thr));
}

fn kept_at(r: Row, j: u32, v: f32) -> bool {
    return is_kept(r.base, j, r.t, r.twin, v, r.thr, r.ranking);
}

// dlogits of one entry, given the row's max and 1 / Z.
fn grad_at(r: Row, j: u32, v: f32, mx: f32, inv: f32) -> f32 {
    var g = 0.0;
    if (kept_at(r, j, v)) {
        g = exp(v - mx) * inv;
        if (j == r.t) {
            g -= 1.0;
        }
        g *= p.scale;
    }
    return g;
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
    let r = row_setup(row);
    if (r.ranking) {
        for (var j = li; j < p.cols; j += WG) {
            park_rank(r, j);
        }
    }
    // The target is always kept, so lt is a finite lower bound of the kept maximum.
    var mx = r.lt;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[r.base + j];
        if (kept_at(r, j, v)) {
            mx = max(mx, v);
        }
    }
    mx = reduce_max(li, mx);
    var z = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[r.base + j];
        if (kept_at(r, j, v)) {
            z += exp(v - mx);
        }
    }
    z = reduce_sum(li, z);
    if (li == 0u) {
        losses[row] = log(z) + mx - r.lt;
    }
    let inv = 1.0 / z;
    for (var j = li; j < p.cols; j += WG) {
        dlogits[r.base + j] = grad_at(r, j, logits[r.base + j], mx, inv);
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
    let r = row_setup(row);
    if (r.ranking) {
        for (var j = 0u; j < p.cols; j += 1u) {
            park_rank(r, j);
        }
    }
    var mx = r.lt;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = logits[r.base + j];
        if (kept_at(r, j, v)) {
            mx = max(mx, v);
        }
    }
    var z = 0.0;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = logits[r.base + j];
        if (kept_at(r, j, v)) {
            z += exp(v - mx);
        }
    }
    losses[row] = log(z) + mx - r.lt;
    let inv = 1.0 / z;
    for (var j = 0u; j < p.cols; j += 1u) {
        dlogits[r.base + j] = grad_at(r, j, logits[r.base + j], mx, inv);
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
