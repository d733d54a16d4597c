//! `selfish check`: every op's check cases (`src/kernels/<op>.rs`) on the GPU against the CPU
//! twin, under every kernel flavour the adapter can run, twice (the GPU must give the same
//! bits again: reductions are deterministic).

use anyhow::Result;

use crate::buffers::Dtype;
use crate::compare::{diff, Diff, Row};
use crate::kernels::case::{Bufs, Case, Init};
use crate::kernels::{self, Target};
use crate::rng::Rng;
use crate::runtime::{Backend, CpuBackend, GpuBackend, Wait};

/// Every case of every op, in [`kernels::OPS`] order.
pub fn cases() -> Vec<Case> {
    kernels::cases()
}

/// Allocates and fills a case's buffers the same way on any backend.
fn setup(be: &mut dyn Backend, case: &Case, seed: u64) -> Result<Bufs> {
    let mut rng = Rng::new(seed);
    let mut bufs = Vec::new();
    for spec in &case.bufs {
        let b = be.alloc(spec.name, spec.len, spec.dtype)?;
        match (&spec.init, spec.dtype) {
            (Init::Tokens(n), _) => {
                let data: Vec<u32> = (0..spec.len)
                    .map(|_| rng.below(*n as usize) as u32)
                    .collect();
                be.write_u32(b, &data);
            }
            (Init::Words(w), _) => be.write_u32(b, w),
            (Init::Values(v), _) => be.write_f32(b, v),
            (init, Dtype::F32) => {
                let data: Vec<f32> = (0..spec.len)
                    .map(|_| match *init {
                        Init::Normal(s) => rng.normal() as f32 * s,
                        Init::Uniform(lo, hi) => lo + (hi - lo) * rng.uniform() as f32,
                        Init::Fill(x) => x,
                        Init::Steps(n) => rng.below(n as usize) as f32,
                        _ => 0.0,
                    })
                    .collect();
                be.write_f32(b, &data);
            }
            (_, Dtype::U32) => {}
        }
        bufs.push(b);
    }
    Ok(Bufs::new(case.bufs.iter().map(|b| b.name).collect(), bufs))
}

/// Runs a case's ops on one backend and reads back its compared buffers.
fn run_on(be: &mut dyn Backend, case: &Case, seed: u64) -> Result<Vec<Vec<f32>>> {
    let bufs = setup(be, case, seed)?;
    let seq = be.compile((case.build)(&bufs))?;
    be.run(&[seq])?;
    let names = case.compared();
    names.iter().map(|n| be.read_now(bufs[n])).collect()
}

/// The kernel choices a case runs under on `gpu`: the adapter's own, plus the other row-kernel
/// flavour where it changes the dispatches, so every variant is checked on every adapter.
/// Choices the adapter cannot run (subgroup kernels without 8-wide subgroups) are left out.
fn targets_for(gpu: &GpuBackend, case: &Case) -> Vec<(Target, &'static str)> {
    let own = gpu.target().clone();
    let other = Target {
        cpu_like: !own.cpu_like,
        ..own.clone()
    };
    let ops = case.probe();
    let launches = |t: &Target| -> Vec<_> { ops.iter().flat_map(|o| o.launches(t)).collect() };
    let entries = |t: &Target| -> Vec<&str> { launches(t).iter().map(|l| l.entry).collect() };
    let mut v = Vec::new();
    if own.runs(&launches(&own)) {
        v.push((own.clone(), ""));
    }
    if entries(&other) != entries(&own) && other.runs(&launches(&other)) {
        let tag = if other.cpu_like {
            " [cpu-like]"
        } else {
            " [gpu]"
        };
        v.push((other, tag));
    }
    v
}

/// Runs one case on `gpu` (under each of its kernel choices, twice) and on the CPU twins,
/// and compares the outputs: one row per choice. A second GPU run that differs in any bit
/// fails the row (its error is reported as infinite).
pub fn run_case(gpu: &mut GpuBackend, case: &Case, seed: u64) -> Result<Vec<Row>> {
    let want = run_on(&mut CpuBackend::new(), case, seed)?;
    let saved = gpu.target().clone();
    let mut rows = Vec::new();
    for (t, tag) in targets_for(gpu, case) {
        gpu.set_target(t);
        let mark = gpu.mark();
        let got = run_on(gpu, case, seed).and_then(|a| Ok((a, run_on(gpu, case, seed)?)));
        gpu.release(mark);
        gpu.set_target(saved.clone());
        let (first, again) = got?;
        // Each buffer against its own scale: the tolerance is relative per buffer.
        let diffs: Vec<Diff> = first.iter().zip(&want).map(|(g, c)| diff(g, c)).collect();
        let worst = diffs.iter().fold(Diff::default(), |a, &d| a.max(d));
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        let repeatable = bits(&first) == bits(&again);
        let mut row = Row::new(
            format!("{}{tag}", case.op),
            case.shape.clone(),
            worst,
            case.tol,
        );
        row.ok = repeatable && diffs.iter().all(|d| d.within(case.tol));
        if !repeatable {
            row.max_abs_err = f64::INFINITY;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// All cases, in order.
pub fn run_all(gpu: &mut GpuBackend, seed: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for c in cases() {
        rows.extend(run_case(gpu, &c, seed)?);
    }
    Ok(rows)
}
