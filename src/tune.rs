//! `selfish tune`: time every matmul variant on each product shape a model runs, and keep
//! the fastest per shape in a cache that later runs on the same adapter read.
//!
//! Variants sum in the same order, so on the adapters measured so far they give the same
//! bits; a tuned run is still reproducible from its cache (the choice is printed by
//! `selfish bench` as `tuned_shapes`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::time_runs;
use crate::gpu::Gpu;
use crate::kernels::{matmul, Op};
use crate::runtime::{Backend, Dtype, GpuBackend};

/// `$SELFISH_CACHE`, else `$XDG_CACHE_HOME/selfish/tune.json`, else `~/.cache/selfish/tune.json`.
pub fn cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SELFISH_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("selfish").join("tune.json"))
}

/// Names an adapter and driver: a tuning only applies where it was measured.
pub fn adapter_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    format!(
        "{} | {:?} | {} {}",
        i.name, i.backend, i.driver, i.driver_info
    )
}

type Cache = BTreeMap<String, BTreeMap<String, String>>;

fn read_cache() -> Cache {
    cache_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// The cached choices for this adapter, limited to variants it can run. A missing or
/// unreadable cache means no tuning (the defaults), never an error.
pub fn load(gpu: &Gpu, available: &[&'static str]) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    if let Some(shapes) = read_cache().get(&adapter_key(gpu)) {
        for (shape, v) in shapes {
            if let Some(&known) = available.iter().find(|&&a| a == v) {
                out.insert(shape.clone(), known);
            }
        }
    }
    out
}

/// One tuned shape.
#[derive(Serialize, Clone, Debug)]
pub struct TuneRow {
    pub shape: String,
    pub best: String,
    /// (variant, ms) for every variant timed.
    pub times: Vec<(String, f64)>,
}

/// Times every variant the adapter can run (but the naive one) on every shape in
/// `gpu.matmul_shapes`, stores the winners in the cache and in `gpu.target`.
pub fn tune(gpu: &mut GpuBackend, max_seconds: f64) -> Result<Vec<TuneRow>> {
    let shapes: Vec<matmul::Shape> = gpu.matmul_shapes.values().copied().collect();
    let variants: Vec<&'static str> = matmul::available(&gpu.target)
        .into_iter()
        .filter(|&v| v != "naive")
        .collect();
    let mut rows = Vec::new();
    for s in shapes {
        let mark = gpu.mark();
        let [ea, eb, ec] = s.extents();
        let a = gpu.alloc("tune a", ea, Dtype::F32)?;
        let b = gpu.alloc("tune b", eb, Dtype::F32)?;
        let c = gpu.alloc("tune c", ec, Dtype::F32)?;
        let mut times = Vec::new();
        for &variant in &variants {
            let seq = gpu.compile(&[Op::MatmulVariant {
                variant,
                s,
                a,
                b,
                c,
            }])?;
            if let Some(secs) = time_runs(max_seconds, || {
                gpu.run(&[seq])?;
                gpu.finish()
            })? {
                times.push((variant, secs * 1e3));
            }
        }
        gpu.release(mark);
        if let Some(&(best, _)) = times.iter().min_by(|x, y| x.1.total_cmp(&y.1)) {
            gpu.target.tuned.insert(s.key(), best);
            rows.push(TuneRow {
                shape: s.key(),
                best: best.to_string(),
                times: times.iter().map(|&(v, t)| (v.to_string(), t)).collect(),
            });
        }
    }
    let mut cache = read_cache();
    let entry = cache.entry(adapter_key(&gpu.gpu)).or_default();
    for r in &rows {
        entry.insert(r.shape.clone(), r.best.clone());
    }
    if let Some(path) = cache_path() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create cache folder '{}'", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&cache)?)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| {
                format!(
                    "cannot write the tuning cache '{}': check permissions or set SELFISH_CACHE",
                    path.display()
                )
            })?;
    }
    Ok(rows)
}
