//! `selfish check --fixture DIR`: the whole model against a PyTorch reference case (logits,
//! both losses, every gradient, AdamW steps), in the format of `shared/fixtures/README.md`.

use std::path::Path;

use anyhow::{bail, Result};

use crate::check::Row;
use crate::checkpoint::{self, TensorFile};
use crate::loss::Loss;
use crate::model::{param_specs, Gpt, GptConfig, OptConfig};
use crate::runtime::Backend;

/// Relative-to-scale tolerances: f32 on both sides, different summation orders.
const TOL_LOGITS: f64 = 1e-4;
const TOL_GRAD: f64 = 2e-4;
const TOL_AFTER: f64 = 2e-4;

fn compare(quantity: &str, shape: &[usize], got: &[f32], want: &[f32], tol: f64) -> Row {
    let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64));
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    let mut finite = got.len() == want.len();
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            finite = false;
        }
        let d = (g as f64 - w as f64).abs();
        max_abs = max_abs.max(d);
        if (w.abs() as f64) > 1e-3 * scale {
            max_rel = max_rel.max(d / w.abs() as f64);
        }
    }
    Row {
        op: quantity.to_string(),
        shape: format!("{shape:?}"),
        max_abs_err: max_abs,
        max_rel_err: max_rel,
        tol,
        ok: finite && max_abs <= tol * scale.max(1e-12),
    }
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
    pub params: Vec<Vec<f32>>,
    pub batch: usize,
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub expected: TensorFile,
}

impl Fixture {
    pub fn load(dir: &Path) -> Result<Fixture> {
        if !dir.is_dir() {
            bail!(
                "fixture folder '{}' does not exist: pass a folder holding init.safetensors and expected.safetensors",
                dir.display()
            );
        }
        let init = checkpoint::load(&dir.join("init.safetensors"))?;
        let expected = checkpoint::load(&dir.join("expected.safetensors"))?;
        let cfg = init.gpt_config()?;
        let opt = OptConfig {
            beta1: meta_f32(&init, "beta1")?,
            beta2: meta_f32(&init, "beta2")?,
            eps: meta_f32(&init, "eps")?,
            weight_decay: meta_f32(&init, "weight_decay")?,
            grad_clip: meta_f32(&init, "grad_clip")?,
        };
        let mut params = Vec::new();
        for s in param_specs(&cfg) {
            params.push(init.expect_f32(&s.name, &s.shape)?.to_vec());
        }
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
            lr: meta_f32(&init, "lr")?,
            margin: meta_f32(&init, "margin")?,
            params,
            batch: xs[0],
            x: ids(x, "x")?,
            y: ids(y, "y")?,
            expected,
        })
    }
}

/// Every quantity of the fixture on `be`, one row each.
pub fn check_fixture(be: &mut dyn Backend, dir: &Path) -> Result<Vec<Row>> {
    let fx = Fixture::load(dir)?;
    let exp = &fx.expected;
    let specs = param_specs(&fx.cfg);
    let mut rows = Vec::new();
    let (b, t, v) = (fx.batch, fx.cfg.block_size, fx.cfg.vocab_size);

    for (tag, margin) in [("plain", None), ("margin", Some(fx.margin))] {
        let model = Gpt::new(
            be,
            fx.cfg,
            fx.batch,
            Loss::PLAIN.with_margin(margin)?,
            fx.opt,
        )?;
        model.set_params(be, &fx.params)?;
        model.set_batch(be, &fx.x, &fx.y);
        be.run(&[model.forward, model.backward])?;
        if margin.is_none() {
            let logits = be.read_f32(model.logits)?;
            let want = exp.expect_f32("logits", &[b, t, v])?;
            rows.push(compare("logits", &[b, t, v], &logits, want, TOL_LOGITS));
        }
        let loss = be.read_f32(model.loss)?;
        let key = format!("loss.{tag}");
        rows.push(compare(
            &key,
            &[1],
            &loss,
            exp.expect_f32(&key, &[1])?,
            TOL_LOGITS,
        ));
        for (s, g) in specs.iter().zip(&model.grads) {
            let key = format!("grad.{tag}.{}", s.name);
            let got = be.read_f32(*g)?;
            rows.push(compare(
                &key,
                &s.shape,
                &got,
                exp.expect_f32(&key, &s.shape)?,
                TOL_GRAD,
            ));
        }

        if margin.is_some() {
            let (_, want_losses) = exp.get_f32("adamw.losses")?;
            let steps = want_losses.len();
            let mut losses = Vec::new();
            let mut norms = Vec::new();
            for k in 0..steps {
                model.set_step(be, fx.lr, k as u64 + 1);
                be.run(&[model.forward, model.backward, model.optimize])?;
                losses.push(be.read_f32(model.loss)?[0]);
                norms.push(be.read_f32(model.norm)?[0]);
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
            for (s, p) in specs.iter().zip(&model.params) {
                let key = format!("after.{}", s.name);
                let got = be.read_f32(*p)?;
                rows.push(compare(
                    &key,
                    &s.shape,
                    &got,
                    exp.expect_f32(&key, &s.shape)?,
                    TOL_AFTER,
                ));
            }
        }
    }
    Ok(rows)
}
