//! Every kernel on the GPU adapter (lavapipe / llvmpipe in CI; pick with WGPU_BACKEND)
//! against its CPU twin, forward and backward, over `selfish check`'s shapes.

use std::sync::Mutex;

use selfish::check;
use selfish::runtime::GpuBackend;

/// One device for the whole binary; tests take turns.
static GPU: Mutex<Option<GpuBackend>> = Mutex::new(None);

fn check_op(prefix: &str) {
    let mut guard = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(GpuBackend::open(None).expect("a GPU adapter (CI installs Mesa's lavapipe)"));
    }
    let gpu = guard.as_mut().unwrap();
    let cases: Vec<_> = check::cases()
        .into_iter()
        .filter(|c| c.op.starts_with(prefix))
        .collect();
    assert!(!cases.is_empty(), "no check cases for {prefix}");
    let mut failures = Vec::new();
    // Each case gets its own seed; `run_case` runs the GPU side twice (same bits required).
    for (i, case) in cases.iter().enumerate() {
        let seed = 1 + 10 * i as u64;
        for row in check::run_case(gpu, case, seed).unwrap() {
            if !row.ok {
                failures.push(format!(
                    "{} {} seed {seed}: max abs {:.3e}, tol {:.1e}",
                    row.op, row.shape, row.max_abs_err, row.tol
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "GPU and CPU disagree:\n{}",
        failures.join("\n")
    );
}

#[test]
fn matmul() {
    check_op("matmul");
}

#[test]
fn softmax() {
    check_op("softmax");
}

#[test]
fn threshold_mask() {
    check_op("threshold");
}

#[test]
fn cross_entropy() {
    check_op("cross_entropy");
}

#[test]
fn sampled_loss() {
    check_op("sampled_loss");
}

#[test]
fn layernorm() {
    check_op("layernorm");
}

#[test]
fn gelu() {
    check_op("gelu");
}

#[test]
fn attention() {
    check_op("attention");
}

#[test]
fn embedding() {
    check_op("embedding");
}

#[test]
fn residual() {
    check_op("residual");
}

#[test]
fn adamw() {
    check_op("adamw");
}

#[test]
fn row_norms() {
    check_op("row_norms");
}

#[test]
fn cosreg() {
    check_op("cosreg");
}

#[test]
fn cwt() {
    check_op("cwt");
}

#[test]
fn agg() {
    check_op("agg");
}
