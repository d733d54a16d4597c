//! `selfish check --fixture DIR`: the whole model against a PyTorch reference case (logits,
//! both losses, every gradient, AdamW steps), in the format of `shared/fixtures/README.md`.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::gpt_config;
use crate::compare::{diff, Row};
use crate::loss::Loss;
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
        let (xs, x) = expected.get_i32("x")?;
        let (ys, y) = expected.get_i32("y")?;
        if xs.len() != 2 || xs != ys {
            bail!(
                "fixture x {xs:?} and y {ys:?} must both be [batch, block]: regenerate the fixture"
            );
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
                            "fixture {name} holds id {i}, outside vocab_size {}: regenerate the fixture",
                            cfg.vocab_size
                        )
                    }
                    Ok(i as u32)
                })
                .collect()
        };
        Ok(Fixture {
            cfg,
            opt,
            lr: meta_f32(init, "lr")?,
            margin: meta_f32(init, "margin")?,
            params,
            batch: xs[0],
            x: ids(x, "x")?,
            y: ids(y, "y")?,
            expected,
        })
    }
}

/// Every quantity of the fixture folder `dir` on `be`, one row each.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_fixture(be: &mut dyn Backend, dir: &Path) -> Result<Vec<Row>> {
    pollster::block_on(check(be, &Fixture::load(dir)?))
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
