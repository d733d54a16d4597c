//! The whole model: against PyTorch (the gpt-tiny fixture) on the GPU and the CPU, GPU against
//! CPU over 20 training steps, reproducibility, and exact resume.

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

fn fixture_passes(be: &mut dyn Backend) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt-tiny");
    let rows = check_fixture(be, &dir).unwrap();
    assert!(
        rows.len() > 40,
        "expected every quantity, got {} rows",
        rows.len()
    );
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(
        bad.is_empty(),
        "{} disagrees with PyTorch: {bad:#?}",
        be.name()
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

fn tiny_config(data: &Dataset, steps: u64, loss: &str) -> TrainConfig {
    TrainConfig {
        model: GptConfig {
            vocab_size: data.model_vocab(),
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            untied: false,
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
    // sampled:K also checks that the negatives depend on (step, seed) only.
    for loss in ["margin:2", "sampled:4"] {
        let dir = common::tempdir(&format!("resume-{}", loss.replace(':', "")));
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
