// Skip-gram negative-sampling loss (sigmoid on the target and K sampled negatives), forward
// and backward fused.
//
// For row r with target t = targets[r] and logits l = l[r, :], slot k in 0..K draws
//   u_k = hash(step, seed, r, k) >> 1                 (31 bits; [step, seed] = seeds[0..2])
//   n_k = min { j : u_k < cdf[j] }                     (binary search, all integers)
// where cdf[j] is the cumulative noise distribution (unigram^0.75) scaled to 2^31 and
// cdf[cols - 1] = 2^31, so a token is drawn with probability (cdf[j] - cdf[j-1]) / 2^31.
// A slot that draws the target is skipped (word2vec's rule): it adds no loss and no gradient.
//   losses[r]     = softplus(-l_t) + sum_{k: n_k != t} softplus(l_{n_k})
//                 = -log σ(l_t) - sum_{k: n_k != t} log σ(-l_{n_k})
//   dlogits[r, t] = -σ(-l_t) * scale                   (= (σ(l_t) - 1) * scale)
//   dlogits[r, j] = c_j * σ(l_j) * scale,  c_j = #{k : n_k = j != t}   (a repeat counts again)
// so every logit that was not drawn gets exactly 0. softplus(x) = max(x, 0) + log1p(e^-|x|).
// With logit_scale S != 1 every l above is S * l and the gradient carries a factor S more.
// hash = xxHash32's 4-byte rounds and avalanche over the words (step, seed, r, k):
//   h = P5; for w: h = rotl(h + w * P3, 17) * P4; then h ^= h >> 15; h *= P2; h ^= h >> 13;
//   h *= P3; h ^= h >> 16. The CPU twin (src/kernels/sampled_loss.rs) computes the same bits.
// The row's loss is a fixed-order tree sum; counts c_j scan the K draws in workgroup memory.
// logits/dlogits row-major [rows, cols]; targets u32 [rows]; cdf u32 [cols]; K <= 1024;
// one workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    k: u32,
    scale: f32,
    logit_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read> cdf: array<u32>;
@group(0) @binding(4) var<storage, read> seeds: array<u32>;
@group(0) @binding(5) var<storage, read_write> losses: array<f32>;
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;

const WG: u32 = 256u;
const MAX_K: u32 = 1024u;
const P2: u32 = 2246822519u;
const P3: u32 = 3266489917u;
const P4: u32 = 668265263u;
const P5: u32 = 374761393u;

var<workgroup> negs: array<u32, 1024>;

fn xx_round(h: u32, w: u32) -> u32 {
    let x = h + w * P3;
    return ((x << 17u) | (x >> 15u)) * P4;
}

fn hash4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    var h = xx_round(xx_round(xx_round(xx_round(P5, a), b), c), d);
    h = (h ^ (h >> 15u)) * P2;
    h = (h ^ (h >> 13u)) * P3;
    return h ^ (h >> 16u);
}

fn draw_token(row: u32, k: u32) -> u32 {
    let u = hash4(seeds[0], seeds[1], row, k) >> 1u;
    var lo = 0u;
    var hi = p.cols - 1u;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (u < cdf[mid]) {
            hi = mid;
        } else {
            lo = mid + 1u;
        }
    }
    return lo;
}

// log(1 + e) for e in [0, 1], accurate when 1 + e rounds to 1 (Goldberg's correction).
fn log1p_small(e: f32) -> f32 {
    let u = 1.0 + e;
    if (u == 1.0) {
        return e;
    }
    return log(u) * (e / (u - 1.0));
}

fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_small(exp(-abs(x)));
}

fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    let s = 1.0 / (1.0 + e);
    return select(e * s, s, x >= 0.0);
}

@compute @workgroup_size(256)
fn sampled_loss(
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
    let lt = logits[base + t] * p.logit_scale;
    let gs = p.scale * p.logit_scale;
    let kk = min(p.k, MAX_K);
    var acc = 0.0;
    if (li == 0u) {
        acc = softplus(-lt);
    }
    for (var k = li; k < kk; k += WG) {
        let n = draw_token(row, k);
        negs[k] = n;
        if (n != t) {
            acc += softplus(logits[base + n] * p.logit_scale);
        }
    }
    // reduce_sum's first barrier also publishes negs.
    let total = reduce_sum(li, acc);
    if (li == 0u) {
        losses[row] = total;
    }
    for (var j = li; j < p.cols; j += WG) {
        var g = 0.0;
        if (j == t) {
            g = -sigmoid(-lt) * gs;
        } else {
            var c = 0u;
            for (var k = 0u; k < kk; k += 1u) {
                c += select(0u, 1u, negs[k] == j);
            }
            if (c > 0u) {
                g = f32(c) * sigmoid(logits[base + j] * p.logit_scale) * gs;
            }
        }
        dlogits[base + j] = g;
    }
}
