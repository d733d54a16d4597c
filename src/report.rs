//! The experiment's `report.md`, `results.json` and plots, built from the files each job left
//! in its folder, so a report can be redrawn without training (`--report-only`).
//!
//! Per run and metric: the mean over seeds, the standard deviation, a 95% Student-t interval
//! and every seed's value; per run against plain, the paired difference (same seed, same
//! weights and batches) with its interval and a verdict in words.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::{own_signal_ratio, FreqGroups, Roles, RolesMean};
use crate::experiment::stats::{paired, summarize, Paired, Summary, Verdict};
use crate::experiment::{job_dir, Experiment, Pick, RunEval, RunSpec};
use crate::plot::{chart, intervals, Band, Interval, Mark, Panel, Series};
use crate::train::TrainConfig;

/// The paper's figures for one row of its table (tiny Shakespeare, 2% second alphabet, the
/// 4-layer model, 8000 steps, best-validation checkpoints): low-resource ppl at T = 1, best
/// and its T, high-resource ppl at T = 1 and best, low-resource accuracy.
pub struct PaperRow {
    /// The run spec, as `--also` spells it.
    pub run: &'static str,
    pub lr_ppl: f64,
    pub lr_best: f64,
    pub lr_t: Option<f64>,
    pub hr_ppl: Option<f64>,
    pub hr_best: Option<f64>,
    pub lr_acc: f64,
}

#[rustfmt::skip]
#[allow(clippy::approx_constant)] // 0.318 is the paper's accuracy, not 1/π
pub const PAPER: &[PaperRow] = &[
    PaperRow { run: "plain", lr_ppl: 10.65, lr_best: 10.63, lr_t: Some(0.95), hr_ppl: Some(5.04), hr_best: Some(5.01), lr_acc: 0.315 },
    PaperRow { run: "plain@low-resource-only", lr_ppl: 12.24, lr_best: 12.08, lr_t: Some(0.89), hr_ppl: None, hr_best: None, lr_acc: 0.285 },
    PaperRow { run: "margin:8", lr_ppl: 10.69, lr_best: 10.67, lr_t: None, hr_ppl: Some(5.02), hr_best: Some(5.00), lr_acc: 0.313 },
    PaperRow { run: "margin:4", lr_ppl: 10.90, lr_best: 10.67, lr_t: None, hr_ppl: Some(5.01), hr_best: Some(4.99), lr_acc: 0.324 },
    PaperRow { run: "margin:2", lr_ppl: 11.56, lr_best: 9.62, lr_t: Some(0.67), hr_ppl: Some(5.82), hr_best: Some(5.07), lr_acc: 0.358 },
    PaperRow { run: "margin:1", lr_ppl: 17.30, lr_best: 9.54, lr_t: Some(0.46), hr_ppl: Some(9.33), hr_best: Some(5.13), lr_acc: 0.371 },
    PaperRow { run: "margin:0.5", lr_ppl: 29.90, lr_best: 9.63, lr_t: None, hr_ppl: Some(18.98), hr_best: Some(5.32), lr_acc: 0.372 },
    PaperRow { run: "margin:0", lr_ppl: 100.7, lr_best: 43.9, lr_t: None, hr_ppl: Some(109.7), hr_best: Some(18.62), lr_acc: 0.059 },
    PaperRow { run: "agg:0.02:1600", lr_ppl: 11.82, lr_best: 11.81, lr_t: None, hr_ppl: Some(5.01), hr_best: Some(4.99), lr_acc: 0.291 },
    PaperRow { run: "agg:0.2:1600", lr_ppl: 12.24, lr_best: 12.21, lr_t: None, hr_ppl: Some(5.01), hr_best: Some(4.98), lr_acc: 0.287 },
    PaperRow { run: "cosreg:1", lr_ppl: 10.64, lr_best: 10.62, lr_t: Some(0.95), hr_ppl: Some(5.01), hr_best: Some(4.99), lr_acc: 0.318 },
    PaperRow { run: "adv:0.005", lr_ppl: 10.81, lr_best: 10.77, lr_t: Some(0.94), hr_ppl: Some(5.04), hr_best: Some(5.02), lr_acc: 0.314 },
    PaperRow { run: "cwt", lr_ppl: 17.70, lr_best: 17.67, lr_t: Some(0.95), hr_ppl: Some(7.45), hr_best: Some(7.44), lr_acc: 0.195 },
    PaperRow { run: "margin:1+logit-scale:0.46", lr_ppl: 10.46, lr_best: 10.46, lr_t: Some(1.00), hr_ppl: Some(5.24), hr_best: Some(5.24), lr_acc: 0.346 },
    PaperRow { run: "plain@untied", lr_ppl: 8.82, lr_best: 8.79, lr_t: None, hr_ppl: Some(4.98), hr_best: Some(4.94), lr_acc: 0.373 },
    PaperRow { run: "margin:1@untied", lr_ppl: 16.43, lr_best: 9.14, lr_t: None, hr_ppl: Some(9.43), hr_best: Some(5.12), lr_acc: 0.378 },
    PaperRow { run: "margin:2@untied", lr_ppl: 10.75, lr_best: 8.94, lr_t: None, hr_ppl: Some(5.80), hr_best: Some(5.07), lr_acc: 0.378 },
    PaperRow { run: "margin:1+softminus:1", lr_ppl: 16.38, lr_best: 9.74, lr_t: None, hr_ppl: Some(9.06), hr_best: Some(5.30), lr_acc: 0.375 },
    PaperRow { run: "margin:2+softminus:1", lr_ppl: 11.47, lr_best: 9.91, lr_t: None, hr_ppl: Some(5.81), hr_best: Some(5.15), lr_acc: 0.362 },
    PaperRow { run: "margin:1+detach-under", lr_ppl: 29.09, lr_best: 28.98, lr_t: None, hr_ppl: Some(15.78), hr_best: Some(15.72), lr_acc: 0.149 },
    PaperRow { run: "margin-wh:0.5", lr_ppl: 9.69, lr_best: 9.60, lr_t: None, hr_ppl: Some(4.97), hr_best: Some(4.95), lr_acc: 0.349 },
    PaperRow { run: "margin-w:4", lr_ppl: 10.19, lr_best: 9.38, lr_t: None, hr_ppl: Some(5.13), hr_best: Some(4.98), lr_acc: 0.363 },
];

/// The paper preset: every row of [`PAPER`], in its order.
pub const PAPER_RUNS: &[&str] = &[
    "plain",
    "plain@low-resource-only",
    "margin:8",
    "margin:4",
    "margin:2",
    "margin:1",
    "margin:0.5",
    "margin:0",
    "agg:0.02:1600",
    "agg:0.2:1600",
    "cosreg:1",
    "adv:0.005",
    "cwt",
    "margin:1+logit-scale:0.46",
    "plain@untied",
    "margin:1@untied",
    "margin:2@untied",
    "margin:1+softminus:1",
    "margin:2+softminus:1",
    "margin:1+detach-under",
    "margin-wh:0.5",
    "margin-w:4",
];

/// The paper's row for a run spec, compared by canonical spelling.
fn paper_row(spec: &RunSpec) -> Option<&'static PaperRow> {
    PAPER
        .iter()
        .find(|p| RunSpec::parse(p.run).is_ok_and(|r| r == *spec))
}

/// The metrics of the table: (name, language, what of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    LrPpl,
    LrBest,
    LrBestT,
    HrPpl,
    HrBest,
    LrAcc,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::LrPpl,
        Metric::LrBest,
        Metric::LrBestT,
        Metric::HrPpl,
        Metric::HrBest,
        Metric::LrAcc,
    ];

    fn of(self, e: &RunEval) -> Option<f64> {
        let (lang, pick): (&str, fn(&crate::metrics::LangMetrics) -> f64) = match self {
            Metric::LrPpl => ("shifted", |m| m.ppl),
            Metric::LrBest => ("shifted", |m| m.best_ppl),
            Metric::LrBestT => ("shifted", |m| m.best_temperature),
            Metric::HrPpl => ("base", |m| m.ppl),
            Metric::HrBest => ("base", |m| m.best_ppl),
            Metric::LrAcc => ("shifted", |m| m.accuracy),
        };
        if lang == "base" && !e.trained_on_base() {
            return None;
        }
        e.lang(lang).map(|l| pick(&l.metrics))
    }

    fn paper(self, p: &PaperRow) -> Option<f64> {
        match self {
            Metric::LrPpl => Some(p.lr_ppl),
            Metric::LrBest => Some(p.lr_best),
            Metric::LrBestT => p.lr_t,
            Metric::HrPpl => p.hr_ppl,
            Metric::HrBest => p.hr_best,
            Metric::LrAcc => Some(p.lr_acc),
        }
    }
}

/// One run over its seeds, as `results.json` holds it.
#[derive(Serialize)]
pub struct RunResult {
    pub run: String,
    pub spec: String,
    pub seeds: Vec<u64>,
    /// Per metric of [`Metric::ALL`].
    pub metrics: Vec<(Metric, Summary)>,
    /// Best perplexity against plain, paired by seed: low-resource, high-resource.
    pub vs_plain_lr_best: Option<Paired>,
    pub vs_plain_hr_best: Option<Paired>,
    /// The paper's figures for this row, where it has one.
    pub paper: Option<Vec<(Metric, Option<f64>)>>,
}

/// Every seed's value of a metric for one run.
fn values(evals: &[&RunEval], m: Metric) -> Vec<(u64, f64)> {
    evals
        .iter()
        .filter_map(|e| m.of(e).map(|v| (e.seed, v)))
        .collect()
}

/// The evaluations of one run, grouped.
struct Group<'a> {
    spec: RunSpec,
    evals: Vec<&'a RunEval>,
}

fn groups<'a>(x: &Experiment, evals: &'a [RunEval]) -> Vec<Group<'a>> {
    x.runs
        .iter()
        .map(|spec| Group {
            spec: spec.clone(),
            evals: evals.iter().filter(|e| e.name == spec.name()).collect(),
        })
        .filter(|g| !g.evals.is_empty())
        .collect()
}

/// The results of every run (what `results.json` holds besides the raw evaluations).
pub fn results(x: &Experiment, evals: &[RunEval]) -> Vec<RunResult> {
    let gs = groups(x, evals);
    let plain = gs
        .iter()
        .find(|g| g.spec == RunSpec::of(crate::loss::Loss::plain()));
    gs.iter()
        .map(|g| {
            let vs = |m: Metric| {
                let p = plain?;
                (p.spec != g.spec).then(|| paired(&values(&g.evals, m), &values(&p.evals, m)))?
            };
            RunResult {
                run: g.spec.name(),
                spec: g.spec.to_string(),
                seeds: g.evals.iter().map(|e| e.seed).collect(),
                metrics: Metric::ALL
                    .iter()
                    .map(|&m| (m, summarize(&values(&g.evals, m))))
                    .filter(|(_, s)| s.n > 0)
                    .collect(),
                vs_plain_lr_best: vs(Metric::LrBest),
                vs_plain_hr_best: vs(Metric::HrBest),
                paper: paper_row(&g.spec)
                    .map(|p| Metric::ALL.iter().map(|&m| (m, m.paper(p))).collect()),
            }
        })
        .collect()
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// `9.62 ± 0.41` (half-width of the 95% interval), or the one value.
fn fmt_summary(s: &Summary, digits: usize) -> String {
    match s.ci95 {
        Some((lo, hi)) => format!("{:.digits$} ± {:.digits$}", s.mean, (hi - lo) / 2.0),
        None => format!("{:.digits$}", s.mean),
    }
}

fn fmt_interval(s: &Summary, digits: usize) -> String {
    s.ci95.map_or("–".into(), |(lo, hi)| {
        format!("[{lo:+.digits$}, {hi:+.digits$}]")
    })
}

/// The paper's claim over the seeds: the low-resource best perplexity is lower than plain's
/// beyond seed noise at margins 2 and 1, and the high-resource best stays within a few
/// percent (the mean paired difference within ±5%).
pub fn verdict(x: &Experiment, evals: &[RunEval]) -> String {
    let res = results(x, evals);
    if !res.iter().any(|r| r.spec == "plain") {
        return "Not checked: it needs a `plain` run of a two-language model.".into();
    }
    let mut lines = Vec::new();
    let mut holds = true;
    let mut checked = 0;
    let mut fewest_seeds = usize::MAX;
    for run in ["margin:2", "margin:1"] {
        let Some(r) = res.iter().find(|r| r.spec == run) else {
            continue;
        };
        let (Some(lr), Some(hr)) = (&r.vs_plain_lr_best, &r.vs_plain_hr_best) else {
            continue;
        };
        checked += 1;
        fewest_seeds = fewest_seeds.min(lr.diff.n);
        let hr_ok = hr.percent.mean.abs() <= 5.0;
        let ok = lr.verdict == Verdict::Lower && hr_ok;
        holds &= ok;
        lines.push(format!(
            "- {run}: low-resource best perplexity {:+.3} against plain ({:+.1}%; 95% interval {}, {} seed(s)): {}; high-resource {:+.1}% ({}): {}",
            lr.diff.mean,
            lr.percent.mean,
            fmt_interval(&lr.diff, 3),
            lr.diff.n,
            lr.verdict.words(),
            hr.percent.mean,
            fmt_interval(&hr.percent, 1),
            if hr_ok { "within 5%" } else { "more than 5% off" },
        ));
    }
    if checked == 0 {
        return "Not checked: it needs `margin:1` or `margin:2` runs beside `plain`.".into();
    }
    // Finished pairs, not the seeds asked for: a partial study is judged on what it has.
    let conclusion = if fewest_seeds < 2 {
        "With one seed no interval can be given: this says which way the runs went, not whether the effect is larger than seed noise".to_string()
    } else if holds {
        "The paper's claim holds beyond seed noise in these runs".to_string()
    } else {
        "The paper's claim does not hold beyond seed noise in these runs".to_string()
    };
    lines.push(format!(
        "\n**{conclusion}** (criterion: the 95% interval of the paired low-resource difference below 0, high-resource within 5%)."
    ));
    lines.join("\n")
}

#[derive(Deserialize)]
struct MetricsLine {
    step: u64,
    loss: f32,
    #[serde(default)]
    tokens_per_s: f64,
    #[serde(default)]
    val_loss: Option<Vec<(String, f32)>>,
    #[serde(default)]
    groups: Option<Vec<Option<f64>>>,
}

#[derive(Deserialize)]
struct RolesLine {
    #[serde(flatten)]
    roles: Roles,
}

/// What a job's folder holds besides `eval.json`.
struct RunLogs {
    metrics: Vec<MetricsLine>,
    roles: RolesMean,
    groups: Option<FreqGroups>,
}

fn jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("'{}' has a damaged line", path.display()))
        })
        .collect()
}

fn read_logs(dir: &Path) -> Result<RunLogs> {
    let mut roles = RolesMean::default();
    for r in jsonl::<RolesLine>(&dir.join("roles.jsonl"))? {
        roles.add(&r.roles);
    }
    let groups = match fs::read_to_string(dir.join("groups.json")) {
        Ok(s) => Some(serde_json::from_str(&s).context("groups.json is damaged")?),
        Err(_) => None,
    };
    Ok(RunLogs {
        metrics: jsonl(&dir.join("metrics.jsonl"))?,
        roles,
        groups,
    })
}

/// Seconds spent in training steps, from the throughput each log line measured since the
/// one before (so a run resumed over several sessions is counted once, evaluations not).
fn training_seconds(metrics: &[MetricsLine], tokens_per_step: f64) -> f64 {
    let mut prev = 0;
    let mut total = 0.0;
    for l in metrics {
        if l.tokens_per_s > 0.0 {
            total += l.step.saturating_sub(prev) as f64 * tokens_per_step / l.tokens_per_s;
        }
        prev = l.step;
    }
    total
}

/// [`training_seconds`] of the job in `dir`.
pub fn training_seconds_of(dir: &Path, cfg: &TrainConfig) -> f64 {
    let lines: Vec<MetricsLine> = jsonl(&dir.join("metrics.jsonl")).unwrap_or_default();
    training_seconds(&lines, (cfg.batch_size * cfg.model.block_size) as f64)
}

/// Writes `report.md`, `results.json` and `plots/` under `x.out`; `missing` lists the jobs
/// that have not finished.
pub fn write(x: &Experiment, evals: &[RunEval], missing: &[String], command: &str) -> Result<()> {
    let out = &x.out;
    let plots = out.join("plots");
    crate::fsio::create_dir(&plots, "plots folder")?;
    let res = results(x, evals);
    let gs = groups(x, evals);
    let logs: Vec<Vec<RunLogs>> = gs
        .iter()
        .map(|g| {
            g.evals
                .iter()
                .map(|e| read_logs(&job_dir(out, &g.spec, e.seed)))
                .collect()
        })
        .collect::<Result<_>>()?;
    let mut md = String::new();
    header(&mut md, x, evals, missing, command)?;
    results_table(&mut md, &res)?;
    paired_table(&mut md, &res)?;
    writeln!(md, "\n## The paper's claim\n")?;
    writeln!(md, "{}", verdict(x, evals))?;
    seeds_table(&mut md, x, &gs)?;
    analysis_table(&mut md, x, evals, &gs, &logs)?;
    writeln!(md, "\n## Plots\n")?;
    draw_plots(&plots, x, &gs, &logs)?;
    for (file, caption) in PLOTS {
        writeln!(md, "![{caption}](plots/{file}.png)\n")?;
        writeln!(md, "*{caption}* ([SVG](plots/{file}.svg))\n")?;
    }
    crate::fsio::write_atomic(&out.join("report.md"), md.as_bytes())?;
    let json = serde_json::json!({
        "command": command,
        "adapter": adapters(evals),
        "seeds": x.seeds,
        "checkpoint": x.pick,
        "not_finished": missing,
        "runs": res,
        "evaluations": evals,
    });
    crate::fsio::write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )
}

/// The adapters that trained the runs.
fn adapters(evals: &[RunEval]) -> String {
    let mut a: Vec<&str> = evals.iter().map(|e| e.adapter.as_str()).collect();
    a.sort_unstable();
    a.dedup();
    a.join("; ")
}

/// The plots, with their captions.
const PLOTS: [(&str, &str); 5] = [
    (
        "lr_best_by_run",
        "Low-resource best perplexity per run: every seed, the mean and its 95% interval",
    ),
    (
        "ppl_vs_temperature",
        "Perplexity against temperature, per language: mean over seeds with its 95% band",
    ),
    (
        "loss_curves",
        "Training loss (the run's own loss) and validation cross-entropy, first seed",
    ),
    (
        "frequency_groups",
        "Validation cross-entropy per token-frequency group over training, first seed",
    ),
    (
        "gradient_roles",
        "Gradient roles of each token's embedding against its training frequency, first seed",
    ),
];

/// The title, the command, the setting, and what has not finished.
fn header(
    md: &mut String,
    x: &Experiment,
    evals: &[RunEval],
    missing: &[String],
    command: &str,
) -> Result<()> {
    let (base, adapter) = (&x.base, adapters(evals));
    let m = &base.model;
    let seeds = x.seeds.len();
    writeln!(
        md,
        "# Threshold cross-entropy (\"selfish tokens\"): experiment report\n"
    )?;
    writeln!(md, "Made by `{command}`\n")?;
    writeln!(
        md,
        "Adapter: {adapter}. Model: {} layers, {} heads, width {}, block {}, vocabulary {}; \
         batch {}, {} AdamW steps (lr {} → {}, {} warm-up); second alphabet on {}% of \
         training sequences. Seeds: {} ({}). Within a seed every run starts from the same \
         weights and sees the same batches; only the loss (and the row's options) differ. \
         Evaluated on {} checkpoints; validation: the last 10% of the text, in each alphabet.\n",
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.vocab_size,
        base.batch_size,
        base.steps,
        base.lr,
        base.min_lr,
        base.warmup,
        base.low_resource_prob * 100.0,
        seeds,
        x.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        match x.pick {
            Pick::Best => "best-validation (lowest loss on validation batches mixed like training, as the paper chose)",
            Pick::Last => "last-step",
        }
    )?;
    if !missing.is_empty() {
        writeln!(
            md,
            "**Not finished** ({} jobs; the report covers the rest):\n",
            missing.len()
        )?;
        for l in missing {
            writeln!(md, "- {l}")?;
        }
        writeln!(md)?;
    }

    Ok(())
}

/// Per run: every metric's mean and interval, the paper's figure beside it.
fn results_table(md: &mut String, res: &[RunResult]) -> Result<()> {
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "Mean over seeds ± half the 95% Student-t interval (one seed: the value); the paper's \
         figure in brackets where it gives one. LR is the low-resource language (the shifted \
         alphabet), HR the high-resource one; best is the lowest perplexity over T = 0.01 … 2.00.\n"
    )?;
    writeln!(
        md,
        "| run | seeds | LR ppl | LR best | at T | HR ppl | HR best | LR acc |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for r in res {
        let cell = |metric: Metric, d: usize| {
            let ours = r
                .metrics
                .iter()
                .find(|(k, _)| *k == metric)
                .map_or("–".to_string(), |(_, s)| fmt_summary(s, d));
            let paper = r
                .paper
                .as_ref()
                .and_then(|p| p.iter().find(|(k, _)| *k == metric)?.1);
            match paper {
                Some(p) => format!("{ours} [{p:.d$}]"),
                None => ours,
            }
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.run,
            r.seeds.len(),
            cell(Metric::LrPpl, 2),
            cell(Metric::LrBest, 2),
            cell(Metric::LrBestT, 2),
            cell(Metric::HrPpl, 2),
            cell(Metric::HrBest, 3),
            cell(Metric::LrAcc, 3),
        )?;
    }

    Ok(())
}

/// Per run: the paired differences against plain and their verdicts.
fn paired_table(md: &mut String, res: &[RunResult]) -> Result<()> {
    writeln!(md, "\n## Against plain cross-entropy, seed by seed\n")?;
    writeln!(
        md,
        "Paired differences of the best perplexity (run − plain on the same seed), mean and \
         95% Student-t interval over the seeds both have, and what they say.\n"
    )?;
    writeln!(
        md,
        "| run | LR best − plain | 95% interval | LR | HR best − plain | 95% interval | HR |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for r in res {
        let Some(lr) = &r.vs_plain_lr_best else {
            continue;
        };
        // A run that never trained on the base language has no high-resource figure.
        let hr = r
            .vs_plain_hr_best
            .as_ref()
            .map_or("– | – | –".into(), |hr| {
                format!(
                    "{:+.3} ({:+.1}%) | {} | {}",
                    hr.diff.mean,
                    hr.percent.mean,
                    fmt_interval(&hr.diff, 3),
                    hr.verdict.words()
                )
            });
        writeln!(
            md,
            "| {} | {:+.3} ({:+.1}%) | {} | {} | {hr} |",
            r.run,
            lr.diff.mean,
            lr.percent.mean,
            fmt_interval(&lr.diff, 3),
            lr.verdict.words(),
        )?;
    }

    Ok(())
}

/// Every seed's best perplexities.
fn seeds_table(md: &mut String, x: &Experiment, gs: &[Group]) -> Result<()> {
    let seeds = x.seeds.len();
    writeln!(md, "\n## Every seed\n")?;
    writeln!(
        md,
        "Best perplexity per seed, low-resource / high-resource.\n"
    )?;
    write!(md, "| run |")?;
    for s in &x.seeds {
        write!(md, " seed {s} |")?;
    }
    writeln!(md)?;
    writeln!(md, "|---|{}", "---|".repeat(seeds))?;
    for g in gs {
        write!(md, "| {} |", g.spec.name())?;
        for &s in &x.seeds {
            let e = g.evals.iter().find(|e| e.seed == s);
            let cell = e.map_or("–".into(), |e| {
                format!(
                    "{} / {}",
                    fmt_opt(Metric::LrBest.of(e), 2),
                    fmt_opt(Metric::HrBest.of(e), 3)
                )
            });
            write!(md, " {cell} |")?;
        }
        writeln!(md)?;
    }

    Ok(())
}

/// Gradient roles and isotropy, means over seeds.
fn analysis_table(
    md: &mut String,
    x: &Experiment,
    evals: &[RunEval],
    gs: &[Group],
    logs: &[Vec<RunLogs>],
) -> Result<()> {
    let m = &x.base.model;
    // Analysis: means over seeds of the gradient roles and isotropy.
    let two = evals.iter().any(|e| e.lang("shifted").is_some());
    let v = if two { m.vocab_size / 2 } else { m.vocab_size };
    writeln!(
        md,
        "\n## Analysis\n\nGradient roles of the tied embedding (untied: context alignment on \
         `wte`, the other two on `lm_head`; mean over logged steps and seeds): own signal = \
         (context alignment + target alignment) / non-target \
         marginalization, summed over an alphabet's tokens. Isotropy: min/max of the partition \
         function over the eigenvectors of WᵀW (1 = even spread), mean over seeds; of `wte`, and of \
         `lm_head` in parentheses when the head is untied.\n"
    )?;
    writeln!(
        md,
        "| run | own signal, HR | own signal, LR | isotropy base | isotropy shifted | training time per seed |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for (g, lg) in gs.iter().zip(logs) {
        let ratio = |range: std::ops::Range<usize>| {
            let vals: Vec<f64> = lg
                .iter()
                .filter(|l| l.roles.steps > 0)
                .map(|l| l.roles.mean())
                .filter(|r| r.context.len() >= range.end)
                .map(|r| own_signal_ratio(&r, range.clone()))
                .collect();
            mean_fmt(&vals, 3)
        };
        let mean_of = |name: &str| -> Option<f64> {
            let vals: Vec<f64> = g
                .evals
                .iter()
                .filter_map(|e| e.isotropy.iter().find(|(n, _)| n == name).map(|x| x.1))
                .collect();
            (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
        };
        // An untied run's output head is a table of its own: shown in parentheses.
        let iso = |name: &str| match mean_of(&format!("lm_head {name}")) {
            Some(head) => format!("{} (head {head:.3})", fmt_opt(mean_of(name), 3)),
            None => fmt_opt(mean_of(name), 3),
        };
        let secs: Vec<f64> = g.evals.iter().map(|e| e.train_seconds).collect();
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            g.spec.name(),
            ratio(0..v),
            if two { ratio(v..2 * v) } else { "–".into() },
            iso("base"),
            iso("shifted"),
            if secs.is_empty() {
                "–".into()
            } else {
                format!("{:.0} s", secs.iter().sum::<f64>() / secs.len() as f64)
            }
        )?;
    }

    Ok(())
}

fn mean_fmt(vals: &[f64], digits: usize) -> String {
    if vals.is_empty() {
        "–".into()
    } else {
        format!("{:.digits$}", vals.iter().sum::<f64>() / vals.len() as f64)
    }
}

fn draw_plots(plots: &Path, x: &Experiment, gs: &[Group], logs: &[Vec<RunLogs>]) -> Result<()> {
    plot_lr_best(plots, gs)?;
    let languages: Vec<String> = gs
        .first()
        .and_then(|g| g.evals.first())
        .map(|e| e.languages.iter().map(|l| l.language.clone()).collect())
        .unwrap_or_default();
    plot_temperature(plots, gs, &languages)?;
    // The first seed's logs for the curves and per-token plots.
    let first: Vec<(&Group, &RunLogs)> = gs
        .iter()
        .zip(logs)
        .filter_map(|(g, l)| l.first().map(|l| (g, l)))
        .collect();
    plot_curves(plots, &first, &languages)?;
    plot_groups(plots, &first)?;
    plot_roles(plots, &first, x.base.low_resource_prob)
}

/// Low-resource best perplexity per run: every seed, the mean and its interval.
fn plot_lr_best(plots: &Path, gs: &[Group]) -> Result<()> {
    // low-resource best perplexity per run, every seed and the interval
    let rows: Vec<Interval> = gs
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let vals = values(&g.evals, Metric::LrBest);
            let s = summarize(&vals);
            (s.n > 0).then(|| Interval {
                name: g.spec.name(),
                color: i,
                points: vals.iter().map(|v| v.1).collect(),
                mean: s.mean,
                ci95: s.ci95,
            })
        })
        .collect();
    if !rows.is_empty() {
        intervals(
            &plots.join("lr_best_by_run"),
            "Low-resource best perplexity (dots: seeds; bar: 95% interval of the mean)",
            "best perplexity, low-resource language",
            &rows,
        )?;
    }

    Ok(())
}

/// Perplexity against temperature: the mean over seeds with a 95% band.
fn plot_temperature(plots: &Path, gs: &[Group], languages: &[String]) -> Result<()> {
    let panels: Vec<Panel> = languages
        .iter()
        .map(|name| {
            let floor = gs
                .iter()
                .flat_map(|g| g.evals.iter())
                .filter_map(|e| e.lang(name))
                .map(|l| l.metrics.best_ppl)
                .fold(f64::INFINITY, f64::min);
            let series = gs
                .iter()
                .enumerate()
                .filter_map(|(i, g)| {
                    let curves: Vec<&Vec<(f64, f64)>> = g
                        .evals
                        .iter()
                        .filter_map(|e| e.lang(name).map(|l| &l.ppl_by_temperature))
                        .collect();
                    let first = curves.first()?;
                    let mut mean = Vec::new();
                    let mut band = Vec::new();
                    for (k, &(t, _)) in first.iter().enumerate() {
                        let vals: Vec<(u64, f64)> = curves
                            .iter()
                            .filter_map(|c| c.get(k).map(|p| (0, p.1)))
                            .collect();
                        let s = summarize(&vals);
                        mean.push((t, s.mean));
                        if let Some((lo, hi)) = s.ci95 {
                            band.push((t, lo, hi));
                        }
                    }
                    Some(Series {
                        name: g.spec.name(),
                        points: mean,
                        mark: Mark::Line,
                        color: i,
                        band: (!band.is_empty()).then_some(Band(band)),
                    })
                })
                .collect();
            Panel {
                title: format!("{name} language"),
                x_label: "temperature".into(),
                y_label: "perplexity".into(),
                y_max: Some(3.0 * floor),
                series,
                ..Default::default()
            }
        })
        .collect();
    chart(
        &plots.join("ppl_vs_temperature"),
        "Perplexity against temperature",
        2,
        &panels,
    )?;

    Ok(())
}

/// Training and validation loss over steps, first seed.
fn plot_curves(plots: &Path, first: &[(&Group, &RunLogs)], languages: &[String]) -> Result<()> {
    let line = |name: String, points: Vec<(f64, f64)>, color: usize| Series {
        name,
        points,
        mark: Mark::Line,
        color,
        band: None,
    };
    let mut panels = vec![Panel {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss (nats)".into(),
        series: first
            .iter()
            .enumerate()
            .map(|(i, (g, lg))| {
                let pts = lg
                    .metrics
                    .iter()
                    .map(|l| (l.step as f64, l.loss as f64))
                    .collect();
                line(g.spec.name(), pts, i)
            })
            .collect(),
        ..Default::default()
    }];
    for name in languages {
        panels.push(Panel {
            title: format!("validation cross-entropy, {name}"),
            x_label: "step".into(),
            y_label: "loss (nats)".into(),
            series: first
                .iter()
                .enumerate()
                .map(|(i, (g, lg))| {
                    let pts = lg
                        .metrics
                        .iter()
                        .filter_map(|l| {
                            let v = l.val_loss.as_ref()?.iter().find(|(n, _)| n == name)?.1;
                            Some((l.step as f64, v as f64))
                        })
                        .collect();
                    line(g.spec.name(), pts, i)
                })
                .collect(),
            ..Default::default()
        });
    }
    chart(
        &plots.join("loss_curves"),
        "Loss curves (first seed)",
        3,
        &panels,
    )?;

    Ok(())
}

/// Validation loss per token-frequency group over training, one panel per run.
fn plot_groups(plots: &Path, first: &[(&Group, &RunLogs)]) -> Result<()> {
    let panels: Vec<Panel> = first
        .iter()
        .enumerate()
        .map(|(panel, (g, lg))| {
            let names = lg
                .groups
                .as_ref()
                .map(|g| g.names.clone())
                .unwrap_or_default();
            let per_alphabet = names
                .iter()
                .filter(|n| n.starts_with("base"))
                .count()
                .max(1);
            Panel {
                title: g.spec.name(),
                x_label: "step".into(),
                y_label: "validation loss (nats)".into(),
                series: names
                    .iter()
                    .enumerate()
                    .map(|(k, n)| Series {
                        // one legend is enough
                        name: if panel == 0 { n.clone() } else { String::new() },
                        points: lg
                            .metrics
                            .iter()
                            .filter_map(|l| Some((l.step as f64, (*l.groups.as_ref()?.get(k)?)?)))
                            .collect(),
                        mark: if k < per_alphabet {
                            Mark::Line
                        } else {
                            Mark::Dashed
                        },
                        color: k % per_alphabet,
                        band: None,
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    chart(
        &plots.join("frequency_groups"),
        "Loss per token-frequency group (ranks by training frequency; dashed: low-resource)",
        3,
        &panels,
    )?;

    Ok(())
}

/// The tied embedding's gradient roles per token against its frequency, one panel per run.
fn plot_roles(plots: &Path, first: &[(&Group, &RunLogs)], mix: f64) -> Result<()> {
    let panels: Vec<Panel> = first
        .iter()
        .map(|(g, lg)| {
            let r = lg.roles.mean();
            // The run's own mix (low-resource-only: every row), from its first evaluation.
            let p = g.evals[0].low_resource_prob().unwrap_or(mix);
            let freq: Vec<f64> = lg
                .groups
                .as_ref()
                .map(|g| {
                    let two = r.context.len() == 2 * g.counts.len();
                    let mut f: Vec<f64> = g
                        .counts
                        .iter()
                        .map(|&c| c as f64 * if two { 1.0 - p } else { 1.0 })
                        .collect();
                    if two {
                        f.extend(g.counts.iter().map(|&c| c as f64 * p));
                    }
                    f
                })
                .unwrap_or_default();
            let dots = |vals: &[f64], name: &str, color: usize| Series {
                name: name.into(),
                points: freq.iter().zip(vals).map(|(&x, &y)| (x, y)).collect(),
                mark: Mark::Dots,
                color,
                band: None,
            };
            Panel {
                // Untied, the three roles fall on two tables.
                title: if g.spec.untied {
                    format!(
                        "{} (context: wte; target, non-target: lm_head)",
                        g.spec.name()
                    )
                } else {
                    g.spec.name()
                },
                x_label: "training occurrences".into(),
                y_label: "gradient norm".into(),
                log_x: true,
                log_y: true,
                series: vec![
                    dots(&r.context, "context alignment", 2),
                    dots(&r.target, "target alignment", 0),
                    dots(&r.nontarget, "non-target marginalization", 3),
                ],
                ..Default::default()
            }
        })
        .collect();
    chart(
        &plots.join("gradient_roles"),
        "Gradient roles of each token's embedding (first seed)",
        3,
        &panels,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::LangEval;
    use crate::loss::Loss;
    use crate::metrics::LangMetrics;

    fn ev(spec: &str, seed: u64, base_best: f64, shifted_best: f64) -> RunEval {
        let lang = |language: &str, best_ppl: f64| LangEval {
            language: language.into(),
            metrics: LangMetrics {
                tokens: 100,
                loss: best_ppl.ln(),
                ppl: best_ppl,
                best_ppl,
                best_temperature: 1.0,
                accuracy: 0.3,
                recall_at_5: 0.6,
                mrr: 0.4,
            },
            ppl_by_temperature: vec![(1.0, best_ppl)],
        };
        let s = RunSpec::parse(spec).unwrap();
        RunEval {
            name: s.name(),
            spec: s.to_string(),
            loss: s.loss.to_string(),
            seed,
            steps: 10,
            config: serde_json::Value::Null,
            checkpoint: Pick::Best,
            checkpoint_step: 10,
            languages: vec![lang("base", base_best), lang("shifted", shifted_best)],
            isotropy: vec![],
            train_seconds: 1.0,
            adapter: "test".into(),
        }
    }

    fn experiment(seeds: Vec<u64>) -> Experiment {
        let data = crate::data::Dataset::from_text(&"abcdefgh ".repeat(50), 0.1).unwrap();
        Experiment {
            base: TrainConfig {
                model: crate::model::GptConfig::paper(data.model_vocab()),
                batch_size: 2,
                steps: 10,
                lr: 1e-3,
                min_lr: 1e-4,
                warmup: 1,
                loss: Loss::plain(),
                low_resource_prob: 0.1,
                seed: 1,
                eval_interval: 5,
                eval_batches: 1,
                log_interval: 1,
                stop_after: None,
                analysis: false,
            },
            runs: ["plain", "margin:2", "margin:1"]
                .iter()
                .map(|s| RunSpec::parse(s).unwrap())
                .collect(),
            seeds,
            out: std::env::temp_dir(),
            pick: Pick::Best,
        }
    }

    #[test]
    fn verdict_needs_the_interval_below_zero() {
        let x = experiment(vec![1, 2, 3]);
        let mut evals = Vec::new();
        for (s, (p, m2, m1)) in [(10.6, 9.6, 9.5), (10.9, 9.9, 10.0), (10.3, 9.5, 9.1)]
            .into_iter()
            .enumerate()
        {
            let seed = s as u64 + 1;
            evals.push(ev("plain", seed, 5.0, p));
            evals.push(ev("margin:2", seed, 5.1, m2));
            evals.push(ev("margin:1", seed, 5.12, m1));
        }
        let v = verdict(&x, &evals);
        assert!(v.contains("holds beyond seed noise"), "{v}");
        assert!(v.contains("lower than plain beyond seed noise"), "{v}");
        // One seed flipped the sign for margin 1: the interval straddles zero.
        evals.retain(|e| !(e.name == "margin-1" && e.seed == 2));
        evals.push(ev("margin:1", 2, 5.12, 12.5));
        let v = verdict(&x, &evals);
        assert!(
            v.contains("does not hold") && v.contains("within noise"),
            "{v}"
        );
        // High-resource 8% worse.
        let one = experiment(vec![1]);
        let v = verdict(
            &one,
            &[ev("plain", 1, 5.0, 10.6), ev("margin:2", 1, 5.4, 9.6)],
        );
        assert!(
            v.contains("more than 5% off") && v.contains("no interval"),
            "{v}"
        );
        assert!(verdict(&one, &[ev("margin:1", 1, 5.0, 9.0)]).starts_with("Not checked"));
        // Three seeds asked, one finished: judged as one seed, not as a failed claim.
        let v = verdict(
            &x,
            &[ev("plain", 1, 5.0, 10.6), ev("margin:2", 1, 5.1, 9.6)],
        );
        assert!(
            v.contains("With one seed") && !v.contains("does not hold"),
            "{v}"
        );
    }

    #[test]
    fn results_pair_by_seed_and_carry_the_paper_figures() {
        let x = experiment(vec![1, 2]);
        let evals = vec![
            ev("plain", 1, 5.0, 10.0),
            ev("plain", 2, 5.2, 11.0),
            ev("margin:1", 1, 5.1, 9.0),
            ev("margin:1", 2, 5.3, 9.5),
        ];
        let r = results(&x, &evals);
        let m1 = r.iter().find(|r| r.spec == "margin:1").unwrap();
        let lr = m1.vs_plain_lr_best.as_ref().unwrap();
        assert_eq!(lr.diff.values, vec![(1, -1.0), (2, -1.5)]);
        let paper = m1.paper.as_ref().unwrap();
        assert!(paper.contains(&(Metric::LrBest, Some(9.54))));
        assert!(
            r[0].vs_plain_lr_best.is_none(),
            "plain is not paired with itself"
        );

        // The low-resource-only baseline never saw the base language: no high-resource
        // figures, and its low-resource ones still pair with plain.
        let mut only = experiment(vec![1]);
        only.runs = vec![
            RunSpec::of(Loss::plain()),
            RunSpec::parse("plain@low-resource-only").unwrap(),
        ];
        let mut lr_only = ev("plain@low-resource-only", 1, 900.0, 12.3);
        lr_only.config = serde_json::json!({ "low_resource_prob": 1.0 });
        let r = results(&only, &[ev("plain", 1, 5.0, 14.0), lr_only]);
        let metrics: Vec<Metric> = r[1].metrics.iter().map(|m| m.0).collect();
        assert!(!metrics.contains(&Metric::HrBest) && metrics.contains(&Metric::LrBest));
        assert!(r[1].vs_plain_hr_best.is_none());
        assert_eq!(
            r[1].vs_plain_lr_best.as_ref().unwrap().diff.values,
            vec![(1, 12.3 - 14.0)]
        );
    }

    #[test]
    fn paper_runs_and_rows_agree() {
        assert_eq!(PAPER.len(), PAPER_RUNS.len());
        for (p, r) in PAPER.iter().zip(PAPER_RUNS) {
            assert_eq!(p.run, *r);
        }
    }
}
