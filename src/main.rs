//! The `selfish` command line: parsing, one small function per subcommand over library
//! calls, and printing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use selfish::compare::Row;
use selfish::data::{self, Dataset};
use selfish::loss::{self, Loss};
use selfish::metrics::LangMetrics;
use selfish::model::{GptConfig, Preset};
use selfish::runtime::GpuBackend;
use selfish::settings::{parse_margin, RunSettings};
use selfish::train::{self, TrainConfig};
use selfish::{args, bench, check, eval, experiment, fixture, gpu, report, serve, tune};

/// The corpus path when --data is not given.
const DEFAULT_DATA: &str = "data/tinyshakespeare.txt";

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

/// Model size flags shared by `train`, `experiment` and `tune`.
#[derive(clap::Args, Clone, Debug)]
struct ModelArgs {
    /// paper (4 layers, 4 heads, width 128, block 64, batch 12), large (6, 6, 384, 256, 64)
    /// or tiny (2, 2, 64, 32, 8).
    #[arg(long, default_value = "paper")]
    config: String,
    /// Transformer blocks (overrides --config).
    #[arg(long, value_parser = args::count)]
    n_layer: Option<usize>,
    /// Attention heads per block; must divide --n-embd.
    #[arg(long, value_parser = args::count)]
    n_head: Option<usize>,
    /// Width of the residual stream.
    #[arg(long, value_parser = args::count)]
    n_embd: Option<usize>,
    /// Context length in characters.
    #[arg(long, value_parser = args::count)]
    block_size: Option<usize>,
    /// Sequences per training step.
    #[arg(long, value_parser = args::count)]
    batch_size: Option<usize>,
    /// A separate output head (nanoGPT's `lm_head.weight`), so `wte` is only the input table.
    #[arg(long)]
    untied: bool,
}

impl ModelArgs {
    /// The model for a vocabulary, and its batch size.
    fn config(&self, vocab: usize) -> Result<(GptConfig, usize)> {
        let p = Preset::find(&self.config)?;
        let mut cfg = p.config(vocab);
        cfg.untied = self.untied;
        for (flag, v) in [
            (&mut cfg.n_layer, self.n_layer),
            (&mut cfg.n_head, self.n_head),
            (&mut cfg.n_embd, self.n_embd),
            (&mut cfg.block_size, self.block_size),
        ] {
            if let Some(v) = v {
                *flag = v;
            }
        }
        cfg.validate()?;
        Ok((cfg, self.batch_size.unwrap_or(p.batch_size)))
    }
}

/// What a training run needs besides the model and the loss (`train` and `experiment`).
#[derive(clap::Args, Clone, Debug)]
struct RunArgs {
    /// Text file to train on (default: tiny Shakespeare in data/, downloaded when missing).
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    settings: RunSettings,
    /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
    #[arg(long)]
    backend: Option<String>,
}

impl RunArgs {
    /// The dataset and a training configuration with the plain loss.
    fn config(&self, model: &ModelArgs, analysis: bool) -> Result<(Dataset, TrainConfig)> {
        let dataset = load_dataset(self.data.as_deref(), self.settings.low_resource_prob)?;
        let (cfg, batch_size) = model.config(dataset.model_vocab())?;
        let tc = self
            .settings
            .train_config(cfg, batch_size, Loss::plain(), analysis)?;
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
    Train(TrainArgs),
    /// The Stop Jostling comparison: runs that differ only in the loss (plain cross-entropy and
    /// the threshold margins, by default, or a --preset), each repeated per seed and
    /// evaluated, then report.md with statistics over seeds and plots.
    ///
    /// Within a seed every run starts from the same weights and sees the same batches. A
    /// finished run is not trained again and an interrupted one resumes, so rerunning the
    /// command continues. Each (run, seed) is a job that claims its folder, so several
    /// commands (--jobs, or --plan under a batch system) can share one --out.
    #[command(allow_negative_numbers = true)]
    Experiment(ExperimentArgs),
    /// Per-language loss, perplexity (with a temperature sweep), accuracy, recall@5 and MRR.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Generate text from a checkpoint.
    #[command(allow_negative_numbers = true)]
    Sample(SampleArgs),
    /// Matmul GFLOP/s per kernel variant, training-step time and tokens/s, per-kernel time
    /// and memory (compare with `python3 tools/bench_torch.py`).
    Bench(BenchArgs),
    /// Time every matmul variant on the products a model runs and cache the fastest per
    /// shape for this adapter (later runs use them; `SELFISH_TUNED=0` ignores the cache).
    Tune(TuneArgs),
    /// List every GPU adapter wgpu can see, with the limits that matter for training.
    Devices(DevicesArgs),
    /// Serve the page that trains in the browser (WebGPU) on 127.0.0.1; build it first with
    /// web/build.sh.
    Serve(ServeArgs),
    /// Run every kernel on the GPU and on its CPU twin and compare them.
    Check(CheckArgs),
}

/// `selfish train`.
#[derive(clap::Args, Clone, Debug)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Threshold margin (a number >= 0), or `off`; combines with --loss (e.g. counterpart).
    #[arg(long, default_value = "off", allow_hyphen_values = true)]
    margin: String,
    /// The training loss; the spellings:
    #[arg(long, default_value = "plain", long_help = loss_help())]
    loss: String,
    /// Logits times S in training only (the paper's training temperature; = --loss ...+logit-scale:S).
    #[arg(long, value_name = "S", value_parser = args::positive)]
    logit_scale: Option<f32>,
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
}

/// `selfish experiment`.
#[derive(clap::Args, Clone, Debug)]
struct ExperimentArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
    /// A named set of runs: claim (plain, margins 2 and 1), margins (plain, margins 8, 4,
    /// 2, 1, 0.5) or paper (every row of the paper's table).
    #[arg(long)]
    preset: Option<String>,
    /// Threshold margins to compare with plain cross-entropy (`none` for no margin runs;
    /// default 8,4,2,1,0.5 without a preset, none with one).
    #[arg(long, value_delimiter = ',')]
    margins: Option<Vec<String>>,
    /// More runs, as --loss spells them, with options after @ (untied,
    /// low-resource-only): e.g. sampled:5,margin:1@untied.
    #[arg(long, value_delimiter = ',')]
    also: Vec<String>,
    /// Leave out the plain cross-entropy baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Seeds to repeat every run with: a count (5: seeds 1..5) or a list (1,2,3; 7, for
    /// seed 7 alone). Default: --seed.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Evaluate each run's best-validation checkpoint (as the paper did) or its last.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Jobs to run at once on this machine.
    #[arg(long, default_value_t = 1, value_parser = args::count)]
    jobs: usize,
    /// Print one command per unfinished job (for GNU parallel, a Slurm array, ...) and exit.
    #[arg(long)]
    plan: bool,
    /// Write the report from the finished jobs, list the rest, train nothing.
    #[arg(long)]
    report_only: bool,
    /// Train and evaluate, but leave the report to a later --report-only.
    #[arg(long)]
    no_report: bool,
    /// Only the run this spec names (as --also spells it); writes no report.
    #[arg(long)]
    only: Option<String>,
    /// Output folder: runs/<run>/seed-<s>/ for each job, report.md, results.json, plots/.
    #[arg(long, default_value = "runs/experiment")]
    out: PathBuf,
}

/// `selfish eval`.
#[derive(clap::Args, Clone, Debug)]
struct EvalArgs {
    /// A model.safetensors (or best.safetensors) written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text the model was trained on (default: tiny Shakespeare in data/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Validation windows per forward pass.
    #[arg(long, default_value_t = 12, value_parser = args::count)]
    batch_size: usize,
    /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
    #[arg(long)]
    backend: Option<String>,
}

/// `selfish sample`.
#[derive(clap::Args, Clone, Debug)]
struct SampleArgs {
    /// A model.safetensors written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue (`\n` for a newline).
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Softmax temperature; 0 or less picks the most likely character.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// base or shifted (the low-resource alphabet, when the model has it).
    #[arg(long, default_value = "base")]
    alphabet: String,
    /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
    #[arg(long)]
    backend: Option<String>,
}

/// `selfish bench`.
#[derive(clap::Args, Clone, Debug)]
struct BenchArgs {
    /// vulkan, metal, dx12, gl, or cpu (the CPU twins).
    #[arg(long)]
    backend: Option<String>,
    /// Print JSON (the shape tools/bench_torch.py prints) instead of tables.
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
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Square matmul sizes.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    sizes: Vec<u32>,
    /// Skip a measurement whose single run takes longer than this.
    #[arg(long, default_value_t = 10.0)]
    max_seconds: f64,
    /// Leave out the matmul table.
    #[arg(long)]
    no_matmul: bool,
    /// Leave out the per-kernel profile.
    #[arg(long)]
    no_profile: bool,
}

/// `selfish tune`.
#[derive(clap::Args, Clone, Debug)]
struct TuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Vocabulary size of the model to tune for (130: tiny Shakespeare, two alphabets).
    #[arg(long, default_value_t = 130)]
    vocab: usize,
    /// vulkan, metal, dx12 or gl.
    #[arg(long)]
    backend: Option<String>,
    /// Skip a variant whose single run takes longer than this.
    #[arg(long, default_value_t = 5.0)]
    max_seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `selfish devices`.
#[derive(clap::Args, Clone, Debug)]
struct DevicesArgs {
    /// Only this backend: vulkan, metal, dx12 or gl.
    #[arg(long)]
    backend: Option<String>,
    /// Print JSON instead of a list.
    #[arg(long)]
    json: bool,
}

/// `selfish serve`.
#[derive(clap::Args, Clone, Debug)]
struct ServeArgs {
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The selfish repository holding web/ and data/ (default: the current folder, else
    /// the checkout this binary was built from).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `selfish check`.
#[derive(clap::Args, Clone, Debug)]
struct CheckArgs {
    /// vulkan, metal, dx12 or gl (default: wgpu's choice, honouring WGPU_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Print JSON instead of a table.
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
    fixture: Option<PathBuf>,
}

fn loss_help() -> String {
    format!(
        "The training loss (validation always reports plain cross-entropy):\n{}",
        loss::help()
    )
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
        Cmd::Train(a) => cmd_train(a),
        Cmd::Experiment(a) => cmd_experiment(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Sample(a) => cmd_sample(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Tune(a) => cmd_tune(a),
        Cmd::Devices(a) => cmd_devices(a),
        Cmd::Serve(a) => cmd_serve(a),
        Cmd::Check(a) => cmd_check(a),
    }
}

fn cmd_sample(a: SampleArgs) -> Result<ExitCode> {
    let mut be = tune::open(a.backend.as_deref())?;
    let prompt = a.prompt.replace("\\n", "\n");
    let opts = eval::SampleArgs {
        tokens: a.tokens,
        temperature: a.temperature,
        seed: a.seed,
        alphabet: &a.alphabet,
    };
    let text = eval::sample_checkpoint(be.as_mut(), &a.checkpoint, &prompt, &opts)?;
    println!("{prompt}{text}");
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench(a: BenchArgs) -> Result<ExitCode> {
    let opts = bench::Options {
        configs: a.configs,
        losses: a.losses,
        warmup: a.warmup,
        steps: a.steps,
        sizes: a.sizes,
        max_seconds: a.max_seconds,
        matmul: !a.no_matmul,
        profile: !a.no_profile,
    };
    let report = bench::run_named(a.backend.as_deref(), &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn load_dataset(path: Option<&Path>, low_resource_prob: f64) -> Result<Dataset> {
    let text = data::load_text(&corpus(path)?)?;
    Dataset::from_text(&text, low_resource_prob)
}

/// `--data`, or tiny Shakespeare (checked, downloaded when missing).
fn corpus(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => data::ensure_corpus(Path::new(DEFAULT_DATA)),
    }
}

fn cmd_train(a: TrainArgs) -> Result<ExitCode> {
    let (model, run, out, resume) = (&a.model, &a.run, a.out.as_path(), a.resume);
    let (dataset, mut tc) = run.config(model, a.analysis)?;
    tc.loss = Loss::from_flags(&a.loss, parse_margin(&a.margin)?, a.logit_scale)?;
    tc.stop_after = a.stop_after;
    selfish::checkpoint::preflight(&dataset, &tc, out, resume)?;
    let mut be = tune::open(run.backend.as_deref())?;
    catch_ctrl_c();
    eprintln!(
        "training on {}: {} parameters, {} steps, loss {}{}",
        be.name(),
        tc.model.num_params(),
        tc.steps,
        tc.loss,
        if tc.model.untied { ", untied head" } else { "" }
    );
    let s = train::train(be.as_mut(), &dataset, &tc, out, resume, true)?;
    let shown = out.display();
    if s.interrupted && s.step == 0 {
        eprintln!("interrupted before the first step: nothing was saved");
        return Ok(ExitCode::from(130));
    }
    if s.interrupted {
        eprintln!(
            "interrupted: checkpoint of step {} of {} saved in '{shown}'; continue with the same command plus --resume",
            s.step, tc.steps
        );
        return Ok(ExitCode::from(130));
    }
    if s.losses.is_empty() {
        println!(
            "nothing to train: the checkpoint in '{shown}' is at step {}",
            s.step
        );
    } else {
        let path = selfish::checkpoint::model_path(out);
        println!(
            "final training loss {:.4}; checkpoint {}",
            s.final_loss,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `experiment` does with its jobs.
enum Mode {
    Plan,
    ReportOnly,
    Train { jobs: usize, report: bool },
}

fn cmd_experiment(a: ExperimentArgs) -> Result<ExitCode> {
    let margins = a.margins.clone().unwrap_or_else(|| {
        let default = if a.preset.is_some() {
            "none"
        } else {
            "8,4,2,1,0.5"
        };
        default.split(',').map(String::from).collect()
    });
    let mut runs = experiment::runs(a.preset.as_deref(), &margins, &a.also, a.no_baseline)?;
    if let Some(o) = &a.only {
        runs = experiment::only(runs, o)?;
    }
    let seeds = match &a.seeds {
        Some(s) => experiment::parse_seeds(s)?,
        None => vec![a.run.settings.seed],
    };
    let (data, base) = a.run.config(&a.model, true)?;
    let x = experiment::Experiment {
        base,
        runs,
        seeds,
        out: a.out.clone(),
        pick: experiment::Pick::parse(&a.checkpoint)?,
    };
    let (x, data, backend) = (&x, &data, a.run.backend.as_deref());
    let mode = if a.plan {
        Mode::Plan
    } else if a.report_only {
        Mode::ReportOnly
    } else {
        // A subset's report would stand in for the whole experiment's.
        Mode::Train {
            jobs: a.jobs,
            report: !a.no_report && a.only.is_none(),
        }
    };
    let argv: Vec<String> = std::env::args().collect();
    let command = argv.join(" ");
    let report = |verbose: bool| -> Result<()> {
        let (evals, missing) = experiment::collect(x)?;
        if evals.is_empty() {
            bail!(
                "no job of this experiment has finished in '{}': train first (drop --report-only)",
                x.out.display()
            );
        }
        report::write(x, &evals, &missing, &command)?;
        if verbose {
            println!("{}", report::verdict(x, &evals));
        }
        for m in &missing {
            println!("not finished: {m}");
        }
        println!("report: {}", x.out.join("report.md").display());
        Ok(())
    };
    match mode {
        Mode::Plan => {
            x.check(data)?;
            for line in experiment::plan(x, &argv)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Mode::ReportOnly => {
            report(true)?;
            Ok(ExitCode::SUCCESS)
        }
        Mode::Train {
            jobs,
            report: write,
        } => {
            catch_ctrl_c();
            let n = x.jobs().len();
            eprintln!(
                "experiment: {} runs x {} seeds = {n} jobs of {} steps, {jobs} at a time",
                x.runs.len(),
                x.seeds.len(),
                x.base.steps
            );
            let open = || tune::open(backend);
            let say = |m: &str| eprintln!("{m}");
            let done = experiment::run_all(x, data, jobs, &open, &say)?;
            if done.stopped {
                eprintln!("interrupted: the current jobs' checkpoints are saved; run the same command again to continue");
                return Ok(ExitCode::from(130));
            }
            if write {
                report(true)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_eval(a: EvalArgs) -> Result<ExitCode> {
    let mut be = tune::open(a.backend.as_deref())?;
    let data = corpus(a.data.as_deref())?;
    let (results, which) =
        eval::evaluate_checkpoint(be.as_mut(), &a.checkpoint, &data, a.batch_size)?;
    if a.json {
        eprintln!("{which}");
        let obj: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(n, m)| Ok((n.clone(), serde_json::to_value(m)?)))
            .collect::<Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{which}");
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "language", "tokens", "loss", "ppl", "best ppl", "at T", "acc", "rec@5", "MRR"
    );
    for (n, m) in &results {
        let LangMetrics {
            tokens,
            loss,
            ppl,
            best_ppl,
            best_temperature,
            accuracy,
            recall_at_5,
            mrr,
        } = m;
        println!(
            "{n:<8} {tokens:>8} {loss:>8.4} {ppl:>8.3} {best_ppl:>9.3} {best_temperature:>8.2} {accuracy:>8.4} {recall_at_5:>8.4} {mrr:>8.4}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_tune(a: TuneArgs) -> Result<ExitCode> {
    let (cfg, batch) = a.model.config(a.vocab)?;
    let mut gpu = tune::open_gpu(a.backend.as_deref())?;
    let rows = tune::tune_model(&mut gpu, cfg, batch, a.max_seconds)?;
    let json = a.json;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("adapter: {}", gpu.gpu().describe());
    for r in &rows {
        let times: Vec<String> = r
            .times
            .iter()
            .map(|(v, ms)| format!("{v} {ms:.3} ms"))
            .collect();
        println!("{:<28} best {:<9} ({})", r.shape, r.best, times.join(", "));
    }
    if let Some(p) = tune::cache_path() {
        println!("saved to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
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

fn cmd_serve(a: ServeArgs) -> Result<ExitCode> {
    let root = serve::root(a.dir.as_deref())?;
    let listener = serve::bind(a.port)?;
    if !root.join("web/pkg/selfish.js").is_file() {
        eprintln!(
            "warning: web/pkg is missing under '{}': build the page with web/build.sh",
            root.display()
        );
    }
    println!(
        "serving the page at http://{}/ (Ctrl-C stops)",
        listener.local_addr()?
    );
    serve::serve(&root, listener)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_devices(a: DevicesArgs) -> Result<ExitCode> {
    let (list, json) = (gpu::list_devices(a.backend.as_deref())?, a.json);
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
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "    subgroup size {}..{}, timestamps {}, compute {}",
            d.subgroup_min_size,
            d.subgroup_max_size,
            yes(d.timestamp_query),
            yes(d.compute_shaders)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The one row printer: a table printed as rows arrive (long checks show progress), or JSON
/// with the adapter and the failure count at the end.
/// Width of the quantity column: fits a fixture's longest names
/// (`untied-margin-2: grad.step0.transformer.h.0.mlp.c_proj.weight [32, 128]`); longer ones push
/// their row's figures right rather than being cut.
const QUANTITY: usize = 74;

struct Rows {
    json: bool,
    adapter: String,
    rows: Vec<Row>,
}

impl Rows {
    fn new(adapter: String, json: bool) -> Rows {
        if !json {
            println!("adapter: {adapter}");
            println!(
                "{:<QUANTITY$} {:>11} {:>11} {:>9}  ok",
                "quantity [shape]", "max abs", "max rel", "tol"
            );
        }
        Rows {
            json,
            adapter,
            rows: Vec::new(),
        }
    }

    fn push(&mut self, r: Row) {
        if !self.json {
            let ok = if r.ok { "ok" } else { "FAIL" };
            println!(
                "{:<QUANTITY$} {:>11.3e} {:>11.3e} {:>9.1e}  {ok}",
                format!("{} {}", r.op, r.shape),
                r.max_abs_err,
                r.max_rel_err,
                r.tol
            );
        }
        self.rows.push(r);
    }

    /// Exits 1 when any row failed.
    fn finish(self) -> Result<ExitCode> {
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        if self.json {
            let doc =
                serde_json::json!({ "adapter": self.adapter, "rows": self.rows, "failed": failed });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!("{} rows, {} failed", self.rows.len(), failed);
        }
        Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

fn cmd_check(a: CheckArgs) -> Result<ExitCode> {
    if let Some(dir) = &a.fixture {
        let mut be = selfish::runtime::open_backend(a.backend.as_deref())?;
        let mut rows = Rows::new(be.name(), a.json);
        for r in fixture::check_fixture(be.as_mut(), dir)? {
            rows.push(r);
        }
        return rows.finish();
    }
    let (json, seed, only) = (a.json, a.seed, a.op.as_deref());
    let mut gpu = GpuBackend::open(a.backend.as_deref())?;
    let cases: Vec<_> = check::cases()
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.op.contains(o)))
        .collect();
    if cases.is_empty() {
        let names: Vec<&str> = selfish::kernels::OPS.iter().map(|o| o.name).collect();
        bail!(
            "no kernel matches --op {}: try {}",
            only.unwrap_or(""),
            names.join(", ")
        );
    }
    let mut rows = Rows::new(gpu.gpu().describe(), json);
    for case in &cases {
        for r in check::run_case(&mut gpu, case, seed)? {
            rows.push(r);
        }
    }
    rows.finish()
}
