//! The command line as a user runs it: train, eval, sample, and clear one-line errors.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn selfish(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(args)
        .output()
        .expect("run selfish")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `train` on `data` into `out` with the tiny model (batch 4), two validation batches, then
/// `flags`.
fn train_args<'a>(data: &'a str, out: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--data", data, "--eval-batches", "2", "--out", out];
    v.extend(flags);
    v.extend(common::tiny_model("4"));
    v
}

/// `eval --json` of a checkpoint on `data`, which must succeed.
fn eval_json(ckpt: &std::path::Path, data: &std::path::Path) -> serde_json::Value {
    let o = selfish(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "eval failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn corpus(dir: &std::path::Path) -> PathBuf {
    let mut s = String::new();
    let lines = [
        "First Citizen:\nBefore we proceed any further, hear me speak.\n",
        "All:\nSpeak, speak.\n",
        "Second Citizen:\nWould you proceed especially against Caius Marcius?\n",
    ];
    let mut i = 0usize;
    while s.len() < 30_000 {
        s.push_str(lines[i % 3]);
        i = (i * 7 + 3) % 1000;
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

/// Exactly one line on stderr starting with "error:", no panic or backtrace.
fn assert_clean_error(o: &Output, needle: &str) {
    let (_, err) = text(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("error:") && !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {err}");
    assert!(
        lines[0].contains(needle),
        "error should mention {needle:?}: {}",
        lines[0]
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn train_eval_sample_end_to_end() {
    let dir = common::tempdir("e2e");
    let data = corpus(&dir);
    let out = dir.join("run");
    let flags = [
        "--steps",
        "12",
        "--eval-interval",
        "6",
        "--log-interval",
        "3",
        "--loss",
        "counterpart",
        "--margin",
        "1",
    ];
    let args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), &flags);
    let o = selfish(&args);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train failed: {stderr}");
    assert!(stdout.contains("final training loss"), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["step"], 12);
    assert!(
        lines.iter().any(|l| l.get("val_loss").is_some()),
        "no validation loss logged: {metrics}"
    );
    assert!(out.join("model.safetensors").exists() && out.join("state.safetensors").exists());
    // --loss and --margin combine, and the checkpoint says which loss trained it.
    assert!(stderr.contains("loss counterpart+margin:1"), "{stderr}");
    let meta = selfish::tensorfile::load(&out.join("model.safetensors")).unwrap();
    assert_eq!(meta.meta("loss").unwrap(), "counterpart+margin:1");
    let state = selfish::tensorfile::load(&out.join("state.safetensors")).unwrap();
    let tc: serde_json::Value = serde_json::from_str(state.meta("train_config").unwrap()).unwrap();
    assert_eq!(tc["loss"], "counterpart+margin:1");

    let ckpt = out.join("model.safetensors");
    let v = eval_json(&ckpt, &data);
    for lang in ["base", "shifted"] {
        let m = &v[lang];
        let ppl = m["ppl"].as_f64().unwrap();
        let best = m["best_ppl"].as_f64().unwrap();
        assert!(ppl > 1.0 && best <= ppl + 1e-9, "{lang}: {m}");
        assert!(m["tokens"].as_u64().unwrap() > 0);
    }

    let o = selfish(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "All:",
        "--tokens",
        "20",
        "--seed",
        "3",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "sample failed: {stderr}");
    assert!(
        stdout.starts_with("All:") && stdout.chars().count() >= 24,
        "{stdout:?}"
    );
    let again = selfish(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "All:",
        "--tokens",
        "20",
        "--seed",
        "3",
    ]);
    assert_eq!(
        text(&again).0,
        stdout,
        "same seed must give the same sample"
    );
    let o = selfish(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "All:",
        "--tokens",
        "5",
        "--alphabet",
        "shifted",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);

    // Resuming under another loss would mix two objectives in one run.
    let mut other = args.clone();
    let i = other.iter().position(|&a| a == "counterpart").unwrap();
    other[i] = "hard:4";
    other.push("--resume");
    assert_clean_error(&selfish(&other), "resume with the same loss");
}

/// The paper's options through the command line: an untied head, a logit scale and AGG's
/// window on the low-resource language alone (its short schedule), stopped and resumed, then
/// evaluated; resuming with other options is refused.
#[test]
fn baselines_train_with_their_options_resume_and_evaluate() {
    let dir = common::tempdir("baselines");
    let data = corpus(&dir);
    let out = dir.join("run");
    let flags = [
        "--steps",
        "8",
        "--warmup",
        "2",
        "--eval-interval",
        "0",
        "--log-interval",
        "2",
        "--low-resource-prob",
        "1",
        "--loss",
        "agg:0.3:3",
        "--logit-scale",
        "0.46",
        "--untied",
    ];
    let args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), &flags);
    let mut first = args.clone();
    first.extend(["--stop-after", "4"]);
    let o = selfish(&first);
    assert!(o.status.success(), "train failed: {}", text(&o).1);
    assert!(text(&o)
        .1
        .contains("loss agg:0.3:3+logit-scale:0.46, untied head"));
    let state = selfish::tensorfile::load(&out.join("state.safetensors")).unwrap();
    let (shape, _) = state.get_i32("loss.agg.window").unwrap();
    assert_eq!(shape[0], 3, "after 4 steps the window holds K = 3");
    let mut resumed = args.clone();
    resumed.push("--resume");
    let o = selfish(&resumed);
    assert!(o.status.success(), "resume failed: {}", text(&o).1);
    let model = out.join("model.safetensors");
    let m = selfish::tensorfile::load(&model).unwrap();
    assert_eq!(m.meta("loss").unwrap(), "agg:0.3:3+logit-scale:0.46");
    assert_eq!(m.meta("logit_scale").unwrap(), "0.46");
    assert_eq!(m.meta("untied").unwrap(), "true");
    assert!(m.get("lm_head.weight").is_some());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.lines().last().unwrap().contains("\"step\":8"),
        "{metrics}"
    );

    let v = eval_json(&model, &data);
    assert!(v["shifted"]["ppl"].as_f64().unwrap() > 1.0, "{v}");

    let refused = |from: &str, to: Option<&str>, needle: &str| {
        let mut other: Vec<&str> = resumed.clone();
        let i = other.iter().position(|&a| a == from).unwrap();
        match to {
            Some(t) => other[i] = t,
            None => {
                other.remove(i);
            }
        }
        assert_clean_error(&selfish(&other), needle);
    };
    refused("0.46", Some("0.5"), "resume with the same loss");
    refused(
        "--untied",
        None,
        "an untied head in the checkpoint, the tied head asked for",
    );
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = common::tempdir("errors");
    let data = corpus(&dir);
    let d = data.to_str().unwrap();
    let missing = dir.join("nope.txt");
    assert_clean_error(
        &selfish(&["train", "--data", missing.to_str().unwrap()]),
        "nope.txt",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--margin", "-1"]),
        "margin",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--margin", "NaN"]),
        "margin",
    );
    for (loss, needle) in [
        ("hard:0", "K must be"),
        ("sampled:x", "K must be"),
        ("hinge", "unknown loss"),
        ("agg:0.02", "agg takes 2 value(s): agg:A:K"),
        ("cosreg:-1", "cosreg's G must be a finite number >= 0"),
        ("softminus:0", "softminus's C must be a finite number > 0"),
        ("softminus:2", "softminus:C needs a margin"),
        ("detach-under", "detach-under needs a margin"),
        (
            "cwt+margin:1",
            "cwt combines with nothing but logit-scale:S",
        ),
        ("adv:NaN", "adv's A must be a finite number >= 0"),
        (
            "margin:1+softminus:NaN",
            "softminus's C must be a finite number > 0",
        ),
    ] {
        assert_clean_error(&selfish(&["train", "--data", d, "--loss", loss]), needle);
        assert_clean_error(
            &selfish(&["train", "--data", d, "--loss", loss]),
            "accepted forms: plain, margin:M, hard:K, counterpart, sampled:K",
        );
    }
    assert_clean_error(
        &selfish(&["train", "--data", d, "--loss", "sampled:4", "--margin", "1"]),
        "drop --margin",
    );
    for scale in ["0", "-1", "NaN", "inf"] {
        assert_clean_error(
            &selfish(&["train", "--data", d, "--logit-scale", scale]),
            "expected a finite number > 0",
        );
    }
    assert_clean_error(
        &selfish(&[
            "train",
            "--data",
            d,
            "--loss",
            "logit-scale:2",
            "--logit-scale",
            "0.5",
        ]),
        "give the scale once",
    );
    // --margin completes a term that needs one.
    assert_clean_error(
        &selfish(&[
            "train",
            "--data",
            d,
            "--loss",
            "softminus:2",
            "--margin",
            "1",
            "--lr",
            "0",
        ]),
        "learning rate",
    );
    assert_clean_error(
        &selfish(&[
            "train",
            "--data",
            d,
            "--loss",
            "counterpart",
            "--low-resource-prob",
            "0",
        ]),
        "pass --low-resource-prob > 0",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--config", "huge"]),
        "unknown config",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--n-embd", "30", "--n-head", "4"]),
        "not divisible",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--lr", "0"]),
        "learning rate",
    );
    assert_clean_error(
        &selfish(&["train", "--data", d, "--backend", "quantum"]),
        "unknown backend",
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_error(
        &selfish(&["train", "--data", empty.to_str().unwrap()]),
        "empty",
    );
    let ckpt = dir.join("junk.safetensors");
    std::fs::write(&ckpt, b"not a checkpoint at all").unwrap();
    assert_clean_error(
        &selfish(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--data", d]),
        "junk.safetensors",
    );
}
