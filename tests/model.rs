//! The whole model: against PyTorch (the gpt-tiny fixture and every loss case) on the GPU and
//! the CPU, GPU against CPU over 20 training steps for every loss, reproducibility, and exact
//! resume.

mod common;

use std::path::Path;

use selfish::data::Dataset;
use selfish::fixture::check_fixture;
use selfish::loss::Loss;
use selfish::model::GptConfig;
use selfish::runtime::{Backend, CpuBackend, GpuBackend};
use selfish::train::{self, TrainConfig};

fn gpu() -> GpuBackend {
    GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)")
}

/// The rows of the fixture folder `tests/fixtures/<name>` on `be`, every one within its
/// tolerance.
fn fixture_rows(be: &mut dyn Backend, name: &str) -> Vec<selfish::compare::Row> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let rows = check_fixture(be, &dir).unwrap();
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(
        bad.is_empty(),
        "{} disagrees with PyTorch: {bad:#?}",
        be.name()
    );
    rows
}

fn fixture_passes(be: &mut dyn Backend) {
    let rows = fixture_rows(be, "gpt-tiny");
    assert!(
        rows.len() > 40,
        "expected every quantity, got {} rows",
        rows.len()
    );
}

#[test]
fn fixture_matches_pytorch_on_gpu() {
    fixture_passes(&mut gpu());
}

#[test]
fn fixture_matches_pytorch_on_cpu() {
    fixture_passes(&mut CpuBackend::new());
}

/// Every case of `tests/fixtures/losses` (the paper's baselines and ablations, PyTorch
/// autograd): each step's loss and every gradient.
fn loss_fixtures_pass(be: &mut dyn Backend) {
    let rows = fixture_rows(be, "losses");
    let cases: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r.op.split(':').next()).collect();
    assert_eq!(cases.len(), 14, "{cases:?}");
    for case in &cases {
        let steps = if case.starts_with("agg") { 3 } else { 1 };
        let grads = rows
            .iter()
            .filter(|r| r.op.starts_with(&format!("{case}: grad.step")))
            .count();
        let params = if case.starts_with("untied") { 16 } else { 15 };
        assert_eq!(grads, steps * params, "{case}");
    }
}

#[test]
fn loss_fixtures_match_pytorch_on_gpu() {
    loss_fixtures_pass(&mut gpu());
}

#[test]
fn loss_fixtures_match_pytorch_on_cpu() {
    loss_fixtures_pass(&mut CpuBackend::new());
}

/// `--untied` spelled after the loss: `margin:1 untied`.
fn tiny_config(data: &Dataset, steps: u64, loss: &str) -> TrainConfig {
    let (loss, untied) = match loss.strip_suffix(" untied") {
        Some(l) => (l, true),
        None => (loss, false),
    };
    TrainConfig {
        model: GptConfig {
            vocab_size: data.model_vocab(),
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            untied,
        },
        batch_size: 4,
        steps,
        lr: 1e-3,
        min_lr: 1e-4,
        warmup: 5,
        loss: Loss::parse(loss).unwrap(),
        low_resource_prob: data.low_resource_prob,
        seed: 7,
        eval_interval: 0,
        eval_batches: 2,
        log_interval: 1,
        stop_after: None,
        analysis: false,
    }
}

fn run(
    be: &mut dyn Backend,
    cfg: &TrainConfig,
    data: &Dataset,
    out: &Path,
    resume: bool,
) -> Vec<(u64, f32)> {
    train::train(be, data, cfg, out, resume, false)
        .unwrap()
        .losses
}

#[test]
fn gpu_and_cpu_training_agree_over_20_steps() {
    let data = Dataset::from_text(&common::synthetic_text(20_000, 42), 0.1).unwrap();
    for loss in [
        "plain",
        "margin:1",
        "hard:6",
        "hard:4+counterpart+margin:3",
        "sampled:8",
        "cosreg:1",
        "adv:0.5",
        "cwt",
        "agg:0.3:4",
        "margin:1+softminus:5",
        "margin:2+softminus:1+detach-threshold",
        "margin:1+detach-under",
        "margin-w:2",
        "margin-h:0.25",
        "margin-wh:0.3",
        "margin:1+logit-scale:0.46",
        "sampled:8+logit-scale:0.5",
        "plain untied",
        "margin:1 untied",
    ] {
        let cfg = tiny_config(&data, 20, loss);
        let dir = common::tempdir("agree");
        let g = run(&mut gpu(), &cfg, &data, &dir.join("gpu"), false);
        let c = run(&mut CpuBackend::new(), &cfg, &data, &dir.join("cpu"), false);
        assert_eq!(g.len(), 20);
        for ((s, a), (_, b)) in g.iter().zip(&c) {
            let rel = ((a - b) / b).abs();
            assert!(
                rel < 1e-4,
                "{loss} step {s}: gpu {a} cpu {b} (rel {rel:.2e})"
            );
        }
        assert!(g[19].1 < g[0].1, "loss did not fall: {g:?}");
    }
}

#[test]
fn same_seed_same_losses_and_resume_is_exact() {
    let data = Dataset::from_text(&common::synthetic_text(20_000, 42), 0.1).unwrap();
    let mut be = gpu();
    // sampled:K also checks that the negatives depend on (step, seed) only; agg that its
    // count window (4 steps, so it slides before the stop) is saved and restored.
    for loss in [
        "margin:2",
        "sampled:4",
        "agg:0.3:4",
        "margin:1+logit-scale:0.46 untied",
    ] {
        let tag: String = loss.chars().filter(|c| c.is_alphanumeric()).collect();
        let dir = common::tempdir(&format!("resume-{tag}"));
        let full_cfg = tiny_config(&data, 12, loss);
        let a = run(&mut be, &full_cfg, &data, &dir.join("a"), false);
        let b = run(&mut be, &full_cfg, &data, &dir.join("b"), false);
        assert_eq!(
            a, b,
            "{loss}: same seed and config must give the same losses"
        );

        // Stop after 6 steps (as if interrupted), then resume: the same 12 losses, bit for bit.
        let mut first_cfg = full_cfg.clone();
        first_cfg.stop_after = Some(6);
        let mut resumed = run(&mut be, &first_cfg, &data, &dir.join("c"), false);
        assert_eq!(resumed.len(), 6);
        resumed.extend(run(&mut be, &full_cfg, &data, &dir.join("c"), true));
        assert_eq!(
            resumed, a,
            "{loss}: 6 steps + resume 6 must equal 12 in one go"
        );
    }
}
