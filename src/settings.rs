//! A training run's settings, shared by the command line (as flags) and the page (as form
//! fields named like the flags): one set of defaults and one set of parsers, so a page run
//! and `selfish train` with the same values train the same model.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::args;
use crate::data::Dataset;
use crate::loss::{self, Loss};
use crate::model::{GptConfig, Preset, PRESETS};
use crate::tensorfile::TensorFile;
use crate::train::TrainConfig;

/// The schedule, data mix, seed and logging of a run (every flag of `train` that is neither
/// the model, the loss nor a path).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
pub struct RunSettings {
    /// Training steps (the schedule's length).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.steps, value_parser = args::steps))]
    pub steps: u64,
    /// Peak learning rate, reached after --warmup steps.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.lr))]
    pub lr: f32,
    /// Learning rate at the last step (cosine decay).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.min_lr))]
    pub min_lr: f32,
    /// Linear warm-up steps.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.warmup, value_parser = args::steps))]
    pub warmup: u64,
    /// Share of training sequences written in the shifted (low-resource) alphabet; 0 for one language.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.low_resource_prob))]
    pub low_resource_prob: f64,
    /// Seed of the initial weights and of the batches.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.seed))]
    pub seed: u64,
    /// Steps between validation losses and checkpoints (0: only at the end).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.eval_interval, value_parser = args::steps))]
    pub eval_interval: u64,
    /// Validation batches per language at each eval.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.eval_batches, value_parser = args::count))]
    pub eval_batches: usize,
    /// Steps between logged (and NaN-checked) training losses.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = DEFAULTS.log_interval, value_parser = args::steps))]
    pub log_interval: u64,
}

/// `selfish train`'s defaults.
pub const DEFAULTS: RunSettings = RunSettings {
    steps: 8000,
    lr: 1e-3,
    min_lr: 1e-4,
    warmup: 100,
    low_resource_prob: 0.02,
    seed: 1337,
    eval_interval: 500,
    eval_batches: 20,
    log_interval: 50,
};

impl Default for RunSettings {
    fn default() -> Self {
        DEFAULTS
    }
}

impl RunSettings {
    /// The field behind `--flag`, parsed as the flag is.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<()> {
        fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
            s.trim()
                .parse()
                .map_err(|_| "expected a number".to_string())
        }
        let r = match flag {
            "steps" => args::steps(value).map(|v| self.steps = v),
            "lr" => num(value).map(|v| self.lr = v),
            "min-lr" => num(value).map(|v| self.min_lr = v),
            "warmup" => args::steps(value).map(|v| self.warmup = v),
            "low-resource-prob" => num(value).map(|v| self.low_resource_prob = v),
            "seed" => value
                .trim()
                .parse()
                .map(|v| self.seed = v)
                .map_err(|_| "expected a whole number (0 or more)".to_string()),
            "eval-interval" => args::steps(value).map(|v| self.eval_interval = v),
            "eval-batches" => args::count(value).map(|v| self.eval_batches = v),
            "log-interval" => args::steps(value).map(|v| self.log_interval = v),
            other => bail!("unknown setting '{other}'"),
        };
        r.map_err(|why| anyhow!("invalid value '{value}' for --{flag}: {why}"))
    }

    /// The run of a model (and its batch size) with a loss, checked.
    pub fn train_config(
        &self,
        model: GptConfig,
        batch_size: usize,
        loss: Loss,
        analysis: bool,
    ) -> Result<TrainConfig> {
        let tc = TrainConfig {
            model,
            batch_size,
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            loss,
            low_resource_prob: self.low_resource_prob,
            seed: self.seed,
            eval_interval: self.eval_interval,
            eval_batches: self.eval_batches,
            log_interval: self.log_interval,
            stop_after: None,
            analysis,
        };
        tc.validate()?;
        Ok(tc)
    }
}

/// `--margin`: a number >= 0, or `off`.
pub fn parse_margin(s: &str) -> Result<Option<f32>> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match loss::parse_margin(s) {
        Some(m) => Ok(Some(m)),
        None => bail!(
            "invalid margin '{s}': pass a finite number >= 0, or `off` for plain cross-entropy"
        ),
    }
}

/// The page's form: `train`'s flags by name (`config`, `loss`, `margin` and those of
/// [`RunSettings`]), every value checked by the command line's own parser.
#[derive(Clone, Debug)]
pub struct Form {
    pub preset: &'static Preset,
    pub loss: Loss,
    pub run: RunSettings,
}

impl Form {
    /// Parses `(flag, value)` pairs over the defaults; the first bad value is the error.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Form> {
        let (mut preset, mut loss, mut margin) = (Preset::find("paper")?, "plain", "off");
        let mut run = DEFAULTS;
        for (flag, value) in pairs {
            match flag {
                "config" => preset = Preset::find(value.trim())?,
                "loss" => loss = value,
                "margin" => margin = value,
                _ => run.set(flag, value)?,
            }
        }
        let loss = Loss::parse(loss.trim())?.with_margin(parse_margin(margin)?)?;
        Ok(Form { preset, loss, run })
    }

    /// The form of the run a state file continues: its own settings, so that a resume from
    /// the page carries on exactly as `train --resume` would.
    pub fn of_state(st: &TensorFile) -> Result<Vec<(String, String)>> {
        let damaged = || {
            anyhow!(
                "{} holds no readable run settings: it is not a state.safetensors of selfish; pick the state file of a run",
                st.label()
            )
        };
        let saved = crate::checkpoint::saved_config(st).ok_or_else(damaged)?;
        let model: GptConfig =
            serde_json::from_value(saved["model"].clone()).map_err(|_| damaged())?;
        let batch = saved["batch_size"].as_u64().ok_or_else(damaged)? as usize;
        let preset = PRESETS
            .iter()
            .find(|p| p.config(model.vocab_size) == model && p.batch_size == batch)
            .ok_or_else(|| {
                anyhow!(
                    "{} was trained with a model of no preset ({} layers, {} heads, width {}, block {}, batch {batch}): continue it with `selfish train --resume`",
                    st.label(),
                    model.n_layer,
                    model.n_head,
                    model.n_embd,
                    model.block_size
                )
            })?;
        let mut pairs = vec![
            ("config".to_string(), preset.name.to_string()),
            ("margin".into(), "off".into()),
        ];
        let run = serde_json::to_value(DEFAULTS)?;
        for key in ["loss"].into_iter().chain(
            run.as_object()
                .into_iter()
                .flat_map(|m| m.keys().map(|k| k.as_str())),
        ) {
            let value = match &saved[key] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return Err(damaged()),
            };
            pairs.push((key.replace('_', "-"), value));
        }
        Ok(pairs)
    }

    /// The dataset of `text` with this run's language mix, and the run's configuration.
    pub fn train_config(&self, text: &str) -> Result<(Dataset, TrainConfig)> {
        let data = Dataset::from_text(text, self.run.low_resource_prob)?;
        let model = self.preset.config(data.model_vocab());
        let tc = self
            .run
            .train_config(model, self.preset.batch_size, self.loss.clone(), false)?;
        crate::checkpoint::check_run(&data, &tc)?;
        Ok((data, tc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_parse_like_the_flags() {
        let f = Form::parse([
            ("config", "tiny"),
            ("loss", "hard:8"),
            ("margin", "1"),
            ("steps", "30"),
            ("seed", "7"),
            ("lr", "2e-3"),
            ("log-interval", "1"),
        ])
        .unwrap();
        assert_eq!(f.preset.name, "tiny");
        assert_eq!(f.loss.to_string(), "hard:8+margin:1");
        assert_eq!((f.run.steps, f.run.seed, f.run.lr), (30, 7, 2e-3));
        assert_eq!(f.run.log_interval, 1);
        assert_eq!(f.run.warmup, DEFAULTS.warmup);

        for (pairs, want) in [
            (vec![("steps", "-1")], "invalid value '-1' for --steps"),
            (vec![("config", "huge")], "unknown config 'huge'"),
            (vec![("margin", "x")], "invalid margin 'x'"),
            (vec![("loss", "nope")], "nope"),
            (vec![("eval-batches", "0")], "--eval-batches"),
            (vec![("colour", "red")], "unknown setting 'colour'"),
        ] {
            let e = format!("{:#}", Form::parse(pairs).unwrap_err());
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
        let f = Form::parse([("steps", "0")]).unwrap();
        let e = format!("{:#}", f.train_config("abcabcabc").unwrap_err());
        assert!(e.contains("--steps must be at least 1"), "{e}");
    }
}
