//! Properties of the related negative-selection losses (`hard:K`, `counterpart`, their mixes
//! with a margin, and `sampled:K`) and of the threshold's ablations (logit scale, soft
//! threshold, detach-under, per-row margins and target offsets) on the CPU twins and on the
//! GPU.

use selfish::kernels::cross_entropy::{self, CrossEntropy, Keep, PerRow, Shaping};
use selfish::kernels::sampled_loss::{self, SampledLoss};
use selfish::kernels::IntoOp;
use selfish::rng::Rng;
use selfish::runtime::{Backend, CpuBackend, Dtype, GpuBackend, Wait};

const ROWS: usize = 37;
/// Two alphabets of 65, the paper's model vocabulary.
const COLS: usize = 130;
const BASE: usize = 65;

fn backends() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(CpuBackend::new()),
        Box::new(GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)")),
    ]
}

/// Distinct (with probability 1) logits and random targets.
fn batch(seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let logits = (0..ROWS * COLS)
        .map(|_| 3.0 * rng.normal() as f32)
        .collect();
    let targets = (0..ROWS).map(|_| rng.below(COLS) as u32).collect();
    (logits, targets)
}

fn alloc_batch(
    be: &mut dyn Backend,
    logits: &[f32],
    targets: &[u32],
) -> [selfish::runtime::Buf; 4] {
    let (rows, n) = (targets.len(), logits.len());
    let l = be.alloc("logits", n, Dtype::F32).unwrap();
    let t = be.alloc("targets", rows, Dtype::U32).unwrap();
    let losses = be.alloc("losses", rows, Dtype::F32).unwrap();
    let d = be.alloc("dlogits", n, Dtype::F32).unwrap();
    be.write_f32(l, logits);
    be.write_u32(t, targets);
    // Poison the gradient so "exactly zero" cannot come from the initial fill.
    be.write_f32(d, &vec![f32::NAN; n]);
    [l, t, losses, d]
}

/// The fused loss on a backend: (per-row losses, dlogits), scale 1 / rows.
fn cross_entropy(
    be: &mut dyn Backend,
    keep: Keep,
    logits: &[f32],
    targets: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    shaped(be, keep, Shaping::default(), &[], logits, targets)
}

/// [`cross_entropy`] under a shaping, with the per-row values it reads.
fn shaped(
    be: &mut dyn Backend,
    keep: Keep,
    shaping: Shaping,
    row_vals: &[f32],
    logits: &[f32],
    targets: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let rows = targets.len();
    let cols = logits.len() / rows;
    let [l, t, losses, d] = alloc_batch(be, logits, targets);
    let rv = (shaping.per_row != PerRow::Nothing).then(|| {
        let b = be.alloc("row values", rows, Dtype::F32).unwrap();
        be.write_f32(b, row_vals);
        b
    });
    let ce = CrossEntropy::new(
        rows as u32,
        cols as u32,
        keep,
        1.0 / rows as f32,
        l,
        t,
        losses,
        d,
    );
    let op = CrossEntropy {
        shaping,
        row_vals: rv,
        ..ce
    };
    let seq = be.compile(vec![op.op()]).unwrap();
    be.run(&[seq]).unwrap();
    (be.read_now(losses).unwrap(), be.read_now(d).unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The sampled loss on a backend: (per-row losses, dlogits).
fn sampled(
    be: &mut dyn Backend,
    k: u32,
    weights: &[f64],
    seeds: [u32; 2],
    scale: f32,
    logits: &[f32],
    targets: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let table = sampled_loss::cdf(weights);
    sampled_with_table(be, k, &table, seeds, scale, logits, targets)
}

fn sampled_with_table(
    be: &mut dyn Backend,
    k: u32,
    table: &[u32],
    seeds: [u32; 2],
    scale: f32,
    logits: &[f32],
    targets: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let rows = targets.len();
    let cols = logits.len() / rows;
    let [l, t, losses, d] = alloc_batch(be, logits, targets);
    let cdf = be.alloc("cdf", cols, Dtype::U32).unwrap();
    let s = be.alloc("seeds", 2, Dtype::U32).unwrap();
    be.write_u32(cdf, table);
    be.write_u32(s, &seeds);
    let seq = be
        .compile(vec![SampledLoss {
            rows: rows as u32,
            cols: cols as u32,
            k,
            scale,
            logit_scale: 1.0,
            logits: l,
            targets: t,
            cdf,
            seeds: s,
            losses,
            dlogits: d,
        }
        .op()])
        .unwrap();
    be.run(&[seq]).unwrap();
    (be.read_now(losses).unwrap(), be.read_now(d).unwrap())
}

fn hard(k: u32) -> Keep {
    Keep {
        hard: Some(k),
        ..Keep::default()
    }
}

/// Which entries carry gradient: the kept set (kept entries have non-zero gradient here).
fn support(grad: &[f32]) -> Vec<bool> {
    grad.iter().map(|&g| g != 0.0).collect()
}

#[test]
fn hard_k_keeps_the_target_and_exactly_the_k_best_non_targets() {
    let (logits, targets) = batch(1);
    for mut be in backends() {
        for k in [1u32, 2, 5, 64, 128] {
            let (_, grad) = cross_entropy(be.as_mut(), hard(k), &logits, &targets);
            for r in 0..ROWS {
                let row = &logits[r * COLS..(r + 1) * COLS];
                let t = targets[r] as usize;
                let kept = support(&grad[r * COLS..(r + 1) * COLS]);
                assert!(kept[t], "{}: target dropped", be.name());
                assert_eq!(
                    kept.iter().filter(|&&x| x).count(),
                    k.min(COLS as u32 - 1) as usize + 1,
                    "{} hard:{k} row {r}",
                    be.name()
                );
                // A kept non-target beats every dropped one.
                let worst_kept = (0..COLS)
                    .filter(|&j| j != t && kept[j])
                    .map(|j| row[j])
                    .fold(f32::INFINITY, f32::min);
                let best_dropped = (0..COLS)
                    .filter(|&j| !kept[j])
                    .map(|j| row[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert!(worst_kept > best_dropped, "{} hard:{k} row {r}", be.name());
            }
        }
    }
}

#[test]
fn hard_k_of_v_minus_1_or_more_is_plain_cross_entropy() {
    let (logits, targets) = batch(2);
    for mut be in backends() {
        let plain = cross_entropy(be.as_mut(), Keep::default(), &logits, &targets);
        for k in [COLS as u32 - 1, 1000] {
            let got = cross_entropy(be.as_mut(), hard(k), &logits, &targets);
            assert_eq!(got, plain, "{}: hard:{k} differs from plain", be.name());
        }
        let fewer = cross_entropy(be.as_mut(), hard(COLS as u32 - 2), &logits, &targets);
        assert_ne!(fewer.0, plain.0, "dropping one logit must change some loss");
    }
}

/// Integer logits tie everywhere: both sides must cut a tie at the same (lower) indices.
#[test]
fn hard_k_ties_go_to_the_lower_index_on_gpu_and_cpu() {
    let mut rng = Rng::new(5);
    let logits: Vec<f32> = (0..ROWS * COLS).map(|_| rng.below(5) as f32).collect();
    let targets: Vec<u32> = (0..ROWS).map(|_| rng.below(COLS) as u32).collect();
    for mut be in backends() {
        for keep in [
            hard(7),
            Keep {
                hard: Some(3),
                counterpart: Some(BASE as u32),
                margin: Some(1.0),
            },
        ] {
            let (_, grad) = cross_entropy(be.as_mut(), keep, &logits, &targets);
            for r in 0..ROWS {
                let row = &logits[r * COLS..(r + 1) * COLS];
                let want = cross_entropy::kept(row, targets[r] as usize, &keep);
                assert_eq!(
                    support(&grad[r * COLS..(r + 1) * COLS]),
                    want,
                    "{} {keep} row {r}",
                    be.name()
                );
            }
        }
    }
}

#[test]
fn counterpart_drops_the_twin_with_exactly_zero_gradient() {
    let (logits, targets) = batch(3);
    let cp = Keep {
        counterpart: Some(BASE as u32),
        ..Keep::default()
    };
    for mut be in backends() {
        let (losses, grad) = cross_entropy(be.as_mut(), cp, &logits, &targets);
        let (plain, _) = cross_entropy(be.as_mut(), Keep::default(), &logits, &targets);
        for r in 0..ROWS {
            let row = &logits[r * COLS..(r + 1) * COLS];
            let t = targets[r] as usize;
            let twin = if t < BASE { t + BASE } else { t - BASE };
            assert_eq!(
                grad[r * COLS + twin].to_bits(),
                0.0f32.to_bits(),
                "{}: twin has gradient",
                be.name()
            );
            for j in (0..COLS).filter(|&j| j != twin) {
                assert!(grad[r * COLS + j] != 0.0 && grad[r * COLS + j].is_finite());
            }
            // Softmax over everything but the twin, in f64.
            let mx = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let z: f64 = (0..COLS)
                .filter(|&j| j != twin)
                .map(|j| (row[j] as f64 - mx).exp())
                .sum();
            let want = z.ln() + mx - row[t] as f64;
            assert!(
                (losses[r] as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                "{}: row {r} loss {} vs {want}",
                be.name(),
                losses[r]
            );
            assert!(
                losses[r] <= plain[r],
                "dropping a logit cannot raise the loss"
            );
        }
        let lower = (0..ROWS).filter(|&r| losses[r] < plain[r]).count();
        assert!(lower > ROWS / 2, "{}: only {lower} rows changed", be.name());
    }
}

#[test]
fn counterpart_with_margin_keeps_a_subset_of_each() {
    let (logits, targets) = batch(4);
    for mut be in backends() {
        for m in [0.5f32, 2.0, 6.0] {
            let margin = Keep::from_margin(Some(m));
            let cp = Keep {
                counterpart: Some(BASE as u32),
                ..Keep::default()
            };
            let both = Keep {
                counterpart: Some(BASE as u32),
                ..margin
            };
            let k_margin = support(&cross_entropy(be.as_mut(), margin, &logits, &targets).1);
            let k_cp = support(&cross_entropy(be.as_mut(), cp, &logits, &targets).1);
            let k_both = support(&cross_entropy(be.as_mut(), both, &logits, &targets).1);
            let mut dropped_twins = 0;
            for i in 0..ROWS * COLS {
                assert!(
                    !k_both[i] || (k_margin[i] && k_cp[i]),
                    "{} m={m}",
                    be.name()
                );
                // Exactly the intersection: the kept set is all filters at once.
                assert_eq!(
                    k_both[i],
                    k_margin[i] && k_cp[i],
                    "{} m={m} entry {i}",
                    be.name()
                );
                dropped_twins += (k_margin[i] && !k_both[i]) as usize;
            }
            if m >= 2.0 {
                assert!(
                    dropped_twins > 0,
                    "m={m}: no twin inside the margin, test proves nothing"
                );
            }
        }
    }
}

/// Made-up training counts over two alphabets of 6, one token never seen.
fn unigram_weights() -> Vec<f64> {
    let counts = [
        900.0, 300.0, 120.0, 40.0, 0.0, 7.0, 90.0, 30.0, 12.0, 4.0, 1.0, 2.0,
    ];
    counts.iter().map(|c: &f64| c.powf(0.75)).collect()
}

/// With every logit 0, σ = 1/2 exactly, so dlogits (scale 1) reads back the draw counts:
/// 0.5 per draw at a non-target, -0.5 at the target (draws of the target are skipped).
fn counts_from_grad(grad: &[f32], targets: &[u32], cols: usize) -> Vec<Vec<u32>> {
    targets
        .iter()
        .enumerate()
        .map(|(r, &t)| {
            (0..cols)
                .map(|j| {
                    let g = grad[r * cols + j];
                    if j == t as usize {
                        assert_eq!(g, -0.5, "target gradient must be exactly -σ(0)");
                        0
                    } else {
                        assert_eq!(g, (2.0 * g).round() / 2.0, "not a whole count: {g}");
                        (2.0 * g) as u32
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn sampled_draws_follow_unigram_to_the_three_quarters_and_match_exactly() {
    let (rows, cols, k) = (3000usize, 12usize, 8u32);
    let w = unigram_weights();
    let total: f64 = w.iter().sum();
    let mut rng = Rng::new(6);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
    let logits = vec![0.0f32; rows * cols];
    let seeds = [17, 99];
    let mut per_backend = Vec::new();
    for mut be in backends() {
        let (losses, grad) = sampled(be.as_mut(), k, &w, seeds, 1.0, &logits, &targets);
        let counts = counts_from_grad(&grad, &targets, cols);
        for r in 0..rows {
            // softplus(0) = ln 2 for the target and each kept draw.
            let m: u32 = counts[r].iter().sum();
            let want = std::f64::consts::LN_2 * (1 + m) as f64;
            assert!(
                (losses[r] as f64 - want).abs() < 1e-5 * want,
                "{}",
                be.name()
            );
        }
        // Slot by slot, the draws are the host function's.
        for r in (0..rows).step_by(97) {
            let mut want = vec![0u32; cols];
            for slot in 0..k {
                let n = sampled_loss::draw(seeds, r as u32, slot, &sampled_loss::cdf(&w));
                if n != targets[r] {
                    want[n as usize] += 1;
                }
            }
            assert_eq!(counts[r], want, "{} row {r}", be.name());
        }
        // Chi-square against K·q_j per row whose target is not j.
        let mut chi2 = 0.0;
        let mut bins = 0;
        for j in 0..cols {
            let obs: u32 = counts.iter().map(|c| c[j]).sum();
            let rows_j = targets.iter().filter(|&&t| t as usize != j).count();
            let exp = rows_j as f64 * k as f64 * w[j] / total;
            if w[j] == 0.0 {
                assert_eq!(obs, 0, "{}: drew a never-seen token", be.name());
                continue;
            }
            chi2 += (obs as f64 - exp).powi(2) / exp;
            bins += 1;
        }
        // 10 degrees of freedom: P(chi2 > 35) < 2e-4; a skewed or broken draw is far above.
        assert!(
            chi2 < 35.0,
            "{}: chi2 {chi2:.1} over {bins} bins",
            be.name()
        );
        per_backend.push(counts);
    }
    assert_eq!(
        per_backend[0], per_backend[1],
        "GPU and CPU drew different negatives"
    );
}

/// A table boundary placed exactly on a slot's 31-bit draw: the interval is [cdf[j-1], cdf[j]),
/// so u == cdf[0] belongs to token 1 and u == cdf[0] - 1 to token 0.
#[test]
fn sampled_interval_boundaries_are_exact() {
    let seeds = [5, 8];
    let u = sampled_loss::hash4([seeds[0], seeds[1], 0, 0]) >> 1;
    assert!(u > 0);
    // Row 0, one slot, target 2 (never drawn), logits 0: dlogits = 0.5 at the drawn token.
    let (logits, targets) = (vec![0.0f32; 3], vec![2u32]);
    for mut be in backends() {
        for (edge, want) in [(u, 1usize), (u + 1, 0)] {
            let table = [edge, sampled_loss::CDF_TOTAL, sampled_loss::CDF_TOTAL];
            let (_, g) = sampled_with_table(be.as_mut(), 1, &table, seeds, 1.0, &logits, &targets);
            let mut expect = vec![0.0f32; 3];
            expect[want] = 0.5;
            expect[2] = -0.5;
            assert_eq!(g, expect, "{}: cdf[0] = {edge}, u = {u}", be.name());
        }
    }
}

#[test]
fn sampled_draws_change_with_step_and_seed_and_repeat_exactly() {
    let (rows, cols) = (64usize, 12usize);
    let w = unigram_weights();
    let targets: Vec<u32> = (0..rows as u32).map(|r| r % cols as u32).collect();
    let logits = vec![0.0f32; rows * cols];
    for mut be in backends() {
        let mut run = |seeds| sampled(be.as_mut(), 4, &w, seeds, 1.0, &logits, &targets).1;
        let a = run([1, 7]);
        assert_eq!(
            run([1, 7]),
            a,
            "same step and seed must draw the same negatives"
        );
        assert_ne!(run([2, 7]), a, "the step must change the draws");
        assert_ne!(run([1, 8]), a, "the seed must change the draws");
    }
}

#[test]
fn sampled_loss_matches_a_direct_f64_computation() {
    let (rows, cols, k) = (50usize, 40usize, 7u32);
    let mut rng = Rng::new(7);
    let logits: Vec<f32> = (0..rows * cols)
        .map(|_| 3.0 * rng.normal() as f32)
        .collect();
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
    let w: Vec<f64> = (0..cols)
        .map(|j| (1.0 + (j % 7) as f64).powf(0.75))
        .collect();
    let table = sampled_loss::cdf(&w);
    let seeds = [3, 1234];
    let scale = 1.0 / rows as f32;
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for mut be in backends() {
        let (losses, grad) = sampled(be.as_mut(), k, &w, seeds, scale, &logits, &targets);
        for r in 0..rows {
            let l = |j: usize| logits[r * cols + j] as f64;
            let t = targets[r] as usize;
            let mut want = -sig(l(t)).ln();
            let mut want_grad = vec![0.0f64; cols];
            want_grad[t] = (sig(l(t)) - 1.0) * scale as f64;
            for slot in 0..k {
                let n = sampled_loss::draw(seeds, r as u32, slot, &table) as usize;
                if n != t {
                    want -= sig(-l(n)).ln();
                    want_grad[n] += sig(l(n)) * scale as f64;
                }
            }
            assert!(
                (losses[r] as f64 - want).abs() < 1e-5 * want.max(1.0),
                "{}: row {r} loss {} vs {want}",
                be.name(),
                losses[r]
            );
            for j in 0..cols {
                let g = grad[r * cols + j] as f64;
                assert!(
                    (g - want_grad[j]).abs() < 1e-6 * scale as f64,
                    "{}: row {r} d/dl[{j}] {g} vs {}",
                    be.name(),
                    want_grad[j]
                );
                if want_grad[j] == 0.0 {
                    assert_eq!(g.to_bits(), 0.0f64.to_bits(), "undrawn logit has gradient");
                }
            }
        }
    }
}

#[test]
fn logit_scale_is_the_loss_of_scaled_logits_with_the_scale_in_the_gradient() {
    let (logits, targets) = batch(11);
    for mut be in backends() {
        for keep in [Keep::default(), Keep::from_margin(Some(1.0))] {
            let one = Shaping::default();
            let plain = cross_entropy(be.as_mut(), keep, &logits, &targets);
            let unit = shaped(be.as_mut(), keep, one, &[], &logits, &targets);
            assert_eq!(
                (bits(&unit.0), bits(&unit.1)),
                (bits(&plain.0), bits(&plain.1))
            );
            for s in [0.46f32, 2.0] {
                let sh = Shaping {
                    logit_scale: s,
                    ..one
                };
                let (l, g) = shaped(be.as_mut(), keep, sh, &[], &logits, &targets);
                let scaled: Vec<f32> = logits.iter().map(|&x| x * s).collect();
                let (lw, gw) = cross_entropy(be.as_mut(), keep, &scaled, &targets);
                assert_eq!(bits(&l), bits(&lw), "{} {keep} x{s}", be.name());
                for (a, b) in g.iter().zip(&gw) {
                    assert!(
                        (a - b * s).abs() <= 1e-6 * (b * s).abs() + 1e-12,
                        "{a} vs {}",
                        b * s
                    );
                }
            }
        }
    }
}

#[test]
fn detach_under_keeps_plain_values_and_zeroes_gradients_under_the_threshold() {
    let (logits, targets) = batch(12);
    for mut be in backends() {
        let (lp, gp) = cross_entropy(be.as_mut(), Keep::default(), &logits, &targets);
        for m in [0.5f32, 2.0, 4.0] {
            let sh = Shaping {
                detach_under: true,
                ..Shaping::default()
            };
            let (l, g) = shaped(
                be.as_mut(),
                Keep::from_margin(Some(m)),
                sh,
                &[],
                &logits,
                &targets,
            );
            assert_eq!(
                bits(&l),
                bits(&lp),
                "{}: the value is plain cross-entropy",
                be.name()
            );
            let mut under = 0;
            for r in 0..ROWS {
                let lt = logits[r * COLS + targets[r] as usize];
                for j in 0..COLS {
                    let i = r * COLS + j;
                    if logits[i] < lt - m {
                        under += 1;
                        assert_eq!(g[i].to_bits(), 0.0f32.to_bits(), "{} m={m}", be.name());
                    } else {
                        assert_eq!(g[i].to_bits(), gp[i].to_bits(), "{} m={m}", be.name());
                    }
                }
            }
            assert!(under > ROWS, "m={m}: nothing under the threshold");
        }
    }
}

#[test]
fn soft_threshold_keeps_the_margin_set_and_moves_with_the_target_unless_detached() {
    let (logits, targets) = batch(13);
    for mut be in backends() {
        for (m, c) in [(1.0f32, 1.0f32), (2.0, 5.0), (4.0, 0.5)] {
            let keep = Keep::from_margin(Some(m));
            let soft = Shaping {
                softminus: Some(c),
                ..Shaping::default()
            };
            let detached = Shaping {
                detach_threshold: true,
                ..soft
            };
            let (_, hard) = cross_entropy(be.as_mut(), keep, &logits, &targets);
            let (_, g) = shaped(be.as_mut(), keep, soft, &[], &logits, &targets);
            let (_, gd) = shaped(be.as_mut(), keep, detached, &[], &logits, &targets);
            assert_eq!(support(&g), support(&hard), "{} m={m} C={c}", be.name());
            let mut moved = 0;
            for r in 0..ROWS {
                let rg = r * COLS..(r + 1) * COLS;
                // The soft scores depend on l - l_t only, so shifting a row changes nothing.
                let sum: f32 = g[rg.clone()].iter().sum();
                assert!(
                    sum.abs() < 1e-6,
                    "{} m={m} C={c} row {r}: sum {sum}",
                    be.name()
                );
                let t = targets[r] as usize;
                for j in (0..COLS).filter(|&j| j != t) {
                    assert_eq!(g[r * COLS + j].to_bits(), gd[r * COLS + j].to_bits());
                }
                let dsum: f32 = gd[rg].iter().sum();
                moved += (dsum.abs() > 1e-4) as usize;
            }
            assert!(moved > 0, "detaching changed no target gradient");
        }
    }
}

#[test]
fn per_row_values_reproduce_the_fixed_rules_bit_for_bit() {
    let (logits, targets) = batch(14);
    for mut be in backends() {
        for m in [0.5f32, 2.0] {
            let rows = vec![m; ROWS];
            for soft in [None, Some(2.0)] {
                let fixed = Shaping {
                    softminus: soft,
                    ..Shaping::default()
                };
                let per_row = Shaping {
                    per_row: PerRow::Margin,
                    ..fixed
                };
                let want = shaped(
                    be.as_mut(),
                    Keep::from_margin(Some(m)),
                    fixed,
                    &[],
                    &logits,
                    &targets,
                );
                let got = shaped(
                    be.as_mut(),
                    Keep::default(),
                    per_row,
                    &rows,
                    &logits,
                    &targets,
                );
                assert_eq!(bits(&got.0), bits(&want.0), "{} m={m}", be.name());
                assert_eq!(bits(&got.1), bits(&want.1), "{} m={m}", be.name());
            }
        }
        // A target offset o is the loss of logits whose target is o lower.
        let offsets: Vec<f32> = (0..ROWS).map(|r| 0.1 * r as f32).collect();
        let lowered: Vec<f32> = (0..ROWS * COLS)
            .map(|i| {
                let r = i / COLS;
                logits[i]
                    - if i % COLS == targets[r] as usize {
                        offsets[r]
                    } else {
                        0.0
                    }
            })
            .collect();
        let sh = Shaping {
            per_row: PerRow::TargetOffset,
            ..Shaping::default()
        };
        let got = shaped(
            be.as_mut(),
            Keep::default(),
            sh,
            &offsets,
            &logits,
            &targets,
        );
        let want = cross_entropy(be.as_mut(), Keep::default(), &lowered, &targets);
        assert_eq!((bits(&got.0), bits(&got.1)), (bits(&want.0), bits(&want.1)));
    }
}
