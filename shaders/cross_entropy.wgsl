// Cross-entropy over a per-row kept set, forward and backward fused, plus a mean.
//
// Scores. For row r with target t = targets[r], the kernel first forms
//   v_j = S * (l[r, j] - [j == t] * o_r)                 S = logit_scale (1: off)
// where o_r = row_vals[r] when row_mode == 2 (a per-row target offset), else 0, and the
// margin m_r = row_vals[r] when row_mode == 1 (a per-row margin), else m = margin.
// With a margin the threshold is thr = v_t - m_r.
// Kept set. The candidates are the non-targets the flags allow:
//   C_r = { j != t : (!masking or v_j >= thr)                        (threshold / selfish tokens)
//                    and (twin_base == 0 or j != twin(t)) }          (counterpart: false negative)
//   masking = use_margin and not detach_under
//   twin(t) = t + V if t < V else t - V,  V = twin_base             (the other alphabet, cols = 2V)
// With hard_k = K > 0 only the K best candidates stay (dynamic hard negatives): candidates are
// ranked by value in IEEE totalOrder (so -0 < +0), equal values by lower index first, and the
// first min(K, |C_r|) are kept. Otherwise all of C_r stays. The target is always kept:
//   K_r = { t } ∪ (hard_k > 0 ? top_K(C_r) : C_r)
// Soft threshold (soft_c = C > 0, with a margin): kept entries are scored
//   u_j = τ + C * log(max(1e-9, exp(a_j) - 1)),  a_j = (v_j - τ) / C,  τ = thr
// (exp(a) - 1 by its Taylor series for small a, as a + log(1 - exp(-a)) otherwise); else u_j = v_j.
// Loss and gradient:
//   mx = max_{j in K_r} u_j,  Z = sum_{j in K_r} exp(u_j - mx)
//   losses[r] = log Z + mx - u_t                                 (= -log softmax over K_r at t)
//   g_j = exp(u_j - mx) / Z - [j == t]                           (d loss / d u_j)
//   dlogits[r, j] = scale * S * g_j * du_j/dv_j                  for j in K_r, else 0
//   du_j/dv_j = 1, or 1 + 1/q_j with q_j = exp(a_j) - 1 under the soft threshold (0 at the floor)
// The soft threshold's τ = v_t - m_r moves with the target unless detach_tau; then the
// scores depend on v - v_t only, so the target's gradient is minus the others' sum:
//   dlogits[r, t] = -scale * S * sum_{j in K_r, j != t} g_j * du_j/dv_j
// (the same as adding sum_j g_j (1 - du_j/dv_j) through τ, without the cancellation
// against the target's own slope, which is large when the margin is small).
// detach_under: every non-target stays in the softmax (the margin does not mask) but entries
// with v_j < thr get dlogits 0. scale is 1 / (rows averaged), so dlogits is the gradient of
// the mean loss; the target offset's own gradient is -dlogits[r, t] (see `row_norms`).
// Top-K needs no reduction: each candidate counts the candidates ranked before it and stays if
// fewer than K do (exact integer counts, so the set is the CPU twin's bit for bit).
// `mean_rows`: out[0] = (sum_i x[i]) / n, one workgroup, fixed-order tree sum.
// logits/dlogits row-major [rows, cols]; targets u32 [rows]; row_vals f32 [rows] (bound to
// any read-only buffer when row_mode == 0); one workgroup per row.
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
    logit_scale: f32,
    row_mode: u32,
    soft_c: f32,
    detach_tau: u32,
    detach_under: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
// mean_rows
@group(0) @binding(5) var<storage, read> xs: array<f32>;
@group(0) @binding(6) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(7) var<storage, read> row_vals: array<f32>;

const WG: u32 = 256u;

// Monotone map of IEEE totalOrder onto u32 order: flip every bit of negatives, the sign of
// positives.
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// What every invocation of a row needs: where it lives, its target, threshold and twin.
struct Row {
    base: u32,
    t: u32,
    // The target offset o_r (0 unless row_mode == 2).
    off: f32,
    lt: f32,
    thr: f32,
    // No index equals 0xffffffff, so "no twin" needs no extra test.
    twin: u32,
    // Hard negatives are ranked (k >= cols - 1 keeps every candidate and skips the ranking).
    ranking: bool,
}

// v_j: the logit as the loss sees it.
fn value_at(r: Row, j: u32) -> f32 {
    var x = logits[r.base + j];
    if (j == r.t) {
        x -= r.off;
    }
    return x * p.logit_scale;
}

fn masking() -> bool {
    return p.use_margin != 0u && p.detach_under == 0u;
}

// Whether candidate j is among the hard_k best candidates of its row: fewer than hard_k
// candidates rank before it (the search stops at hard_k).
fn in_top_k(r: Row, j: u32) -> bool {
    let v = value_at(r, j);
    if (j == r.t || j == r.twin || (masking() && v < r.thr)) {
        return false;
    }
    let key = order_key(v);
    var rank = 0u;
    for (var i = 0u; i < p.cols && rank < p.hard_k; i += 1u) {
        let u = value_at(r, i);
        let ku = order_key(u);
        if (i != r.t && i != r.twin && (!masking() || u >= r.thr)
            && (ku > key || (ku == key && i < j))) {
            rank += 1u;
        }
    }
    return rank < p.hard_k;
}

fn row_setup(row: u32) -> Row {
    var r: Row;
    r.base = row * p.cols;
    r.t = targets[row];
    r.off = 0.0;
    var m = p.margin;
    if (p.row_mode == 1u) {
        m = row_vals[row];
    } else if (p.row_mode == 2u) {
        r.off = row_vals[row];
    }
    r.lt = value_at(r, r.t);
    r.thr = r.lt - m;
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
    dlogits[r.base + j] = select(0.0, 1.0, in_top_k(r, j));
}

// Membership of K_r; with ranking on, the flag the calling invocation parked in dlogits.
fn kept_at(r: Row, j: u32, v: f32) -> bool {
    if (j == r.t) {
        return true;
    }
    if (r.ranking) {
        return dlogits[r.base + j] != 0.0;
    }
    return j != r.twin && (!masking() || v >= r.thr);
}

// log(max(1e-9, e^a - 1)) and du/dv = 1 + 1/q (0 at the floor), for a >= 0. Below 0.35 the
// difference e^a - 1 would cancel, so q comes from expm1's Taylor series (error < 2e-8
// relative); above, the log is a + log(1 - e^-a), which cannot overflow.
fn soft_log(a: f32) -> vec2<f32> {
    if (a < 0.35) {
        let q = a * (1.0 + a * (0.5 + a * (1.0 / 6.0 + a * (1.0 / 24.0 + a * (1.0 / 120.0
            + a * (1.0 / 720.0 + a * (1.0 / 5040.0 + a * (1.0 / 40320.0))))))));
        if (q < 1e-9) {
            return vec2<f32>(log(1e-9), 0.0);
        }
        return vec2<f32>(log(q), 1.0 + 1.0 / q);
    }
    let w = exp(-a);
    return vec2<f32>(a + log(1.0 - w), 1.0 / (1.0 - w));
}

// (u_j, du_j/dv_j) of a kept entry.
fn score(r: Row, v: f32) -> vec2<f32> {
    if (p.soft_c > 0.0) {
        let s = soft_log((v - r.thr) / p.soft_c);
        return vec2<f32>(r.thr + p.soft_c * s.x, s.y);
    }
    return vec2<f32>(v, 1.0);
}

// g_j = d loss / d u_j of a kept entry, given the row's max and 1 / Z.
fn g_at(r: Row, j: u32, u: f32, mx: f32, inv: f32) -> f32 {
    var g = exp(u - mx) * inv;
    if (j == r.t) {
        g -= 1.0;
    }
    return g;
}

// This invocation's part of the non-targets' sum of g_j * du_j/dv_j.
fn others_part(r: Row, j: u32, mx: f32, inv: f32) -> f32 {
    let v = value_at(r, j);
    if (j == r.t || !kept_at(r, j, v)) {
        return 0.0;
    }
    let s = score(r, v);
    return g_at(r, j, s.x, mx, inv) * s.y;
}

// Whether the soft threshold's gradient reaches the target.
fn tau_flows() -> bool {
    return p.soft_c > 0.0 && p.detach_tau == 0u;
}

// dlogits of one entry, given the row's max, 1 / Z and the non-targets' sum.
fn grad_at(r: Row, j: u32, mx: f32, inv: f32, others: f32) -> f32 {
    let v = value_at(r, j);
    if (!kept_at(r, j, v) || (p.detach_under != 0u && j != r.t && v < r.thr)) {
        return 0.0;
    }
    var d: f32;
    if (j == r.t && tau_flows()) {
        d = -others;
    } else {
        let s = score(r, v);
        d = g_at(r, j, s.x, mx, inv) * s.y;
    }
    return d * p.logit_scale * p.scale;
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
    // The target is always kept, so u_t is a finite lower bound of the kept maximum.
    let ut = score(r, r.lt).x;
    var mx = ut;
    for (var j = li; j < p.cols; j += WG) {
        let v = value_at(r, j);
        if (kept_at(r, j, v)) {
            mx = max(mx, score(r, v).x);
        }
    }
    mx = reduce_max(li, mx);
    var z = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let v = value_at(r, j);
        if (kept_at(r, j, v)) {
            z += exp(score(r, v).x - mx);
        }
    }
    z = reduce_sum(li, z);
    if (li == 0u) {
        losses[row] = log(z) + mx - ut;
    }
    let inv = 1.0 / z;
    var others = 0.0;
    if (tau_flows()) {
        for (var j = li; j < p.cols; j += WG) {
            others += others_part(r, j, mx, inv);
        }
        others = reduce_sum(li, others);
    }
    for (var j = li; j < p.cols; j += WG) {
        dlogits[r.base + j] = grad_at(r, j, mx, inv, others);
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
    let ut = score(r, r.lt).x;
    var mx = ut;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = value_at(r, j);
        if (kept_at(r, j, v)) {
            mx = max(mx, score(r, v).x);
        }
    }
    var z = 0.0;
    for (var j = 0u; j < p.cols; j += 1u) {
        let v = value_at(r, j);
        if (kept_at(r, j, v)) {
            z += exp(score(r, v).x - mx);
        }
    }
    losses[row] = log(z) + mx - ut;
    let inv = 1.0 / z;
    var others = 0.0;
    if (tau_flows()) {
        for (var j = 0u; j < p.cols; j += 1u) {
            others += others_part(r, j, mx, inv);
        }
    }
    for (var j = 0u; j < p.cols; j += 1u) {
        dlogits[r.base + j] = grad_at(r, j, mx, inv, others);
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
