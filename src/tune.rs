//! `selfish tune`: time every matmul variant on each product shape a model runs, and keep
//! the fastest per shape in a cache that later runs on the same adapter read.
//!
//! Variants sum in the same order, so on the adapters measured so far they give the same
//! bits; a tuned run is still reproducible from its cache (the choice is printed by
//! `selfish bench` as `tuned_shapes`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::bench::time_runs;
use crate::gpu::Gpu;
use crate::kernels::matmul::{self, Matmul};
use crate::kernels::{IntoOp, Target};
use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend, Wait};

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

/// The adapter's kernel choice with its cached measurements, unless `SELFISH_TUNED=0`.
pub fn tuned_target(gpu: &Gpu) -> Target {
    let mut t = gpu.target();
    if std::env::var("SELFISH_TUNED").as_deref() != Ok("0") {
        t.tuned = load(gpu, &matmul::available(&t));
    }
    t
}

/// Opens the adapter `--backend` names with its tuned kernel choice.
pub fn open_gpu(backend: Option<&str>) -> Result<GpuBackend> {
    let gpu = Gpu::open(backend)?;
    let t = tuned_target(&gpu);
    Ok(GpuBackend::new(gpu, t))
}

/// Opens `cpu` (the CPU twins) or the tuned GPU adapter `--backend` names.
pub fn open(backend: Option<&str>) -> Result<Box<dyn Backend>> {
    match backend {
        Some(n) if n.eq_ignore_ascii_case("cpu") => Ok(Box::new(CpuBackend::new())),
        _ => Ok(Box::new(open_gpu(backend)?)),
    }
}

/// Builds the model once (to learn its products), then [`tune`]s them.
pub fn tune_model(
    gpu: &mut GpuBackend,
    cfg: crate::model::GptConfig,
    batch: usize,
    max_seconds: f64,
) -> Result<Vec<TuneRow>> {
    let mark = gpu.mark();
    let loss = crate::loss::Loss::plain();
    crate::model::Gpt::new(gpu, cfg, batch, &loss, crate::model::OptConfig::default())?;
    gpu.release(mark);
    tune(gpu, max_seconds)
}

/// One tuned shape.
#[derive(Serialize, Clone, Debug)]
pub struct TuneRow {
    pub shape: String,
    pub best: String,
    /// (variant, ms) for every variant timed.
    pub times: Vec<(String, f64)>,
}

/// Times every variant the adapter can run (but the naive one) on every product `gpu` has
/// compiled, stores the winners in the cache and in `gpu`'s target.
pub fn tune(gpu: &mut GpuBackend, max_seconds: f64) -> Result<Vec<TuneRow>> {
    let shapes = gpu.products();
    let variants: Vec<&'static str> = matmul::available(gpu.target())
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
            let op = Matmul {
                variant: Some(variant),
                ..Matmul::new(s, a, b, c)
            };
            let seq = gpu.compile(vec![op.op()])?;
            if let Some(secs) = time_runs(max_seconds, || {
                gpu.run(&[seq])?;
                gpu.finish_now()
            })? {
                times.push((variant, secs * 1e3));
            }
        }
        gpu.release(mark);
        if let Some(&(best, _)) = times.iter().min_by(|x, y| x.1.total_cmp(&y.1)) {
            let mut t = gpu.target().clone();
            t.tuned.insert(s.key(), best);
            gpu.set_target(t);
            rows.push(TuneRow {
                shape: s.key(),
                best: best.to_string(),
                times: times.iter().map(|&(v, t)| (v.to_string(), t)).collect(),
            });
        }
    }
    let mut cache = read_cache();
    let entry = cache.entry(adapter_key(gpu.gpu())).or_default();
    for r in &rows {
        entry.insert(r.shape.clone(), r.best.clone());
    }
    if let Some(path) = cache_path() {
        if let Some(dir) = path.parent() {
            crate::fsio::create_dir(dir, "cache folder")?;
        }
        crate::fsio::write_atomic(&path, serde_json::to_string_pretty(&cache)?.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}; or set SELFISH_CACHE to another path"))?;
    }
    Ok(rows)
}
