//! Memory planning: every buffer the model allocates, as a function of the batch size, and
//! whether they fit the backend's limits. Checked before anything is allocated, so a model
//! that cannot fit fails with the limit, the sizes and what to change.

use anyhow::{bail, Result};

use crate::buffers::{Buf, Dtype};
use crate::kernels::Op;
use crate::loss::Loss;
use crate::model::{Gpt, GptConfig, OptConfig, MAX_BUFFER_VALUES};
use crate::runtime::{ready, Backend, Mark, Pending, Seq};

/// One buffer of the model: `fixed + batch * per_row + batch² * per_pair` bytes (the
/// last for losses that compare every position of a batch with every other, like `cwt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferNeed {
    pub label: String,
    pub fixed: u64,
    pub per_row: u64,
    pub per_pair: u64,
}

impl BufferNeed {
    pub fn bytes(&self, batch: usize) -> u128 {
        let b = batch as u128;
        self.fixed as u128 + b * self.per_row as u128 + b * b * self.per_pair as u128
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
/// the constructor on a recording backend at batch 1, 2 and 3 (every buffer is at most
/// quadratic in the batch), so it cannot drift from what the constructor really allocates.
pub fn buffer_plan(cfg: &GptConfig, loss_fn: &Loss, opt: OptConfig) -> Result<Vec<BufferNeed>> {
    cfg.validate()?;
    let mut sized = Vec::new();
    for batch in 1..=3 {
        let mut s = Sizer::default();
        Gpt::build(&mut s, *cfg, batch, loss_fn, opt)?;
        sized.push(s.bufs);
    }
    let [one, two, three] = <[_; 3]>::try_from(sized).expect("three sizes");
    Ok(one
        .into_iter()
        .zip(two)
        .zip(three)
        .map(|(((label, a), (_, b)), (_, c))| {
            // f(B) = x + yB + zB² through f(1), f(2), f(3), in bytes (a zero-length
            // buffer still takes 4).
            let [a, b, c] = [a, b, c].map(|n| 4 * n.max(1) as i128);
            let z = (c - 2 * b + a) / 2;
            let y = b - a - 3 * z;
            let x = a - y - z;
            BufferNeed {
                label,
                fixed: x.max(0) as u64,
                per_row: y.max(0) as u64,
                per_pair: z.max(0) as u64,
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

/// A batch far past anything that fits, on 32-bit targets (the browser) too.
const HUGE_BATCH: usize = if usize::BITS >= 64 { 1 << 40 } else { 1 << 30 };

/// What to change so that `bytes(batch) <= cap`.
fn batch_fix(bytes: impl Fn(usize) -> u128, cap: u128) -> String {
    if bytes(HUGE_BATCH) == bytes(0) {
        return "lower --n-embd (the parameters alone are too big)".into();
    }
    // The largest batch that fits: bytes only grow with the batch.
    let (mut lo, mut hi) = (0usize, HUGE_BATCH);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if bytes(mid) <= cap {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo >= 1 {
        format!("lower --batch-size to {lo} or less, or lower --block-size")
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
    let one = |b: usize| big.bytes(b);
    let kernel_cap = 4 * MAX_BUFFER_VALUES as u128;
    if bytes > kernel_cap {
        bail!(
            "buffer '{}' would hold {} values at batch size {batch}, over the {MAX_BUFFER_VALUES} a kernel can index: {}",
            big.label,
            bytes / 4,
            batch_fix(one, kernel_cap)
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
                batch_fix(one, cap as u128)
            );
        }
    }
    if let Some((budget, source)) = be.memory_budget() {
        let all = |b: usize| plan.iter().map(|n| n.bytes(b)).sum::<u128>();
        let total = all(batch);
        if total > budget as u128 {
            bail!(
                "the model's buffers need {total} bytes ({}) at batch size {batch}, but only {} is available ({source}): {}",
                human(total),
                human(budget as u128),
                batch_fix(all, budget as u128)
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
        // cwt's scores grow with the square of the batch; agg and cosreg add buffers.
        for loss in ["margin:1", "cwt", "agg:0.1:4", "cosreg:1", "margin-wh:0.5"] {
            let loss = Loss::parse(loss).unwrap();
            let mut untied = cfg();
            untied.untied = true;
            for c in [cfg(), untied] {
                let plan = buffer_plan(&c, &loss, OptConfig::default()).unwrap();
                for batch in [1, 3, 7] {
                    let mut s = Sizer::default();
                    Gpt::build(&mut s, c, batch, &loss, OptConfig::default()).unwrap();
                    assert_eq!(s.bufs.len(), plan.len());
                    for ((label, len), need) in s.bufs.iter().zip(&plan) {
                        assert_eq!(label, &need.label);
                        assert_eq!(
                            4 * (*len).max(1) as u128,
                            need.bytes(batch),
                            "{loss} {label} at {batch}"
                        );
                    }
                }
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
