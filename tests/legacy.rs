//! Checkpoints written before the redesign still load, evaluate and resume exactly
//! (`tests/fixtures/legacy-v1/README.md` says how they were made).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-v1")
}

fn selfish(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(args)
        .output()
        .expect("run selfish");
    assert!(
        o.status.success(),
        "selfish {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `(step, loss)` of every line, the loss as written (so equal text is equal bits).
fn losses(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn old_checkpoint_resumes_to_the_same_losses() {
    let dir = common::tempdir("legacy-resume");
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.safetensors", "state.safetensors"] {
        std::fs::copy(fixture().join(f), out.join(f)).unwrap();
    }
    let data = fixture().join("data.txt");
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "20",
        "--warmup",
        "5",
        "--lr",
        "3e-3",
        "--low-resource-prob",
        "0.1",
        "--loss",
        "margin:1",
        "--eval-interval",
        "10",
        "--eval-batches",
        "1",
        "--log-interval",
        "1",
        "--seed",
        "7",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ];
    selfish(&args);
    let whole = losses(&fixture().join("metrics-whole.jsonl"));
    let resumed: Vec<_> = losses(&out.join("metrics.jsonl"))
        .into_iter()
        .filter(|(s, _)| *s > 10)
        .collect();
    let want: Vec<_> = whole.into_iter().filter(|(s, _)| *s > 10).collect();
    assert_eq!(want.len(), 10);
    assert_eq!(resumed, want);
}

#[test]
fn old_checkpoint_evaluates_the_same() {
    let model = fixture().join("model.safetensors");
    let data = fixture().join("data.txt");
    let got: serde_json::Value = serde_json::from_str(&selfish(&[
        "eval",
        "--checkpoint",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]))
    .unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("eval-half.json")).unwrap())
            .unwrap();
    for lang in ["base", "shifted"] {
        for key in [
            "loss",
            "ppl",
            "best_ppl",
            "best_temperature",
            "accuracy",
            "mrr",
            "recall_at_5",
        ] {
            let (g, w) = (
                got[lang][key].as_f64().unwrap(),
                want[lang][key].as_f64().unwrap(),
            );
            assert!((g - w).abs() <= 1e-9 * w.abs(), "{lang} {key}: {g} vs {w}");
        }
    }
}
