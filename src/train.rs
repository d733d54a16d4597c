//! Training, checkpoints, evaluation and sampling on any backend.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::checkpoint::{self, Tensor, TensorFile};
use crate::data::{eval_windows, Dataset, Vocab};
use crate::loss::{noise_weights, Loss};
use crate::metrics::{sample_token, LangMetrics, MetricsAcc};
use crate::model::{init_params, param_specs, Gpt, GptConfig, OptConfig};
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

/// Parameters under nanoGPT's names plus the metadata `eval` and PyTorch need.
pub fn model_file(model: &Gpt, be: &mut dyn Backend, vocab: &Vocab) -> Result<TensorFile> {
    let mut f = TensorFile::new();
    for (s, b) in model.specs.iter().zip(&model.params) {
        f.push(Tensor::f32(
            s.name.clone(),
            s.shape.clone(),
            be.read_f32(*b)?,
        ));
    }
    let c = &model.cfg;
    f.set_meta("vocab_size", c.vocab_size);
    f.set_meta("block_size", c.block_size);
    f.set_meta("n_layer", c.n_layer);
    f.set_meta("n_head", c.n_head);
    f.set_meta("n_embd", c.n_embd);
    f.set_meta("vocab", vocab.to_json());
    f.set_meta("loss", model.loss_fn);
    Ok(f)
}

/// Reads a checkpoint's configuration, alphabet and parameters.
pub fn load_model_file(path: &Path) -> Result<(GptConfig, Vocab, Vec<Vec<f32>>)> {
    let f = checkpoint::load(path)?;
    let cfg = GptConfig {
        vocab_size: f.meta_usize("vocab_size")?,
        block_size: f.meta_usize("block_size")?,
        n_layer: f.meta_usize("n_layer")?,
        n_head: f.meta_usize("n_head")?,
        n_embd: f.meta_usize("n_embd")?,
    };
    cfg.validate()
        .with_context(|| format!("checkpoint '{}' metadata", path.display()))?;
    let vocab = Vocab::from_json(f.meta("vocab")?)?;
    if cfg.vocab_size != vocab.len() && cfg.vocab_size != 2 * vocab.len() {
        bail!(
            "checkpoint '{}' has vocab_size {} but its alphabet has {} characters (expected {} or {}): the metadata is inconsistent",
            path.display(),
            cfg.vocab_size,
            vocab.len(),
            vocab.len(),
            2 * vocab.len()
        );
    }
    let params = param_specs(&cfg)
        .iter()
        .map(|s| f.expect_f32(&s.name, &s.shape).map(|d| d.to_vec()))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("checkpoint '{}'", path.display()))?;
    Ok((cfg, vocab, params))
}

fn save_checkpoint(
    dir: &Path,
    model: &Gpt,
    be: &mut dyn Backend,
    vocab: &Vocab,
    cfg: &TrainConfig,
    step: u64,
    rng: &Rng,
) -> Result<()> {
    checkpoint::save(&model_path(dir), &model_file(model, be, vocab)?)?;
    let mut st = TensorFile::new();
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
    checkpoint::save(&state_path(dir), &st)
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
}

/// Mean plain cross-entropy over the first `batches` batches of validation windows.
fn val_loss(model: &Gpt, be: &mut dyn Backend, tokens: &[u32], batches: usize) -> Result<f32> {
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
}

/// Trains `cfg` on `data`, writing checkpoints and `metrics.jsonl` to `out`.
/// With `resume`, continues from `out`'s checkpoint.
pub fn train(
    be: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    data.check_sizes(cfg.model.block_size)?;
    fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder '{}'", out.display()))?;
    cfg.loss.check_data(data, cfg.model.vocab_size)?;
    let model = Gpt::new(
        be,
        cfg.model,
        cfg.batch_size,
        cfg.loss,
        OptConfig::default(),
    )?;
    model.set_noise(be, &noise_weights(data, cfg.model.vocab_size), cfg.seed)?;
    let mut data_rng = Rng::new(cfg.seed.wrapping_add(0x5e1f));
    let mut start = 0u64;
    if resume && model_path(out).exists() {
        let (mcfg, vocab, params) = load_model_file(&model_path(out))?;
        if mcfg != cfg.model || vocab != data.vocab {
            bail!(
                "checkpoint in '{}' was trained with another model config or alphabet: resume with the same settings and --data, or use a new --out",
                out.display()
            );
        }
        model.set_params(be, &params)?;
        let st = checkpoint::load(&state_path(out))?;
        let saved: serde_json::Value =
            serde_json::from_str(st.meta("train_config")?).unwrap_or_default();
        if let Some(was) = saved.get("loss").and_then(|l| l.as_str()) {
            if was != cfg.loss.to_string() {
                bail!(
                    "checkpoint in '{}' was trained with --loss {was}, not {}: resume with the same loss, or use a new --out",
                    out.display(),
                    cfg.loss
                );
            }
        }
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
        start = st.meta_usize("step")? as u64;
        let state: [u64; 4] =
            serde_json::from_str(st.meta("rng")?).context("state.safetensors: bad rng metadata")?;
        data_rng = Rng::from_state(state);
    } else {
        let mut init_rng = Rng::new(cfg.seed);
        model.set_params(be, &init_params(&cfg.model, &mut init_rng))?;
        let _ = fs::remove_file(out.join("metrics.jsonl"));
    }

    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))
        .with_context(|| format!("cannot write metrics.jsonl in '{}'", out.display()))?;
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

    let tokens_per_step = (cfg.batch_size * cfg.model.block_size) as f64;
    let mut losses = Vec::new();
    let mut last_loss = f32::NAN;
    let mut window = Instant::now();
    let mut window_steps = 0u64;
    let mut tps = 0.0;
    let end = cfg.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in start..end {
        let (x, y) = data.sample_batch(&mut data_rng, cfg.batch_size, cfg.model.block_size);
        model.set_batch(be, &x, &y);
        let lr = lr_at(cfg, step);
        model.set_step(be, lr, step + 1);
        model.train_step(be)?;
        window_steps += 1;
        let last = step + 1 == cfg.steps;
        let eval_now = cfg.eval_interval > 0 && ((step + 1) % cfg.eval_interval == 0 || last);
        if (step + 1) % cfg.log_interval.max(1) == 0 || step + 1 == end || step == start || eval_now
        {
            last_loss = be.read_f32(model.loss)?[0];
            if !last_loss.is_finite() {
                bail!(
                    "loss became {last_loss} at step {}: the last good checkpoint in '{}' is kept; lower --lr and resume",
                    step + 1,
                    out.display()
                );
            }
            tps = window_steps as f64 * tokens_per_step / window.elapsed().as_secs_f64();
            window = Instant::now();
            window_steps = 0;
            losses.push((step + 1, last_loss));
            bar.set_message(format!("loss {last_loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
            let mut val = None;
            let mut vals = Vec::new();
            if eval_now {
                for (name, toks) in &langs {
                    vals.push((name.clone(), val_loss(&model, be, toks, cfg.eval_batches)?));
                }
                bar.println(format!(
                    "step {}: train loss {last_loss:.4}, val {}",
                    step + 1,
                    vals.iter()
                        .map(|(n, l)| format!("{n} {l:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                val = Some(vals.as_slice());
            }
            let line = LogLine {
                step: step + 1,
                loss: last_loss,
                lr,
                tokens_per_s: tps,
                val_loss: val,
            };
            writeln!(log, "{}", serde_json::to_string(&line)?)?;
            if eval_now {
                save_checkpoint(out, &model, be, &data.vocab, cfg, step + 1, &data_rng)?;
            }
        }
        bar.set_position(step + 1);
    }
    if start >= end {
        bar.println(format!("already trained {start} of {} steps", cfg.steps));
    } else if cfg.eval_interval == 0 || !end.is_multiple_of(cfg.eval_interval) {
        save_checkpoint(out, &model, be, &data.vocab, cfg, end, &data_rng)?;
    }
    bar.finish();
    Ok(TrainSummary {
        final_loss: last_loss,
        losses,
        tokens_per_s: tps,
    })
}

/// Metrics of one language, over all of its validation windows.
pub fn evaluate_language(model: &Gpt, be: &mut dyn Backend, tokens: &[u32]) -> Result<LangMetrics> {
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
    Ok(acc.finish())
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
