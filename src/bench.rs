//! `selfish bench`: matmul GFLOP/s per kernel variant, training-step time and tokens/s,
//! per-kernel GPU time and memory, printed as a table or as JSON in the same shape as
//! `tools/bench_torch.py` prints for PyTorch, so the two can be set side by side.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::kernels::matmul::{self, Matmul};
use crate::kernels::IntoOp;
use crate::loss::Loss;
use crate::model::{init_params, Gpt, GptConfig, OptConfig, Preset};
use crate::rng::Rng;
use crate::runtime::profile::KernelTime;
use crate::runtime::{Backend, CpuBackend, Dtype, GpuBackend, Wait};

/// The product shapes of the paper model (B*T = 768, C = 128, V = 130) by role, as
/// `(name, [m, n, k], trans_a, trans_b)`: `C[m, n] = op(A)[m, k] · op(B)[k, n]`.
pub const MODEL_SHAPES: &[(&str, [u32; 3], bool, bool)] = &[
    ("c_attn fwd", [768, 384, 128], false, true),
    ("attn proj fwd", [768, 128, 128], false, true),
    ("c_fc fwd", [768, 512, 128], false, true),
    ("mlp proj fwd", [768, 128, 512], false, true),
    ("head fwd", [768, 130, 128], false, true),
    ("c_attn dx", [768, 128, 384], false, false),
    ("c_fc dx", [768, 128, 512], false, false),
    ("mlp proj dx", [768, 512, 128], false, false),
    ("head dx", [768, 128, 130], false, false),
    ("c_attn dW", [384, 128, 768], true, false),
    ("c_fc dW", [512, 128, 768], true, false),
    ("mlp proj dW", [128, 512, 768], true, false),
    ("head dW", [130, 128, 768], true, false),
];

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub configs: Vec<String>,
    /// Losses by their `--loss` spelling.
    pub losses: Vec<String>,
    pub warmup: usize,
    /// Timed steps per (config, loss), at most; fewer when `max_seconds` runs out.
    pub steps: usize,
    /// Square matmul sizes.
    pub sizes: Vec<u32>,
    /// A measurement estimated to take longer than this (one run) is skipped.
    pub max_seconds: f64,
    pub matmul: bool,
    pub profile: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            configs: vec!["paper".into(), "large".into()],
            losses: vec!["plain".into(), "margin:1".into()],
            warmup: 2,
            steps: 20,
            sizes: vec![1024, 2048, 4096],
            max_seconds: 10.0,
            matmul: true,
            profile: true,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct MatmulRow {
    pub name: String,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub layout: String,
    pub variant: String,
    pub ms: f64,
    pub gflops: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct StepRow {
    pub config: String,
    pub loss: String,
    pub batch: usize,
    pub block: usize,
    pub tokens_per_step: usize,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub timed_steps: usize,
}

#[derive(Serialize, Clone, Debug)]
pub struct MemoryRow {
    pub config: String,
    /// Everything the backend holds for the model (buffers, and on the GPU the uniforms
    /// of every compiled dispatch): allocation happens once, so this is also the peak.
    pub peak_bytes: u64,
    /// The rest are the model's buffers by kind, from its allocation plan.
    pub params_bytes: u64,
    pub grads_bytes: u64,
    pub optimizer_bytes: u64,
    /// Saved activations, logits, backward scratch and the small per-step buffers.
    pub activations_bytes: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct KernelRow {
    pub kernel: String,
    pub dispatches: usize,
    pub ms: f64,
    pub share: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub tool: String,
    pub device: String,
    pub backend: String,
    pub threads: usize,
    pub settings: serde_json::Value,
    pub matmul: Vec<MatmulRow>,
    pub steps: Vec<StepRow>,
    pub memory: Vec<MemoryRow>,
    /// Per-kernel time of one paper-config step with the threshold loss.
    pub kernels: Vec<KernelRow>,
    /// "timestamps" or "wall clock per dispatch".
    pub kernel_timing: String,
    pub skipped: Vec<String>,
}

fn layout_name(ta: bool, tb: bool) -> String {
    format!(
        "A{}·B{}",
        if ta { "ᵀ" } else { "" },
        if tb { "ᵀ" } else { "" }
    )
}

/// A model config by name, with the batch size it trains with.
pub fn named_config(name: &str, vocab: usize) -> Result<(GptConfig, usize)> {
    let p = Preset::find(name)?;
    Ok((p.config(vocab), p.batch_size))
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times `run` (which must finish its work before returning): one untimed run, then runs
/// until ~0.3 s or 20 runs have passed, at least 3 unless `max_seconds` would be exceeded.
/// Returns the median seconds, or `None` (skipped) when the first run alone took too long.
pub fn time_runs(max_seconds: f64, mut run: impl FnMut() -> Result<()>) -> Result<Option<f64>> {
    let t0 = Instant::now();
    run()?;
    let first = t0.elapsed().as_secs_f64();
    if first > max_seconds {
        return Ok(None);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 20
        && (times.len() < 3 || start.elapsed().as_secs_f64() < 0.3)
        && (times.is_empty() || start.elapsed().as_secs_f64() + first < max_seconds)
    {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Some(median(times)))
}

/// The backend under test: a GPU adapter (every matmul variant it can run) or the CPU twins.
pub enum Bench<'a> {
    Gpu(&'a mut GpuBackend),
    Cpu(&'a mut CpuBackend),
}

impl Bench<'_> {
    fn be(&mut self) -> &mut dyn Backend {
        match self {
            Bench::Gpu(g) => *g,
            Bench::Cpu(c) => *c,
        }
    }

    fn variants(&self) -> Vec<&'static str> {
        match self {
            Bench::Gpu(g) => matmul::available(g.target())
                .into_iter()
                .filter(|&v| v != "naive")
                .collect(),
            Bench::Cpu(_) => vec!["cpu"],
        }
    }
}

/// One matmul shape under every variant. The naive rung is left out: it is the reference
/// for correctness, and at these sizes it would dominate the run.
fn bench_matmul(
    b: &mut Bench,
    name: &str,
    [m, n, k]: [u32; 3],
    (ta, tb): (bool, bool),
    opts: &Options,
    rows: &mut Vec<MatmulRow>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let s = matmul::Shape::dense(1, [m, n, k], ta, tb, false);
    let variants = b.variants();
    let be = b.be();
    let mark = be.mark();
    let a = be.alloc("bench a", (m * k) as usize, Dtype::F32)?;
    let bb = be.alloc("bench b", (k * n) as usize, Dtype::F32)?;
    let c = be.alloc("bench c", (m * n) as usize, Dtype::F32)?;
    let mut rng = Rng::new(7);
    let fill =
        |len: u32, rng: &mut Rng| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
    be.write_f32(a, &fill(m * k, &mut rng));
    be.write_f32(bb, &fill(k * n, &mut rng));
    for variant in variants {
        let op = Matmul {
            variant: Some(variant),
            ..Matmul::new(s, a, bb, c)
        };
        let seq = be.compile(vec![op.op()])?;
        match time_runs(opts.max_seconds, || {
            be.run(&[seq])?;
            be.finish_now()
        })? {
            Some(secs) => rows.push(MatmulRow {
                name: name.to_string(),
                m,
                n,
                k,
                layout: layout_name(ta, tb),
                variant: variant.to_string(),
                ms: secs * 1e3,
                gflops: 2.0 * s.macs() / secs / 1e9,
            }),
            None => skipped.push(format!(
                "matmul {name} {variant}: one run took over --max-seconds {}",
                opts.max_seconds
            )),
        }
    }
    be.release(mark);
    Ok(())
}

/// Median training-step time of one config and loss, and the memory the model holds.
fn bench_step(
    b: &mut Bench,
    config: &str,
    loss: &str,
    opts: &Options,
) -> Result<(Option<StepRow>, MemoryRow)> {
    let loss_fn = Loss::parse(loss)?;
    let (cfg, batch) = named_config(config, 130)?;
    let be = b.be();
    let mark = be.mark();
    let before = be.allocated_bytes();
    let model = Gpt::new(be, cfg, batch, &loss_fn, OptConfig::default())?;
    // sampled:K draws from a noise table; uniform stands in for training counts here.
    model
        .loss_bufs
        .set_noise(be, &vec![1.0; cfg.vocab_size], 1)?;
    let held = be.allocated_bytes() - before;
    // The model's own buffers by kind, from the allocation plan (without the uniforms and
    // padding the backend adds, which `held` counts).
    let plan = crate::model::plan::buffer_plan(&cfg, &loss_fn, OptConfig::default())?;
    let names: Vec<String> = crate::model::specs(&cfg)
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let bytes = |keep: &dyn Fn(&str) -> bool| -> u64 {
        plan.iter()
            .filter(|b| keep(&b.label))
            .map(|b| b.bytes(batch) as u64)
            .sum()
    };
    let params = bytes(&|l| names.iter().any(|n| n == l));
    let grads = bytes(&|l| l.starts_with("grad "));
    let optimizer = bytes(&|l| l.starts_with("adam_m ") || l.starts_with("adam_v "));
    let all = bytes(&|_| true);
    let memory = MemoryRow {
        config: config.to_string(),
        peak_bytes: held,
        params_bytes: params,
        grads_bytes: grads,
        optimizer_bytes: optimizer,
        activations_bytes: all - params - grads - optimizer,
    };
    let mut rng = Rng::new(1337);
    model.set_params(be, &init_params(&cfg, &mut rng))?;
    let t = cfg.block_size;
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..4)
        .map(|_| {
            let ids: Vec<u32> = (0..batch * (t + 1))
                .map(|_| rng.below(cfg.vocab_size) as u32)
                .collect();
            let x = ids.chunks(t + 1).flat_map(|w| w[..t].to_vec()).collect();
            let y = ids.chunks(t + 1).flat_map(|w| w[1..].to_vec()).collect();
            (x, y)
        })
        .collect();
    let mut step = 0u64;
    let mut one_step = |be: &mut dyn Backend| -> Result<f64> {
        let (x, y) = &batches[step as usize % batches.len()];
        step += 1;
        let t0 = Instant::now();
        model.set_batch(be, x, y);
        model.set_step(be, 1e-3, step);
        model.train_step(be)?;
        be.finish_now()?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let mut times = Vec::new();
    let mut first = 0.0;
    for _ in 0..opts.warmup.max(1) {
        first = one_step(be)?;
        if first > opts.max_seconds {
            break;
        }
    }
    let start = Instant::now();
    while times.len() < opts.steps.max(1)
        && (times.is_empty() || start.elapsed().as_secs_f64() + first < opts.max_seconds * 3.0)
    {
        times.push(one_step(be)?);
    }
    let tokens = batch * t;
    let med = median(times.clone());
    let loss_now = be.read_now(model.acts.loss)?[0];
    be.release(mark);
    if !loss_now.is_finite() {
        bail!("bench: the {config} model's loss became {loss_now}: the kernels are broken on this adapter; run `selfish check`");
    }
    Ok((
        Some(StepRow {
            config: config.to_string(),
            loss: loss.to_string(),
            batch,
            block: t,
            tokens_per_step: tokens,
            median_ms: med * 1e3,
            tokens_per_s: tokens as f64 / med,
            timed_steps: times.len(),
        }),
        memory,
    ))
}

/// Per-kernel time of one paper-config training step with the threshold loss.
fn bench_profile(g: &mut GpuBackend) -> Result<(Vec<KernelRow>, bool)> {
    let (cfg, batch) = named_config("paper", 130)?;
    let mark = g.mark();
    let model = Gpt::new(
        g,
        cfg,
        batch,
        &Loss::parse("margin:1")?,
        OptConfig::default(),
    )?;
    let mut rng = Rng::new(1);
    model.set_params(g, &init_params(&cfg, &mut rng))?;
    let x: Vec<u32> = (0..batch * cfg.block_size)
        .map(|_| rng.below(cfg.vocab_size) as u32)
        .collect();
    model.set_batch(g, &x, &x);
    model.set_step(g, 1e-3, 1);
    let (times, timestamps): (Vec<KernelTime>, bool) =
        g.profile(&[model.forward, model.backward, model.optimize], 3)?;
    g.release(mark);
    let total: f64 = times.iter().map(|k| k.seconds).sum();
    Ok((
        times
            .into_iter()
            .map(|k| KernelRow {
                share: k.seconds / total,
                kernel: k.kernel,
                dispatches: k.dispatches,
                ms: k.seconds * 1e3,
            })
            .collect(),
        timestamps,
    ))
}

/// Checks the options, opens the backend `--backend` names (tuned) and runs the bench.
pub fn run_named(backend: Option<&str>, opts: &Options) -> Result<Report> {
    for l in &opts.losses {
        Loss::parse(l)?;
    }
    for c in &opts.configs {
        named_config(c, 130)?;
    }
    if backend.is_some_and(|b| b.eq_ignore_ascii_case("cpu")) {
        run(Bench::Cpu(&mut CpuBackend::new()), opts)
    } else {
        run(Bench::Gpu(&mut crate::tune::open_gpu(backend)?), opts)
    }
}

/// Runs everything `opts` asks for.
pub fn run(mut b: Bench, opts: &Options) -> Result<Report> {
    let (device, backend, settings) = match &b {
        Bench::Gpu(g) => {
            let (info, t) = (&g.gpu().info, g.target());
            let square = matmul::Shape::dense(1, [768, 768, 768], false, false, false);
            (
                info.name.clone(),
                format!("{:?}", info.backend),
                serde_json::json!({
                    "driver": format!("{} {}", info.driver, info.driver_info),
                    "device_type": format!("{:?}", info.device_type),
                    "kernels": if t.cpu_like { "cpu-like (row per invocation)" } else { "gpu (workgroup per row)" },
                    "matmul_default": if t.subgroup8 { "sg / sg_small by shape" } else { matmul::default_variant(t, &square) },
                    "subgroup8": t.subgroup8,
                    "tuned_shapes": t.tuned.len(),
                }),
            )
        }
        Bench::Cpu(_) => (
            "CPU twins".to_string(),
            "cpu".to_string(),
            serde_json::json!({"matmul": "matrixmultiply sgemm"}),
        ),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = Report {
        tool: "selfish".into(),
        device,
        backend,
        threads,
        settings,
        matmul: Vec::new(),
        steps: Vec::new(),
        memory: Vec::new(),
        kernels: Vec::new(),
        kernel_timing: String::new(),
        skipped: Vec::new(),
    };
    if opts.matmul {
        for &(name, dims, ta, tb) in MODEL_SHAPES {
            bench_matmul(
                &mut b,
                name,
                dims,
                (ta, tb),
                opts,
                &mut report.matmul,
                &mut report.skipped,
            )?;
        }
        for &n in &opts.sizes {
            bench_matmul(
                &mut b,
                &format!("square {n}"),
                [n, n, n],
                (false, false),
                opts,
                &mut report.matmul,
                &mut report.skipped,
            )?;
        }
    }
    for config in &opts.configs {
        for loss in &opts.losses {
            let (row, mem) = bench_step(&mut b, config, loss, opts)?;
            report.steps.extend(row);
            if !report.memory.iter().any(|m| &m.config == config) {
                report.memory.push(mem);
            }
        }
    }
    if opts.profile {
        if let Bench::Gpu(g) = &mut b {
            let (rows, timestamps) = bench_profile(g)?;
            report.kernels = rows;
            report.kernel_timing = if timestamps {
                "GPU timestamps".into()
            } else {
                "wall clock per dispatch".into()
            };
        }
    }
    Ok(report)
}

/// `rows` under `head`, each column as wide as its widest cell; columns marked in `right`
/// (the numbers) align right.
fn table(head: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&width)
            .zip(right)
            .map(|((c, &w), &r)| {
                if r {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&mut head.iter().copied());
    for r in rows {
        out += &line(&mut r.iter().map(String::as_str));
    }
    out
}

/// The report as tables.
pub fn print(r: &Report) {
    println!(
        "selfish bench on {} ({}, {} CPU threads)",
        r.device, r.backend, r.threads
    );
    println!("settings: {}", r.settings);
    if !r.matmul.is_empty() {
        println!("\nmatmul (m x n x k, median of several runs)");
        let rows: Vec<Vec<String>> = r
            .matmul
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    format!("{}x{}x{}", m.m, m.n, m.k),
                    m.layout.to_string(),
                    m.variant.to_string(),
                    format!("{:.3}", m.ms),
                    format!("{:.2}", m.gflops),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["shape", "m x n x k", "layout", "variant", "ms", "GFLOP/s"],
                &[false, true, false, false, true, true],
                &rows,
            ),
        );
    }
    if !r.steps.is_empty() {
        println!("\ntraining step (forward, loss, backward, clip, AdamW)");
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.config.to_string(),
                    s.loss.to_string(),
                    s.batch.to_string(),
                    s.block.to_string(),
                    format!("{:.2}", s.median_ms),
                    format!("{:.0}", s.tokens_per_s),
                    s.timed_steps.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "config",
                    "loss",
                    "batch",
                    "block",
                    "median ms",
                    "tokens/s",
                    "steps"
                ],
                &[false, false, true, true, true, true, true],
                &rows,
            ),
        );
    }
    if !r.memory.is_empty() {
        println!("\nmemory (MiB)");
        let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
        let rows: Vec<Vec<String>> = r
            .memory
            .iter()
            .map(|m| {
                let sum = m.params_bytes + m.grads_bytes + m.optimizer_bytes + m.activations_bytes;
                vec![
                    m.config.to_string(),
                    mib(m.peak_bytes),
                    mib(m.params_bytes),
                    mib(m.grads_bytes),
                    mib(m.optimizer_bytes),
                    mib(m.activations_bytes),
                    mib(sum),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "config",
                    "held",
                    "params",
                    "grads",
                    "AdamW",
                    "activations",
                    "sum"
                ],
                &[false, true, true, true, true, true, true],
                &rows,
            ),
        );
    }
    if !r.kernels.is_empty() {
        println!(
            "\nkernels in one paper-config step, threshold loss ({})",
            r.kernel_timing
        );
        let mut rows: Vec<Vec<String>> = r
            .kernels
            .iter()
            .map(|k| {
                vec![
                    k.kernel.clone(),
                    k.dispatches.to_string(),
                    format!("{:.2}", k.ms),
                    format!("{:.1}%", 100.0 * k.share),
                ]
            })
            .collect();
        let total: f64 = r.kernels.iter().map(|k| k.ms).sum();
        rows.push(vec![
            "total".into(),
            String::new(),
            format!("{total:.2}"),
            String::new(),
        ]);
        print!(
            "{}",
            table(
                &["kernel", "dispatches", "ms", "share"],
                &[false, true, true, true],
                &rows,
            ),
        );
    }
    for s in &r.skipped {
        println!("skipped: {s}");
    }
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_columns_fit_their_widest_cell() {
        let rows = vec![
            vec!["plain".to_string(), "28.13".to_string()],
            vec![
                "margin:1+softminus:5+detach-threshold".to_string(),
                "129.40".to_string(),
            ],
        ];
        let t = table(&["loss", "ms"], &[false, true], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("loss{}      ms", " ".repeat(33)));
        assert_eq!(lines[1], format!("plain{}   28.13", " ".repeat(32)));
        assert!(lines[2].ends_with("threshold  129.40"), "{t}");
        // Every line as long as the header: the numbers' right edges line up.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
    }
}
