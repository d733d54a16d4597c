//! `selfish experiment`: the *Stop Jostling* comparison. Runs that differ only in the loss
//! (and the options a row of the paper's table sets), each repeated per seed. Within a seed
//! every run starts from the same weights and sees the same batches, so runs compare in
//! pairs; across seeds the report gives means, intervals and paired differences.
//!
//! Layout of the output folder:
//!   runs/<run>/seed-<s>/   model.safetensors, state.safetensors, best.safetensors,
//!                          metrics.jsonl, roles.jsonl, groups.json, run.lock while training,
//!                          eval.json (written last: its presence means "finished")
//!   report.md, results.json, plots/*.svg|png
//!
//! Every (run, seed) is a self-contained job: it claims its folder, trains or resumes, and
//! evaluates. Jobs run in this process (`--jobs N` at once), or one per command from
//! `--plan` under any batch system; `--report-only` then writes the report from what has
//! finished.

pub mod stats;

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::isotropy;
use crate::checkpoint::{best_path, load_model_file, model_path, state_path};
use crate::claim::{self, Outcome};
use crate::data::Dataset;
use crate::eval;
use crate::loss::Loss;
use crate::metrics::LangMetrics;
use crate::runtime::{Backend, Wait};
use crate::tensorfile;
use crate::train::{self, TrainConfig};

/// One row of an experiment: a loss and the options that row sets.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub loss: Loss,
    /// A separate output head.
    pub untied: bool,
    /// Train on the second alphabet alone, for the paper's 160 steps (2 warm-up).
    pub low_resource_only: bool,
}

/// The options a run spec can carry after its loss, `@`-separated.
pub const OPTIONS: &str = "untied, low-resource-only";

impl RunSpec {
    pub fn of(loss: Loss) -> RunSpec {
        RunSpec {
            loss,
            untied: false,
            low_resource_only: false,
        }
    }

    /// `LOSS[@OPTION...]`, e.g. `margin:1@untied`.
    pub fn parse(s: &str) -> Result<RunSpec> {
        let mut parts = s.split('@');
        let mut spec = RunSpec::of(Loss::parse(parts.next().unwrap_or(""))?);
        for opt in parts {
            match opt.trim() {
                "untied" => spec.untied = true,
                "low-resource-only" => spec.low_resource_only = true,
                other => bail!(
                    "unknown run option '@{other}' in '{s}': use {OPTIONS} (as in margin:1@untied)"
                ),
            }
        }
        Ok(spec)
    }

    /// A folder-safe name: `plain`, `margin-1`, `hard-8+counterpart`, `margin-1@untied`.
    pub fn name(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// The training configuration of this row for one seed.
    pub fn config(&self, base: &TrainConfig, seed: u64) -> TrainConfig {
        let mut c = TrainConfig {
            loss: self.loss.clone(),
            seed,
            ..base.clone()
        };
        c.model.untied = self.untied;
        if self.low_resource_only {
            c.low_resource_prob = 1.0;
            c.steps = LOW_RESOURCE_ONLY_STEPS;
            c.warmup = 2;
        }
        c
    }
}

/// The paper's low-resource-only baseline trains this long.
pub const LOW_RESOURCE_ONLY_STEPS: u64 = 160;

impl fmt::Display for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.loss)?;
        if self.untied {
            f.write_str("@untied")?;
        }
        if self.low_resource_only {
            f.write_str("@low-resource-only")?;
        }
        Ok(())
    }
}

/// Named sets of runs.
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub runs: &'static [&'static str],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "claim",
        about: "the paper's claim: plain against margins 2 and 1",
        runs: &["plain", "margin:2", "margin:1"],
    },
    Preset {
        name: "margins",
        about: "plain against margins 8, 4, 2, 1 and 0.5 (the default)",
        runs: &[
            "plain",
            "margin:8",
            "margin:4",
            "margin:2",
            "margin:1",
            "margin:0.5",
        ],
    },
    Preset {
        name: "paper",
        about: "every row of the paper's table: baselines, remedies and ablations",
        runs: crate::report::PAPER_RUNS,
    },
];

pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<String> = PRESETS
            .iter()
            .map(|p| format!("{} ({})", p.name, p.about))
            .collect();
        anyhow!("unknown preset '{name}': use {}", names.join(", "))
    })
}

/// The runs `experiment` makes: a preset's (or plain and the margins), then the `--also`
/// specs, each once.
pub fn runs(
    preset_name: Option<&str>,
    margins: &[String],
    also: &[String],
    no_baseline: bool,
) -> Result<Vec<RunSpec>> {
    let mut runs = Vec::new();
    match preset_name {
        Some(p) => {
            for r in preset(p)?.runs {
                runs.push(RunSpec::parse(r)?);
            }
        }
        None => {
            runs.push(RunSpec::of(Loss::plain()));
            if !(margins.len() == 1 && margins[0].eq_ignore_ascii_case("none")) {
                for m in margins {
                    let margin = crate::loss::parse_margin(m).ok_or_else(|| {
                        anyhow!("invalid margin '{m}' in --margins: pass numbers >= 0 separated by commas, or none")
                    })?;
                    runs.push(RunSpec::of(Loss::plain().with_margin(Some(margin))?));
                }
            }
        }
    }
    if preset_name.is_some() && !(margins.len() == 1 && margins[0].eq_ignore_ascii_case("none")) {
        for m in margins {
            let margin = crate::loss::parse_margin(m).ok_or_else(|| {
                anyhow!("invalid margin '{m}' in --margins: pass numbers >= 0 separated by commas, or none")
            })?;
            runs.push(RunSpec::of(Loss::plain().with_margin(Some(margin))?));
        }
    }
    for a in also {
        runs.push(RunSpec::parse(a)?);
    }
    if no_baseline {
        runs.retain(|r| r != &RunSpec::of(Loss::plain()));
    }
    let mut seen = Vec::new();
    runs.retain(|r| {
        let fresh = !seen.contains(&r.name());
        seen.push(r.name());
        fresh
    });
    if runs.is_empty() {
        bail!("no runs to make: give a preset, margins or --also runs");
    }
    Ok(runs)
}

/// `--seeds` as the command line splits it at commas: one number N for seeds 1..=N, or a
/// list (`1,2,3`; `7,` is the list of seed 7 alone).
pub fn parse_seeds(parts: &[String]) -> Result<Vec<u64>> {
    let bad = |s: &str| {
        anyhow!("invalid --seeds '{s}': pass a count (5 for seeds 1..5) or a list such as 1,2,3 (7, for seed 7 alone)")
    };
    let count = parts.len() == 1;
    let nums: Vec<u64> = parts
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u64>().map_err(|_| bad(s)))
        .collect::<Result<_>>()?;
    let seeds = match nums.as_slice() {
        [] => bail!("--seeds is empty: pass a count or a list"),
        [0] if count => return Err(bad("0")),
        [n] if count => (1..=*n).collect(),
        list => list.to_vec(),
    };
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seeds.len() {
        bail!("--seeds lists a seed twice: list each seed once");
    }
    Ok(seeds)
}

/// Which checkpoint a finished run is evaluated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pick {
    /// The step with the lowest validation loss on batches mixed like training (nanoGPT's
    /// `always_save_checkpoint = False`, as the paper used).
    Best,
    /// The last step.
    Last,
}

impl Pick {
    pub fn parse(s: &str) -> Result<Pick> {
        match s {
            "best" => Ok(Pick::Best),
            "last" => Ok(Pick::Last),
            other => bail!("unknown checkpoint '{other}': use best or last"),
        }
    }
}

/// A whole experiment: every run of `runs` for every seed.
pub struct Experiment {
    pub base: TrainConfig,
    pub runs: Vec<RunSpec>,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    pub pick: Pick,
}

/// One (run, seed) job.
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: RunSpec,
    pub seed: u64,
    pub cfg: TrainConfig,
    pub dir: PathBuf,
}

impl Job {
    pub fn label(&self) -> String {
        format!("{} seed {}", self.spec.name(), self.seed)
    }
}

/// Everything the report needs about one finished job, as stored in its `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunEval {
    /// The run's name ([`RunSpec::name`]).
    pub name: String,
    /// The run spec as `--also` spells it.
    pub spec: String,
    pub loss: String,
    pub seed: u64,
    pub steps: u64,
    /// The job's training configuration: a finished job is reused only if it matches.
    pub config: serde_json::Value,
    /// The checkpoint evaluated, and its step.
    pub checkpoint: Pick,
    pub checkpoint_step: u64,
    /// Per language: metrics and (temperature, perplexity) over the sweep.
    pub languages: Vec<LangEval>,
    /// Isotropy of each alphabet's rows of the embedding tables (`lm_head` too when untied).
    pub isotropy: Vec<(String, f64)>,
    pub train_seconds: f64,
    /// The backend that trained and evaluated it.
    #[serde(default)]
    pub adapter: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LangEval {
    pub language: String,
    pub metrics: LangMetrics,
    pub ppl_by_temperature: Vec<(f64, f64)>,
}

impl RunEval {
    pub fn lang(&self, name: &str) -> Option<&LangEval> {
        self.languages.iter().find(|l| l.language == name)
    }

    /// The share of training rows in the second alphabet (the run's own: 1 for the
    /// low-resource-only baseline), where the saved config says.
    pub fn low_resource_prob(&self) -> Option<f64> {
        self.config["low_resource_prob"].as_f64()
    }

    /// Whether training saw the base language at all (the low-resource-only baseline did
    /// not: its base figures measure nothing the paper compares).
    pub fn trained_on_base(&self) -> bool {
        self.low_resource_prob() != Some(1.0)
    }
}

/// The configuration as `eval.json` and the state file store it, normalised so that fields
/// added by later versions (at their defaults) compare equal; where training stops is not
/// part of what a run is.
fn config_json(cfg: &TrainConfig) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(TrainConfig {
        stop_after: None,
        ..cfg.clone()
    })?;
    if let Some(o) = v.as_object_mut() {
        o.remove("stop_after");
    }
    Ok(v)
}

fn normalise(saved: &serde_json::Value) -> Option<serde_json::Value> {
    let cfg: TrainConfig = serde_json::from_value(saved.clone()).ok()?;
    config_json(&cfg).ok()
}

/// Where a job stands.
pub enum Status {
    Finished(Box<RunEval>),
    /// Trained up to this step so far (0: not started).
    Unfinished(u64),
}

impl Experiment {
    pub fn jobs(&self) -> Vec<Job> {
        let mut v = Vec::new();
        for &seed in &self.seeds {
            for spec in &self.runs {
                v.push(Job {
                    spec: spec.clone(),
                    seed,
                    cfg: spec.config(&self.base, seed),
                    dir: self
                        .out
                        .join("runs")
                        .join(spec.name())
                        .join(format!("seed-{seed}")),
                });
            }
        }
        v
    }

    /// The finished evaluation of a job, if `eval.json` exists and matches its settings.
    pub fn status(&self, job: &Job) -> Result<Status> {
        let path = job.dir.join("eval.json");
        if let Ok(text) = fs::read_to_string(&path) {
            let ev: RunEval = serde_json::from_str(&text).with_context(|| {
                format!(
                    "'{}' is damaged: delete it to evaluate the run again",
                    path.display()
                )
            })?;
            if normalise(&ev.config) == Some(config_json(&job.cfg)?) && ev.checkpoint == self.pick {
                return Ok(Status::Finished(Box::new(ev)));
            }
        }
        let step = tensorfile::load(&state_path(&job.dir))
            .ok()
            .and_then(|st| st.meta_usize("step").ok())
            .unwrap_or(0);
        Ok(Status::Unfinished(step as u64))
    }

    /// Refuses what no job could run: losses the data cannot support.
    pub fn check(&self, data: &Dataset) -> Result<()> {
        for j in self.jobs() {
            j.cfg.validate()?;
            j.cfg.loss.check_data(data, j.cfg.model.vocab_size)?;
        }
        Ok(())
    }
}

/// What running one job came to.
pub enum Done {
    Finished(Box<RunEval>),
    /// Another process holds the job's folder.
    Skipped(claim::Holder),
    /// Training stopped early (Ctrl-C, `stop_after`) after saving a checkpoint.
    Stopped,
}

/// Trains (or resumes) and evaluates one job, unless it already finished or another process
/// holds it.
pub fn run_job(
    be: &mut dyn Backend,
    data: &Dataset,
    x: &Experiment,
    job: &Job,
    progress: bool,
) -> Result<Done> {
    if let Status::Finished(ev) = x.status(job)? {
        return Ok(Done::Finished(ev));
    }
    // A run option may mix the languages its own way (low-resource-only: every row).
    let data = &*data.mixed_at(job.cfg.low_resource_prob);
    let claim = match claim::claim(&job.dir)? {
        Outcome::Claimed(c) => c,
        Outcome::Held(h) => return Ok(Done::Skipped(h)),
    };
    // Checked again under the claim: another process may have finished it meanwhile.
    if let Status::Finished(ev) = x.status(job)? {
        return Ok(Done::Finished(ev));
    }
    let dir = &job.dir;
    if model_path(dir).exists() && !state_path(dir).exists() {
        bail!(
            "run folder '{}' has a model but no training state: delete the folder to train the run again",
            dir.display()
        );
    }
    let resume = state_path(dir).exists();
    if resume {
        let st = tensorfile::load(&state_path(dir))?;
        let saved = crate::checkpoint::saved_config(&st)
            .with_context(|| format!("'{}' is damaged", state_path(dir).display()))?;
        if normalise(&saved) != Some(config_json(&job.cfg)?) {
            bail!(
                "run folder '{}' holds a run with other settings than this experiment's (compare \
                 the train_config in its state.safetensors): pass another --out, or delete the \
                 folder to train the run again",
                dir.display()
            );
        }
    }
    if !(resume && finished_training(dir, job.cfg.steps)) {
        let s = train::train_claimed(be, data, &job.cfg, dir, resume, progress, &claim)?;
        if s.interrupted || s.step < job.cfg.steps {
            return Ok(Done::Stopped);
        }
    }
    let ev = evaluate_job(be, data, x, job)?;
    drop(claim);
    Ok(Done::Finished(Box::new(ev)))
}

/// Whether the state in `dir` is at the last step (trained, not yet evaluated).
fn finished_training(dir: &Path, steps: u64) -> bool {
    tensorfile::load(&state_path(dir))
        .ok()
        .and_then(|st| st.meta_usize("step").ok())
        .is_some_and(|s| s as u64 >= steps)
}

/// Evaluates a trained job on the checkpoint `x.pick` names and writes its `eval.json`.
fn evaluate_job(
    be: &mut dyn Backend,
    data: &Dataset,
    x: &Experiment,
    job: &Job,
) -> Result<RunEval> {
    let dir = &job.dir;
    let path = match x.pick {
        Pick::Best if best_path(dir).exists() => best_path(dir),
        _ => model_path(dir),
    };
    let file = tensorfile::load(&path)?;
    let checkpoint_step = file.meta_usize("step")? as u64;
    let (mcfg, vocab, params) = load_model_file(&path)?;
    let mark = be.mark();
    let model = eval::inference_model(be, mcfg, &params, job.cfg.batch_size)?;
    let languages = pollster::block_on(eval::evaluate(&model, be, data))?
        .into_iter()
        .map(|(language, metrics, ppl_by_temperature)| LangEval {
            language,
            metrics,
            ppl_by_temperature,
        })
        .collect();
    let (v, c) = (vocab.len(), model.cfg.n_embd);
    let mut iso = Vec::new();
    let mut tables = vec![("", model.params.wte)];
    if let Some(h) = model.params.lm_head {
        tables.push(("lm_head ", h));
    }
    for (prefix, buf) in tables {
        let w = be.read_now(buf)?;
        iso.push((format!("{prefix}base"), isotropy(&w[..v * c], v, c)));
        if model.cfg.vocab_size == 2 * v {
            iso.push((format!("{prefix}shifted"), isotropy(&w[v * c..], v, c)));
        }
    }
    be.release(mark);
    let ev = RunEval {
        name: job.spec.name(),
        spec: job.spec.to_string(),
        loss: job.cfg.loss.to_string(),
        seed: job.seed,
        steps: job.cfg.steps,
        config: config_json(&job.cfg)?,
        checkpoint: if path == best_path(dir) {
            Pick::Best
        } else {
            x.pick
        },
        checkpoint_step,
        languages,
        isotropy: iso,
        train_seconds: crate::report::training_seconds_of(dir, &job.cfg),
        adapter: be.name(),
    };
    let json = serde_json::to_string_pretty(&ev)?;
    crate::fsio::write_atomic(&dir.join("eval.json"), json.as_bytes())?;
    Ok(ev)
}

/// What a whole run of the experiment came to.
pub struct Outcomes {
    pub finished: Vec<RunEval>,
    /// Jobs held by other processes, with their holders.
    pub skipped: Vec<(String, claim::Holder)>,
    pub stopped: bool,
}

/// Runs every unfinished job, `jobs` at once (each worker with its own backend from
/// `open`), in seed-major order so that a partial experiment holds whole seeds first.
pub fn run_all(
    x: &Experiment,
    data: &Dataset,
    jobs: usize,
    open: &(dyn Fn() -> Result<Box<dyn Backend>> + Sync),
    say: &(dyn Fn(&str) + Sync),
) -> Result<Outcomes> {
    x.check(data)?;
    crate::fsio::create_dir(&x.out, "output folder")?;
    let queue = Mutex::new(x.jobs().into_iter().collect::<VecDeque<Job>>());
    let results = Mutex::new(Outcomes {
        finished: Vec::new(),
        skipped: Vec::new(),
        stopped: false,
    });
    let progress = jobs <= 1;
    let worker = || -> Result<()> {
        let mut be: Option<Box<dyn Backend>> = None;
        loop {
            if train::stop_requested() {
                results.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
                return Ok(());
            }
            let Some(job) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                return Ok(());
            };
            if let Status::Finished(ev) = x.status(&job)? {
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finished
                    .push(*ev);
                continue;
            }
            let b = match &mut be {
                Some(b) => b,
                None => be.insert(open()?),
            };
            say(&format!(
                "{}: training ({} steps)",
                job.label(),
                job.cfg.steps
            ));
            let done = run_job(b.as_mut(), data, x, &job, progress).with_context(|| job.label())?;
            let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
            match done {
                Done::Finished(ev) => {
                    say(&format!("{}: finished", job.label()));
                    r.finished.push(*ev);
                }
                Done::Skipped(h) => {
                    say(&format!(
                        "{}: skipped, {} holds it",
                        job.label(),
                        h.describe()
                    ));
                    r.skipped.push((job.label(), h));
                }
                Done::Stopped => r.stopped = true,
            }
        }
    };
    if jobs <= 1 {
        worker()?;
    } else {
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..jobs).map(|_| s.spawn(worker)).collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow!("an experiment worker panicked"))??;
            }
            Ok(())
        })?;
    }
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    // Report order: the experiment's, not the order jobs happened to finish in.
    let order = |e: &RunEval| {
        let run = x.runs.iter().position(|s| s.name() == e.name);
        let seed = x.seeds.iter().position(|&s| s == e.seed);
        (run, seed)
    };
    r.finished.sort_by_key(order);
    Ok(r)
}

/// The finished evaluations in experiment order, and a line per unfinished job.
pub fn collect(x: &Experiment) -> Result<(Vec<RunEval>, Vec<String>)> {
    let mut finished = Vec::new();
    let mut missing = Vec::new();
    for spec in &x.runs {
        for &seed in &x.seeds {
            let job = x
                .jobs()
                .into_iter()
                .find(|j| j.spec == *spec && j.seed == seed)
                .expect("every run and seed is a job");
            match x.status(&job)? {
                Status::Finished(ev) => finished.push(*ev),
                Status::Unfinished(step) => {
                    let held = claim::lock_path(&job.dir).exists();
                    missing.push(format!(
                        "{}: at step {step} of {}{}",
                        job.label(),
                        job.cfg.steps,
                        if held { ", being trained" } else { "" }
                    ));
                }
            }
        }
    }
    Ok((finished, missing))
}

/// The commands that each train and evaluate one unfinished job: `argv` (this experiment's
/// own command line) with `--plan`, `--jobs`, `--report-only` and `--seeds` replaced by the
/// job's run and seed, and `--no-report`.
pub fn plan(x: &Experiment, argv: &[String]) -> Result<Vec<String>> {
    let mut base: Vec<String> = Vec::new();
    let mut skip_value = false;
    for a in argv {
        if skip_value {
            skip_value = false;
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, _)) if f.starts_with("--") => (f, true),
            _ => (a.as_str(), false),
        };
        match flag {
            "--plan" | "--report-only" | "--no-report" => {}
            "--jobs" | "--seeds" | "--only" => skip_value = !inline,
            _ => base.push(a.clone()),
        }
    }
    let mut out = Vec::new();
    for job in x.jobs() {
        if let Status::Unfinished(_) = x.status(&job)? {
            let mut cmd = base.clone();
            cmd.extend([
                "--only".to_string(),
                job.spec.to_string(),
                "--seeds".to_string(),
                format!("{},", job.seed),
                "--no-report".to_string(),
            ]);
            out.push(
                cmd.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    Ok(out)
}

/// Quotes an argument for a POSIX shell when it needs it.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Keeps only the run `only` names (a run spec); an error when the experiment has none such.
pub fn only(runs: Vec<RunSpec>, only: &str) -> Result<Vec<RunSpec>> {
    let want = RunSpec::parse(only)?;
    let names: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
    let kept: Vec<RunSpec> = runs.into_iter().filter(|r| *r == want).collect();
    if kept.is_empty() {
        bail!(
            "--only {only}: this experiment has no such run (it has {}): pass one of them",
            names.join(", ")
        );
    }
    Ok(kept)
}

/// The run folder of a job, for tests and tools.
pub fn job_dir(out: &Path, spec: &RunSpec, seed: u64) -> PathBuf {
    out.join("runs")
        .join(spec.name())
        .join(format!("seed-{seed}"))
}
