//! The page as the training loop's [`Host`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use anyhow::Result;
use serde::Serialize;
use wasm_bindgen::JsValue;

use super::{export_bytes, json, Record};
use crate::analysis::Roles;
use crate::checkpoint::Checkpoint;
use crate::plot::{self, Mark, Panel, Series};
use crate::runlog::LogLine;
use crate::tensorfile::{self, TensorFile};
use crate::train::{Host, Trainer};

/// The last checkpoint, as the bytes the downloads offer.
#[derive(Default)]
pub struct Saved {
    pub step: Option<u64>,
    pub model: Option<Vec<u8>>,
    pub state: Option<Vec<u8>>,
    /// The export of the step with the lowest mixed validation loss so far.
    pub best: Option<Vec<u8>>,
}

impl Saved {
    /// An uploaded state is the first checkpoint of the run it continues.
    pub fn of_state(st: Option<&TensorFile>) -> Result<Saved> {
        let Some(st) = st else {
            return Ok(Saved::default());
        };
        Ok(Saved {
            step: Some(st.meta_usize("step")? as u64),
            model: Some(export_bytes(st)?),
            state: Some(tensorfile::to_bytes(st)?),
            best: None,
        })
    }
}

/// Seconds between redraws of the live chart (drawing measures every label in the DOM).
const CHART_EVERY_S: f64 = 0.5;

pub struct Page {
    on_event: js_sys::Function,
    record: Rc<RefCell<Record>>,
    saved: Rc<RefCell<Saved>>,
    stop: Rc<Cell<bool>>,
    loss: String,
    end: u64,
    /// When and at which step this session's first step began, for the ETA.
    started: Option<(f64, u64)>,
    charted: f64,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Event<'a> {
    Progress {
        step: u64,
        end: u64,
        eta_s: Option<f64>,
    },
    Log {
        line: &'a LogLine,
    },
    Say {
        text: &'a str,
    },
    Chart {
        svg: &'a str,
    },
    Saved {
        step: u64,
    },
}

impl Page {
    pub fn new(
        on_event: js_sys::Function,
        t: &Trainer,
        record: Rc<RefCell<Record>>,
        saved: Rc<RefCell<Saved>>,
        stop: Rc<Cell<bool>>,
    ) -> Page {
        stop.set(false);
        Page {
            on_event,
            record,
            saved,
            stop,
            loss: t.cfg.loss.to_string(),
            end: t.cfg.end(),
            started: None,
            charted: f64::NEG_INFINITY,
        }
    }

    /// Seconds on the page's monotonic clock.
    pub fn clock(&self) -> f64 {
        let ms = web_sys::window()
            .and_then(|w| w.performance())
            .map_or_else(js_sys::Date::now, |p| p.now());
        ms / 1000.0
    }

    fn send(&self, e: &Event) {
        let _ = self
            .on_event
            .call1(&JsValue::NULL, &JsValue::from_str(&json(e)));
    }

    /// Redraws the live chart: the training loss, and the validation loss per language.
    pub fn chart(&mut self) {
        self.charted = self.clock();
        let r = self.record.borrow();
        let train = Series {
            name: String::new(),
            points: r
                .log
                .iter()
                .map(|l| (l.step as f64, l.loss as f64))
                .collect(),
            mark: Mark::Line,
            color: 0,
            band: None,
        };
        let mut val: Vec<Series> = Vec::new();
        for l in &r.log {
            for (i, (lang, v)) in l.val_loss.iter().flatten().enumerate() {
                if val.len() <= i {
                    val.push(Series {
                        name: lang.clone(),
                        points: Vec::new(),
                        mark: Mark::Line,
                        color: i + 1,
                        band: None,
                    });
                }
                val[i].points.push((l.step as f64, *v as f64));
            }
        }
        let panel = |title: String, series: Vec<Series>| Panel {
            title,
            x_label: "step".into(),
            y_label: "loss (nats)".into(),
            series,
            ..Default::default()
        };
        let panels = [
            panel(format!("training loss ({})", self.loss), vec![train]),
            panel("validation loss (plain cross-entropy)".into(), val),
        ];
        drop(r);
        match plot::svg("", 2, &panels) {
            Ok(svg) => self.send(&Event::Chart { svg: &svg }),
            Err(e) => self.say(&format!("the chart could not be drawn: {e:#}")),
        }
    }
}

impl Host for Page {
    fn now(&self) -> f64 {
        self.clock()
    }
    fn stop_requested(&self) -> bool {
        self.stop.get()
    }
    fn log(&mut self, line: &LogLine) -> Result<()> {
        self.send(&Event::Log { line });
        self.record.borrow_mut().log.push(line.clone());
        if line.val_loss.is_some() || self.clock() - self.charted >= CHART_EVERY_S {
            self.chart();
        }
        Ok(())
    }
    fn log_roles(&mut self, _step: u64, _roles: &Roles) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, c: &Checkpoint) -> Result<()> {
        let state = tensorfile::to_bytes(&c.state)?;
        let model = tensorfile::to_bytes(&c.model)?;
        let mut saved = self.saved.borrow_mut();
        saved.step = Some(c.step);
        saved.model = Some(model);
        saved.state = Some(state);
        drop(saved);
        self.send(&Event::Saved { step: c.step });
        Ok(())
    }
    fn save_best(&mut self, model: &TensorFile) -> Result<()> {
        self.saved.borrow_mut().best = Some(tensorfile::to_bytes(model)?);
        Ok(())
    }
    fn say(&mut self, text: &str) {
        self.send(&Event::Say { text });
    }
    fn progress(&mut self, step: u64, _figures: Option<&str>) {
        let now = self.clock();
        let (t0, s0) = *self.started.get_or_insert((now, step.saturating_sub(1)));
        let eta_s = (step > s0 && now > t0)
            .then(|| (now - t0) / (step - s0) as f64 * self.end.saturating_sub(step) as f64);
        self.send(&Event::Progress {
            step,
            end: self.end,
            eta_s,
        });
    }
    fn kept(&self, saved: Option<u64>) -> String {
        match saved.or(self.saved.borrow().step) {
            Some(s) => format!(
                "the checkpoint of step {s} is kept: download state.safetensors to continue it"
            ),
            None => "no checkpoint had been saved yet".into(),
        }
    }
}
