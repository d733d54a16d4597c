//! `selfish experiment` on the GPU adapter with a budget CI can afford: two runs of a tiny
//! model, interrupted and resumed, then the report a user reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use selfish::data::Dataset;
use selfish::experiment::{self, RunEval};
use selfish::loss::Loss;
use selfish::model::GptConfig;
use selfish::runtime::GpuBackend;
use selfish::train::TrainConfig;

fn base(data: &Dataset) -> TrainConfig {
    TrainConfig {
        model: GptConfig {
            vocab_size: data.model_vocab(),
            block_size: 16,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            untied: false,
        },
        batch_size: 4,
        steps: 30,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 3,
        loss: Loss::plain(),
        low_resource_prob: data.low_resource_prob,
        seed: 11,
        eval_interval: 15,
        eval_batches: 2,
        log_interval: 5,
        stop_after: None,
        analysis: true,
    }
}

fn steps_logged(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn experiment_runs_resumes_and_reports() {
    let data = Dataset::from_text(&common::synthetic_text(30_000, 5), 0.2).unwrap();
    let out = common::tempdir("run");
    let losses = [Loss::plain(), Loss::parse("margin:1").unwrap()];
    let mut gpu = GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)");

    // Interrupted partway through the first run: a checkpoint, no evaluation, no report.
    let mut cut = base(&data);
    cut.stop_after = Some(10);
    let r = experiment::run(&mut gpu, &data, &cut, &losses, &out, "test", false).unwrap();
    assert!(r.is_none(), "a stopped run must not count as finished");
    let plain = out.join("runs/plain");
    assert!(plain.join("state.safetensors").exists());
    assert!(!plain.join("eval.json").exists());
    assert!(!out.join("report.md").exists());

    // Run again: the first run continues from step 10, the second trains, then the report.
    let evals: Vec<RunEval> =
        experiment::run(&mut gpu, &data, &base(&data), &losses, &out, "test", false)
            .unwrap()
            .expect("finished");
    assert_eq!(evals.len(), 2);
    let logged = steps_logged(&plain);
    assert_eq!(logged.first(), Some(&1));
    assert_eq!(logged.last(), Some(&30));
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "a resumed run logs every step once: {logged:?}"
    );
    for ev in &evals {
        assert_eq!(ev.steps, 30);
        let langs: Vec<&str> = ev.languages.iter().map(|l| l.language.as_str()).collect();
        assert_eq!(langs, ["base", "shifted"]);
        for l in &ev.languages {
            let m = &l.metrics;
            assert!(m.ppl.is_finite() && m.best_ppl <= m.ppl + 1e-9, "{m:?}");
            assert_eq!(l.ppl_by_temperature.len(), 200);
        }
        assert_eq!(ev.isotropy.len(), 2);
        assert!(ev.isotropy.iter().all(|(_, x)| *x > 0.0 && *x <= 1.0));
    }
    // The threshold changes what is learned: the two runs differ.
    assert_ne!(
        evals[0].languages[0].metrics.loss,
        evals[1].languages[0].metrics.loss
    );

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "| plain | base |",
        "| plain | shifted |",
        "| margin-1 | base |",
        "| margin-1 | shifted |",
        "The paper's figures",
        "| margin-1 | shifted | 17.30 | 9.54 | 0.46 | 0.371 |",
        "Does the paper's direction hold?",
        "own signal, low-resource",
        "plots/gradient_roles.png",
    ] {
        assert!(
            report.contains(needle),
            "report.md lacks {needle:?}:\n{report}"
        );
    }
    for plot in [
        "ppl_vs_temperature",
        "loss_curves",
        "frequency_groups",
        "gradient_roles",
    ] {
        let png = std::fs::read(out.join("plots").join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{plot}.png");
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{plot}.svg");
    }
    let results: Vec<RunEval> =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), 2);
    let roles = std::fs::read_to_string(plain.join("roles.jsonl")).unwrap();
    let role_steps: Vec<u64> = roles
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(role_steps, logged, "one roles line per logged step");
    let groups: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plain.join("groups.json")).unwrap()).unwrap();
    assert!(groups["names"][0].as_str().unwrap().starts_with("base 1-"));

    // A third time nothing trains again: the finished runs' files stay as they were.
    let stamp = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(plain.join("model.safetensors"));
    let again = experiment::run(&mut gpu, &data, &base(&data), &losses, &out, "test", false)
        .unwrap()
        .unwrap();
    assert_eq!(stamp(plain.join("model.safetensors")), before);
    assert_eq!(
        again[1].languages[1].metrics.loss,
        evals[1].languages[1].metrics.loss
    );

    // Other settings in the same folder are refused, not mixed in.
    let mut other = base(&data);
    other.lr = 1e-2;
    let e = format!(
        "{:#}",
        experiment::run(&mut gpu, &data, &other, &losses[..1], &out, "test", false).unwrap_err()
    );
    assert!(e.contains("other settings"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// An untied run reports the isotropy of both tables, and the report shows both.
#[test]
fn untied_runs_report_the_isotropy_of_both_tables() {
    let data = Dataset::from_text(&common::synthetic_text(30_000, 5), 0.2).unwrap();
    let out = common::tempdir("untied");
    let mut cfg = base(&data);
    cfg.model.untied = true;
    cfg.steps = 6;
    cfg.analysis = true;
    let losses = [Loss::parse("margin:1+logit-scale:0.46").unwrap()];
    let mut gpu = GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)");
    let evals = experiment::run(&mut gpu, &data, &cfg, &losses, &out, "test", false)
        .unwrap()
        .expect("finished");
    let names: Vec<&str> = evals[0].isotropy.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["base", "shifted", "lm_head base", "lm_head shifted"]
    );
    assert!(evals[0].isotropy.iter().all(|(_, x)| *x > 0.0 && *x <= 1.0));
    assert_ne!(evals[0].isotropy[0].1, evals[0].isotropy[2].1);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| margin-1+logit-scale-0.46 | "),
        "{report}"
    );
    assert!(report.contains(" (head 0."), "{report}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_margins_are_one_line_errors() {
    let o = Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(["experiment", "--margins", "1,abc", "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("invalid margin 'abc'"), "{err}");
}
