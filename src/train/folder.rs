//! A run in a folder, as the command line trains: checkpoints and logs as files, a progress
//! bar, Ctrl-C, the wall clock.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;

use crate::analysis::Roles;
use crate::checkpoint::{self, Checkpoint};
use crate::claim::{self, Claim};
use crate::data::Dataset;
use crate::fsio;
use crate::runlog::{self, Jsonl, LogLine};
use crate::runtime::Backend;
use crate::tensorfile::{self, TensorFile};
use crate::train::{run, Host, TrainConfig, TrainSummary, Trainer};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running [`train`] to finish its current step, save a checkpoint and return
/// (`TrainSummary::interrupted`). Safe to call from a signal handler's thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

struct Folder<'a> {
    out: &'a Path,
    claim: &'a Claim,
    clock: Instant,
    metrics: Jsonl,
    roles: Jsonl,
    bar: indicatif::ProgressBar,
    progress: bool,
}

impl Host for Folder<'_> {
    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }
    fn stop_requested(&self) -> bool {
        stop_requested()
    }
    fn log(&mut self, line: &LogLine) -> Result<()> {
        self.claim.refresh();
        self.metrics.append(line)
    }
    fn log_roles(&mut self, step: u64, roles: &Roles) -> Result<()> {
        let mut line = serde_json::to_value(roles)?;
        line["step"] = step.into();
        self.roles.append(&line)
    }
    fn save(&mut self, c: &Checkpoint) -> Result<()> {
        checkpoint::save(self.out, c)
    }
    fn save_best(&mut self, model: &TensorFile) -> Result<()> {
        checkpoint::save_best(self.out, model)
    }
    /// Milestones go above the bar, or to stderr when it is not a terminal (a log file).
    fn say(&mut self, msg: &str) {
        if self.progress && self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }
    fn progress(&mut self, step: u64, figures: Option<&str>) {
        if let Some(f) = figures {
            self.bar.set_message(f.to_string());
        }
        self.bar.set_position(step);
    }
    fn kept(&self, saved: Option<u64>) -> String {
        match saved {
            Some(s) => format!(
                "the checkpoint of step {s} in '{}' is intact; continue from it with --resume",
                self.out.display()
            ),
            None => "no checkpoint had been saved yet".to_string(),
        }
    }
}

/// Trains `cfg` on `data`, writing checkpoints and `metrics.jsonl` to `out`.
/// With `resume`, continues exactly from `out`'s checkpoint, which must exist; without it,
/// `out` must not hold one (see [`checkpoint::preflight`]).
///
/// The folder is claimed first (see [`crate::claim`]): a second process training into it at
/// the same time is refused with who holds it. A run refused before its first checkpoint
/// leaves no folder behind that was not there before.
pub fn train(
    be: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    checkpoint::preflight(data, cfg, out, resume)?;
    let existed = out.exists();
    let claim = claim::claim_or_fail(out, "--out")?;
    let r = train_claimed(be, data, cfg, out, resume, progress, &claim);
    drop(claim);
    if r.is_err() && !existed && fs::read_dir(out).is_ok_and(|mut d| d.next().is_none()) {
        let _ = fs::remove_dir(out);
    }
    r
}

/// [`train`] in a folder this process has already claimed.
pub fn train_claimed(
    be: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
    claim: &Claim,
) -> Result<TrainSummary> {
    // Checked again under the claim: another run may have finished here since.
    checkpoint::preflight(data, cfg, out, resume)?;
    let mut trainer = if resume {
        let state = tensorfile::load(&checkpoint::state_path(out))?;
        checkpoint::check_resumable(&state, data, cfg, &out.display().to_string())?;
        let t = Trainer::resume(be, data, cfg, &state)?;
        checkpoint::repair_export(out, &state)?;
        t
    } else {
        Trainer::new(be, data, cfg)?
    };
    // Left by a crash during a save; the files they were meant to replace are intact.
    for name in [
        "model.safetensors",
        "state.safetensors",
        "best.safetensors",
        "metrics.jsonl",
    ] {
        let _ = fs::remove_file(fsio::tmp_path(&out.join(name)));
    }
    let (metrics, roles) = (runlog::metrics_path(out), runlog::roles_path(out));
    if resume {
        runlog::trim(&metrics, trainer.step)?;
        runlog::trim(&roles, trainer.step)?;
    } else {
        let _ = fs::remove_file(&metrics);
        let _ = fs::remove_file(&roles);
    }
    if let Some(g) = &trainer.groups {
        fsio::write_atomic(
            &out.join("groups.json"),
            serde_json::to_string(g)?.as_bytes(),
        )?;
    }
    let bar = if progress {
        indicatif::ProgressBar::new(cfg.steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.step);
    let mut host = Folder {
        out,
        claim,
        clock: Instant::now(),
        metrics: Jsonl::new(metrics),
        roles: Jsonl::new(roles),
        bar,
        progress,
    };
    let summary = pollster::block_on(run(be, data, &mut trainer, &mut host));
    host.bar.finish();
    summary
}
