//! The `selfish` command line.

use std::process::ExitCode;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use selfish::args;
use selfish::bench;
use selfish::check;
use selfish::data::{self, Dataset};
use selfish::gpu;
use selfish::loss::Loss;
use selfish::model::GptConfig;
use selfish::runtime::{open_backend, Backend, GpuBackend};
use selfish::train::{self, TrainConfig};

/// The corpus path when --data is not given.
const DEFAULT_DATA: &str = "data/tinyshakespeare.txt";

fn load_dataset(path: Option<&Path>, low_resource_prob: f64) -> Result<Dataset> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => data::ensure_corpus(Path::new(DEFAULT_DATA))?,
    };
    let text = data::load_text(&path)?;
    Dataset::from_text(&text, low_resource_prob)
}

fn parse_margin(s: &str) -> Result<Option<f32>> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match s.parse::<f32>() {
        Ok(m) if m.is_finite() && m >= 0.0 => Ok(Some(m)),
        _ => bail!(
            "invalid margin '{s}': pass a finite number >= 0, or `off` for plain cross-entropy"
        ),
    }
}

fn model_config(a: &ModelArgs, vocab: usize) -> Result<(GptConfig, usize)> {
    let (mut cfg, mut batch) = match a.config.as_str() {
        "paper" => (GptConfig::paper(vocab), 12),
        "large" => (GptConfig::large(vocab), 64),
        other => bail!("unknown config '{other}': use paper or large"),
    };
    if let Some(v) = a.n_layer {
        cfg.n_layer = v;
    }
    if let Some(v) = a.n_head {
        cfg.n_head = v;
    }
    if let Some(v) = a.n_embd {
        cfg.n_embd = v;
    }
    if let Some(v) = a.block_size {
        cfg.block_size = v;
    }
    if let Some(v) = a.batch_size {
        batch = v;
    }
    cfg.validate()?;
    if batch == 0 {
        bail!("batch_size must be at least 1 (got 0): pass a positive --batch-size");
    }
    Ok((cfg, batch))
}

fn eval(
    checkpoint: &Path,
    data: Option<&Path>,
    json: bool,
    batch: usize,
    backend: Option<&str>,
) -> Result<ExitCode> {
    let mut be = open_backend(backend)?;
    let (model, vocab) = train::load_for_inference(be.as_mut(), checkpoint, batch)?;
    let path = match data {
        Some(p) => p.to_path_buf(),
        None => data::ensure_corpus(Path::new(DEFAULT_DATA))?,
    };
    let text = data::load_text(&path)?;
    let text_vocab = data::Vocab::from_text(&text)?;
    if text_vocab != vocab {
        bail!(
            "the alphabet of '{}' ({} characters) differs from the checkpoint's ({} characters): evaluate on the text the model was trained on",
            path.display(),
            text_vocab.len(),
            vocab.len()
        );
    }
    let dataset = Dataset::with_vocab(vocab, &text, 0.0)?;
    let mut results = Vec::new();
    for (name, tokens) in train::languages(&dataset, model.cfg.vocab_size) {
        let m = train::evaluate_language(&model, be.as_mut(), &tokens)?;
        results.push((name, m));
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(n, m)| (n.clone(), serde_json::to_value(m).unwrap()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        println!(
            "{:<8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "language", "tokens", "loss", "ppl", "best ppl", "at T", "acc", "rec@5", "MRR"
        );
        for (n, m) in &results {
            println!(
                "{:<8} {:>8} {:>8.4} {:>8.3} {:>9.3} {:>8.2} {:>8.4} {:>8.4} {:>8.4}",
                n,
                m.tokens,
                m.loss,
                m.ppl,
                m.best_ppl,
                m.best_temperature,
                m.accuracy,
                m.recall_at_5,
                m.mrr
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser)]
#[command(
    name = "selfish",
    version,
    about = "Character-level GPT training on any GPU through WebGPU, with the threshold (selfish-token) cross-entropy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Model size flags shared by `train` and `experiment`.
#[derive(clap::Args, Clone, Debug)]
struct ModelArgs {
    /// paper (4 layers, 4 heads, width 128, block 64, batch 12) or large (6, 6, 384, 256, 64).
    #[arg(long, default_value = "paper")]
    config: String,
    #[arg(long, value_parser = args::count)]
    n_layer: Option<usize>,
    #[arg(long, value_parser = args::count)]
    n_head: Option<usize>,
    #[arg(long, value_parser = args::count)]
    n_embd: Option<usize>,
    #[arg(long, value_parser = args::count)]
    block_size: Option<usize>,
    #[arg(long, value_parser = args::count)]
    batch_size: Option<usize>,
}

/// What a training run needs besides the model and the loss (`train` and `experiment`).
#[derive(clap::Args, Clone, Debug)]
struct RunArgs {
    /// Text file to train on (default: tiny Shakespeare, downloaded to data/ when missing).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 8000, value_parser = args::steps)]
    steps: u64,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f32,
    #[arg(long, default_value_t = 100, value_parser = args::steps)]
    warmup: u64,
    /// Share of training sequences written in the shifted (low-resource) alphabet; 0 for one language.
    #[arg(long, default_value_t = 0.02)]
    low_resource_prob: f64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Steps between validation losses and checkpoints (0: only at the end).
    #[arg(long, default_value_t = 500, value_parser = args::steps)]
    eval_interval: u64,
    /// Validation batches per language at each eval.
    #[arg(long, default_value_t = 20, value_parser = args::count)]
    eval_batches: usize,
    /// Steps between logged (and NaN-checked) training losses.
    #[arg(long, default_value_t = 50, value_parser = args::steps)]
    log_interval: u64,
    /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
    #[arg(long)]
    backend: Option<String>,
}

impl RunArgs {
    /// The dataset and a training configuration with the plain loss.
    fn config(&self, model: &ModelArgs, analysis: bool) -> Result<(Dataset, TrainConfig)> {
        let dataset = load_dataset(self.data.as_deref(), self.low_resource_prob)?;
        let (cfg, batch_size) = model_config(model, dataset.model_vocab())?;
        let tc = TrainConfig {
            model: cfg,
            batch_size,
            steps: self.steps,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            loss: Loss::PLAIN,
            low_resource_prob: self.low_resource_prob,
            seed: self.seed,
            eval_interval: self.eval_interval,
            eval_batches: self.eval_batches,
            log_interval: self.log_interval,
            stop_after: None,
            analysis,
        };
        tc.validate()?;
        Ok((dataset, tc))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Train the character-level GPT (plain or threshold cross-entropy).
    ///
    /// Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and exits with code
    /// 130; `--resume` continues from it exactly. Press Ctrl-C twice to quit without saving.
    #[command(allow_negative_numbers = true)]
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Threshold margin (a number >= 0), or `off`; combines with --loss (e.g. counterpart).
        #[arg(long, default_value = "off", allow_hyphen_values = true)]
        margin: String,
        /// plain, margin:M, hard:K, counterpart, sampled:K, or a '+' mix such as hard:8+counterpart.
        #[arg(long, default_value = "plain")]
        loss: String,
        /// Output folder for model.safetensors, state.safetensors and metrics.jsonl.
        #[arg(long, default_value = "runs/default")]
        out: PathBuf,
        /// Continue exactly from the checkpoint in --out (same settings and --data); an error
        /// if --out holds none. Without it, --out must not hold a checkpoint yet.
        #[arg(long)]
        resume: bool,
        /// Stop with a checkpoint after this step (the schedule still spans --steps); --resume later.
        #[arg(long, value_parser = args::steps)]
        stop_after: Option<u64>,
        /// Also log validation loss per token-frequency group and the embedding's gradient
        /// roles (groups.json, roles.jsonl), as `experiment` does.
        #[arg(long)]
        analysis: bool,
    },
    /// The Stop Jostling comparison: runs that differ only in the loss (plain cross-entropy and
    /// the threshold margins, by default), each evaluated, then report.md with plots.
    ///
    /// Every run starts from the same weights and sees the same batches. A finished run is
    /// not trained again and an interrupted one resumes, so rerunning the command continues.
    #[command(allow_negative_numbers = true)]
    Experiment {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Threshold margins to compare with plain cross-entropy (`none` for no margin runs).
        #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5")]
        margins: Vec<String>,
        /// More runs, as --loss spells them (e.g. sampled:5,hard:8,counterpart+margin:1).
        #[arg(long, value_delimiter = ',')]
        also: Vec<String>,
        /// Leave out the plain cross-entropy baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Output folder: runs/<loss>/ for each run, report.md, results.json and plots/.
        #[arg(long, default_value = "runs/experiment")]
        out: PathBuf,
    },
    /// Per-language loss, perplexity (with a temperature sweep), accuracy, recall@5 and MRR.
    #[command(allow_negative_numbers = true)]
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 12, value_parser = args::count)]
        batch_size: usize,
        #[arg(long)]
        backend: Option<String>,
    },
    /// Generate text from a checkpoint.
    #[command(allow_negative_numbers = true)]
    Sample {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "\n")]
        prompt: String,
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// base or shifted (the low-resource alphabet, when the model has it).
        #[arg(long, default_value = "base")]
        alphabet: String,
        #[arg(long)]
        backend: Option<String>,
    },
    /// Matmul GFLOP/s per kernel variant, training-step time and tokens/s, per-kernel time
    /// and memory (compare with `python3 tools/bench_torch.py`).
    Bench {
        /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        json: bool,
        /// Model configs to time a training step of.
        #[arg(long, value_delimiter = ',', default_value = "paper,large")]
        configs: Vec<String>,
        /// Losses to time, as --loss spells them.
        #[arg(long, value_delimiter = ',', default_value = "plain,margin:1")]
        losses: Vec<String>,
        /// Timed steps per config and loss (fewer when --max-seconds runs out).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Square matmul sizes.
        #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
        sizes: Vec<u32>,
        /// Skip a measurement whose single run takes longer than this.
        #[arg(long, default_value_t = 10.0)]
        max_seconds: f64,
        #[arg(long)]
        no_matmul: bool,
        #[arg(long)]
        no_profile: bool,
    },
    /// Time every matmul variant on the products a model runs and cache the fastest per
    /// shape for this adapter (later runs use them; `SELFISH_TUNED=0` ignores the cache).
    Tune {
        #[command(flatten)]
        model: ModelArgs,
        /// Vocabulary size of the model to tune for (130: tiny Shakespeare, two alphabets).
        #[arg(long, default_value_t = 130)]
        vocab: usize,
        #[arg(long)]
        backend: Option<String>,
        /// Skip a variant whose single run takes longer than this.
        #[arg(long, default_value_t = 5.0)]
        max_seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// List every GPU adapter wgpu can see, with the limits that matter for training.
    Devices {
        /// Only this backend: vulkan, metal, dx12 or gl.
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run every kernel on the GPU and on its CPU twin and compare them.
    Check {
        /// vulkan, metal, dx12 or gl (default: wgpu's choice, honouring WGPU_BACKEND).
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        json: bool,
        /// Seed for the random inputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only ops whose name contains this (e.g. `matmul`, `attention`).
        #[arg(long)]
        op: Option<String>,
        /// Check the whole model against a PyTorch fixture folder instead (any backend, `cpu` too).
        #[arg(long)]
        fixture: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help, version, and a bare `selfish`: clap's own output is what the user asked for.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", args::clap_error_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string().replace('\n', " "))
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Train {
            model,
            run,
            margin,
            loss,
            out,
            resume,
            stop_after,
            analysis,
        } => {
            let (dataset, mut tc) = run.config(&model, analysis)?;
            tc.loss = Loss::parse(&loss)?.with_margin(parse_margin(&margin)?)?;
            tc.stop_after = stop_after;
            let (cfg, steps, backend) = (tc.model, tc.steps, run.backend);
            train::preflight(&dataset, &tc, &out, resume)?;
            let mut be = open_backend(backend.as_deref())?;
            catch_ctrl_c();
            eprintln!(
                "training on {}: {} parameters, {} steps, loss {}",
                be.name(),
                cfg.num_params(),
                steps,
                tc.loss
            );
            let s = train::train(be.as_mut(), &dataset, &tc, &out, resume, true)?;
            if s.interrupted && s.step == 0 {
                eprintln!("interrupted before the first step: nothing was saved");
                return Ok(ExitCode::from(130));
            }
            if s.interrupted {
                eprintln!(
                    "interrupted: checkpoint of step {} of {steps} saved in '{}'; continue with the same command plus --resume",
                    s.step,
                    out.display()
                );
                return Ok(ExitCode::from(130));
            }
            if s.losses.is_empty() {
                println!(
                    "nothing to train: the checkpoint in '{}' is at step {}",
                    out.display(),
                    s.step
                );
            } else {
                println!(
                    "final training loss {:.4}; checkpoint {}",
                    s.final_loss,
                    train::model_path(&out).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Experiment {
            model,
            run,
            margins,
            also,
            no_baseline,
            out,
        } => {
            let mut losses = Vec::new();
            if !no_baseline {
                losses.push(Loss::PLAIN);
            }
            if !(margins.len() == 1 && margins[0].eq_ignore_ascii_case("none")) {
                for m in &margins {
                    let margin = selfish::loss::parse_margin(m).ok_or_else(|| {
                        anyhow::anyhow!(
                            "invalid margin '{m}' in --margins: pass numbers >= 0 separated by commas, or none"
                        )
                    })?;
                    losses.push(Loss {
                        margin: Some(margin),
                        ..Loss::PLAIN
                    });
                }
            }
            for a in &also {
                losses.push(Loss::parse(a)?);
            }
            let (dataset, base) = run.config(&model, true)?;
            let command: Vec<String> = std::env::args().collect();
            let mut be = open_backend(run.backend.as_deref())?;
            catch_ctrl_c();
            eprintln!(
                "experiment on {}: {} runs of {} steps ({})",
                be.name(),
                losses.len(),
                base.steps,
                losses
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match selfish::experiment::run(
                be.as_mut(),
                &dataset,
                &base,
                &losses,
                &out,
                &command.join(" "),
                true,
            )? {
                Some(evals) => {
                    println!("{}", selfish::report::verdict(&evals));
                    println!("report: {}", out.join("report.md").display());
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "interrupted: the current run's checkpoint is saved; run the same command again to continue"
                    );
                    Ok(ExitCode::from(130))
                }
            }
        }
        Cmd::Eval {
            checkpoint,
            data,
            json,
            batch_size,
            backend,
        } => eval(
            &checkpoint,
            data.as_deref(),
            json,
            batch_size,
            backend.as_deref(),
        ),
        Cmd::Sample {
            checkpoint,
            prompt,
            tokens,
            temperature,
            seed,
            alphabet,
            backend,
        } => {
            let mut be = open_backend(backend.as_deref())?;
            let (model, vocab) = train::load_for_inference(be.as_mut(), &checkpoint, 1)?;
            let prompt = prompt.replace("\\n", "\n");
            if prompt.is_empty() {
                bail!("--prompt is empty: give at least one character");
            }
            let shift = match alphabet.as_str() {
                "base" => 0,
                "shifted" if model.cfg.vocab_size == 2 * vocab.len() => vocab.len() as u32,
                "shifted" => bail!("this model has no shifted alphabet (it was trained with --low-resource-prob 0): use --alphabet base"),
                other => bail!("unknown alphabet '{other}': use base or shifted"),
            };
            let ids: Vec<u32> = vocab.encode(&prompt)?.iter().map(|&i| i + shift).collect();
            let mut rng = selfish::rng::Rng::new(seed);
            let out = train::sample(&model, be.as_mut(), &ids, tokens, temperature, &mut rng)?;
            println!("{}{}", prompt, vocab.decode(&out));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Devices { backend, json } => devices(backend.as_deref(), json),
        Cmd::Tune {
            model,
            vocab,
            backend,
            max_seconds,
            json,
        } => {
            let (cfg, batch) = model_config(&model, vocab)?;
            let mut gpu = GpuBackend::open(backend.as_deref())?;
            let mark = gpu.mark();
            selfish::model::Gpt::new(
                &mut gpu,
                cfg,
                batch,
                selfish::loss::Loss::PLAIN,
                selfish::model::OptConfig::default(),
            )?;
            gpu.release(mark);
            let rows = selfish::tune::tune(&mut gpu, max_seconds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("adapter: {}", gpu.gpu.describe());
                for r in &rows {
                    let times: Vec<String> = r
                        .times
                        .iter()
                        .map(|(v, ms)| format!("{v} {ms:.3} ms"))
                        .collect();
                    println!("{:<28} best {:<9} ({})", r.shape, r.best, times.join(", "));
                }
                if let Some(p) = selfish::tune::cache_path() {
                    println!("saved to {}", p.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            backend,
            json,
            configs,
            losses,
            steps,
            warmup,
            sizes,
            max_seconds,
            no_matmul,
            no_profile,
        } => {
            let opts = bench::Options {
                configs,
                losses,
                warmup,
                steps,
                sizes,
                max_seconds,
                matmul: !no_matmul,
                profile: !no_profile,
            };
            for l in &opts.losses {
                selfish::loss::Loss::parse(l)?;
            }
            for c in &opts.configs {
                bench::named_config(c, 130)?;
            }
            let report = if backend
                .as_deref()
                .is_some_and(|b| b.eq_ignore_ascii_case("cpu"))
            {
                let mut cpu = selfish::runtime::CpuBackend::new();
                bench::run(bench::Bench::Cpu(&mut cpu), &opts)?
            } else {
                let mut gpu = GpuBackend::open(backend.as_deref())?;
                bench::run(bench::Bench::Gpu(&mut gpu), &opts)?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                bench::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            backend,
            json,
            seed,
            op,
            fixture,
        } => match fixture {
            Some(dir) => check_fixture(backend.as_deref(), json, &dir),
            None => check_kernels(backend.as_deref(), json, seed, op.as_deref()),
        },
    }
}

/// First Ctrl-C (or SIGTERM): let `train` save a checkpoint after its current step. Second:
/// quit at once; checkpoints are written atomically, so the last one stays whole.
fn catch_ctrl_c() {
    let handler = || {
        if train::stop_requested() {
            eprintln!("\ninterrupted again: quitting without saving; the last checkpoint in --out is intact");
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step to save a checkpoint (Ctrl-C again quits without saving)"
        );
        train::request_stop();
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("warning: Ctrl-C will not save a checkpoint ({e})");
    }
}

fn devices(backend: Option<&str>, json: bool) -> Result<ExitCode> {
    let list = gpu::list_devices(backend)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no adapters found");
    }
    for (i, d) in list.iter().enumerate() {
        println!("[{i}] {} ({}, {})", d.name, d.backend, d.device_type);
        println!("    driver: {} {}", d.driver, d.driver_info);
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, {} invocations/workgroup, {} workgroups/dim",
            d.max_storage_buffer_binding_size >> 20,
            d.max_buffer_size >> 20,
            d.max_compute_workgroup_storage_size >> 10,
            d.max_compute_invocations_per_workgroup,
            d.max_compute_workgroups_per_dimension
        );
        println!(
            "    subgroup size {}..{}, timestamps {}, compute {}",
            d.subgroup_min_size,
            d.subgroup_max_size,
            if d.timestamp_query { "yes" } else { "no" },
            if d.compute_shaders { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rows(adapter: &str, rows: &[check::Row], json: bool) -> Result<ExitCode> {
    let failed = rows.iter().filter(|r| !r.ok).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "adapter": adapter,
                "rows": rows,
                "failed": failed,
            }))?
        );
    } else {
        println!("adapter: {adapter}");
        println!(
            "{:<44} {:>11} {:>11} {:>9}  ok",
            "quantity", "max abs", "max rel", "tol"
        );
        for r in rows {
            println!(
                "{:<44} {:>11.3e} {:>11.3e} {:>9.1e}  {}",
                r.op,
                r.max_abs_err,
                r.max_rel_err,
                r.tol,
                if r.ok { "ok" } else { "FAIL" }
            );
        }
        println!("{} rows, {} failed", rows.len(), failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_fixture(backend: Option<&str>, json: bool, dir: &std::path::Path) -> Result<ExitCode> {
    let mut be = selfish::runtime::open_backend(backend)?;
    let rows = selfish::fixture::check_fixture(be.as_mut(), dir)?;
    print_rows(&be.name(), &rows, json)
}

fn check_kernels(
    backend: Option<&str>,
    json: bool,
    seed: u64,
    only: Option<&str>,
) -> Result<ExitCode> {
    let mut gpu = GpuBackend::open(backend)?;
    if !json {
        println!("adapter: {}", gpu.gpu.describe());
        println!(
            "{:<32} {:<30} {:>11} {:>11} {:>9}  ok",
            "op", "shape", "max abs", "max rel", "tol"
        );
    }
    let mut rows = Vec::new();
    let cases = check::cases()
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.op.contains(o)));
    for case in cases {
        for row in check::run_case(&mut gpu, &case, seed)? {
            if !json {
                println!(
                    "{:<32} {:<30} {:>11.3e} {:>11.3e} {:>9.1e}  {}",
                    row.op,
                    row.shape,
                    row.max_abs_err,
                    row.max_rel_err,
                    row.tol,
                    if row.ok { "ok" } else { "FAIL" }
                );
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        anyhow::bail!("no kernel matches --op {}: try matmul, softmax, threshold, cross_entropy, sampled, layernorm, gelu, attention, embedding, residual or adamw", only.unwrap_or(""));
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "adapter": gpu.gpu.describe(),
                "rows": rows,
                "failed": failed,
            }))?
        );
    } else {
        println!("{} rows, {} failed", rows.len(), failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
