//! `selfish experiment` with a budget CI can afford: two runs of a tiny model over two seeds,
//! interrupted and resumed, then the report a user reads; a plan run through GNU parallel;
//! claims on run folders.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use selfish::data::Dataset;
use selfish::experiment::{self, Experiment, Pick, RunEval, RunSpec};
use selfish::loss::Loss;
use selfish::model::GptConfig;
use selfish::runtime::{Backend, GpuBackend};
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

fn experiment(base: TrainConfig, out: &Path) -> Experiment {
    Experiment {
        base,
        runs: vec![
            RunSpec::of(Loss::plain()),
            RunSpec::of(Loss::parse("margin:1").unwrap()),
        ],
        seeds: vec![1, 2],
        out: out.to_path_buf(),
        pick: Pick::Best,
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

fn run(x: &Experiment, data: &Dataset, jobs: usize) -> experiment::Outcomes {
    let open = || -> anyhow::Result<Box<dyn Backend>> { Ok(Box::new(GpuBackend::open(None)?)) };
    experiment::run_all(x, data, jobs, &open, &|_| {}).unwrap()
}

#[test]
fn experiment_runs_resumes_and_reports() {
    let data = Dataset::from_text(&common::synthetic_text(30_000, 5), 0.2).unwrap();
    let out = common::tempdir("run");

    // Interrupted partway through: checkpoints, no evaluation, no report.
    let mut cut = base(&data);
    cut.stop_after = Some(10);
    let r = run(&experiment(cut, &out), &data, 1);
    assert!(
        r.stopped && r.finished.is_empty(),
        "a stopped job must not count as finished"
    );
    let plain = out.join("runs/plain/seed-1");
    assert!(plain.join("state.safetensors").exists());
    assert!(!plain.join("eval.json").exists());

    // Run again, two jobs at once: every job continues from step 10, then the report.
    let x = experiment(base(&data), &out);
    let r = run(&x, &data, 2);
    assert!(!r.stopped && r.skipped.is_empty());
    let evals: Vec<RunEval> = r.finished;
    assert_eq!(evals.len(), 4);
    let order: Vec<(String, u64)> = evals.iter().map(|e| (e.name.clone(), e.seed)).collect();
    assert_eq!(
        order,
        [("plain", 1), ("plain", 2), ("margin-1", 1), ("margin-1", 2)]
            .map(|(n, s)| (n.to_string(), s))
    );
    let logged = steps_logged(&plain);
    assert_eq!((logged.first(), logged.last()), (Some(&1), Some(&30)));
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "a resumed run logs every step once: {logged:?}"
    );
    for ev in &evals {
        assert_eq!(ev.steps, 30);
        assert_eq!(ev.checkpoint, Pick::Best);
        assert!(
            [15, 30].contains(&ev.checkpoint_step),
            "{}",
            ev.checkpoint_step
        );
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
    // The best checkpoint is the step with the lowest mixed validation loss.
    let best = selfish::tensorfile::load(&plain.join("best.safetensors")).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(plain.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lowest = lines
        .iter()
        .filter_map(|l| Some((l["step"].as_u64()?, l["val_mixed"].as_f64()?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(best.meta_usize("step").unwrap() as u64, lowest.0);
    // Seeds differ, and within a seed the threshold changes what is learned.
    let loss = |i: usize| evals[i].languages[0].metrics.loss;
    assert_ne!(loss(0), loss(1));
    assert_ne!(loss(0), loss(2));

    selfish::report::write(&x, &evals, &[], "test").unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "Seeds: 2 (1, 2)",
        "best-validation",
        "| plain | 2 |",
        "| margin-1 | 2 |",
        "[9.54]",
        "Against plain cross-entropy, seed by seed",
        "| margin-1 | ",
        "The paper's claim",
        "## Every seed",
        "| seed 1 | seed 2 |",
        "own signal, LR",
        "plots/lr_best_by_run.png",
    ] {
        assert!(
            report.contains(needle),
            "report.md lacks {needle:?}:\n{report}"
        );
    }
    for plot in [
        "lr_best_by_run",
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
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["evaluations"].as_array().unwrap().len(), 4);
    let m1 = &results["runs"][1];
    assert_eq!(m1["run"], "margin-1");
    assert_eq!(
        m1["vs_plain_lr_best"]["diff"]["values"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(m1["vs_plain_lr_best"]["diff"]["ci95"].is_array());
    let roles = std::fs::read_to_string(plain.join("roles.jsonl")).unwrap();
    assert_eq!(
        roles.lines().count(),
        logged.len(),
        "one roles line per logged step"
    );

    // A third time nothing trains again: the finished jobs' files stay as they were.
    let stamp = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(plain.join("model.safetensors"));
    let again = run(&x, &data, 1);
    assert_eq!(stamp(plain.join("model.safetensors")), before);
    assert_eq!(
        again.finished[3].languages[1].metrics.loss,
        evals[3].languages[1].metrics.loss
    );

    // Other settings in the same folder are refused, not mixed in.
    let mut other = base(&data);
    other.lr = 1e-2;
    let open = || -> anyhow::Result<Box<dyn Backend>> { Ok(Box::new(GpuBackend::open(None)?)) };
    let e = experiment::run_all(&experiment(other, &out), &data, 1, &open, &|_| {})
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert!(e.contains("other settings"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// The low-resource-only baseline trains on the second alphabet alone, whatever mix the
/// experiment's data was built with: its shifted perplexity is far below its base one.
#[test]
fn low_resource_only_trains_on_the_second_alphabet() {
    let data = Dataset::from_text(&common::synthetic_text(30_000, 5), 0.2).unwrap();
    let out = common::tempdir("lr-only");
    let x = Experiment {
        runs: vec![RunSpec::parse("plain@low-resource-only").unwrap()],
        seeds: vec![1],
        ..experiment(base(&data), &out)
    };
    let evals = run(&x, &data, 1).finished;
    assert_eq!(evals[0].steps, experiment::LOW_RESOURCE_ONLY_STEPS);
    let ppl = |lang: &str| {
        let l = evals[0].languages.iter().find(|l| l.language == lang);
        l.unwrap().metrics.ppl
    };
    let (base_ppl, shifted) = (ppl("base"), ppl("shifted"));
    assert!(
        shifted < 0.5 * base_ppl,
        "shifted {shifted} against base {base_ppl}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// An untied run (and a logit-scale one) reports the isotropy of both tables, and the
/// report shows both.
#[test]
fn untied_runs_report_the_isotropy_of_both_tables() {
    let data = Dataset::from_text(&common::synthetic_text(30_000, 5), 0.2).unwrap();
    let out = common::tempdir("untied");
    let mut cfg = base(&data);
    cfg.steps = 6;
    let x = Experiment {
        runs: vec![RunSpec::parse("margin:1+logit-scale:0.46@untied").unwrap()],
        seeds: vec![3],
        ..experiment(cfg, &out)
    };
    let evals = run(&x, &data, 1).finished;
    assert_eq!(evals[0].name, "margin-1+logit-scale-0.46@untied");
    let names: Vec<&str> = evals[0].isotropy.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["base", "shifted", "lm_head base", "lm_head shifted"]
    );
    assert!(evals[0].isotropy.iter().all(|(_, x)| *x > 0.0 && *x <= 1.0));
    assert_ne!(evals[0].isotropy[0].1, evals[0].isotropy[2].1);
    selfish::report::write(&x, &evals, &[], "test").unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| margin-1+logit-scale-0.46@untied | 1 |"),
        "{report}"
    );
    assert!(report.contains(" (head 0."), "{report}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn selfish(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(args)
        .output()
        .expect("run selfish")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The plan's commands run by GNU parallel, two at a time, into one folder; then the report
/// from what they left. A job another live process holds is skipped and listed.
#[test]
fn a_plan_runs_under_gnu_parallel() {
    let dir = common::tempdir("plan");
    let data = dir.join("corpus.txt");
    std::fs::write(&data, common::synthetic_text(20_000, 3)).unwrap();
    let out = dir.join("exp");
    let mut args: Vec<String> = [
        "experiment",
        "--backend",
        "cpu",
        "--steps",
        "12",
        "--warmup",
        "2",
        "--lr",
        "3e-3",
        "--eval-interval",
        "6",
        "--eval-batches",
        "1",
        "--log-interval",
        "3",
        "--low-resource-prob",
        "0.2",
        "--preset",
        "claim",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(common::tiny_model("2").iter().map(|s| s.to_string()));
    args.extend(["--data".into(), data.display().to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    let one: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = [&one[..], &["--seeds", "2"]].concat();

    // Hold one job as a live process would: it is skipped, not trained over.
    let held = experiment::job_dir(&out, &RunSpec::parse("margin:2").unwrap(), 2);
    std::fs::create_dir_all(&held).unwrap();
    let me = serde_json::json!({
        "pid": std::process::id(),
        "host": hostname(),
        "since": 0,
    });
    std::fs::write(held.join("run.lock"), me.to_string()).unwrap();

    let plan = ok(&selfish(&[&a[..], &["--plan"]].concat()));
    let lines: Vec<&str> = plan.lines().collect();
    assert_eq!(lines.len(), 6, "one command per job:\n{plan}");
    assert!(lines
        .iter()
        .all(|l| l.contains("--only") && l.contains("--no-report")));
    let plan_file = dir.join("plan.txt");
    std::fs::write(&plan_file, &plan).unwrap();
    let parallel = Command::new("parallel")
        .args(["-j", "2", "--halt", "now,fail=1", "::::"])
        .arg(&plan_file)
        .output();
    let parallel = match parallel {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: GNU parallel is not installed ({e}); .ci/run installs it");
            return;
        }
        Err(e) => panic!("GNU parallel is missing in CI: {e}"),
    };
    assert!(
        parallel.status.success(),
        "{}",
        String::from_utf8_lossy(&parallel.stderr)
    );
    assert!(
        !held.join("eval.json").exists(),
        "a held job was trained over"
    );

    let report = ok(&selfish(&[&a[..], &["--report-only"]].concat()));
    assert!(
        report.contains("not finished: margin-2 seed 2: at step 0 of 12, being trained"),
        "{report}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| plain | 2 |") && md.contains("| margin-2 | 1 |"),
        "{md}"
    );
    assert!(md.contains("**Not finished** (1 jobs"), "{md}");

    // Released, the last job trains; then nothing is left to plan.
    std::fs::remove_file(held.join("run.lock")).unwrap();
    ok(&selfish(
        &[&one[..], &["--only", "margin:2", "--seeds", "2,"]].concat(),
    ));
    assert_eq!(ok(&selfish(&[&a[..], &["--plan"]].concat())), "");
    ok(&selfish(&[&a[..], &["--report-only"]].concat()));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| margin-2 | 2 |") && !md.contains("Not finished"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn hostname() -> String {
    let o = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn bad_experiment_flags_are_one_line_errors() {
    for (args, needle) in [
        (vec!["--margins", "1,abc"], "invalid margin 'abc'"),
        (vec!["--seeds", "0"], "invalid --seeds '0'"),
        (vec!["--seeds", "1,x"], "invalid --seeds 'x'"),
        (vec!["--seeds", "2,2"], "a seed twice"),
        (vec!["--preset", "nope"], "unknown preset 'nope'"),
        (
            vec!["--also", "margin:1@sideways"],
            "unknown run option '@sideways'",
        ),
        (vec!["--checkpoint", "middle"], "use best or last"),
        (vec!["--only", "margin:3"], "has no such run"),
    ] {
        let mut a = vec!["experiment", "--backend", "cpu"];
        a.extend(args);
        let o = selfish(&a);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{needle}: {err}");
    }
}
