//! Evaluation and sampling on any backend: per-language metrics over every validation
//! window (with the temperature sweep), the quick validation loss training logs, and text
//! generation.

use anyhow::{bail, Result};

use crate::analysis::FreqGroups;
use crate::data::{eval_windows, Dataset};
use crate::loss::Loss;
use crate::metrics::{sample_token, LangMetrics, MetricsAcc};
use crate::model::{Gpt, GptConfig, OptConfig, Params};
use crate::rng::Rng;
use crate::runtime::Backend;

/// The languages of a model on a dataset: (name, validation tokens); `shifted` only when
/// the model has the second alphabet.
pub fn languages(data: &Dataset, model_vocab: usize) -> Vec<(String, Vec<u32>)> {
    let mut v = vec![("base".to_string(), data.val.clone())];
    if model_vocab == 2 * data.vocab.len() {
        v.push(("shifted".to_string(), data.val_shifted()));
    }
    v
}

/// Per-token sums of the plain loss, by frequency group, over the windows scored.
pub struct GroupSums<'a> {
    pub groups: &'a FreqGroups,
    pub sums: Vec<f64>,
    pub counts: Vec<usize>,
}

impl<'a> GroupSums<'a> {
    pub fn new(groups: &'a FreqGroups) -> GroupSums<'a> {
        let n = groups.names.len();
        GroupSums {
            groups,
            sums: vec![0.0; n],
            counts: vec![0; n],
        }
    }

    /// Mean loss per group; `None` for a group no target fell in.
    pub fn means(&self) -> Vec<Option<f64>> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(&s, &k)| (k > 0).then(|| s / k as f64))
            .collect()
    }
}

/// Mean plain cross-entropy over the first `batches` full batches of `tokens`' validation
/// windows; with `groups`, also the per-position losses summed by frequency group.
pub async fn val_loss(
    model: &Gpt,
    be: &mut dyn Backend,
    tokens: &[u32],
    batches: usize,
    mut groups: Option<&mut GroupSums<'_>>,
) -> Result<f32> {
    let windows: Vec<_> = eval_windows(tokens, model.cfg.block_size).collect();
    let (mut total, mut n) = (0.0f64, 0usize);
    for chunk in windows.chunks(model.batch).take(batches.max(1)) {
        if chunk.len() < model.batch {
            break;
        }
        let x: Vec<u32> = chunk.iter().flat_map(|w| w.0.iter().copied()).collect();
        let y: Vec<u32> = chunk.iter().flat_map(|w| w.1.iter().copied()).collect();
        model.set_batch(be, &x, &y);
        be.run(&[model.forward, model.eval_loss])?;
        total += be.read_f32(model.acts.plain_loss).await?[0] as f64;
        n += 1;
        if let Some(g) = groups.as_deref_mut() {
            let per_position = be.read_f32(model.acts.plain_losses).await?;
            for (&l, &target) in per_position.iter().zip(&y) {
                let k = g.groups.group_of[target as usize];
                g.sums[k] += l as f64;
                g.counts[k] += 1;
            }
        }
    }
    Ok(if n == 0 {
        f32::NAN
    } else {
        (total / n as f64) as f32
    })
}

/// Metrics of one language over all of its validation windows, and perplexity at every
/// temperature of the sweep.
pub async fn evaluate_language(
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
        let logits = be.read_f32(model.acts.logits).await?;
        acc.add(&logits[..real * model.cfg.vocab_size], &y[..real]);
    }
    Ok((acc.finish(), acc.ppl_by_temperature()))
}

/// Every language's metrics: `(name, metrics, perplexity by temperature)`.
pub async fn evaluate(
    model: &Gpt,
    be: &mut dyn Backend,
    data: &Dataset,
) -> Result<Vec<(String, LangMetrics, Vec<(f64, f64)>)>> {
    let mut out = Vec::new();
    for (name, tokens) in languages(data, model.cfg.vocab_size) {
        let (m, curve) = evaluate_language(model, be, &tokens).await?;
        out.push((name, m, curve));
    }
    Ok(out)
}

/// A forward-only model with these parameters.
pub fn inference_model(
    be: &mut dyn Backend,
    cfg: GptConfig,
    params: &Params<Vec<f32>>,
    batch: usize,
) -> Result<Gpt> {
    let model = Gpt::new(be, cfg, batch, &Loss::plain(), OptConfig::default())?;
    model.set_params(be, params)?;
    Ok(model)
}

/// Generates `n` tokens after `prompt` (ids), one forward pass per token.
pub async fn sample(
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
        let logits = be.read_f32(model.acts.logits).await?;
        let pos = ctx.len() - 1;
        let next = sample_token(&logits[pos * v..(pos + 1) * v], temperature, rng) as u32;
        ids.push(next);
        out.push(next);
    }
    Ok(out)
}

/// `eval` on a checkpoint file: every language's metrics on the text at `data`, which must
/// have the checkpoint's alphabet; and which checkpoint it was (its step, and whether it is
/// the best-validation one).
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_checkpoint(
    be: &mut dyn Backend,
    checkpoint: &std::path::Path,
    data: &std::path::Path,
    batch: usize,
) -> Result<(Vec<(String, LangMetrics)>, String)> {
    let file = crate::tensorfile::load(checkpoint)?;
    let (cfg, vocab, params) = crate::checkpoint::model_parts(&file)?;
    let mut which = format!("checkpoint '{}'", checkpoint.display());
    if let Ok(step) = file.meta_usize("step") {
        which.push_str(&format!(", step {step}"));
    }
    if let Ok(v) = file.meta_f64("val_mixed") {
        which.push_str(&format!(
            ", the best-validation step (validation loss {v:.4} on batches mixed like training)"
        ));
    }
    let model = inference_model(be, cfg, &params, batch)?;
    let text = crate::data::load_text(data)?;
    let text_vocab = crate::data::Vocab::from_text(&text)?;
    if text_vocab != vocab {
        bail!(
            "the alphabet of '{}' ({} characters) differs from the checkpoint's ({} characters): evaluate on the text the model was trained on",
            data.display(),
            text_vocab.len(),
            vocab.len()
        );
    }
    let dataset = Dataset::with_vocab(vocab, &text, 0.0)?;
    let all = pollster::block_on(evaluate(&model, be, &dataset))?;
    Ok((all.into_iter().map(|(n, m, _)| (n, m)).collect(), which))
}

/// How `sample` generates.
pub struct SampleArgs<'a> {
    pub tokens: usize,
    /// 0 or less: the most likely character each time.
    pub temperature: f32,
    pub seed: u64,
    /// `base` or `shifted` (the low-resource alphabet).
    pub alphabet: &'a str,
}

/// The prompt's ids in the alphabet asked for.
pub fn prompt_ids(
    cfg: &GptConfig,
    vocab: &crate::data::Vocab,
    prompt: &str,
    alphabet: &str,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("--prompt is empty: give at least one character");
    }
    let shift = match alphabet {
        "base" => 0,
        "shifted" if cfg.vocab_size == 2 * vocab.len() => vocab.len() as u32,
        "shifted" => bail!("this model has no shifted alphabet (it was trained with --low-resource-prob 0): use --alphabet base"),
        other => bail!("unknown alphabet '{other}': use base or shifted"),
    };
    Ok(vocab.encode(prompt)?.iter().map(|&i| i + shift).collect())
}

/// `sample` on a checkpoint file: the text generated after `prompt`.
#[cfg(not(target_arch = "wasm32"))]
pub fn sample_checkpoint(
    be: &mut dyn Backend,
    checkpoint: &std::path::Path,
    prompt: &str,
    a: &SampleArgs,
) -> Result<String> {
    let (cfg, vocab, params) = crate::checkpoint::load_model_file(checkpoint)?;
    let model = inference_model(be, cfg, &params, 1)?;
    let ids = prompt_ids(&cfg, &vocab, prompt, a.alphabet)?;
    let mut rng = Rng::new(a.seed);
    let out = pollster::block_on(sample(&model, be, &ids, a.tokens, a.temperature, &mut rng))?;
    Ok(vocab.decode(&out))
}
