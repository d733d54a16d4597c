//! `selfish check --fixture DIR`: the whole model against a PyTorch reference case, in the
//! formats of `shared/fixtures/README.md`: `gpt-tiny` (logits, both losses, every gradient,
//! AdamW steps) and the loss cases of `losses/` (per step: the loss and every gradient under
//! the case's `--loss`, logit scale and head). A folder of such folders checks each.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::gpt_config;
use crate::compare::{diff, Row};
use crate::loss::{Loss, LossState};
use crate::model::{specs, Gpt, GptConfig, OptConfig, Params};
use crate::runtime::Backend;
use crate::tensorfile::TensorFile;

/// Relative-to-scale tolerances: f32 on both sides, different summation orders.
const TOL_LOGITS: f64 = 1e-4;
const TOL_GRAD: f64 = 2e-4;
const TOL_AFTER: f64 = 2e-4;

fn compare(quantity: &str, shape: &[usize], got: &[f32], want: &[f32], tol: f64) -> Row {
    Row::new(quantity, format!("{shape:?}"), diff(got, want), tol)
}

fn meta_f32(f: &TensorFile, key: &str) -> Result<f32> {
    Ok(f.meta_f64(key)? as f32)
}

/// Reads a fixture's configuration, parameters and batch.
pub struct Fixture {
    pub cfg: GptConfig,
    pub opt: OptConfig,
    pub lr: f32,
    pub margin: f32,
    pub params: Params<Vec<f32>>,
    pub batch: usize,
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub expected: TensorFile,
}

impl Fixture {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &Path) -> Result<Fixture> {
        if !dir.is_dir() {
            bail!(
                "fixture folder '{}' does not exist: pass a folder holding init.safetensors and expected.safetensors",
                dir.display()
            );
        }
        let init = crate::tensorfile::load(&dir.join("init.safetensors"))?;
        let expected = crate::tensorfile::load(&dir.join("expected.safetensors"))?;
        Fixture::from_files(&init, expected)
    }

    /// A fixture from its two files' contents.
    pub fn from_files(init: &TensorFile, expected: TensorFile) -> Result<Fixture> {
        let cfg = gpt_config(init)?;
        let opt = OptConfig {
            beta1: meta_f32(init, "beta1")?,
            beta2: meta_f32(init, "beta2")?,
            eps: meta_f32(init, "eps")?,
            weight_decay: meta_f32(init, "weight_decay")?,
            grad_clip: meta_f32(init, "grad_clip")?,
        };
        let params =
            specs(&cfg).try_map(|s| init.expect_f32(&s.name, &s.shape).map(|v| v.to_vec()))?;
        let (batch, x, y) = batch_ids(&expected, "", &cfg)?;
        Ok(Fixture {
            cfg,
            opt,
            lr: meta_f32(init, "lr")?,
            margin: meta_f32(init, "margin")?,
            params,
            batch,
            x,
            y,
            expected,
        })
    }
}

/// The batch `x{suffix}`, `y{suffix}` of a fixture: `(batch size, ids, targets)`, checked.
fn batch_ids(
    expected: &TensorFile,
    suffix: &str,
    cfg: &GptConfig,
) -> Result<(usize, Vec<u32>, Vec<u32>)> {
    let (xs, x) = expected.get_i32(&format!("x{suffix}"))?;
    let (ys, y) = expected.get_i32(&format!("y{suffix}"))?;
    if xs.len() != 2 || xs != ys {
        bail!("fixture x {xs:?} and y {ys:?} must both be [batch, block]: regenerate the fixture");
    }
    if xs[1] != cfg.block_size {
        bail!(
            "fixture batch has {} positions but block_size is {}: selfish trains on full blocks, regenerate with T = block_size",
            xs[1],
            cfg.block_size
        );
    }
    let ids = |v: &[i32], name: &str| -> Result<Vec<u32>> {
        v.iter()
            .map(|&i| {
                if i < 0 || i as usize >= cfg.vocab_size {
                    bail!(
                        "fixture {name}{suffix} holds id {i}, outside vocab_size {}: regenerate the fixture",
                        cfg.vocab_size
                    )
                }
                Ok(i as u32)
            })
            .collect()
    };
    Ok((xs[0], ids(x, "x")?, ids(y, "y")?))
}

/// A loss case (`shared/fixtures/losses/*`): the model, its loss and options, and the
/// batch of every step, with no update between steps.
pub struct LossFixture {
    pub cfg: GptConfig,
    pub loss: Loss,
    pub params: Params<Vec<f32>>,
    pub batch: usize,
    pub steps: Vec<(Vec<u32>, Vec<u32>)>,
    pub expected: TensorFile,
}

impl LossFixture {
    /// Whether `expected` is in this format (per-step batches) rather than `gpt-tiny`'s.
    pub fn is_one(expected: &TensorFile) -> bool {
        expected.get("x.step0").is_some()
    }

    pub fn from_files(init: &TensorFile, expected: TensorFile) -> Result<LossFixture> {
        let cfg = gpt_config(init)?;
        let params =
            specs(&cfg).try_map(|s| init.expect_f32(&s.name, &s.shape).map(|v| v.to_vec()))?;
        let mut loss = Loss::parse(init.meta("loss")?)?;
        if let Ok(s) = init.meta_f64("logit_scale") {
            loss = loss.with_logit_scale(Some(s as f32))?;
        }
        let mut steps = Vec::new();
        let mut batch = 0;
        for s in 0..init.meta_usize("steps")? {
            let (b, x, y) = batch_ids(&expected, &format!(".step{s}"), &cfg)?;
            batch = b;
            steps.push((x, y));
        }
        if steps.is_empty() {
            bail!(
                "fixture {} has no steps: regenerate the fixture",
                init.label()
            );
        }
        Ok(LossFixture {
            cfg,
            loss,
            params,
            batch,
            steps,
            expected,
        })
    }
}

/// Every quantity of the fixture folder `dir` on `be`, one row each; for a folder of
/// fixture folders, every case's rows, each named `case: quantity`.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_fixture(be: &mut dyn Backend, dir: &Path) -> Result<Vec<Row>> {
    if !dir.join("init.safetensors").exists() && dir.is_dir() {
        let mut cases: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.join("init.safetensors").exists())
            .collect();
        cases.sort();
        if !cases.is_empty() {
            let mut rows = Vec::new();
            for c in cases {
                let name = c
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                for mut r in check_fixture(be, &c)? {
                    r.op = format!("{name}: {}", r.op);
                    rows.push(r);
                }
            }
            return Ok(rows);
        }
    }
    let exp = dir.join("expected.safetensors");
    if exp.is_file() {
        let expected = crate::tensorfile::load(&exp)?;
        if LossFixture::is_one(&expected) {
            let init = crate::tensorfile::load(&dir.join("init.safetensors"))?;
            let fx = LossFixture::from_files(&init, expected)?;
            return pollster::block_on(check_loss(be, &fx));
        }
    }
    pollster::block_on(check(be, &Fixture::load(dir)?))
}

/// A loss case on `be`: per step, the training loss and every gradient, plus the per-step
/// tensors the case gives for debugging (AGG's gates, margins from norms).
pub async fn check_loss(be: &mut dyn Backend, fx: &LossFixture) -> Result<Vec<Row>> {
    let exp = &fx.expected;
    let mark = be.mark();
    let model = Gpt::new(be, fx.cfg, fx.batch, &fx.loss, OptConfig::default())?;
    model.set_params(be, &fx.params)?;
    let mut state = LossState::new(&model.loss_plan, fx.cfg.vocab_size);
    let mut rows = Vec::new();
    for (s, (x, y)) in fx.steps.iter().enumerate() {
        model.set_batch(be, x, y);
        state.before_step(&model.loss_bufs, be, y);
        be.run(&[model.forward, model.backward])?;
        let key = format!("loss.step{s}");
        let got = be.read_f32(model.acts.loss).await?;
        let want = exp.expect_f32(&key, &[1])?;
        rows.push(compare(&key, &[1], &got, want, TOL_LOGITS));
        let grads = model.read(be, &model.grads).await?;
        for (sp, got) in model.specs.iter().zip(grads.iter()) {
            let key = format!("grad.step{s}.{}", sp.name);
            let want = exp.expect_f32(&key, &sp.shape)?;
            rows.push(compare(&key, &sp.shape, got, want, TOL_GRAD));
        }
        let key = format!("margins.step{s}");
        if let (Some(_), Some(vals)) = (exp.get(&key), model.loss_bufs.row_vals) {
            let n = [fx.batch, fx.cfg.block_size];
            let want = exp.expect_f32(&key, &n)?;
            let got = be.read_f32(vals).await?;
            rows.push(compare(&key, &n, &got, want, TOL_LOGITS));
        }
        if let Some(w) = &state.agg {
            let g = w.gates();
            let rare: Vec<f32> = g.rare.iter().map(|&r| r as u8 as f32).collect();
            let v = [fx.cfg.vocab_size];
            for (name, got) in [
                ("rare", &rare),
                ("gate_common", &g.common),
                ("gate_rare", &g.rare_target),
            ] {
                let key = format!("{name}.step{s}");
                if exp.get(&key).is_some() {
                    rows.push(compare(
                        &key,
                        &v,
                        got,
                        exp.expect_f32(&key, &v)?,
                        TOL_LOGITS,
                    ));
                }
            }
        }
    }
    be.release(mark);
    Ok(rows)
}

/// Every quantity of a fixture on `be`, one row each: logits, both losses and every
/// gradient, then the AdamW steps with the margin loss.
pub async fn check(be: &mut dyn Backend, fx: &Fixture) -> Result<Vec<Row>> {
    let exp = &fx.expected;
    let mut rows = Vec::new();
    let (b, t, v) = (fx.batch, fx.cfg.block_size, fx.cfg.vocab_size);
    for (tag, margin) in [("plain", None), ("margin", Some(fx.margin))] {
        let loss = Loss::plain().with_margin(margin)?;
        let mark = be.mark();
        let model = Gpt::new(be, fx.cfg, fx.batch, &loss, fx.opt)?;
        model.set_params(be, &fx.params)?;
        model.set_batch(be, &fx.x, &fx.y);
        be.run(&[model.forward, model.backward])?;
        if margin.is_none() {
            let logits = be.read_f32(model.acts.logits).await?;
            let want = exp.expect_f32("logits", &[b, t, v])?;
            rows.push(compare("logits", &[b, t, v], &logits, want, TOL_LOGITS));
        }
        let key = format!("loss.{tag}");
        let got = be.read_f32(model.acts.loss).await?;
        rows.push(compare(
            &key,
            &[1],
            &got,
            exp.expect_f32(&key, &[1])?,
            TOL_LOGITS,
        ));
        let grads = model.read(be, &model.grads).await?;
        for (s, got) in model.specs.iter().zip(grads.iter()) {
            let key = format!("grad.{tag}.{}", s.name);
            let want = exp.expect_f32(&key, &s.shape)?;
            rows.push(compare(&key, &s.shape, got, want, TOL_GRAD));
        }
        if margin.is_some() {
            let (_, want_losses) = exp.get_f32("adamw.losses")?;
            let steps = want_losses.len();
            let (mut losses, mut norms) = (Vec::new(), Vec::new());
            for k in 0..steps {
                model.set_step(be, fx.lr, k as u64 + 1);
                be.run(&[model.forward, model.backward, model.optimize])?;
                losses.push(be.read_f32(model.acts.loss).await?[0]);
                norms.push(be.read_f32(model.acts.norm).await?[0]);
            }
            rows.push(compare(
                "adamw.losses",
                &[steps],
                &losses,
                want_losses,
                TOL_LOGITS,
            ));
            for (k, &n) in norms.iter().enumerate() {
                let key = format!("gradnorm.step{k}");
                rows.push(compare(
                    &key,
                    &[1],
                    &[n],
                    exp.expect_f32(&key, &[1])?,
                    TOL_GRAD,
                ));
            }
            let after = model.read(be, &model.params).await?;
            for (s, got) in model.specs.iter().zip(after.iter()) {
                let key = format!("after.{}", s.name);
                let want = exp.expect_f32(&key, &s.shape)?;
                rows.push(compare(&key, &s.shape, got, want, TOL_AFTER));
            }
        }
        be.release(mark);
    }
    Ok(rows)
}
