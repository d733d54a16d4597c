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
// Top-K is a deterministic radix select: a bitwise search for the K-th largest order key, then
// a bitwise search for the index cut among keys equal to it; every count is a fixed tree sum.
// `mean_rows`: out[0] = (sum_i x[i]) / n, one workgroup, fixed-order tree sum.
// logits/dlogits row-major [rows, cols]; targets u32 [rows]; one workgroup per row.

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
var<workgroup> redu: array<u32, 256>;

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

fn reduce_count(li: u32, v: u32) -> u32 {
    redu[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            redu[li] += redu[li + s];
        }
        workgroupBarrier();
    }
    let r = redu[0];
    workgroupBarrier();
    return r;
}

// Monotone map of IEEE totalOrder onto u32 order: flip every bit of negatives, the sign of
// positives.
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
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

    // Hard negatives: kept candidates are those with key > cut_key, or key == cut_key and
    // index <= cut_idx. With hard_k off the cut keeps every candidate.
    var cut_key = 0u;
    var cut_idx = 0xffffffffu;
    if (p.hard_k != 0u) {
        var n = 0u;
        for (var j = li; j < p.cols; j += WG) {
            let v = logits[base + j];
            if (j != t && j != twin && (!masking || v >= thr)) {
                n += 1u;
            }
        }
        let k = min(p.hard_k, reduce_count(li, n));
        // Largest key with at least k candidates at or above it: the k-th largest key.
        for (var bit = 32u; bit > 0u; bit -= 1u) {
            let c = cut_key | (1u << (bit - 1u));
            var m = 0u;
            for (var j = li; j < p.cols; j += WG) {
                let v = logits[base + j];
                if (j != t && j != twin && (!masking || v >= thr) && order_key(v) >= c) {
                    m += 1u;
                }
            }
            if (reduce_count(li, m) >= k) {
                cut_key = c;
            }
        }
        var above = 0u;
        for (var j = li; j < p.cols; j += WG) {
            let v = logits[base + j];
            if (j != t && j != twin && (!masking || v >= thr) && order_key(v) > cut_key) {
                above += 1u;
            }
        }
        // need >= 1 ties at cut_key complete the k; keep the lowest-indexed ones. cut_idx
        // ends as the largest c with fewer than `need` ties below index c, i.e. the index
        // of the need-th tie.
        let need = k - reduce_count(li, above);
        cut_idx = 0u;
        for (var bit = firstLeadingBit(p.cols) + 1u; bit > 0u; bit -= 1u) {
            let c = cut_idx | (1u << (bit - 1u));
            var m = 0u;
            for (var j = li; j < min(c, p.cols); j += WG) {
                let v = logits[base + j];
                if (j != t && j != twin && (!masking || v >= thr) && order_key(v) == cut_key) {
                    m += 1u;
                }
            }
            if (reduce_count(li, m) < need && c <= p.cols) {
                cut_idx = c;
            }
        }
    }

    // The target is always kept, so lt is a finite lower bound of the kept maximum.
    var mx = lt;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        let key = order_key(v);
        if (j != t && j != twin && (!masking || v >= thr)
            && (key > cut_key || (key == cut_key && j <= cut_idx))) {
            mx = max(mx, v);
        }
    }
    mx = reduce_max(li, mx);
    var z = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = logits[base + j];
        let key = order_key(v);
        if (j == t || (j != twin && (!masking || v >= thr)
            && (key > cut_key || (key == cut_key && j <= cut_idx)))) {
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
        let key = order_key(v);
        var g = 0.0;
        if (j == t || (j != twin && (!masking || v >= thr)
            && (key > cut_key || (key == cut_key && j <= cut_idx)))) {
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
