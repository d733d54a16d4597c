//! Training, checkpoints, evaluation and sampling on any backend.
//!
//! A checkpoint is two files written atomically, `state.safetensors` first: the state holds
//! everything a resume needs (parameters, AdamW moments, step, data RNG, settings), so a
//! crash between the two saves can never pair a model with the optimizer of another step;
//! `model.safetensors` is the nanoGPT-compatible export, rewritten from the state on resume
//! whenever it lags behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::analysis::{roles, FreqGroups, StepBuffers};
use crate::checkpoint::{self, Tensor, TensorFile};
use crate::data::{eval_windows, Dataset, Vocab};
use crate::loss::{noise_weights, Loss};
use crate::metrics::{sample_token, LangMetrics, MetricsAcc};
use crate::model::{init_params, param_specs, Gpt, GptConfig, OptConfig, ParamSpec};
use crate::rng::Rng;
use crate::runtime::Backend;

/// Everything a run needs besides the data.
#[derive(Clone, Debug, Serialize)]
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
        Ok(())
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

pub fn model_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.safetensors")
}

fn metrics_path(dir: &Path) -> PathBuf {
    dir.join("metrics.jsonl")
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running [`train`] to finish its current step, save a checkpoint and return
/// (`TrainSummary::interrupted`). Safe to call from a signal handler's thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Parameters under nanoGPT's names plus the metadata `eval` and PyTorch need.
fn params_file(
    specs: &[ParamSpec],
    values: Vec<Vec<f32>>,
    c: &GptConfig,
    vocab: &Vocab,
) -> TensorFile {
    let mut f = TensorFile::new();
    for (s, v) in specs.iter().zip(values) {
        f.push(Tensor::f32(s.name.clone(), s.shape.clone(), v));
    }
    f.set_meta("vocab_size", c.vocab_size);
    f.set_meta("block_size", c.block_size);
    f.set_meta("n_layer", c.n_layer);
    f.set_meta("n_head", c.n_head);
    f.set_meta("n_embd", c.n_embd);
    f.set_meta("vocab", vocab.to_json());
    f
}

/// Parameters under nanoGPT's names plus the metadata `eval` and PyTorch need.
pub fn model_file(model: &Gpt, be: &mut dyn Backend, vocab: &Vocab) -> Result<TensorFile> {
    let values = model.read_all(be, &model.params)?;
    let mut f = params_file(&model.specs, values, &model.cfg, vocab);
    f.set_meta("loss", model.loss_fn);
    Ok(f)
}

/// Configuration, alphabet and parameters of a model or state file, each checked against
/// the others.
fn model_parts(f: &TensorFile) -> Result<(GptConfig, Vocab, Vec<Vec<f32>>)> {
    let cfg = f.gpt_config()?;
    let vocab =
        Vocab::from_json(f.meta("vocab")?).with_context(|| format!("checkpoint {}", f.label()))?;
    if cfg.vocab_size != vocab.len() && cfg.vocab_size != 2 * vocab.len() {
        bail!(
            "checkpoint {} has vocab_size {} but its alphabet has {} characters (expected {} or {}): the metadata is inconsistent; use another checkpoint",
            f.label(),
            cfg.vocab_size,
            vocab.len(),
            vocab.len(),
            2 * vocab.len()
        );
    }
    let params = param_specs(&cfg)
        .iter()
        .map(|s| f.expect_f32(&s.name, &s.shape).map(|d| d.to_vec()))
        .collect::<Result<Vec<_>>>()?;
    Ok((cfg, vocab, params))
}

/// Reads a checkpoint's configuration, alphabet and parameters.
pub fn load_model_file(path: &Path) -> Result<(GptConfig, Vocab, Vec<Vec<f32>>)> {
    model_parts(&checkpoint::load(path)?)
}

/// State first, then model: see the module docs. Parameters that are no longer finite are
/// refused, so a diverged run never replaces the last good checkpoint.
fn save_checkpoint(
    dir: &Path,
    model: &Gpt,
    be: &mut dyn Backend,
    vocab: &Vocab,
    cfg: &TrainConfig,
    step: u64,
    rng: &Rng,
) -> Result<()> {
    let values = model.read_all(be, &model.params)?;
    for (s, v) in model.specs.iter().zip(&values) {
        if v.iter().any(|x| !x.is_finite()) {
            bail!(
                "parameter '{}' became NaN or infinite by step {step}, so no checkpoint was written: lower --lr",
                s.name
            );
        }
    }
    let mut st = params_file(&model.specs, values.clone(), &model.cfg, vocab);
    for (i, s) in model.specs.iter().enumerate() {
        st.push(Tensor::f32(
            format!("adam_m.{}", s.name),
            s.shape.clone(),
            be.read_f32(model.adam_m[i])?,
        ));
        st.push(Tensor::f32(
            format!("adam_v.{}", s.name),
            s.shape.clone(),
            be.read_f32(model.adam_v[i])?,
        ));
    }
    st.set_meta("step", step);
    st.set_meta("rng", serde_json::to_string(&rng.state())?);
    st.set_meta("train_config", serde_json::to_string(cfg)?);
    checkpoint::save(&state_path(dir), &st)?;
    let mut m = params_file(&model.specs, values, &model.cfg, vocab);
    m.set_meta("step", step);
    m.set_meta("loss", model.loss_fn);
    checkpoint::save(&model_path(dir), &m)
}

/// `block_size 16 in the checkpoint, 32 asked for`, per differing field.
fn config_diff(saved: &GptConfig, now: &GptConfig) -> Vec<String> {
    let fields = [
        ("vocab_size", saved.vocab_size, now.vocab_size),
        ("block_size", saved.block_size, now.block_size),
        ("n_layer", saved.n_layer, now.n_layer),
        ("n_head", saved.n_head, now.n_head),
        ("n_embd", saved.n_embd, now.n_embd),
    ];
    fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| {
            let table = match *name {
                "block_size" => format!(" (its position table has {a} rows)"),
                "vocab_size" => " (twice the alphabet when --low-resource-prob > 0)".into(),
                _ => String::new(),
            };
            format!("{name} {a} in the checkpoint{table}, {b} asked for")
        })
        .collect()
}

/// Errors unless the state file in `out` can continue a run of `cfg` on `data`.
fn check_resumable(st: &TensorFile, data: &Dataset, cfg: &TrainConfig, out: &Path) -> Result<()> {
    let (saved, vocab, _) = model_parts(st)?;
    let fix =
        "resume with the same model settings and --data, or pass another --out to start a new run";
    if vocab != data.vocab {
        bail!(
            "cannot resume '{}': the checkpoint's alphabet ({} characters) differs from the text's ({} characters): {fix}",
            out.display(),
            vocab.len(),
            data.vocab.len()
        );
    }
    let diff = config_diff(&saved, &cfg.model);
    if !diff.is_empty() {
        bail!(
            "cannot resume '{}': {}: {fix}",
            out.display(),
            diff.join(", ")
        );
    }
    let saved: serde_json::Value =
        serde_json::from_str(st.meta("train_config")?).unwrap_or_default();
    if let Some(was) = saved.get("loss").and_then(|l| l.as_str()) {
        if was != cfg.loss.to_string() {
            bail!(
                "cannot resume '{}': the checkpoint was trained with --loss {was}, not {}: resume with the same loss, or pass another --out",
                out.display(),
                cfg.loss
            );
        }
    }
    let step = st.meta_usize("step")? as u64;
    if step > cfg.steps {
        bail!(
            "cannot resume '{}': the checkpoint is at step {step}, past --steps {}: pass --steps {step} or more",
            out.display(),
            cfg.steps
        );
    }
    Ok(())
}

/// Everything [`train`] would refuse, checked before a GPU is opened or a file is written:
/// settings, text length, and whether `out` holds (or must hold) a checkpoint. Starting a
/// new run over an existing checkpoint is refused, so rerunning a command by mistake cannot
/// destroy hours of training.
pub fn preflight(data: &Dataset, cfg: &TrainConfig, out: &Path, resume: bool) -> Result<()> {
    cfg.validate()?;
    if cfg.model.vocab_size < data.model_vocab() {
        bail!(
            "vocab_size {} cannot hold the {} token ids of the text: build the config from the data's vocabulary",
            cfg.model.vocab_size,
            data.model_vocab()
        );
    }
    data.check_sizes(cfg.model.block_size)?;
    cfg.loss.check_data(data, cfg.model.vocab_size)?;
    let shown = out.display();
    if out.exists() && !out.is_dir() {
        bail!("--out '{shown}' is a file, not a folder: pass a folder for the checkpoints");
    }
    let (model, state) = (model_path(out).exists(), state_path(out).exists());
    if resume {
        if !state {
            if model {
                bail!(
                    "cannot resume '{shown}': it has model.safetensors but no state.safetensors (optimizer state and data position), so the run cannot continue exactly: pass another --out to start a new run from scratch"
                );
            }
            bail!(
                "cannot resume: there is no checkpoint (state.safetensors) in '{shown}': pass the --out of the run to continue, or drop --resume to start a new run"
            );
        }
        let st = checkpoint::load(&state_path(out))?;
        check_resumable(&st, data, cfg, out)?;
    } else if model || state {
        let at = checkpoint::load(&state_path(out))
            .ok()
            .and_then(|st| st.meta_usize("step").ok())
            .map_or(String::new(), |s| format!(" (step {s})"));
        bail!(
            "'{shown}' already holds a checkpoint{at}: pass --resume to continue it, or another --out (or delete '{shown}') to start a new run"
        );
    }
    Ok(())
}

fn roles_path(dir: &Path) -> PathBuf {
    dir.join("roles.jsonl")
}

/// The experiment's extra measurements during training (see [`TrainConfig::analysis`]).
struct Analysis {
    groups: FreqGroups,
    roles: Option<fs::File>,
    path: PathBuf,
}

impl Analysis {
    /// Ranks the training text's characters into groups of 10 and records them in
    /// `groups.json`.
    fn new(data: &Dataset, model_vocab: usize, out: &Path) -> Result<Analysis> {
        let v = data.vocab.len();
        let groups = FreqGroups::new(&data.train, v, model_vocab == 2 * v, 10);
        let path = out.join("groups.json");
        fs::write(&path, serde_json::to_string(&groups)?).map_err(|e| {
            anyhow!(
                "cannot write '{}': {e}: pass a writable --out",
                path.display()
            )
        })?;
        Ok(Analysis {
            groups,
            roles: None,
            path: roles_path(out),
        })
    }

    /// Appends this step's gradient roles to `roles.jsonl`; reads back the step's batch
    /// activations and gradients, so it runs at log intervals only.
    fn log_roles(
        &mut self,
        model: &Gpt,
        be: &mut dyn Backend,
        x: &[u32],
        y: &[u32],
        step: u64,
    ) -> Result<()> {
        let r = roles(&StepBuffers {
            idx: x,
            targets: y,
            dx0: &be.read_f32(model.dx0)?,
            dlogits: &be.read_f32(model.dlogits)?,
            h: &be.read_f32(model.head_in)?,
            v: model.cfg.vocab_size,
            c: model.cfg.n_embd,
        });
        let mut line = serde_json::to_value(&r)?;
        line["step"] = step.into();
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let path = &self.path;
        let file = match &mut self.roles {
            Some(f) => f,
            None => self.roles.insert(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow!("cannot open '{}': {e}", path.display()))?,
            ),
        };
        file.write_all(text.as_bytes())
            .map_err(|e| anyhow!("cannot write '{}': {e}: check free space", path.display()))
    }
}

/// Keeps the metrics of steps up to `step` (a resumed run logs the later ones again) and
/// drops a line cut short by a crash. Rewritten atomically like a checkpoint.
fn trim_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if keep == text {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, &keep)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow!(
                "cannot rewrite '{}': {e}: check free space and permissions",
                path.display()
            )
        })
}

/// Loads the state in `out` into `model`; returns the step reached and the data RNG.
fn restore(
    be: &mut dyn Backend,
    model: &Gpt,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
) -> Result<(u64, Rng)> {
    let st = checkpoint::load(&state_path(out))?;
    check_resumable(&st, data, cfg, out)?;
    let (_, vocab, params) = model_parts(&st)?;
    model.set_params(be, &params)?;
    for (i, s) in model.specs.iter().enumerate() {
        be.write_f32(
            model.adam_m[i],
            st.expect_f32(&format!("adam_m.{}", s.name), &s.shape)?,
        );
        be.write_f32(
            model.adam_v[i],
            st.expect_f32(&format!("adam_v.{}", s.name), &s.shape)?,
        );
    }
    let step = st.meta_usize("step")? as u64;
    let rng: [u64; 4] = serde_json::from_str(st.meta("rng")?).map_err(|e| {
        anyhow!(
            "checkpoint {}: metadata 'rng' is damaged ({e}): use another checkpoint",
            st.label()
        )
    })?;
    // The model file lags when a crash came between the two saves: bring it level.
    let model_step = checkpoint::load(&model_path(out))
        .ok()
        .and_then(|m| m.meta_usize("step").ok());
    if model_step != Some(step as usize) {
        let mut m = params_file(&model.specs, params, &model.cfg, &vocab);
        m.set_meta("step", step);
        checkpoint::save(&model_path(out), &m)?;
    }
    Ok((step, Rng::from_state(rng)))
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct LogLine<'a> {
    step: u64,
    loss: f32,
    lr: f32,
    tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_loss: Option<&'a [(String, f32)]>,
    /// Mean validation loss per token-frequency group (`groups.json` names them); null for
    /// a group with no validation target.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<Option<f64>>>,
}

/// Mean plain cross-entropy over the first `batches` batches of validation windows and,
/// with `groups`, the sum and count of the per-position losses in each frequency group.
fn val_loss(
    model: &Gpt,
    be: &mut dyn Backend,
    tokens: &[u32],
    batches: usize,
    mut groups: Option<(&FreqGroups, &mut [f64], &mut [usize])>,
) -> Result<f32> {
    let t = model.cfg.block_size;
    let windows: Vec<_> = eval_windows(tokens, t).collect();
    let mut total = 0.0f64;
    let mut n = 0usize;
    for chunk in windows.chunks(model.batch).take(batches.max(1)) {
        if chunk.len() < model.batch {
            break;
        }
        let x: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
        let y: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
        model.set_batch(be, &x, &y);
        be.run(&[model.forward, model.eval_loss])?;
        total += be.read_f32(model.plain_loss)?[0] as f64;
        n += 1;
        if let Some((g, sums, counts)) = groups.as_mut() {
            let per_position = be.read_f32(model.plain_losses)?;
            for (&l, &target) in per_position.iter().zip(&y) {
                let k = g.group_of[target as usize];
                sums[k] += l as f64;
                counts[k] += 1;
            }
        }
    }
    Ok(if n == 0 {
        f32::NAN
    } else {
        (total / n as f64) as f32
    })
}

/// The languages of a dataset: (name, validation tokens).
pub fn languages(data: &Dataset, model_vocab: usize) -> Vec<(String, Vec<u32>)> {
    let mut v = vec![("base".to_string(), data.val.clone())];
    if model_vocab == 2 * data.vocab.len() {
        v.push(("shifted".to_string(), data.val_shifted()));
    }
    v
}

/// What `train` returns.
pub struct TrainSummary {
    pub final_loss: f32,
    pub losses: Vec<(u64, f32)>,
    pub tokens_per_s: f64,
    /// Steps completed, which is also the step of the checkpoint in `out`.
    pub step: u64,
    /// Stopped early by [`request_stop`] (Ctrl-C), after saving a checkpoint.
    pub interrupted: bool,
}

/// Trains `cfg` on `data`, writing checkpoints and `metrics.jsonl` to `out`.
/// With `resume`, continues exactly from `out`'s checkpoint, which must exist; without it,
/// `out` must not hold one (see [`preflight`]).
pub fn train(
    be: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    preflight(data, cfg, out, resume)?;
    let model = Gpt::new(
        be,
        cfg.model,
        cfg.batch_size,
        cfg.loss,
        OptConfig::default(),
    )?;
    fs::create_dir_all(out).map_err(|e| {
        anyhow!(
            "cannot create output folder '{}': {e}: pass a writable --out",
            out.display()
        )
    })?;
    // Left by a crash during a save; the files they were meant to replace are intact.
    for name in [
        "model.safetensors.tmp",
        "state.safetensors.tmp",
        "metrics.jsonl.tmp",
    ] {
        let _ = fs::remove_file(out.join(name));
    }
    model.set_noise(be, &noise_weights(data, cfg.model.vocab_size), cfg.seed)?;
    let mut data_rng = Rng::new(cfg.seed.wrapping_add(0x5e1f));
    let mut start = 0u64;
    if resume {
        (start, data_rng) = restore(be, &model, data, cfg, out)?;
        trim_metrics(&metrics_path(out), start)?;
        trim_metrics(&roles_path(out), start)?;
    } else {
        let mut init_rng = Rng::new(cfg.seed);
        model.set_params(be, &init_params(&cfg.model, &mut init_rng))?;
        let _ = fs::remove_file(metrics_path(out));
        let _ = fs::remove_file(roles_path(out));
    }
    let mut analysis = if cfg.analysis {
        Some(Analysis::new(data, cfg.model.vocab_size, out)?)
    } else {
        None
    };

    // Opened on the first line, so a run that fails before logging leaves no empty file.
    let mut log: Option<fs::File> = None;
    let langs = languages(data, cfg.model.vocab_size);
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
    bar.set_position(start);
    // Milestones go above the bar, or to stderr when it is not a terminal (a log file).
    let say = |msg: String| {
        if progress && bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            bar.println(msg);
        }
    };

    let tokens_per_step = (cfg.batch_size * cfg.model.block_size) as f64;
    let mut losses = Vec::new();
    let mut last_loss = f32::NAN;
    let mut window = Instant::now();
    let mut window_steps = 0u64;
    let mut tps = 0.0;
    let end = cfg.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    // The last step with a checkpoint and the last step whose loss was seen to be finite.
    let mut saved = resume.then_some(start);
    let mut finite_at = start;
    let kept = |saved: Option<u64>| match saved {
        Some(s) => format!(
            "the checkpoint of step {s} in '{}' is intact; continue from it with --resume",
            out.display()
        ),
        None => "no checkpoint had been saved yet".to_string(),
    };
    let mut done = start;
    let mut interrupted = false;
    for step in start..end {
        if stop_requested() {
            interrupted = true;
            break;
        }
        let failed = |e: anyhow::Error| {
            anyhow!(
                "training failed at step {}: {e:#}; {}",
                step + 1,
                kept(saved)
            )
        };
        let (x, y) = data.sample_batch(&mut data_rng, cfg.batch_size, cfg.model.block_size);
        model.set_batch(be, &x, &y);
        let lr = lr_at(cfg, step);
        model.set_step(be, lr, step + 1);
        model.train_step(be).map_err(failed)?;
        done = step + 1;
        window_steps += 1;
        let last = step + 1 == cfg.steps;
        let eval_now = cfg.eval_interval > 0 && ((step + 1) % cfg.eval_interval == 0 || last);
        if (step + 1) % cfg.log_interval.max(1) == 0 || step + 1 == end || step == start || eval_now
        {
            last_loss = be.read_f32(model.loss).map_err(failed)?[0];
            if !last_loss.is_finite() {
                let when = if step == finite_at {
                    format!("at step {}", step + 1)
                } else {
                    format!(
                        "between steps {} and {} (it is checked every --log-interval steps)",
                        finite_at + 1,
                        step + 1
                    )
                };
                bail!(
                    "the loss became {last_loss} {when}, so training stopped: lower --lr (or raise --warmup); {}",
                    kept(saved)
                );
            }
            finite_at = step + 1;
            tps = window_steps as f64 * tokens_per_step / window.elapsed().as_secs_f64();
            window = Instant::now();
            window_steps = 0;
            losses.push((step + 1, last_loss));
            bar.set_message(format!("loss {last_loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
            if let Some(a) = &mut analysis {
                a.log_roles(&model, be, &x, &y, step + 1).map_err(failed)?;
            }
            let mut val = None;
            let mut vals = Vec::new();
            let mut group_means = None;
            if eval_now {
                let ng = analysis.as_ref().map_or(0, |a| a.groups.names.len());
                let (mut sums, mut counts) = (vec![0.0f64; ng], vec![0usize; ng]);
                for (name, toks) in &langs {
                    let g = analysis
                        .as_ref()
                        .map(|a| (&a.groups, &mut sums[..], &mut counts[..]));
                    let l = val_loss(&model, be, toks, cfg.eval_batches, g).map_err(failed)?;
                    vals.push((name.clone(), l));
                }
                if analysis.is_some() {
                    group_means = Some(
                        sums.iter()
                            .zip(&counts)
                            .map(|(&s, &k)| (k > 0).then(|| s / k as f64))
                            .collect(),
                    );
                }
                say(format!(
                    "step {}: train loss {last_loss:.4}, val {}",
                    step + 1,
                    vals.iter()
                        .map(|(n, l)| format!("{n} {l:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                val = Some(vals.as_slice());
            }
            let mut line = serde_json::to_string(&LogLine {
                step: step + 1,
                loss: last_loss,
                lr,
                tokens_per_s: tps,
                val_loss: val,
                groups: group_means,
            })?;
            line.push('\n');
            let path = metrics_path(out);
            let file = match &mut log {
                Some(f) => f,
                None => log.insert(
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| {
                            anyhow!(
                                "cannot open '{}': {e}: pass a writable --out",
                                path.display()
                            )
                        })?,
                ),
            };
            // One write per line, so a crash cannot interleave half a line with the next run's.
            file.write_all(line.as_bytes())
                .map_err(|e| anyhow!("cannot write '{}': {e}: check free space", path.display()))?;
            if eval_now {
                save_checkpoint(out, &model, be, &data.vocab, cfg, step + 1, &data_rng)
                    .map_err(failed)?;
                saved = Some(step + 1);
            }
        }
        bar.set_position(step + 1);
    }
    if start >= end {
        say(format!("already trained {start} of {} steps", cfg.steps));
    } else if done > start && saved != Some(done) {
        save_checkpoint(out, &model, be, &data.vocab, cfg, done, &data_rng).map_err(|e| {
            anyhow!(
                "saving the checkpoint of step {done} failed: {e:#}; {}",
                kept(saved)
            )
        })?;
    }
    bar.finish();
    Ok(TrainSummary {
        final_loss: last_loss,
        losses,
        tokens_per_s: tps,
        step: done,
        interrupted,
    })
}

/// Metrics of one language, over all of its validation windows.
pub fn evaluate_language(model: &Gpt, be: &mut dyn Backend, tokens: &[u32]) -> Result<LangMetrics> {
    Ok(evaluate_language_sweep(model, be, tokens)?.0)
}

/// [`evaluate_language`] plus perplexity at every temperature of the sweep.
pub fn evaluate_language_sweep(
    model: &Gpt,
    be: &mut dyn Backend,
    tokens: &[u32],
) -> Result<(LangMetrics, Vec<(f64, f64)>)> {
    let t = model.cfg.block_size;
    let windows: Vec<_> = eval_windows(tokens, t).collect();
    if windows.is_empty() {
        bail!(
            "validation split too short to evaluate: {} characters for block_size {t}: use a longer text",
            tokens.len()
        );
    }
    let mut acc = MetricsAcc::new(model.cfg.vocab_size);
    for chunk in windows.chunks(model.batch) {
        let mut x: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
        let mut y: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
        let real = x.len();
        // pad a short last batch with its first window; padded rows are not counted
        while x.len() < model.batch * t {
            x.extend_from_slice(chunk[0].0);
            y.extend_from_slice(chunk[0].1);
        }
        model.set_batch(be, &x, &y);
        be.run(&[model.forward])?;
        let logits = be.read_f32(model.logits)?;
        acc.add(&logits[..real * model.cfg.vocab_size], &y[..real]);
    }
    Ok((acc.finish(), acc.ppl_by_temperature()))
}

/// Builds a forward-only model from a checkpoint.
pub fn load_for_inference(be: &mut dyn Backend, path: &Path, batch: usize) -> Result<(Gpt, Vocab)> {
    let (cfg, vocab, params) = load_model_file(path)?;
    let model = Gpt::new(be, cfg, batch, Loss::PLAIN, OptConfig::default())?;
    model.set_params(be, &params)?;
    Ok((model, vocab))
}

/// Generates `n` tokens after `prompt` (ids), one forward pass per token.
pub fn sample(
    model: &Gpt,
    be: &mut dyn Backend,
    prompt: &[u32],
    n: usize,
    temperature: f32,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    let t = model.cfg.block_size;
    let v = model.cfg.vocab_size;
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let ctx = &ids[ids.len().saturating_sub(t)..];
        let mut x = ctx.to_vec();
        x.resize(t * model.batch, 0);
        model.set_batch(be, &x, &vec![0; t * model.batch]);
        be.run(&[model.forward])?;
        let logits = be.read_f32(model.logits)?;
        let pos = ctx.len() - 1;
        let next = sample_token(&logits[pos * v..(pos + 1) * v], temperature, rng) as u32;
        ids.push(next);
        out.push(next);
    }
    Ok(out)
}
