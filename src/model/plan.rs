//! Memory planning: every buffer the model allocates, as a function of the batch size, and
//! whether they fit the backend's limits. Checked before anything is allocated, so a model
//! that cannot fit fails with the limit, the sizes and what to change.

use anyhow::{bail, Result};

use crate::buffers::{Buf, Dtype};
use crate::kernels::Op;
use crate::loss::Loss;
use crate::model::{Gpt, GptConfig, OptConfig, MAX_BUFFER_VALUES};
use crate::runtime::{ready, Backend, Mark, Pending, Seq};

/// One buffer of the model: `fixed + batch * per_row` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferNeed {
    pub label: String,
    pub fixed: u64,
    pub per_row: u64,
}

impl BufferNeed {
    pub fn bytes(&self, batch: usize) -> u128 {
        self.fixed as u128 + batch as u128 * self.per_row as u128
    }
}

/// Records allocations instead of making them.
#[derive(Default)]
struct Sizer {
    bufs: Vec<(String, usize)>,
}

impl Backend for Sizer {
    fn name(&self) -> String {
        "sizer".into()
    }
    fn alloc(&mut self, label: &str, len: usize, _dtype: Dtype) -> Result<Buf> {
        self.bufs.push((label.to_string(), len));
        Ok(Buf(self.bufs.len() - 1))
    }
    fn len(&self, b: Buf) -> usize {
        self.bufs[b.0].1
    }
    fn write_f32(&mut self, _b: Buf, _data: &[f32]) {}
    fn write_u32(&mut self, _b: Buf, _data: &[u32]) {}
    fn read_f32(&mut self, b: Buf) -> Pending<'_, Vec<f32>> {
        ready(Ok(vec![0.0; self.bufs[b.0].1]))
    }
    fn compile(&mut self, _ops: Vec<Op>) -> Result<Seq> {
        Ok(Seq(0))
    }
    fn run(&mut self, _seqs: &[Seq]) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> Pending<'_, ()> {
        ready(Ok(()))
    }
    fn allocated_bytes(&self) -> u64 {
        self.bufs.iter().map(|b| 4 * b.1 as u64).sum()
    }
    fn mark(&self) -> Mark {
        Mark {
            bufs: self.bufs.len(),
            seqs: 0,
        }
    }
    fn release(&mut self, m: Mark) {
        self.bufs.truncate(m.bufs);
    }
}

/// Every buffer `Gpt::new` allocates, as a function of the batch size. Measured by running
/// the constructor on a recording backend at batch 1 and 2 (every buffer is affine in the
/// batch), so it cannot drift from what the constructor really allocates.
pub fn buffer_plan(cfg: &GptConfig, loss_fn: &Loss, opt: OptConfig) -> Result<Vec<BufferNeed>> {
    cfg.validate()?;
    let mut one = Sizer::default();
    Gpt::build(&mut one, *cfg, 1, loss_fn, opt)?;
    let mut two = Sizer::default();
    Gpt::build(&mut two, *cfg, 2, loss_fn, opt)?;
    Ok(one
        .bufs
        .into_iter()
        .zip(two.bufs)
        .map(|((label, a), (_, b))| {
            let (a, b) = (4 * a.max(1) as u64, 4 * b.max(1) as u64);
            BufferNeed {
                label,
                fixed: (2 * a).saturating_sub(b),
                per_row: b - a,
            }
        })
        .collect())
}

fn human(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What to change so that `fixed + batch * per_row <= cap`.
fn batch_fix(fixed: u128, per_row: u128, cap: u128) -> String {
    if per_row == 0 {
        return "lower --n-embd (the parameters alone are too big)".into();
    }
    let most = cap.saturating_sub(fixed) / per_row;
    if most >= 1 {
        format!("lower --batch-size to {most} or less, or lower --block-size")
    } else {
        "even --batch-size 1 does not fit: lower --block-size or --n-embd".into()
    }
}

/// Checks a plan against the kernels' u32 indexing and the backend's buffer and memory limits.
pub fn check_fits(plan: &[BufferNeed], batch: usize, be: &dyn Backend) -> Result<()> {
    let Some(big) = plan.iter().max_by_key(|n| n.bytes(batch)) else {
        return Ok(());
    };
    let bytes = big.bytes(batch);
    let (fixed, per_row) = (big.fixed as u128, big.per_row as u128);
    let kernel_cap = 4 * MAX_BUFFER_VALUES as u128;
    if bytes > kernel_cap {
        bail!(
            "buffer '{}' would hold {} values at batch size {batch}, over the {MAX_BUFFER_VALUES} a kernel can index: {}",
            big.label,
            bytes / 4,
            batch_fix(fixed, per_row, kernel_cap)
        );
    }
    if let Some((cap, limit)) = be.max_buffer_bytes() {
        if bytes > cap as u128 {
            bail!(
                "buffer '{}' needs {bytes} bytes ({}) at batch size {batch}, but {} allows {cap} bytes ({}) per buffer ({limit}): {}",
                big.label,
                human(bytes),
                be.name(),
                human(cap as u128),
                batch_fix(fixed, per_row, cap as u128)
            );
        }
    }
    if let Some((budget, source)) = be.memory_budget() {
        let fixed: u128 = plan.iter().map(|n| n.fixed as u128).sum();
        let per_row: u128 = plan.iter().map(|n| n.per_row as u128).sum();
        let total = fixed + batch as u128 * per_row;
        if total > budget as u128 {
            bail!(
                "the model's buffers need {total} bytes ({}) at batch size {batch}, but only {} is available ({source}): {}",
                human(total),
                human(budget as u128),
                batch_fix(fixed, per_row, budget as u128)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_LAYERS;

    /// A backend with a chosen per-buffer limit and memory budget, to test `check_fits`.
    struct Limited {
        cap: Option<u64>,
        budget: Option<u64>,
    }

    impl Backend for Limited {
        fn name(&self) -> String {
            "test adapter".into()
        }
        fn alloc(&mut self, _: &str, _: usize, _: Dtype) -> Result<Buf> {
            unreachable!("check_fits allocates nothing")
        }
        fn len(&self, _: Buf) -> usize {
            0
        }
        fn write_f32(&mut self, _: Buf, _: &[f32]) {}
        fn write_u32(&mut self, _: Buf, _: &[u32]) {}
        fn read_f32(&mut self, _: Buf) -> Pending<'_, Vec<f32>> {
            ready(Ok(Vec::new()))
        }
        fn compile(&mut self, _: Vec<Op>) -> Result<Seq> {
            Ok(Seq(0))
        }
        fn run(&mut self, _: &[Seq]) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> Pending<'_, ()> {
            ready(Ok(()))
        }
        fn max_buffer_bytes(&self) -> Option<(u64, String)> {
            self.cap.map(|c| (c, "its limit max_test_size".into()))
        }
        fn memory_budget(&self) -> Option<(u64, String)> {
            self.budget.map(|b| (b, "test budget".into()))
        }
    }

    fn cfg() -> GptConfig {
        GptConfig {
            vocab_size: 65,
            block_size: 32,
            n_layer: 2,
            n_head: 4,
            n_embd: 64,
            untied: false,
        }
    }

    #[test]
    fn plan_matches_what_the_constructor_allocates() {
        let plan = buffer_plan(
            &cfg(),
            &Loss::parse("margin:1").unwrap(),
            OptConfig::default(),
        )
        .unwrap();
        for batch in [1, 3, 7] {
            let mut s = Sizer::default();
            Gpt::build(
                &mut s,
                cfg(),
                batch,
                &Loss::parse("margin:1").unwrap(),
                OptConfig::default(),
            )
            .unwrap();
            assert_eq!(s.bufs.len(), plan.len());
            for ((label, len), need) in s.bufs.iter().zip(&plan) {
                assert_eq!(label, &need.label);
                assert_eq!(
                    4 * (*len).max(1) as u128,
                    need.bytes(batch),
                    "{label} at {batch}"
                );
            }
        }
    }

    #[test]
    fn fits_says_which_limit_and_a_batch_that_fits() {
        let plan = buffer_plan(&cfg(), &Loss::plain(), OptConfig::default()).unwrap();
        let be = Limited {
            cap: Some(1 << 20),
            budget: None,
        };
        let e = format!("{:#}", check_fits(&plan, 1000, &be).unwrap_err());
        assert!(
            e.contains("max_test_size") && e.contains("at batch size 1000"),
            "{e}"
        );
        let most: usize = e
            .split("--batch-size to ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no batch size suggested: {e}"));
        check_fits(&plan, most, &be).unwrap();
        assert!(check_fits(&plan, most + 1, &be).is_err());

        let total = |b: usize| plan.iter().map(|n| n.bytes(b)).sum::<u128>() as u64;
        let be = Limited {
            cap: None,
            budget: Some(total(10)),
        };
        check_fits(&plan, 10, &be).unwrap();
        let e = format!("{:#}", check_fits(&plan, 11, &be).unwrap_err());
        assert!(
            e.contains("test budget") && e.contains("--batch-size to 10 or less"),
            "{e}"
        );

        let e = format!("{:#}", check_fits(&plan, 1 << 40, &be).unwrap_err());
        assert!(e.contains("4294967295"), "{e}");
    }

    #[test]
    fn sizes_are_bounded_before_any_arithmetic() {
        let mut c = cfg();
        c.n_layer = MAX_LAYERS + 1;
        assert!(c.validate().unwrap_err().to_string().contains("--n-layer"));
        let mut c = cfg();
        (c.n_embd, c.n_head, c.block_size) = (1 << 20, 1, 1 << 20);
        assert!(c.validate().unwrap_err().to_string().contains("4294967295"));
        let mut c = cfg();
        c.n_embd = usize::MAX;
        c.n_head = 1;
        assert!(c.validate().is_err());
    }
}
