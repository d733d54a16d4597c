//! The `selfish` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use selfish::check;
use selfish::gpu;
use selfish::runtime::GpuBackend;

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

#[derive(Subcommand)]
enum Cmd {
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
    let cli = Cli::parse();
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
        Cmd::Devices { backend, json } => devices(backend.as_deref(), json),
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
        println!("{:<44} {:>11} {:>11} {:>9}  ok", "quantity", "max abs", "max rel", "tol");
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
            "{:<26} {:<30} {:>11} {:>11} {:>9}  ok",
            "op", "shape", "max abs", "max rel", "tol"
        );
    }
    let mut rows = Vec::new();
    let cases = check::cases()
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.op.contains(o)));
    for case in cases {
        let row = check::run_case(&mut gpu, &case, seed)?;
        if !json {
            println!(
                "{:<26} {:<30} {:>11.3e} {:>11.3e} {:>9.1e}  {}",
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
    if rows.is_empty() {
        anyhow::bail!("no kernel matches --op {}: try matmul, softmax, threshold, cross_entropy, layernorm, gelu, attention, embedding, residual or adamw", only.unwrap_or(""));
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
