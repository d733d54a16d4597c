//! Where a paper-config training step spends its GPU time: `cargo run --release --example profile_step`.
use selfish::model::{init_params, Gpt, GptConfig, OptConfig};
use selfish::rng::Rng;
use selfish::runtime::GpuBackend;

fn main() -> anyhow::Result<()> {
    let mut gpu = GpuBackend::open(None)?;
    let cfg = GptConfig::paper(130);
    let loss = selfish::loss::Loss::PLAIN.with_margin(Some(1.0))?;
    let model = Gpt::new(&mut gpu, cfg, 12, loss, OptConfig::default())?;
    model.set_params(&mut gpu, &init_params(&cfg, &mut Rng::new(1)))?;
    let x: Vec<u32> = (0..12 * 64).map(|i| (i * 7 % 130) as u32).collect();
    model.set_batch(&mut gpu, &x, &x);
    model.set_step(&mut gpu, 1e-3, 1);
    let prof = gpu.profile(&[model.forward, model.backward, model.optimize], 2)?;
    let total: f64 = prof.iter().map(|p| p.1).sum();
    for (label, secs, n) in prof {
        println!(
            "{label:<40} {n:>3} dispatches {:>9.2} ms {:>5.1}%",
            secs * 1e3,
            100.0 * secs / total
        );
    }
    println!("total {:.1} ms", total * 1e3);
    Ok(())
}
