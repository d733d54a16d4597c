//! Nothing lost: exact resume, Ctrl-C, SIGKILL, a crash between or during checkpoint saves,
//! a NaN loss, and a lost GPU device.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use selfish::data::Dataset;
use selfish::model::GptConfig;
use selfish::runtime::{Backend, Buf, CpuBackend, Dtype, GpuBackend, Pending, Seq};
use selfish::train::{self, TrainConfig};

fn corpus_text() -> String {
    let words = [
        "the ", "selfish ", "token ", "KING:\n", "so ", "we ", "go.\n", "Zephyr ",
    ];
    let mut s = String::new();
    let mut i = 0usize;
    while s.len() < 20_000 {
        s.push_str(words[i % words.len()]);
        i = (i * 5 + 3) % 101;
    }
    s
}

fn tiny(data: &Dataset, steps: u64) -> TrainConfig {
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
        steps,
        lr: 3e-3,
        min_lr: 1e-4,
        warmup: 10,
        loss: selfish::loss::Loss::parse("margin:1").unwrap(),
        low_resource_prob: data.low_resource_prob,
        seed: 11,
        eval_interval: 50,
        eval_batches: 1,
        log_interval: 1,
        stop_after: None,
        analysis: false,
    }
}

fn step_of(path: &Path) -> usize {
    selfish::tensorfile::load(path)
        .unwrap()
        .meta_usize("step")
        .unwrap()
}

fn no_tmp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left behind: {name}");
    }
}

/// 200 steps in one go, and 100 + resume 100, give the same losses bit for bit and the same
/// checkpoint files byte for byte (moments, step, schedule and data RNG all restored).
fn resume_is_exact(be: &mut dyn Backend, tag: &str) {
    let data = Dataset::from_text(&corpus_text(), 0.1).unwrap();
    let dir = common::tempdir(tag);
    let cfg = tiny(&data, 200);
    let whole = train::train(be, &data, &cfg, &dir.join("whole"), false, false).unwrap();
    assert_eq!(whole.losses.len(), 200);

    let mut first = cfg.clone();
    first.stop_after = Some(100);
    let split = dir.join("split");
    let mut losses = train::train(be, &data, &first, &split, false, false)
        .unwrap()
        .losses;
    assert_eq!(step_of(&split.join("state.safetensors")), 100);
    losses.extend(
        train::train(be, &data, &cfg, &split, true, false)
            .unwrap()
            .losses,
    );
    assert_eq!(
        losses, whole.losses,
        "{tag}: 100 + resume 100 must equal 200 in one go"
    );
    for f in ["model.safetensors", "state.safetensors", "metrics.jsonl"] {
        let a = std::fs::read(dir.join("whole").join(f)).unwrap();
        let b = std::fs::read(split.join(f)).unwrap();
        if f == "metrics.jsonl" {
            // Throughput differs; every step and loss must not.
            let strip = |t: &[u8]| -> Vec<(u64, f64)> {
                String::from_utf8_lossy(t)
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
                    })
                    .collect()
            };
            assert_eq!(strip(&a), strip(&b), "{tag}: metrics.jsonl");
        } else {
            assert!(a == b, "{tag}: {f} differs between the runs");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_exact_on_gpu() {
    resume_is_exact(&mut GpuBackend::open(None).expect("a GPU adapter"), "gpu");
}

#[test]
fn resume_is_exact_on_cpu() {
    resume_is_exact(&mut CpuBackend::new(), "cpu");
}

/// A crash after the state was saved but before the model was (the model file lags a
/// checkpoint), and one in the middle of writing (half a `.tmp` file): resume still
/// continues exactly, and brings the pair level again.
#[test]
fn crash_between_and_during_saves() {
    let data = Dataset::from_text(&corpus_text(), 0.0).unwrap();
    let dir = common::tempdir("crash");
    let cfg = tiny(&data, 30);
    let mut be = CpuBackend::new();
    let whole = train::train(&mut be, &data, &cfg, &dir.join("whole"), false, false).unwrap();

    let out = dir.join("run");
    let mut part = cfg.clone();
    part.stop_after = Some(10);
    let mut losses = train::train(&mut be, &data, &part, &out, false, false)
        .unwrap()
        .losses;
    let stale_model = std::fs::read(out.join("model.safetensors")).unwrap();
    part.stop_after = Some(20);
    losses.extend(
        train::train(&mut be, &data, &part, &out, true, false)
            .unwrap()
            .losses,
    );
    std::fs::write(out.join("model.safetensors"), stale_model).unwrap();
    std::fs::write(out.join("state.safetensors.tmp"), b"half a checkp").unwrap();
    std::fs::write(out.join("model.safetensors.tmp"), b"").unwrap();
    assert_eq!(step_of(&out.join("model.safetensors")), 10);
    assert_eq!(step_of(&out.join("state.safetensors")), 20);

    losses.extend(
        train::train(&mut be, &data, &cfg, &out, true, false)
            .unwrap()
            .losses,
    );
    assert_eq!(losses, whole.losses);
    assert_eq!(step_of(&out.join("model.safetensors")), 30);
    no_tmp_files(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Forwards to a GPU backend and destroys its device before the `at`-th submission, as a
/// driver reset or an unplugged eGPU would.
struct LosesDevice {
    gpu: GpuBackend,
    runs: usize,
    at: usize,
}

impl Backend for LosesDevice {
    fn name(&self) -> String {
        self.gpu.name()
    }
    fn alloc(&mut self, label: &str, len: usize, dtype: Dtype) -> anyhow::Result<Buf> {
        self.gpu.alloc(label, len, dtype)
    }
    fn len(&self, b: Buf) -> usize {
        self.gpu.len(b)
    }
    fn write_f32(&mut self, b: Buf, data: &[f32]) {
        self.gpu.write_f32(b, data)
    }
    fn write_u32(&mut self, b: Buf, data: &[u32]) {
        self.gpu.write_u32(b, data)
    }
    fn read_f32(&mut self, b: Buf) -> Pending<'_, Vec<f32>> {
        self.gpu.read_f32(b)
    }
    fn compile(&mut self, ops: Vec<selfish::kernels::Op>) -> anyhow::Result<Seq> {
        self.gpu.compile(ops)
    }
    fn run(&mut self, seqs: &[Seq]) -> anyhow::Result<()> {
        self.runs += 1;
        if self.runs == self.at {
            self.gpu.gpu().device.destroy();
        }
        self.gpu.run(seqs)
    }
    fn finish(&mut self) -> Pending<'_, ()> {
        self.gpu.finish()
    }
}

#[test]
fn lost_device_keeps_the_last_checkpoint() {
    let data = Dataset::from_text(&corpus_text(), 0.0).unwrap();
    let dir = common::tempdir("lost");
    let mut cfg = tiny(&data, 24);
    cfg.eval_interval = 5;
    let whole = train::train(
        &mut GpuBackend::open(None).unwrap(),
        &data,
        &cfg,
        &dir.join("whole"),
        false,
        false,
    )
    .unwrap();

    let out = dir.join("run");
    let mut be = LosesDevice {
        gpu: GpuBackend::open(None).unwrap(),
        runs: 0,
        at: 14,
    };
    let e = match train::train(&mut be, &data, &cfg, &out, false, false) {
        Ok(_) => panic!("training went on after the device was destroyed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("the GPU device was lost") && e.contains("training failed at step"),
        "{e}"
    );
    let kept: usize = e
        .split("the checkpoint of step ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kept checkpoint named: {e}"));
    assert!(e.contains("--resume"), "{e}");
    assert!(kept >= 5 && kept.is_multiple_of(5), "{e}");
    assert_eq!(step_of(&out.join("state.safetensors")), kept);
    assert_eq!(step_of(&out.join("model.safetensors")), kept);
    no_tmp_files(&out);

    // A fresh device continues from it exactly.
    let rest = train::train(
        &mut GpuBackend::open(None).unwrap(),
        &data,
        &cfg,
        &out,
        true,
        false,
    )
    .unwrap()
    .losses;
    assert_eq!(rest[..], whole.losses[kept..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Through the binary: NaN, Ctrl-C and SIGKILL.

fn cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfish"));
    c.arg("train")
        .args(["--backend", "cpu"])
        .args(common::tiny_model("4"))
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--log-interval", "1", "--eval-batches", "1"])
        .args(extra);
    c
}

fn run(data: &Path, out: &Path, extra: &[&str]) -> Output {
    cmd(data, out, extra).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `(step, loss)` of every line of metrics.jsonl.
fn metrics(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let dir = common::tempdir("nan");
    let data = dir.join("corpus.txt");
    std::fs::write(&data, corpus_text()).unwrap();
    let out = dir.join("run");
    let steps = ["--steps", "40", "--eval-interval", "10"];
    let o = run(&data, &out, &[&steps[..], &["--stop-after", "10"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let model = std::fs::read(out.join("model.safetensors")).unwrap();
    let state = std::fs::read(out.join("state.safetensors")).unwrap();

    // A learning rate of 1e30 blows the weights up within a step or two.
    let o = run(
        &data,
        &out,
        &[&steps[..], &["--resume", "--lr", "1e30"]].concat(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(line.len(), 1, "{err}");
    let line = line[0];
    assert!(line.starts_with("error: the loss became "), "{line}");
    assert!(line.contains("NaN") || line.contains("inf"), "{line}");
    assert!(line.contains(" at step 1"), "{line}");
    assert!(
        line.contains("lower --lr") && line.contains("the checkpoint of step 10"),
        "{line}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == model);
    assert!(std::fs::read(out.join("state.safetensors")).unwrap() == state);
    no_tmp_files(&out);

    // The kept checkpoint still trains on.
    let o = run(&data, &out, &[&steps[..], &["--resume"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(step_of(&out.join("state.safetensors")), 40);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reference run stopping after `upto`, compared with the interrupted-and-resumed one.
fn same_as_uninterrupted(data: &Path, dir: &Path, out: &Path, extra: &[&str], upto: u64) {
    let stop = upto.to_string();
    let o = run(
        data,
        out,
        &[extra, &["--resume", "--stop-after", &stop]].concat(),
    );
    assert!(o.status.success(), "resume: {}", stderr(&o));
    let reference = dir.join("reference");
    let o = run(
        data,
        &reference,
        &[extra, &["--stop-after", &stop]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = metrics(out);
    assert_eq!(got.len() as u64, upto);
    assert_eq!(
        got,
        metrics(&reference),
        "interrupted + resumed differs from one run"
    );
    assert_eq!(step_of(&out.join("state.safetensors")), upto as usize);
    assert_eq!(step_of(&out.join("model.safetensors")), upto as usize);
    no_tmp_files(out);
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_exactly() {
    let dir = common::tempdir("sigint");
    let data = dir.join("corpus.txt");
    std::fs::write(&data, corpus_text()).unwrap();
    let out = dir.join("run");
    let extra = ["--steps", "1000000", "--eval-interval", "0"];
    let mut child = cmd(&data, &out, &extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("progress", || metrics(&out).len() >= 3);
    assert!(!out.join("state.safetensors").exists());
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait_exit(&mut child);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
    let step: u64 = err
        .split("checkpoint of step ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(step_of(&out.join("state.safetensors")), step as usize);
    assert_eq!(metrics(&out).last().unwrap().0, step);
    same_as_uninterrupted(&data, &dir, &out, &extra, step + 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_then_resume_continues_from_the_last_checkpoint() {
    let dir = common::tempdir("sigkill");
    let data = dir.join("corpus.txt");
    std::fs::write(&data, corpus_text()).unwrap();
    let out = dir.join("run");
    // A checkpoint every 7 steps: the kill lands anywhere, a save included.
    let extra = ["--steps", "1000000", "--eval-interval", "7"];
    let mut child = cmd(&data, &out, &extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a checkpoint", || {
        out.join("state.safetensors").exists() && metrics(&out).len() >= 30
    });
    child.kill().unwrap();
    wait_exit(&mut child);
    let step = step_of(&out.join("state.safetensors")) as u64;
    assert!(step >= 7 && step.is_multiple_of(7), "{step}");
    same_as_uninterrupted(&data, &dir, &out, &extra, step + 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two `train` commands into one folder at the same moment: the second is refused with who
/// holds the folder, and the folder keeps the first run's log alone.
#[test]
fn a_second_train_into_a_busy_folder_is_refused() {
    let dir = common::tempdir("busy");
    let data = dir.join("corpus.txt");
    std::fs::write(&data, corpus_text()).unwrap();
    let out = dir.join("run");
    let mut first = cmd(&data, &out, &["--steps", "1000000", "--eval-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first run's claim", || out.join("run.lock").exists());
    let second = run(&data, &out, &["--steps", "4000"]);
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("is being trained by pid") && err.contains(&first.id().to_string()),
        "{err}"
    );
    wait_until("a few logged steps", || metrics(&out).len() >= 3);
    let _ = first.kill();
    wait_exit(&mut first);
    let steps: Vec<u64> = metrics(&out).iter().map(|m| m.0).collect();
    assert!(
        steps.windows(2).all(|w| w[0] + 1 == w[1]),
        "one run's log: {steps:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
