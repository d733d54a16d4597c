//! Properties of the threshold ("selfish token") loss that users rely on, on the CPU twin
//! and on the GPU.

use selfish::kernels::cross_entropy::{self, CrossEntropy};
use selfish::kernels::threshold::{self, ThresholdMask};
use selfish::kernels::IntoOp;
use selfish::rng::Rng;
use selfish::runtime::{Backend, CpuBackend, Dtype, GpuBackend, Wait};

const ROWS: usize = 37;
const COLS: usize = 130;
const MARGINS: [f32; 6] = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0];

fn batch(seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let logits = (0..ROWS * COLS)
        .map(|_| 3.0 * rng.normal() as f32)
        .collect();
    let targets = (0..ROWS).map(|_| rng.below(COLS) as u32).collect();
    (logits, targets)
}

/// Runs mask + fused loss on a backend: (masked logits, per-row losses, dlogits).
fn run(be: &mut dyn Backend, margin: Option<f32>, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (logits, targets) = batch(seed);
    let l = be.alloc("logits", ROWS * COLS, Dtype::F32).unwrap();
    let t = be.alloc("targets", ROWS, Dtype::U32).unwrap();
    let masked = be.alloc("masked", ROWS * COLS, Dtype::F32).unwrap();
    let losses = be.alloc("losses", ROWS, Dtype::F32).unwrap();
    let dl = be.alloc("dlogits", ROWS * COLS, Dtype::F32).unwrap();
    be.write_f32(l, &logits);
    be.write_u32(t, &targets);
    // Poison the gradient so "exactly zero" cannot come from the initial fill.
    be.write_f32(dl, &vec![f32::NAN; ROWS * COLS]);
    let (rows, cols) = (ROWS as u32, COLS as u32);
    let seq = be
        .compile(vec![
            ThresholdMask {
                rows,
                cols,
                margin,
                logits: l,
                targets: t,
                out: masked,
            }
            .op(),
            CrossEntropy::new(
                rows,
                cols,
                cross_entropy::Keep::from_margin(margin),
                1.0 / rows as f32,
                l,
                t,
                losses,
                dl,
            )
            .op(),
        ])
        .unwrap();
    be.run(&[seq]).unwrap();
    (
        be.read_now(masked).unwrap(),
        be.read_now(losses).unwrap(),
        be.read_now(dl).unwrap(),
    )
}

fn backends() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(CpuBackend::new()),
        Box::new(GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)")),
    ]
}

#[test]
fn target_is_never_masked_and_masked_entries_get_zero_gradient() {
    for mut be in backends() {
        for (k, &m) in MARGINS.iter().enumerate() {
            let (logits, targets) = batch(k as u64);
            let (masked, _, grad) = run(be.as_mut(), Some(m), k as u64);
            let mut n_masked = 0;
            for r in 0..ROWS {
                let t = targets[r] as usize;
                assert_eq!(
                    masked[r * COLS + t],
                    logits[r * COLS + t],
                    "{}: target masked at m={m}",
                    be.name()
                );
                for j in 0..COLS {
                    let i = r * COLS + j;
                    if masked[i] == f32::NEG_INFINITY {
                        n_masked += 1;
                        assert_eq!(
                            grad[i].to_bits(),
                            0.0f32.to_bits(),
                            "{}: masked entry has gradient {}",
                            be.name(),
                            grad[i]
                        );
                    } else {
                        assert_eq!(masked[i], logits[i]);
                        assert!(grad[i].is_finite());
                    }
                }
            }
            if m <= 2.0 {
                assert!(
                    n_masked > 0,
                    "margin {m} masked nothing: the test would prove nothing"
                );
            }
        }
    }
}

#[test]
fn margin_off_is_plain_cross_entropy() {
    for mut be in backends() {
        let (logits, targets) = batch(9);
        let (masked, losses, grad) = run(be.as_mut(), None, 9);
        assert_eq!(masked, logits, "margin off must leave rows untouched");
        for r in 0..ROWS {
            let row = &logits[r * COLS..(r + 1) * COLS];
            let mx = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
            let z: f64 = row.iter().map(|&l| (l as f64 - mx).exp()).sum();
            let t = targets[r] as usize;
            let want = z.ln() + mx - row[t] as f64;
            assert!(
                (losses[r] as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                "{}: row {r} loss {} vs {want}",
                be.name(),
                losses[r]
            );
            for j in 0..COLS {
                let p = (row[j] as f64 - mx).exp() / z - if j == t { 1.0 } else { 0.0 };
                let g = grad[r * COLS + j] as f64;
                assert!(
                    (g - p / ROWS as f64).abs() < 1e-7,
                    "{}: gradient off",
                    be.name()
                );
            }
        }
        // A margin wider than any logit gap keeps everything and matches exactly.
        let (_, wide, _) = run(be.as_mut(), Some(1e30), 9);
        assert_eq!(wide, losses);
    }
}

#[test]
fn smaller_margin_never_keeps_more() {
    for mut be in backends() {
        let mut prev_kept: Option<Vec<bool>> = None;
        let mut prev_loss: Option<Vec<f32>> = None;
        let mut sorted = MARGINS;
        sorted.reverse(); // widest first
        for &m in &sorted {
            let (masked, losses, _) = run(be.as_mut(), Some(m), 3);
            let kept: Vec<bool> = masked.iter().map(|&x| x != f32::NEG_INFINITY).collect();
            if let (Some(pk), Some(pl)) = (&prev_kept, &prev_loss) {
                for (i, (&now, &before)) in kept.iter().zip(pk).enumerate() {
                    assert!(
                        !now || before,
                        "{}: entry {i} kept at m={m} but not at a wider margin",
                        be.name()
                    );
                }
                // Dropping terms from the partition function can only lower the loss.
                for (a, b) in losses.iter().zip(pl) {
                    assert!(*a <= *b + 1e-6);
                }
            }
            prev_kept = Some(kept);
            prev_loss = Some(losses);
        }
    }
}

#[test]
fn cpu_mask_rule_matches_definition() {
    let (logits, targets) = batch(5);
    let mut out = vec![0.0; ROWS * COLS];
    threshold::cpu(
        ROWS as u32,
        COLS as u32,
        Some(1.0),
        &logits,
        &targets,
        &mut out,
    );
    for r in 0..ROWS {
        let lt = logits[r * COLS + targets[r] as usize];
        for j in 0..COLS {
            let l = logits[r * COLS + j];
            assert_eq!(out[r * COLS + j] == f32::NEG_INFINITY, l < lt - 1.0);
        }
    }
    // the fused loss sees the same kept set
    let row = &logits[..COLS];
    let t = targets[0] as usize;
    let mut g = vec![0.0; COLS];
    let keep = cross_entropy::Keep::from_margin(Some(1.0));
    cross_entropy::row(row, t, &keep, 1.0, Some(&mut g));
    for j in 0..COLS {
        if out[j] == f32::NEG_INFINITY {
            assert_eq!(g[j], 0.0);
        } else {
            assert!(g[j] != 0.0);
        }
    }
}
