//! Evaluation metrics computed on the host from a model's logits, and token sampling.
//!
//! Perplexity is reported both at temperature 1 and at the best temperature of a fixed grid:
//! a loss that reshapes the logit scale (like the threshold loss) can look bad at T = 1
//! while ranking tokens well, and the temperature sweep separates the two effects.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Temperatures 0.01, 0.02, ..., 2.00.
pub const NUM_TEMPERATURES: usize = 200;

/// The `k`-th temperature of the sweep, computed from integers so that 1.00 is exact.
pub fn temperature(k: usize) -> f64 {
    (k + 1) as f64 / 100.0
}

/// Metrics of one language over its evaluation targets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LangMetrics {
    pub tokens: usize,
    /// Mean negative log-likelihood at T = 1, in nats.
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    pub best_ppl: f64,
    pub best_temperature: f64,
    pub accuracy: f64,
    pub recall_at_5: f64,
    pub mrr: f64,
}

/// Terms below exp(-CUTOFF) relative to the largest (which contributes 1) are dropped from
/// the tempered sums: each changes log-sum-exp by under 1e-13, and skipping them removes
/// most of the work at low temperatures.
const CUTOFF: f32 = 30.0;

/// Rows per work unit. Partial sums are merged in unit order, so the result does not depend
/// on how many threads ran.
const CHUNK_ROWS: usize = 256;

#[derive(Clone, Debug)]
struct Partial {
    n: usize,
    nonfinite: bool,
    sum_nll: f64,
    /// Sum over targets of (target logit - row max).
    sum_zt: f64,
    /// Sum over targets of ln sum_j exp((l_j - max) / T_k).
    sum_ln_s: Vec<f64>,
    correct: usize,
    top5: usize,
    sum_rr: f64,
}

impl Partial {
    fn new() -> Self {
        Self {
            n: 0,
            nonfinite: false,
            sum_nll: 0.0,
            sum_zt: 0.0,
            sum_ln_s: vec![0.0; NUM_TEMPERATURES],
            correct: 0,
            top5: 0,
            sum_rr: 0.0,
        }
    }

    fn merge(&mut self, o: &Partial) {
        self.n += o.n;
        self.nonfinite |= o.nonfinite;
        self.sum_nll += o.sum_nll;
        self.sum_zt += o.sum_zt;
        for (a, b) in self.sum_ln_s.iter_mut().zip(&o.sum_ln_s) {
            *a += b;
        }
        self.correct += o.correct;
        self.top5 += o.top5;
        self.sum_rr += o.sum_rr;
    }
}

/// exp(x) for x <= 0, about 1e-7 relative error, written with plain arithmetic and bit
/// operations so the compiler vectorizes the temperature loop (libm's exp does not).
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let shifted = x * LOG2E + SHIFT;
    let k = shifted - SHIFT;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let ki = shifted.to_bits().wrapping_sub(SHIFT.to_bits()) as i32;
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    p * scale
}

fn inv_temperatures() -> Vec<f32> {
    (0..NUM_TEMPERATURES)
        .map(|k| (1.0 / temperature(k)) as f32)
        .collect()
}

/// Scores rows of width `v` into `p`. Each tempered sum is accumulated in f32: it is at
/// least 1 (the maximum's term) with at most `v` terms, so f32 keeps ~1e-9 relative accuracy
/// in the final perplexity while running four times faster than f64.
fn score_rows(logits: &[f32], targets: &[u32], v: usize, inv_t: &[f32], p: &mut Partial) {
    let mut acc = vec![0f32; NUM_TEMPERATURES];
    for (row, &t) in logits.chunks_exact(v).zip(targets) {
        let t = t as usize;
        p.n += 1;
        if row.iter().any(|x| !x.is_finite()) {
            p.nonfinite = true;
            continue;
        }
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lt = row[t];
        let zt = lt - m;

        let mut greater = 0usize;
        let mut s1 = 0f64;
        for &l in row {
            greater += (l > lt) as usize;
            s1 += ((l - m) as f64).exp();
        }
        let rank = greater + 1;
        p.correct += (rank == 1) as usize;
        p.top5 += (rank <= 5) as usize;
        p.sum_rr += 1.0 / rank as f64;
        p.sum_nll += s1.ln() - zt as f64;
        p.sum_zt += zt as f64;

        acc.fill(0.0);
        for &l in row {
            let z = l - m;
            // Temperatures where this logit can still matter: z / T >= -CUTOFF.
            let first = ((-z) * (100.0 / CUTOFF)).ceil() as usize;
            let first = first.saturating_sub(1).min(NUM_TEMPERATURES);
            for (a, &it) in acc[first..].iter_mut().zip(&inv_t[first..]) {
                *a += exp_nonpos(z * it);
            }
        }
        for (s, &a) in p.sum_ln_s.iter_mut().zip(&acc) {
            *s += (a as f64).ln();
        }
    }
}

/// Accumulates metrics over batches of logits for one language.
#[derive(Clone, Debug)]
pub struct MetricsAcc {
    vocab: usize,
    inv_t: Vec<f32>,
    total: Partial,
}

impl MetricsAcc {
    /// `vocab` is the width of each logit row: the whole model vocabulary, both alphabets.
    pub fn new(vocab: usize) -> Self {
        Self {
            vocab,
            inv_t: inv_temperatures(),
            total: Partial::new(),
        }
    }

    /// Adds `targets.len()` rows of logits, row-major `[n, vocab]`.
    ///
    /// Mismatched lengths or targets outside the vocabulary are bugs in the caller (both come
    /// from the program, not from the user), so they panic with a message.
    pub fn add(&mut self, logits: &[f32], targets: &[u32]) {
        let v = self.vocab;
        assert!(v > 0, "MetricsAcc: vocabulary size is 0");
        assert_eq!(
            logits.len(),
            targets.len() * v,
            "MetricsAcc::add: logits must be targets.len() x vocab"
        );
        assert!(
            targets.iter().all(|&t| (t as usize) < v),
            "MetricsAcc::add: target id out of the vocabulary"
        );
        let n_chunks = targets.len().div_ceil(CHUNK_ROWS);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(n_chunks);
        let mut parts: Vec<Partial> = vec![Partial::new(); n_chunks];
        let inv_t = &self.inv_t;
        let work = |c: usize, p: &mut Partial| {
            let rows = c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(targets.len());
            score_rows(
                &logits[rows.start * v..rows.end * v],
                &targets[rows],
                v,
                inv_t,
                p,
            );
        };
        if threads <= 1 {
            for (c, p) in parts.iter_mut().enumerate() {
                work(c, p);
            }
        } else {
            // Thread `i` takes chunks i, i + threads, ...; merging stays in chunk order.
            let mut lanes: Vec<Vec<(usize, &mut Partial)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (c, p) in parts.iter_mut().enumerate() {
                lanes[c % threads].push((c, p));
            }
            std::thread::scope(|s| {
                for lane in lanes {
                    s.spawn(move || {
                        for (c, p) in lane {
                            work(c, p);
                        }
                    });
                }
            });
        }
        for p in &parts {
            self.total.merge(p);
        }
    }

    /// Perplexity at each temperature of the sweep, as (temperature, perplexity).
    pub fn ppl_by_temperature(&self) -> Vec<(f64, f64)> {
        let t = &self.total;
        let n = t.n as f64;
        (0..NUM_TEMPERATURES)
            .map(|k| {
                let ppl = if t.n == 0 || t.nonfinite {
                    f64::NAN
                } else {
                    // mean NLL_T = mean ln S_T - mean(z_t) / T
                    ((t.sum_ln_s[k] - t.sum_zt / temperature(k)) / n).exp()
                };
                (temperature(k), ppl)
            })
            .collect()
    }

    /// Any non-finite logit makes the losses NaN, so a diverged model cannot report a
    /// plausible number.
    pub fn finish(&self) -> LangMetrics {
        let t = &self.total;
        let n = t.n as f64;
        let bad = t.n == 0 || t.nonfinite;
        let loss = if bad { f64::NAN } else { t.sum_nll / n };
        // Lowest perplexity wins; ties keep the lower temperature; all-NaN stays NaN.
        let (mut best_temperature, mut best_ppl) = (f64::NAN, f64::INFINITY);
        for (temp, ppl) in self.ppl_by_temperature() {
            if ppl < best_ppl {
                best_ppl = ppl;
                best_temperature = temp;
            }
        }
        if best_temperature.is_nan() {
            best_ppl = f64::NAN;
        }
        let frac = |c: usize| if t.n == 0 { f64::NAN } else { c as f64 / n };
        LangMetrics {
            tokens: t.n,
            loss,
            ppl: loss.exp(),
            best_ppl,
            best_temperature,
            accuracy: frac(t.correct),
            recall_at_5: frac(t.top5),
            mrr: if t.n == 0 { f64::NAN } else { t.sum_rr / n },
        }
    }
}

/// Picks a token id: greedy for `temperature <= 0` (first maximum), otherwise a draw from
/// softmax(logits / temperature) using exactly one `rng.uniform()`.
pub fn sample_token(logits: &[f32], temperature: f32, rng: &mut Rng) -> usize {
    let argmax = || {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] || logits[best].is_nan() {
                best = i;
            }
        }
        best
    };
    if logits.is_empty() {
        return 0;
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return argmax();
    }
    let m = logits
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return argmax();
    }
    let inv_t = 1.0 / temperature as f64;
    let weight = |l: f32| {
        if l.is_nan() {
            0.0
        } else {
            (((l - m) as f64) * inv_t).exp()
        }
    };
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    let u = rng.uniform() * total;
    let mut cum = 0.0;
    let mut last_positive = argmax();
    for (i, &l) in logits.iter().enumerate() {
        let w = weight(l);
        if w > 0.0 {
            cum += w;
            last_positive = i;
            if u < cum {
                return i;
            }
        }
    }
    // Rounding can leave u just above the running sum; the last possible token is right.
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x > -80.0 {
            let want = (x as f64).exp();
            let got = exp_nonpos(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x -= 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert!(exp_nonpos(-1e30) < 1e-37);
        assert!(exp_nonpos(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn uniform_logits_give_ppl_v_and_rank_one() {
        let v = 7;
        let n = 1000;
        let logits = vec![0.3f32; n * v];
        let targets: Vec<u32> = (0..n as u32).map(|i| i % v as u32).collect();
        let mut acc = MetricsAcc::new(v);
        acc.add(&logits, &targets);
        let m = acc.finish();
        assert_eq!(m.tokens, n);
        assert!(close(m.loss, (v as f64).ln(), 1e-12), "{m:?}");
        assert!(close(m.ppl, v as f64, 1e-12));
        // Every temperature gives the same perplexity; the first (lowest) is reported.
        assert!(close(m.best_ppl, v as f64, 1e-5), "{m:?}");
        assert_eq!(m.best_temperature, 0.01);
        assert_eq!((m.accuracy, m.recall_at_5, m.mrr), (1.0, 1.0, 1.0));
    }

    #[test]
    fn hand_computed_two_by_three() {
        // Row 0: logits [1, 2, 3], target 2 (the best): rank 1.
        // Row 1: logits [0, 0, ln 2 ~ 0.6931], target 0: rank 2.
        let ln2 = std::f32::consts::LN_2;
        let logits = [1.0, 2.0, 3.0, 0.0, 0.0, ln2];
        let targets = [2u32, 0];
        let mut acc = MetricsAcc::new(3);
        acc.add(&logits, &targets);
        let m = acc.finish();
        let nll0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
        let nll1 = 4f64.ln(); // softmax = [1/4, 1/4, 1/2]
        assert!(close(m.loss, (nll0 + nll1) / 2.0, 1e-7), "{m:?}");
        assert!(close(m.ppl, ((nll0 + nll1) / 2.0).exp(), 1e-7));
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.recall_at_5, 1.0);
        assert_eq!(m.mrr, 0.75);

        // Perplexity at T = 0.5 by hand.
        let curve = acc.ppl_by_temperature();
        let (t, ppl) = curve[49];
        assert_eq!(t, 0.5);
        let lse = |xs: &[f64]| xs.iter().map(|x| x.exp()).sum::<f64>().ln();
        let a = lse(&[2.0, 4.0, 6.0]) - 6.0;
        let b = lse(&[0.0, 0.0, 2.0 * ln2 as f64]) - 0.0;
        assert!(close(ppl, ((a + b) / 2.0).exp(), 1e-6), "{ppl}");
        let best = curve
            .iter()
            .copied()
            .fold((0.0, f64::INFINITY), |b, c| if c.1 < b.1 { c } else { b });
        assert_eq!((m.best_temperature, m.best_ppl), best);
    }

    #[test]
    fn chunking_and_threads_match_one_pass() {
        let v = 13;
        let n = 3 * CHUNK_ROWS + 17;
        let mut rng = Rng::new(4);
        let logits: Vec<f32> = (0..n * v).map(|_| (3.0 * rng.normal()) as f32).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        let mut whole = MetricsAcc::new(v);
        whole.add(&logits, &targets);
        let mut pieces = MetricsAcc::new(v);
        for (l, t) in logits.chunks(v * 100).zip(targets.chunks(100)) {
            pieces.add(l, t);
        }
        let (a, b) = (whole.finish(), pieces.finish());
        assert_eq!(a.tokens, b.tokens);
        assert!(close(a.loss, b.loss, 1e-12) && close(a.best_ppl, b.best_ppl, 1e-12));
        assert_eq!((a.accuracy, a.recall_at_5), (b.accuracy, b.recall_at_5));

        // Tempered perplexity agrees with a direct f64 computation.
        let curve = whole.ppl_by_temperature();
        for k in [0, 9, 49, 99, 150, 199] {
            let inv = 1.0 / temperature(k);
            let mut sum = 0.0;
            for (row, &t) in logits.chunks(v).zip(&targets) {
                let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
                let s: f64 = row.iter().map(|&l| ((l as f64 - m) * inv).exp()).sum();
                sum += s.ln() - (row[t as usize] as f64 - m) * inv;
            }
            let want = (sum / n as f64).exp();
            assert!(
                close(curve[k].1, want, 1e-5),
                "T={} {} {want}",
                curve[k].0,
                curve[k].1
            );
        }
    }

    #[test]
    fn confident_correct_logits_prefer_low_temperature() {
        let v = 5;
        let mut logits = Vec::new();
        let mut targets = Vec::new();
        for i in 0..50 {
            let t = i % v;
            let mut row = vec![0.0f32; v];
            row[t] = 4.0;
            logits.extend(row);
            targets.push(t as u32);
        }
        let mut acc = MetricsAcc::new(v);
        acc.add(&logits, &targets);
        let m = acc.finish();
        assert_eq!(m.best_temperature, 0.01, "{m:?}");
        assert!(m.best_ppl < 1.0001 && m.best_ppl < m.ppl, "{m:?}");
        assert_eq!(m.accuracy, 1.0);
    }

    #[test]
    fn nonfinite_and_empty_are_nan() {
        let mut acc = MetricsAcc::new(2);
        assert!(acc.finish().loss.is_nan());
        acc.add(&[0.0, f32::NAN], &[0]);
        acc.add(&[0.0, 1.0], &[0]);
        let m = acc.finish();
        assert_eq!(m.tokens, 2);
        assert!(m.loss.is_nan() && m.best_ppl.is_nan());
        // NaN serializes (as null) rather than failing.
        serde_json::to_string(&m).unwrap();
    }

    #[test]
    fn sampling() {
        let mut rng = Rng::new(11);
        let logits = [0.5f32, 2.0, -1.0, 1.0];
        assert_eq!(sample_token(&logits, 0.0, &mut rng), 1);
        assert_eq!(sample_token(&logits, -1.0, &mut rng), 1);
        for _ in 0..100 {
            assert_eq!(sample_token(&logits, 1e-4, &mut rng), 1);
        }
        assert_eq!(sample_token(&[], 1.0, &mut rng), 0);
        assert_eq!(sample_token(&[f32::NAN, 3.0], 1.0, &mut rng), 1);

        let temp = 0.8f32;
        let n = 200_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample_token(&logits, temp, &mut rng)] += 1;
        }
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (l as f64 / temp as f64).exp())
            .collect();
        let z: f64 = w.iter().sum();
        for i in 0..4 {
            let p = w[i] / z;
            let f = counts[i] as f64 / n as f64;
            assert!((f - p).abs() < 0.005, "token {i}: {f} vs {p}");
        }
    }
}

#[cfg(test)]
mod perf {
    use super::*;

    /// Full validation-set size; run with `cargo test --release -- --ignored metrics_speed`.
    #[test]
    #[ignore]
    fn metrics_speed() {
        let (n, v) = (111_000, 130);
        let mut rng = Rng::new(1);
        let logits: Vec<f32> = (0..n * v).map(|_| (4.0 * rng.normal()) as f32).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        let t0 = std::time::Instant::now();
        let mut acc = MetricsAcc::new(v);
        for (l, t) in logits.chunks(v * 8192).zip(targets.chunks(8192)) {
            acc.add(l, t);
        }
        let m = acc.finish();
        eprintln!("{:?} in {:.2?}", m, t0.elapsed());
    }
}
