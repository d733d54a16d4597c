//! What a checkpoint holds and when it may be used: the model export, the training state,
//! the checks before a resume, and (natively) the files and the checks before a run starts.
//!
//! A checkpoint is two files, `state.safetensors` written first: the state holds everything
//! a resume needs (parameters, AdamW moments, the loss's own state, step, data RNG,
//! settings), so a crash between the two saves can never pair a model with the optimizer of
//! another step; `model.safetensors` is the nanoGPT-compatible export, rewritten from the
//! state on resume whenever it lags behind. `best.safetensors` is the export of the step
//! with the lowest validation loss so far.

#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::data::{Dataset, Vocab};
use crate::loss::{Loss, LossState};
use crate::model::{specs, Gpt, GptConfig, ParamSpec, Params};
use crate::rng::Rng;
use crate::runtime::Backend;
use crate::tensorfile::{Tensor, TensorFile};
use crate::train::TrainConfig;

/// The two files of a checkpoint, in memory.
pub struct Checkpoint {
    pub step: u64,
    pub state: TensorFile,
    pub model: TensorFile,
}

/// Parameters under nanoGPT's names plus the metadata `eval` and PyTorch need.
pub fn params_file(
    specs: &Params<ParamSpec>,
    values: Params<Vec<f32>>,
    c: &GptConfig,
    vocab: &Vocab,
) -> TensorFile {
    let mut f = TensorFile::new();
    for (s, v) in specs.iter().zip(values.iter()) {
        f.push(Tensor::f32(s.name.clone(), s.shape.clone(), v.clone()));
    }
    for (name, v) in c.sizes() {
        f.set_meta(name, v);
    }
    f.set_meta("vocab", vocab.to_json());
    f
}

/// The model configuration in a file's metadata, checked against the embedding tables and
/// the layers actually present before anything is sized from it: a damaged or hand-edited
/// number must not allocate, and must not be blamed on the wrong tensor. A file with an
/// `lm_head.weight` is an untied model.
pub fn gpt_config(f: &TensorFile) -> Result<GptConfig> {
    let n = |k| f.meta_usize(k);
    let cfg = GptConfig {
        vocab_size: n("vocab_size")?,
        block_size: n("block_size")?,
        n_layer: n("n_layer")?,
        n_head: n("n_head")?,
        n_embd: n("n_embd")?,
        untied: f.get("lm_head.weight").is_some(),
    };
    let fix = "the metadata disagrees with the tensors; re-export the file or use another one";
    cfg.validate().map_err(|e| {
        // The reason without its fix, which speaks of command-line flags.
        let why = e.to_string();
        let why = why.rsplit_once(": ").map_or(why.as_str(), |(w, _)| w);
        anyhow!(
            "checkpoint {} has invalid metadata ({why}): the file is damaged or not from selfish; use another one",
            f.label()
        )
    })?;
    let (wte, _) = f.get_f32("transformer.wte.weight")?;
    if wte != [cfg.vocab_size, cfg.n_embd] {
        bail!(
            "checkpoint {}: metadata says vocab_size {} and n_embd {}, but 'transformer.wte.weight' has \
             shape {wte:?}: {fix}",
            f.label(),
            cfg.vocab_size,
            cfg.n_embd
        );
    }
    let (wpe, _) = f.get_f32("transformer.wpe.weight")?;
    if wpe != [cfg.block_size, cfg.n_embd] {
        bail!(
            "checkpoint {}: metadata says block_size {} and n_embd {}, but the position table \
             'transformer.wpe.weight' has shape {wpe:?}: {fix}",
            f.label(),
            cfg.block_size,
            cfg.n_embd
        );
    }
    let layers = f
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("transformer.h."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i.saturating_add(1))
        .max()
        .unwrap_or(0);
    if layers != cfg.n_layer {
        bail!(
            "checkpoint {}: metadata says n_layer {}, but the file holds {layers} layer(s): {fix}",
            f.label(),
            cfg.n_layer
        );
    }
    Ok(cfg)
}

/// Configuration, alphabet and parameters of a model or state file, each checked against
/// the others.
pub fn model_parts(f: &TensorFile) -> Result<(GptConfig, Vocab, Params<Vec<f32>>)> {
    let cfg = gpt_config(f)?;
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
    let params = tensors(f, &specs(&cfg), "")?;
    Ok((cfg, vocab, params))
}

/// The tensors `<prefix><name>` of every parameter, shapes checked.
fn tensors(f: &TensorFile, specs: &Params<ParamSpec>, prefix: &str) -> Result<Params<Vec<f32>>> {
    specs.try_map(|s| {
        f.expect_f32(&format!("{prefix}{}", s.name), &s.shape)
            .map(|d| d.to_vec())
    })
}

/// Reads a checkpoint's configuration, alphabet and parameters.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model_file(path: &Path) -> Result<(GptConfig, Vocab, Params<Vec<f32>>)> {
    model_parts(&crate::tensorfile::load(path)?)
}

/// Everything a resume restores, read from a state file.
pub struct Restored {
    pub step: u64,
    pub rng: Rng,
    pub params: Params<Vec<f32>>,
    pub adam_m: Params<Vec<f32>>,
    pub adam_v: Params<Vec<f32>>,
    pub vocab: Vocab,
    /// The best checkpoint's step and mixed validation loss (none in older states).
    pub best: Option<(u64, f32)>,
}

impl Checkpoint {
    /// Reads the model back into a checkpoint of step `step`. Parameters that are no longer
    /// finite are refused, so a diverged run never replaces the last good checkpoint.
    pub async fn take(
        model: &Gpt,
        be: &mut dyn Backend,
        vocab: &Vocab,
        cfg: &TrainConfig,
        step: u64,
        (rng, loss_state): (&Rng, &LossState),
    ) -> Result<Checkpoint> {
        let values = model.read(be, &model.params).await?;
        for (s, v) in model.specs.iter().zip(values.iter()) {
            if v.iter().any(|x| !x.is_finite()) {
                bail!(
                    "parameter '{}' became NaN or infinite by step {step}, so no checkpoint was written: lower --lr",
                    s.name
                );
            }
        }
        let mut state = params_file(&model.specs, values.clone(), &model.cfg, vocab);
        let m = model.read(be, &model.adam_m).await?;
        let v = model.read(be, &model.adam_v).await?;
        for (s, (m, v)) in model.specs.iter().zip(m.iter().zip(v.iter())) {
            state.push(Tensor::f32(
                format!("adam_m.{}", s.name),
                s.shape.clone(),
                m.clone(),
            ));
            state.push(Tensor::f32(
                format!("adam_v.{}", s.name),
                s.shape.clone(),
                v.clone(),
            ));
        }
        for t in loss_state.tensors() {
            state.push(t);
        }
        state.set_meta("step", step);
        state.set_meta("rng", serde_json::to_string(&rng.state())?);
        state.set_meta("train_config", serde_json::to_string(cfg)?);
        let mut export = params_file(&model.specs, values, &model.cfg, vocab);
        export.set_meta("step", step);
        describe(&mut export, &model.loss_fn, model.cfg.untied);
        Ok(Checkpoint {
            step,
            state,
            model: export,
        })
    }
}

/// The model export of a state file (what `model.safetensors` holds at its step).
pub fn export_of(state: &TensorFile) -> Result<TensorFile> {
    let (cfg, vocab, params) = model_parts(state)?;
    let mut m = params_file(&specs(&cfg), params, &cfg, &vocab);
    m.set_meta("step", state.meta_usize("step")?);
    if let Some(saved) = saved_config(state) {
        if let Some(loss) = saved.get("loss").and_then(|l| l.as_str()) {
            match Loss::parse(loss) {
                Ok(l) => describe(&mut m, &l, cfg.untied),
                Err(_) => m.set_meta("loss", loss),
            }
        }
    }
    Ok(m)
}

/// What made a model, in its export's metadata: the loss spelling and the options that
/// change training (the fixtures' `loss`, `logit_scale` and `untied`).
fn describe(export: &mut TensorFile, loss: &Loss, untied: bool) {
    export.set_meta("loss", loss);
    export.set_meta("logit_scale", loss.logit_scale());
    export.set_meta("untied", untied);
}

/// The run settings a state file was written with, as JSON (`None` when unreadable).
pub fn saved_config(state: &TensorFile) -> Option<serde_json::Value> {
    serde_json::from_str(state.meta("train_config").ok()?).ok()
}

/// `block_size 16 in the checkpoint, 32 asked for`, per differing field.
fn config_diff(saved: &GptConfig, now: &GptConfig) -> Vec<String> {
    let mut out: Vec<String> = saved
        .sizes()
        .iter()
        .zip(now.sizes())
        .filter(|((_, a), (_, b))| a != b)
        .map(|(&(name, a), (_, b))| {
            let table = match name {
                "block_size" => format!(" (its position table has {a} rows)"),
                "vocab_size" => " (twice the alphabet when --low-resource-prob > 0)".into(),
                _ => String::new(),
            };
            format!("{name} {a} in the checkpoint{table}, {b} asked for")
        })
        .collect();
    if saved.untied != now.untied {
        let head = |u: bool| if u { "an untied head" } else { "the tied head" };
        out.push(format!(
            "{} in the checkpoint, {} asked for",
            head(saved.untied),
            head(now.untied)
        ));
    }
    out
}

/// Errors unless the state file `st` can continue a run of `cfg` on `data`; `out` names the
/// run in messages.
pub fn check_resumable(
    st: &TensorFile,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &str,
) -> Result<()> {
    let (saved, vocab, _) = model_parts(st)?;
    let fix =
        "resume with the same model settings and --data, or pass another --out to start a new run";
    if vocab != data.vocab {
        bail!(
            "cannot resume '{out}': the checkpoint's alphabet ({} characters) differs from the text's ({} characters): {fix}",
            vocab.len(),
            data.vocab.len()
        );
    }
    let diff = config_diff(&saved, &cfg.model);
    if !diff.is_empty() {
        bail!("cannot resume '{out}': {}: {fix}", diff.join(", "));
    }
    let saved = saved_config(st).unwrap_or_default();
    if let Some(was) = saved.get("loss").and_then(|l| l.as_str()) {
        if was != cfg.loss.to_string() {
            bail!(
                "cannot resume '{out}': the checkpoint was trained with --loss {was}, not {}: resume with the same loss, or pass another --out",
                cfg.loss
            );
        }
    }
    let step = st.meta_usize("step")? as u64;
    if step > cfg.steps {
        bail!(
            "cannot resume '{out}': the checkpoint is at step {step}, past --steps {}: pass --steps {step} or more",
            cfg.steps
        );
    }
    Ok(())
}

/// Reads what a resume restores from a state file already checked by [`check_resumable`].
pub fn restore(st: &TensorFile, model: &Gpt) -> Result<Restored> {
    let (_, vocab, params) = model_parts(st)?;
    let step = st.meta_usize("step")? as u64;
    let rng: [u64; 4] = serde_json::from_str(st.meta("rng")?).map_err(|e| {
        anyhow!(
            "checkpoint {}: metadata 'rng' is damaged ({e}): use another checkpoint",
            st.label()
        )
    })?;
    Ok(Restored {
        step,
        rng: Rng::from_state(rng),
        params,
        adam_m: tensors(st, &model.specs, "adam_m.")?,
        adam_v: tensors(st, &model.specs, "adam_v.")?,
        vocab,
        best: match (st.meta_usize("best_step"), st.meta_f64("best_val")) {
            (Ok(s), Ok(v)) => Some((s as u64, v as f32)),
            _ => None,
        },
    })
}

/// What a run of `cfg` on `data` would refuse, checked before anything is allocated.
pub fn check_run(data: &Dataset, cfg: &TrainConfig) -> Result<()> {
    cfg.validate()?;
    // Batches are drawn at the data's probability; a config that says another would be
    // trained on a mix it does not record.
    if data.low_resource_prob != cfg.low_resource_prob {
        bail!(
            "the data moves rows to the second alphabet at probability {} but the run's config says {}: build the data with the config's probability (Dataset::mixed_at)",
            data.low_resource_prob,
            cfg.low_resource_prob
        );
    }
    if cfg.model.vocab_size < data.model_vocab() {
        bail!(
            "vocab_size {} cannot hold the {} token ids of the text: build the config from the data's vocabulary",
            cfg.model.vocab_size,
            data.model_vocab()
        );
    }
    data.check_sizes(cfg.model.block_size)?;
    cfg.loss.check_data(data, cfg.model.vocab_size)
}

#[cfg(not(target_arch = "wasm32"))]
pub use files::*;

/// Checkpoints as files in a run folder.
#[cfg(not(target_arch = "wasm32"))]
mod files {
    use super::*;
    use crate::tensorfile;

    pub fn model_path(dir: &Path) -> PathBuf {
        dir.join("model.safetensors")
    }

    pub fn state_path(dir: &Path) -> PathBuf {
        dir.join("state.safetensors")
    }

    /// The export of the step with the lowest validation loss so far.
    pub fn best_path(dir: &Path) -> PathBuf {
        dir.join("best.safetensors")
    }

    /// `best.safetensors`: the export of the best step so far.
    pub fn save_best(dir: &Path, model: &TensorFile) -> Result<()> {
        tensorfile::save(&best_path(dir), model)
    }

    /// State first, then model: see the module docs.
    pub fn save(dir: &Path, c: &Checkpoint) -> Result<()> {
        tensorfile::save(&state_path(dir), &c.state)?;
        tensorfile::save(&model_path(dir), &c.model)
    }

    /// Brings `model.safetensors` level with the state after a crash between the two saves.
    pub fn repair_export(dir: &Path, state: &TensorFile) -> Result<()> {
        let step = state.meta_usize("step")?;
        let model_step = tensorfile::load(&model_path(dir))
            .ok()
            .and_then(|m| m.meta_usize("step").ok());
        if model_step != Some(step) {
            tensorfile::save(&model_path(dir), &export_of(state)?)?;
        }
        Ok(())
    }

    /// Everything `train` would refuse, checked before a GPU is opened or a file is written:
    /// settings, text length, and whether `out` holds (or must hold) a checkpoint. Starting a
    /// new run over an existing checkpoint is refused, so rerunning a command by mistake
    /// cannot destroy hours of training.
    pub fn preflight(data: &Dataset, cfg: &TrainConfig, out: &Path, resume: bool) -> Result<()> {
        check_run(data, cfg)?;
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
            let st = tensorfile::load(&state_path(out))?;
            check_resumable(&st, data, cfg, &shown.to_string())?;
        } else if model || state {
            let at = tensorfile::load(&state_path(out))
                .ok()
                .and_then(|st| st.meta_usize("step").ok())
                .map_or(String::new(), |s| format!(" (step {s})"));
            bail!(
                "'{shown}' already holds a checkpoint{at}: pass --resume to continue it, or another --out (or delete '{shown}') to start a new run"
            );
        }
        Ok(())
    }
}
