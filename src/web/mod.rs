//! The page's entry points (wasm32 only). Training is [`crate::train::run`] on the browser's
//! WebGPU through the same kernels as the command line; [`Page`] is its [`Host`]: the clock
//! is the page's, checkpoints stay in memory as safetensors bytes for the downloads, and
//! progress, log lines and the live chart go to one JavaScript callback. The JavaScript in
//! `web/` only draws what it is given, reads files and offers downloads.
//!
//! Everything a task needs is moved into its future while it runs (a training run, an
//! evaluation, a sample), so the page can still stop it, or download the last checkpoint.

mod host;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use anyhow::{anyhow, Result};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::checkpoint;
use crate::data::{self, Dataset};
use crate::eval;
use crate::fixture::{self, Fixture};
use crate::gpu::Gpu;
use crate::loss;
use crate::metrics::LangMetrics;
use crate::model::PRESETS;
use crate::rng::Rng;
use crate::runlog::LogLine;
use crate::runtime::{Backend, GpuBackend};
use crate::settings::{Form, DEFAULTS};
use crate::tensorfile::{self, TensorFile};
use crate::train::{self, TrainConfig, Trainer};
use host::{Page, Saved};

/// An error as the one line the page shows.
fn line(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}").replace('\n', " "))
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[wasm_bindgen(start)]
fn start() {
    // A panic would otherwise only say "unreachable executed".
    std::panic::set_hook(Box::new(|p| {
        web_sys::console::error_1(&p.to_string().into())
    }));
}

/// The model presets as `[{name, about}]`, for the settings.
#[wasm_bindgen]
pub fn presets() -> String {
    let list: Vec<_> = PRESETS
        .iter()
        .map(|p| serde_json::json!({ "name": p.name, "about": p.about }))
        .collect();
    json(&list)
}

/// Every `--loss` spelling, as `train --help` lists them.
#[wasm_bindgen]
pub fn loss_help() -> String {
    loss::help()
}

/// `train`'s defaults by flag name.
#[wasm_bindgen]
pub fn defaults() -> String {
    let mut m = serde_json::Map::new();
    m.insert("config".into(), "paper".into());
    m.insert("loss".into(), "plain".into());
    m.insert("margin".into(), "off".into());
    // Through JSON text, so that 1e-3 reads 0.001 (f32's shortest form), not f64's.
    let run = serde_json::to_string(&DEFAULTS).and_then(|t| serde_json::from_str(&t));
    if let Ok(serde_json::Value::Object(run)) = run {
        for (k, v) in run {
            m.insert(k.replace('_', "-"), v.to_string().into());
        }
    }
    json(&m)
}

/// The form's `{flag: value}` pairs.
fn form(settings: &str) -> Result<Form> {
    let pairs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(settings)
        .map_err(|e| anyhow!("the settings are not a JSON object of strings: {e}"))?;
    let mut text = Vec::new();
    for (k, v) in &pairs {
        match v {
            serde_json::Value::String(s) => text.push((k.as_str(), s.as_str())),
            other => text.push((k.as_str(), other.as_str().unwrap_or_default())),
        }
    }
    Form::parse(text)
}

/// Checks the settings as `train` would; the answer is the loss's canonical spelling.
#[wasm_bindgen]
pub fn check_settings(settings: &str) -> Result<String, JsError> {
    form(settings).map(|f| f.loss.to_string()).map_err(line)
}

/// The settings of the run a state file continues, as `{flag: value}`.
#[wasm_bindgen]
pub fn state_settings(state: &[u8], name: &str) -> Result<String, JsError> {
    let st = tensorfile::parse(state, name).map_err(line)?;
    let pairs = Form::of_state(&st).map_err(line)?;
    let m: serde_json::Map<String, serde_json::Value> =
        pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
    Ok(json(&m))
}

/// The text of a file's bytes, checked as `--data` is.
#[wasm_bindgen]
pub fn text_of(bytes: Vec<u8>, name: &str) -> Result<String, JsError> {
    data::decode_text(bytes, name).map_err(line)
}

async fn open_gpu() -> Result<GpuBackend> {
    let gpu = Gpu::request(wgpu::Backends::BROWSER_WEBGPU).await?;
    let target = gpu.target();
    Ok(GpuBackend::new(gpu, target))
}

/// The gpt-tiny fixture (its two files' bytes) on this browser's GPU: `{adapter, rows}`.
#[wasm_bindgen]
pub async fn check_fixture(init: Vec<u8>, expected: Vec<u8>) -> Result<String, JsError> {
    let init = tensorfile::parse(&init, "init.safetensors").map_err(line)?;
    let expected = tensorfile::parse(&expected, "expected.safetensors").map_err(line)?;
    let fx = Fixture::from_files(&init, expected).map_err(line)?;
    let mut be = open_gpu().await.map_err(line)?;
    let rows = fixture::check(&mut be, &fx).await.map_err(line)?;
    Ok(json(
        &serde_json::json!({ "adapter": be.name(), "rows": rows }),
    ))
}

/// What the page shows and scripts read at the end: the settings, the adapter, every
/// logged line and the final evaluation.
#[derive(Serialize)]
struct Record {
    settings: serde_json::Value,
    train_config: TrainConfig,
    adapter: String,
    parameters: usize,
    /// The step the session started from (0, or the uploaded state's).
    start_step: u64,
    log: Vec<LogLine>,
    /// Steps completed.
    step: u64,
    interrupted: bool,
    tokens_per_s: f64,
    seconds: f64,
    error: Option<String>,
    evaluation: Vec<Evaluated>,
}

#[derive(Serialize)]
struct Evaluated {
    language: String,
    #[serde(flatten)]
    metrics: LangMetrics,
}

/// The model, its backend and its data, owned by whichever task runs.
struct Work {
    be: GpuBackend,
    data: Dataset,
    trainer: Trainer,
}

/// One run of the page: trains, evaluates and samples, keeping the last checkpoint.
#[wasm_bindgen]
pub struct Session {
    work: Rc<RefCell<Option<Work>>>,
    record: Rc<RefCell<Record>>,
    saved: Rc<RefCell<Saved>>,
    stop: Rc<Cell<bool>>,
    device: wgpu::Device,
}

/// Opens the GPU and builds the run of `settings` on `text`, continuing `state` when given.
#[wasm_bindgen]
pub async fn open_session(
    settings: String,
    text: String,
    state: Option<Vec<u8>>,
    state_name: String,
) -> Result<Session, JsError> {
    let f = form(&settings).map_err(line)?;
    let (data, cfg) = f.train_config(&text).map_err(line)?;
    let state = state
        .map(|b| tensorfile::parse(&b, &state_name))
        .transpose()
        .map_err(line)?;
    if let Some(st) = &state {
        checkpoint::check_resumable(st, &data, &cfg, &state_name).map_err(line)?;
    }
    let mut be = open_gpu().await.map_err(line)?;
    let trainer = match &state {
        Some(st) => Trainer::resume(&mut be, &data, &cfg, st),
        None => Trainer::new(&mut be, &data, &cfg),
    }
    .map_err(line)?;
    let record = Record {
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        train_config: cfg.clone(),
        adapter: be.name(),
        parameters: cfg.model.num_params(),
        start_step: trainer.step,
        log: Vec::new(),
        step: trainer.step,
        interrupted: false,
        tokens_per_s: 0.0,
        seconds: 0.0,
        error: None,
        evaluation: Vec::new(),
    };
    let saved = Saved::of_state(state.as_ref()).map_err(line)?;
    Ok(Session {
        device: be.gpu().device.clone(),
        work: Rc::new(RefCell::new(Some(Work { be, data, trainer }))),
        record: Rc::new(RefCell::new(record)),
        saved: Rc::new(RefCell::new(saved)),
        stop: Rc::new(Cell::new(false)),
    })
}

impl Session {
    /// Runs `task` with the work moved into it, and puts the work back afterwards.
    fn task<F, T>(&self, task: F) -> js_sys::Promise
    where
        F: for<'a> FnOnce(
                &'a mut Work,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + 'a>>
            + 'static,
        T: Into<JsValue>,
    {
        let slot = self.work.clone();
        future_to_promise(async move {
            let mut w = slot.borrow_mut().take().ok_or_else(|| {
                JsValue::from(line(anyhow!(
                    "the session is busy (training, evaluating or sampling): wait for it to end"
                )))
            })?;
            let out = task(&mut w).await;
            *slot.borrow_mut() = Some(w);
            out.map(Into::into).map_err(|e| line(e).into())
        })
    }
}

#[wasm_bindgen]
impl Session {
    /// Trains to the end of the schedule or until [`Session::stop`]; `on_event` gets each
    /// progress step, log line, milestone and chart as JSON. Resolves to the summary line.
    pub fn train(&self, on_event: js_sys::Function) -> js_sys::Promise {
        let (record, saved, stop) = (self.record.clone(), self.saved.clone(), self.stop.clone());
        self.task(move |w| {
            Box::pin(async move {
                let mut page = Page::new(on_event, &w.trainer, record.clone(), saved, stop);
                let t0 = page.clock();
                let out = train::run(&mut w.be, &w.data, &mut w.trainer, &mut page).await;
                page.chart();
                let mut r = record.borrow_mut();
                r.seconds += page.clock() - t0;
                r.step = w.trainer.step;
                match out {
                    Ok(s) => {
                        r.interrupted = s.interrupted;
                        r.tokens_per_s = s.tokens_per_s;
                        Ok(if s.interrupted {
                            format!("stopped at step {} of {}", s.step, w.trainer.cfg.steps)
                        } else {
                            format!("trained {} steps", s.step)
                        })
                    }
                    Err(e) => {
                        r.error = Some(format!("{e:#}"));
                        Err(e)
                    }
                }
            })
        })
    }

    /// Finishes the current step, saves a checkpoint and ends [`Session::train`].
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// Every language's metrics over its whole validation split, as JSON rows.
    pub fn evaluate(&self) -> js_sys::Promise {
        let record = self.record.clone();
        self.task(move |w| {
            Box::pin(async move {
                let all = eval::evaluate(&w.trainer.model, &mut w.be, &w.data).await?;
                let rows: Vec<Evaluated> = all
                    .into_iter()
                    .map(|(language, metrics, _)| Evaluated { language, metrics })
                    .collect();
                let out = json(&rows);
                record.borrow_mut().evaluation = rows;
                Ok(out)
            })
        })
    }

    /// Text generated after `prompt`, as `selfish sample` generates it.
    pub fn sample(
        &self,
        prompt: String,
        tokens: usize,
        temperature: f32,
        alphabet: String,
        seed: f64,
    ) -> js_sys::Promise {
        self.task(move |w| {
            Box::pin(async move {
                let model = &w.trainer.model;
                let ids = eval::prompt_ids(&model.cfg, &w.data.vocab, &prompt, &alphabet)?;
                let mut rng = Rng::new(seed as u64);
                let out = eval::sample(model, &mut w.be, &ids, tokens, temperature, &mut rng);
                Ok(w.data.vocab.decode(&out.await?))
            })
        })
    }

    /// The run so far as JSON (see `Record`).
    pub fn result(&self) -> String {
        json(&*self.record.borrow())
    }

    /// The last checkpoint's `model.safetensors` (what `selfish eval` and PyTorch load).
    pub fn model_file(&self) -> Option<Vec<u8>> {
        self.saved.borrow().model.clone()
    }

    /// The last checkpoint's `state.safetensors` (what a resume continues).
    pub fn state_file(&self) -> Option<Vec<u8>> {
        self.saved.borrow().state.clone()
    }

    /// `best.safetensors`: the export of the best-validation step so far.
    pub fn best_file(&self) -> Option<Vec<u8>> {
        self.saved.borrow().best.clone()
    }

    /// The step of the last checkpoint.
    pub fn saved_step(&self) -> Option<f64> {
        self.saved.borrow().step.map(|s| s as f64)
    }

    /// Destroys the device, as a driver reset would (to test that a lost device keeps the
    /// last checkpoint).
    pub fn lose_device(&self) {
        self.device.destroy();
    }
}

/// The model export of an uploaded state, for a resumed run's downloads before its first
/// checkpoint.
fn export_bytes(st: &TensorFile) -> Result<Vec<u8>> {
    tensorfile::to_bytes(&checkpoint::export_of(st)?)
}
