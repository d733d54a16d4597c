//! `selfish experiment`: the *Stop Jostling* comparison. Runs that differ only in the loss
//! (same seed, so the same initial weights and the same batches), each trained, evaluated and
//! analysed, then one report.
//!
//! Layout of the output folder:
//!   runs/<name>/   model.safetensors, state.safetensors, metrics.jsonl, roles.jsonl,
//!                  groups.json, eval.json (written last: its presence means "finished")
//!   report.md, results.json, plots/*.svg|png
//! A finished run is not trained again; an interrupted one resumes from its checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::isotropy;
use crate::checkpoint::{self, load_model_file, model_path, state_path};
use crate::data::Dataset;
use crate::eval;
use crate::loss::Loss;
use crate::metrics::LangMetrics;
use crate::runtime::{Backend, Wait};
use crate::tensorfile;
use crate::train::{self, TrainConfig};

/// Everything about one run that the report needs, as stored in `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunEval {
    pub name: String,
    pub loss: String,
    pub steps: u64,
    /// The run's training configuration as JSON: a finished run is reused only if it matches.
    pub config: serde_json::Value,
    /// Per language: metrics and (temperature, perplexity) over the sweep.
    pub languages: Vec<LangEval>,
    /// Isotropy of each alphabet's rows of `wte` (`base`, `shifted`) and, when the head is
    /// untied, of `lm_head` (`lm_head base`, `lm_head shifted`).
    pub isotropy: Vec<(String, f64)>,
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LangEval {
    pub language: String,
    pub metrics: LangMetrics,
    pub ppl_by_temperature: Vec<(f64, f64)>,
}

/// The runs `experiment` makes: plain (unless left out), one per margin (`none`: no
/// margin runs), then the `--also` losses.
pub fn losses(margins: &[String], also: &[String], no_baseline: bool) -> Result<Vec<Loss>> {
    let mut losses = Vec::new();
    if !no_baseline {
        losses.push(Loss::plain());
    }
    if !(margins.len() == 1 && margins[0].eq_ignore_ascii_case("none")) {
        for m in margins {
            let margin = crate::loss::parse_margin(m).ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid margin '{m}' in --margins: pass numbers >= 0 separated by commas, or none"
                )
            })?;
            losses.push(Loss::plain().with_margin(Some(margin))?);
        }
    }
    for a in also {
        losses.push(Loss::parse(a)?);
    }
    Ok(losses)
}

/// A folder-safe run name: `plain`, `margin-1`, `hard-8+counterpart`, ...
pub fn run_name(loss: &Loss) -> String {
    loss.to_string().replace(':', "-")
}

pub fn run_dir(out: &Path, loss: &Loss) -> PathBuf {
    out.join("runs").join(run_name(loss))
}

fn config_json(cfg: &TrainConfig) -> Result<serde_json::Value> {
    // Through text, as the state file stores it: f32 fields then compare equal.
    let mut v: serde_json::Value = serde_json::from_str(&serde_json::to_string(cfg)?)?;
    // Where training stops is not part of what the run is.
    if let Some(o) = v.as_object_mut() {
        o.remove("stop_after");
    }
    Ok(v)
}

/// The finished evaluation of a run, if `eval.json` exists and matches `cfg`.
pub fn finished(dir: &Path, cfg: &TrainConfig) -> Result<Option<RunEval>> {
    let path = dir.join("eval.json");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    let ev: RunEval = serde_json::from_str(&text).with_context(|| {
        format!(
            "'{}' is damaged: delete it to evaluate the run again",
            path.display()
        )
    })?;
    Ok((ev.config == config_json(cfg)?).then_some(ev))
}

/// Trains (or resumes) and evaluates one run, unless it already finished. `None`: training
/// stopped early (Ctrl-C, or `stop_after`) after saving a checkpoint.
pub fn run_one(
    be: &mut dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    out: &Path,
    progress: bool,
) -> Result<Option<RunEval>> {
    let dir = run_dir(out, &cfg.loss);
    if let Some(done) = finished(&dir, cfg)? {
        eprintln!("{}: finished earlier, not trained again", done.name);
        return Ok(Some(done));
    }
    if model_path(&dir).exists() && !state_path(&dir).exists() {
        bail!(
            "run folder '{}' has a model but no training state: delete the folder to train the run again",
            dir.display()
        );
    }
    let resume = state_path(&dir).exists();
    if resume {
        let st = tensorfile::load(&state_path(&dir))?;
        let mut saved = checkpoint::saved_config(&st)
            .with_context(|| format!("'{}' is damaged", state_path(&dir).display()))?;
        if let Some(o) = saved.as_object_mut() {
            o.remove("stop_after");
        }
        if saved != config_json(cfg)? {
            bail!(
                "run folder '{}' holds a run with other settings than this experiment's (compare \
                 the train_config in its state.safetensors): pass another --out, or delete the \
                 folder to train the run again",
                dir.display()
            );
        }
    }
    eprintln!(
        "{}: {} ({} steps)",
        run_name(&cfg.loss),
        if resume { "resuming" } else { "training" },
        cfg.steps
    );
    let t0 = std::time::Instant::now();
    let summary = train::train(be, data, cfg, &dir, resume, progress)?;
    if summary.interrupted || summary.step < cfg.steps {
        return Ok(None);
    }
    // Training time of this session only; a resumed run adds to what eval.json recorded.
    let train_seconds = t0.elapsed().as_secs_f64();

    let (mcfg, vocab, params) = load_model_file(&model_path(&dir))?;
    let model = eval::inference_model(be, mcfg, &params, cfg.batch_size)?;
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
    let tables = [
        ("", Some(model.params.wte)),
        ("lm_head ", model.params.lm_head),
    ];
    for (prefix, buf) in tables {
        let Some(buf) = buf else { continue };
        let w = be.read_now(buf)?;
        iso.push((format!("{prefix}base"), isotropy(&w[..v * c], v, c)));
        if model.cfg.vocab_size == 2 * v {
            iso.push((format!("{prefix}shifted"), isotropy(&w[v * c..], v, c)));
        }
    }
    let ev = RunEval {
        name: run_name(&cfg.loss),
        loss: cfg.loss.to_string(),
        steps: cfg.steps,
        config: config_json(cfg)?,
        languages,
        isotropy: iso,
        train_seconds,
    };
    let json = serde_json::to_string_pretty(&ev)?;
    crate::fsio::write_atomic(&dir.join("eval.json"), json.as_bytes())?;
    Ok(Some(ev))
}

/// Runs every loss in `losses` on `base` (which fixes everything else), then writes the
/// report. Returns the evaluations in run order, or `None` when a run stopped early (Ctrl-C
/// or `stop_after`; its checkpoint is saved, and running the experiment again continues it).
pub fn run(
    be: &mut dyn Backend,
    data: &Dataset,
    base: &TrainConfig,
    losses: &[Loss],
    out: &Path,
    command: &str,
    progress: bool,
) -> Result<Option<Vec<RunEval>>> {
    if losses.is_empty() {
        bail!("no runs to make: give at least one loss");
    }
    let mut names: Vec<String> = losses.iter().map(run_name).collect();
    names.sort();
    names.dedup();
    if names.len() != losses.len() {
        bail!("the same loss is listed twice: list each loss once");
    }
    for l in losses {
        l.check_data(data, base.model.vocab_size)?;
    }
    fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder '{}'", out.display()))?;
    let mut evals = Vec::new();
    for loss in losses {
        let cfg = TrainConfig {
            loss: loss.clone(),
            ..base.clone()
        };
        match run_one(be, data, &cfg, out, progress)? {
            Some(ev) => evals.push(ev),
            None => return Ok(None),
        }
    }
    crate::report::write(out, &evals, base, command, &be.name())?;
    Ok(Some(evals))
}
