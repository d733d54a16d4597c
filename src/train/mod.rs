//! Training on any backend. The core takes a dataset and settings and gives back losses,
//! metrics and checkpoints; where they go (files and a progress bar, or a web page) is the
//! [`Host`]'s business, so the same loop runs natively and in the browser.
//!
//! [`run`] reads as phases, like nanoGPT's `train.py`: get a batch, forward/backward, clip
//! and step (one submission), log, evaluate, checkpoint.

#[cfg(not(target_arch = "wasm32"))]
pub mod folder;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::{roles, FreqGroups, Roles, StepBuffers};
use crate::checkpoint::{self, Checkpoint};
use crate::data::Dataset;
use crate::eval::{self, GroupSums};
use crate::loss::{noise_weights, Loss, LossState};
use crate::model::{init_params, Gpt, GptConfig, OptConfig};
use crate::rng::Rng;
use crate::runlog::LogLine;
use crate::runtime::Backend;
use crate::tensorfile::TensorFile;

#[cfg(not(target_arch = "wasm32"))]
pub use folder::{request_stop, stop_requested, train, train_claimed};

/// Everything a run needs besides the data. Fields added later carry serde defaults, so the
/// settings an older checkpoint recorded still read (and compare equal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: GptConfig,
    pub batch_size: usize,
    pub steps: u64,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    /// The training loss (validation always reports plain cross-entropy).
    pub loss: Loss,
    pub low_resource_prob: f64,
    pub seed: u64,
    pub eval_interval: u64,
    /// Validation batches per language at each eval interval.
    pub eval_batches: usize,
    pub log_interval: u64,
    /// Stop (with a checkpoint) after this step, keeping the schedule of `steps`; resume later.
    pub stop_after: Option<u64>,
    /// Also log the experiment's measurements: validation loss per token-frequency group at
    /// each eval, and the embedding's gradient roles at each log step (`roles.jsonl`).
    #[serde(default)]
    pub analysis: bool,
}

impl TrainConfig {
    /// Refuses settings that would fail hours into a run, or silently train nothing.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1 (got 0): pass a positive --batch-size");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!(
                "learning rate must be a positive number (got --lr {}): pass e.g. --lr 1e-3",
                self.lr
            );
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            bail!(
                "minimum learning rate must be a number >= 0 (got --min-lr {}): pass e.g. --min-lr 1e-4",
                self.min_lr
            );
        }
        if self.steps == 0 {
            bail!("--steps must be at least 1 (got 0): pass the number of training steps");
        }
        if self.stop_after == Some(0) {
            bail!("--stop-after must be at least 1 (got 0): pass the step to stop after, or leave it out");
        }
        if !(0.0..=1.0).contains(&self.low_resource_prob) {
            bail!(
                "low-resource probability {} is outside [0, 1]: pass a --low-resource-prob between 0 and 1",
                self.low_resource_prob
            );
        }
        // A loss the vocabulary cannot carry is refused with the data, by `check_data`.
        match self.loss.plan(self.model.vocab_size) {
            Ok(p) => p.check_rows(self.batch_size * self.model.block_size),
            Err(_) => Ok(()),
        }
    }

    /// The last step this session trains to.
    pub fn end(&self) -> u64 {
        self.stop_after.map_or(self.steps, |s| s.min(self.steps))
    }

    /// Whether step `s` (1-based) evaluates and checkpoints.
    fn evaluates(&self, s: u64) -> bool {
        self.eval_interval > 0 && (s.is_multiple_of(self.eval_interval) || s == self.steps)
    }
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr` at the last step.
/// `step` is 0-based.
pub fn lr_at(cfg: &TrainConfig, step: u64) -> f32 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f32 / cfg.warmup as f32;
    }
    let span = cfg
        .steps
        .saturating_sub(1)
        .saturating_sub(cfg.warmup)
        .max(1);
    let ratio = ((step - cfg.warmup) as f64 / span as f64).min(1.0);
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    (cfg.min_lr as f64 + coeff * (cfg.lr - cfg.min_lr) as f64) as f32
}

/// A model being trained: the model on its backend, the data position and the step reached.
pub struct Trainer {
    pub model: Gpt,
    pub cfg: TrainConfig,
    /// Steps completed.
    pub step: u64,
    rng: Rng,
    /// What the loss carries from step to step (AGG's count window).
    pub loss_state: LossState,
    /// With `analysis`: the training text's characters ranked into groups of 10.
    pub groups: Option<FreqGroups>,
    /// The step with the lowest mixed validation loss so far, and that loss.
    pub best: Option<(u64, f32)>,
}

/// One evaluation during training.
pub struct Validation {
    /// Per language, mean plain cross-entropy over the first `eval_batches` windows.
    pub languages: Vec<(String, f32)>,
    /// Over `eval_batches` validation batches drawn and mixed like training batches (the
    /// same batches every time): what the best checkpoint is chosen by.
    pub mixed: f32,
    /// With `analysis`: mean loss per frequency group.
    pub groups: Option<Vec<Option<f64>>>,
}

/// Salt of the validation batches' RNG, apart from the training batches'.
const VAL_SALT: u64 = 0x7a1_0000_0000;

/// The batch of the step just run, for measurements that need it.
pub struct Batch {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub lr: f32,
}

impl Trainer {
    /// A new run: the model from `cfg.seed`'s initial weights; batches from the data RNG.
    pub fn new(be: &mut dyn Backend, data: &Dataset, cfg: &TrainConfig) -> Result<Trainer> {
        let t = Trainer::build(be, data, cfg)?;
        let init = init_params(&cfg.model, &mut Rng::new(cfg.seed));
        t.model.set_params(be, &init)?;
        Ok(t)
    }

    /// Continues the run of a state file exactly (the caller checked it with
    /// [`checkpoint::check_resumable`]).
    pub fn resume(
        be: &mut dyn Backend,
        data: &Dataset,
        cfg: &TrainConfig,
        state: &TensorFile,
    ) -> Result<Trainer> {
        let mut t = Trainer::build(be, data, cfg)?;
        let r = checkpoint::restore(state, &t.model)?;
        t.model.set_params(be, &r.params)?;
        for ((m, v), (sm, sv)) in t
            .model
            .adam_m
            .iter()
            .zip(t.model.adam_v.iter())
            .zip(r.adam_m.iter().zip(r.adam_v.iter()))
        {
            be.write_f32(*m, sm);
            be.write_f32(*v, sv);
        }
        t.step = r.step;
        t.rng = r.rng;
        t.best = r.best;
        t.loss_state.restore(state)?;
        Ok(t)
    }

    fn build(be: &mut dyn Backend, data: &Dataset, cfg: &TrainConfig) -> Result<Trainer> {
        let model = Gpt::new(
            be,
            cfg.model,
            cfg.batch_size,
            &cfg.loss,
            OptConfig::default(),
        )?;
        model
            .loss_bufs
            .set_noise(be, &noise_weights(data, cfg.model.vocab_size), cfg.seed)?;
        let v = data.vocab.len();
        let groups = cfg
            .analysis
            .then(|| FreqGroups::new(&data.train, v, cfg.model.vocab_size == 2 * v, 10));
        let loss_state = LossState::new(&model.loss_plan, cfg.model.vocab_size);
        Ok(Trainer {
            model,
            cfg: cfg.clone(),
            step: 0,
            rng: Rng::new(cfg.seed.wrapping_add(0x5e1f)),
            loss_state,
            groups,
            best: None,
        })
    }

    /// One training step: a batch, the step's learning rate, then forward, loss, backward,
    /// clip and AdamW as one submission.
    pub fn step(&mut self, be: &mut dyn Backend, data: &Dataset) -> Result<Batch> {
        let (b, t) = (self.cfg.batch_size, self.cfg.model.block_size);
        let (x, y) = data.sample_batch(&mut self.rng, b, t);
        let lr = lr_at(&self.cfg, self.step);
        self.model.set_batch(be, &x, &y);
        self.loss_state.before_step(&self.model.loss_bufs, be, &y);
        self.model.set_step(be, lr, self.step + 1);
        self.model.train_step(be)?;
        self.step += 1;
        Ok(Batch { x, y, lr })
    }

    /// The last step's training loss.
    pub async fn loss(&self, be: &mut dyn Backend) -> Result<f32> {
        Ok(be.read_f32(self.model.acts.loss).await?[0])
    }

    /// The tied embedding's gradient roles in the last step (reads its activations back).
    pub async fn roles(&self, be: &mut dyn Backend, batch: &Batch) -> Result<Roles> {
        let a = &self.model.acts;
        Ok(roles(&StepBuffers {
            idx: &batch.x,
            targets: &batch.y,
            dx0: &be.read_f32(a.dres).await?,
            dlogits: &be.read_f32(a.dlogits).await?,
            h: &be.read_f32(a.ln_f.y).await?,
            v: self.model.cfg.vocab_size,
            c: self.model.cfg.n_embd,
        }))
    }

    /// Validation losses per language and mixed like training (see [`Validation`]).
    pub async fn validate(&self, be: &mut dyn Backend, data: &Dataset) -> Result<Validation> {
        let (model, batches) = (&self.model, self.cfg.eval_batches);
        let mut groups = self.groups.as_ref().map(GroupSums::new);
        let mut languages = Vec::new();
        for (name, toks) in eval::languages(data, model.cfg.vocab_size) {
            let l = eval::val_loss(model, be, &toks, batches, groups.as_mut()).await?;
            languages.push((name, l));
        }
        let mut rng = Rng::new(self.cfg.seed ^ VAL_SALT);
        let mut total = 0.0f64;
        for _ in 0..batches {
            let (x, y) = data.val_batch(&mut rng, model.batch, model.cfg.block_size);
            model.set_batch(be, &x, &y);
            be.run(&[model.forward, model.eval_loss])?;
            total += be.read_f32(model.acts.plain_loss).await?[0] as f64;
        }
        Ok(Validation {
            languages,
            mixed: (total / batches.max(1) as f64) as f32,
            groups: groups.map(|g| g.means()),
        })
    }

    /// The checkpoint of the step reached; its state names the best step so far.
    pub async fn checkpoint(&self, be: &mut dyn Backend, data: &Dataset) -> Result<Checkpoint> {
        let (m, cfg) = (&self.model, &self.cfg);
        let at = (&self.rng, &self.loss_state);
        let mut c = Checkpoint::take(m, be, &data.vocab, cfg, self.step, at).await?;
        if let Some((step, val)) = self.best {
            c.state.set_meta("best_step", step);
            c.state.set_meta("best_val", val);
        }
        Ok(c)
    }
}

/// Where a run's output goes: files, a progress bar and Ctrl-C natively; memory and a live
/// chart in the browser.
pub trait Host {
    /// Seconds since any fixed moment (tokens/s).
    fn now(&self) -> f64;
    /// Finish the current step, save a checkpoint and return (Ctrl-C, a Stop button).
    fn stop_requested(&self) -> bool;
    fn log(&mut self, line: &LogLine) -> Result<()>;
    /// The gradient roles of a logged step (with `analysis`).
    fn log_roles(&mut self, step: u64, roles: &Roles) -> Result<()>;
    fn save(&mut self, c: &Checkpoint) -> Result<()>;
    /// The model export of the step with the lowest mixed validation loss so far; called
    /// before [`Host::save`] of the same step, whose state then names it.
    fn save_best(&mut self, model: &TensorFile) -> Result<()>;
    /// A milestone worth a line (an evaluation, a resume).
    fn say(&mut self, msg: &str);
    /// The step reached, with the latest figures when there are new ones.
    fn progress(&mut self, step: u64, figures: Option<&str>);
    /// Where the last good checkpoint is, for error messages (`None`: none saved yet).
    fn kept(&self, saved: Option<u64>) -> String;
}

/// What [`run`] returns.
pub struct TrainSummary {
    pub final_loss: f32,
    pub losses: Vec<(u64, f32)>,
    pub tokens_per_s: f64,
    /// Steps completed, which is also the step of the last checkpoint.
    pub step: u64,
    /// Stopped early by [`Host::stop_requested`], after saving a checkpoint.
    pub interrupted: bool,
}

/// Trains from `t.step` to the end of the schedule (or `stop_after`), logging every
/// `log_interval` steps and evaluating and checkpointing every `eval_interval`.
pub async fn run(
    be: &mut dyn Backend,
    data: &Dataset,
    t: &mut Trainer,
    host: &mut dyn Host,
) -> Result<TrainSummary> {
    let cfg = t.cfg.clone();
    let (start, end) = (t.step, cfg.end());
    let mut log = Logged::new(host.now(), start, cfg.batch_size * cfg.model.block_size);
    // The last step with a checkpoint.
    let mut saved = (start > 0).then_some(start);
    let mut interrupted = false;
    while t.step < end {
        if host.stop_requested() {
            interrupted = true;
            break;
        }
        let step = t.step + 1;
        let failed = |e: anyhow::Error, host: &dyn Host| {
            anyhow!(
                "training failed at step {step}: {e:#}; {}",
                host.kept(saved)
            )
        };
        // ---- forward, backward, clip, AdamW
        let batch = t.step(be, data).map_err(|e| failed(e, host))?;
        let eval_now = cfg.evaluates(step);
        let log_now = step.is_multiple_of(cfg.log_interval.max(1)) || step == end;
        if !(log_now || step == start + 1 || eval_now) {
            host.progress(step, None);
            continue;
        }
        // ---- log
        let loss = t.loss(be).await.map_err(|e| failed(e, host))?;
        log.record(step, loss, host.now())
            .map_err(|why| anyhow!("{why}; {}", host.kept(saved)))?;
        host.progress(step, Some(&log.figures(batch.lr)));
        if t.groups.is_some() {
            let r = t.roles(be, &batch).await.map_err(|e| failed(e, host))?;
            host.log_roles(step, &r)?;
        }
        // ---- evaluate
        let mut val = None;
        if eval_now {
            let v = t.validate(be, data).await.map_err(|e| failed(e, host))?;
            let shown: Vec<String> = v
                .languages
                .iter()
                .map(|(n, l)| format!("{n} {l:.4}"))
                .collect();
            host.say(&format!(
                "step {step}: train loss {loss:.4}, val {}",
                shown.join(", ")
            ));
            val = Some(v);
        }
        host.log(&log.line(step, batch.lr, val.as_ref()))?;
        // ---- checkpoint
        if let Some(v) = val {
            save(be, data, t, host, v.mixed)
                .await
                .map_err(|e| failed(e, host))?;
            saved = Some(step);
        }
        host.progress(step, None);
    }
    if start >= end {
        host.say(&format!("already trained {start} of {} steps", cfg.steps));
    } else if t.step > start && saved != Some(t.step) {
        let done = t.step;
        let fail = |e: anyhow::Error, host: &dyn Host| {
            anyhow!(
                "saving the checkpoint of step {done} failed: {e:#}; {}",
                host.kept(saved)
            )
        };
        let c = t.checkpoint(be, data).await.map_err(|e| fail(e, host))?;
        host.save(&c).map_err(|e| fail(e, host))?;
    }
    Ok(log.summary(t.step, interrupted))
}

/// The checkpoint of an evaluated step, and `best.safetensors` first when its mixed
/// validation loss is the lowest so far (the state then names it).
async fn save(
    be: &mut dyn Backend,
    data: &Dataset,
    t: &mut Trainer,
    host: &mut dyn Host,
    mixed: f32,
) -> Result<()> {
    let improved = t.best.is_none_or(|(_, b)| mixed < b);
    if improved {
        t.best = Some((t.step, mixed));
    }
    let c = t.checkpoint(be, data).await?;
    if improved {
        let mut best = c.model.clone();
        best.set_meta("val_mixed", mixed);
        host.save_best(&best)?;
    }
    host.save(&c)
}

/// The logged losses, the throughput since the last log line, and the last finite loss.
struct Logged {
    losses: Vec<(u64, f32)>,
    last: f32,
    tokens_per_step: f64,
    tokens_per_s: f64,
    /// When the window of steps since the last log line began, and its first step.
    window: (f64, u64),
    finite_at: u64,
}

impl Logged {
    fn new(now: f64, start: u64, tokens_per_step: usize) -> Logged {
        Logged {
            losses: Vec::new(),
            last: f32::NAN,
            tokens_per_step: tokens_per_step as f64,
            tokens_per_s: 0.0,
            window: (now, start),
            finite_at: start,
        }
    }

    /// Takes the loss of `step`; a loss that is no longer finite stops training, naming the
    /// steps it became so between.
    fn record(&mut self, step: u64, loss: f32, now: f64) -> Result<(), String> {
        if !loss.is_finite() {
            let when = if step == self.finite_at + 1 {
                format!("at step {step}")
            } else {
                format!(
                    "between steps {} and {step} (it is checked every --log-interval steps)",
                    self.finite_at + 1
                )
            };
            return Err(format!(
                "the loss became {loss} {when}, so training stopped: lower --lr (or raise --warmup)"
            ));
        }
        let (t0, s0) = self.window;
        self.tokens_per_s = (step - s0) as f64 * self.tokens_per_step / (now - t0).max(1e-9);
        self.window = (now, step);
        (self.finite_at, self.last) = (step, loss);
        self.losses.push((step, loss));
        Ok(())
    }

    fn figures(&self, lr: f32) -> String {
        let (loss, tps) = (self.last, self.tokens_per_s);
        format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s")
    }

    fn line(&self, step: u64, lr: f32, val: Option<&Validation>) -> LogLine {
        LogLine {
            step,
            loss: self.last,
            lr,
            tokens_per_s: self.tokens_per_s,
            val_loss: val.map(|v| v.languages.clone()),
            val_mixed: val.map(|v| v.mixed),
            groups: val.and_then(|v| v.groups.clone()),
        }
    }

    fn summary(self, step: u64, interrupted: bool) -> TrainSummary {
        TrainSummary {
            final_loss: self.last,
            losses: self.losses,
            tokens_per_s: self.tokens_per_s,
            step,
            interrupted,
        }
    }
}
