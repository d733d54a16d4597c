//! Contrastive weight tying: the batch's scores `h_i · W_{y_k}` read off the logits, and
//! their gradient written back into `dlogits`, so the model's head backward does the rest;
//! see `shaders/cwt.wgsl`.

use crate::buffers::{Buf, HostMem};
use crate::kernels::case::{Case, Init};
use crate::kernels::cross_entropy::{CrossEntropy, Keep, Mean};
use crate::kernels::{elem_grid, grid, IntoOp, Kernel, Launch, Shader, Target, LOOP_LIMIT};

pub const SHADER: Shader = shader!("cwt", Params);

uniform! {
    pub struct Params {
        pub n: u32,
        pub v: u32,
    }
}

/// `scores[i, k] = logits[i, targets[k]]` for the `n` positions of a batch.
#[derive(Clone, Copy, Debug)]
pub struct CwtScores {
    pub n: u32,
    pub v: u32,
    pub logits: Buf,
    pub targets: Buf,
    pub scores: Buf,
}

/// `dlogits[i, j] = Σ_{k: targets[k] = j} dscores[i, k]` (overwritten).
#[derive(Clone, Copy, Debug)]
pub struct CwtScatter {
    pub n: u32,
    pub v: u32,
    pub targets: Buf,
    pub dscores: Buf,
    pub dlogits: Buf,
}

impl Kernel for CwtScores {
    fn launches(&self, _t: &Target) -> Vec<Launch> {
        let p = Params {
            n: self.n,
            v: self.v,
        };
        vec![
            Launch::new(&SHADER, "gather_scores", &p, elem_grid(self.n * self.n))
                .bind("logits", self.logits)
                .bind("targets", self.targets)
                .bind("scores", self.scores),
        ]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.scores, |m, s| {
            let (n, v) = (self.n as usize, self.v as usize);
            cpu_scores(n, v, m.f(self.logits), m.u(self.targets), s)
        });
    }
}

impl Kernel for CwtScatter {
    fn launches(&self, t: &Target) -> Vec<Launch> {
        let (n, v) = (self.n, self.v);
        assert!(n <= LOOP_LIMIT, "cwt: {n} positions, over {LOOP_LIMIT}");
        let p = Params { n, v };
        let l = if t.cpu_loop(v) {
            Launch::new(&SHADER, "scatter_rows", &p, grid(n.div_ceil(64)))
        } else {
            Launch::new(&SHADER, "scatter", &p, elem_grid(n * v))
        };
        vec![l
            .bind("targets", self.targets)
            .bind("dscores", self.dscores)
            .bind("dlogits", self.dlogits)]
    }
    fn cpu(&self, m: &mut HostMem) {
        m.with(self.dlogits, |m, d| {
            let (n, v) = (self.n as usize, self.v as usize);
            cpu_scatter(n, v, m.u(self.targets), m.f(self.dscores), d)
        });
    }
}

/// The whole loss (scores, cross-entropy against the diagonal, mean, scatter) with targets
/// drawn from 2, 130, 3 or 65 tokens (so repeated targets everywhere), on odd shapes and the
/// paper's.
pub fn cases() -> Vec<Case> {
    [
        (3u32, 5u32, 2u32),
        (64, 130, 130),
        (130, 130, 3),
        (768, 130, 65),
    ]
    .into_iter()
    .map(|(n, v, used)| {
        let nu = n as usize;
        Case::new("cwt fwd+bwd", format!("n={n} V={v} targets<{used}"))
            .input("logits", nu * v as usize, Init::Normal(2.0))
            .words("targets", nu, Init::Tokens(used))
            .words("diag", nu, Init::Words((0..n).collect()))
            .output("scores", nu * nu)
            .output("losses", nu)
            .output("mean", 1)
            .output("dscores", nu * nu)
            .inout("dlogits", nu * v as usize, Init::Fill(7.0))
            .ops(move |b| {
                let (targets, scores) = (b["targets"], b["scores"]);
                let (losses, dscores) = (b["losses"], b["dscores"]);
                let ce = CrossEntropy::new(
                    n,
                    n,
                    Keep::default(),
                    1.0 / n as f32,
                    scores,
                    b["diag"],
                    losses,
                    dscores,
                );
                vec![
                    CwtScores {
                        n,
                        v,
                        logits: b["logits"],
                        targets,
                        scores,
                    }
                    .op(),
                    ce.op(),
                    Mean {
                        n,
                        x: losses,
                        out: b["mean"],
                    }
                    .op(),
                    CwtScatter {
                        n,
                        v,
                        targets,
                        dscores,
                        dlogits: b["dlogits"],
                    }
                    .op(),
                ]
            })
            .tol(2e-5)
    })
    .collect()
}

/// CPU twin of [`CwtScores`].
pub fn cpu_scores(n: usize, v: usize, logits: &[f32], targets: &[u32], scores: &mut [f32]) {
    for i in 0..n {
        for k in 0..n {
            scores[i * n + k] = logits[i * v + targets[k] as usize];
        }
    }
}

/// CPU twin of [`CwtScatter`]; f64 sums.
pub fn cpu_scatter(n: usize, v: usize, targets: &[u32], dscores: &[f32], dlogits: &mut [f32]) {
    for i in 0..n {
        let mut acc = vec![0f64; v];
        for k in 0..n {
            acc[targets[k] as usize] += dscores[i * n + k] as f64;
        }
        for (o, a) in dlogits[i * v..][..v].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cross_entropy;
    use crate::rng::Rng;

    /// The mean over positions of `-log softmax_k(scores_i)[i]` in f64.
    fn loss(logits: &[f32], targets: &[u32], n: usize, v: usize) -> f64 {
        let mut s = vec![0.0; n * n];
        cpu_scores(n, v, logits, targets, &mut s);
        let keep = Keep::default();
        (0..n)
            .map(|i| cross_entropy::row(&s[i * n..][..n], i, &keep, 1.0, None))
            .sum::<f64>()
            / n as f64
    }

    /// Central differences of the loss in the logits against scores, cross-entropy and
    /// scatter on the CPU, with repeated targets and tokens no target names (gradient 0).
    #[test]
    fn backward_matches_finite_differences() {
        let (n, v) = (6usize, 5usize);
        let mut rng = Rng::new(2);
        let logits: Vec<f32> = (0..n * v).map(|_| 2.0 * rng.normal() as f32).collect();
        let targets = [1u32, 3, 1, 0, 3, 1];
        let diag: Vec<u32> = (0..n as u32).collect();
        let mut s = vec![0.0; n * n];
        cpu_scores(n, v, &logits, &targets, &mut s);
        let (mut losses, mut ds) = (vec![0.0; n], vec![0.0; n * n]);
        let plain = (&Keep::default(), &cross_entropy::Shaping::default());
        let scale = 1.0 / n as f32;
        cross_entropy::cpu(
            n as u32,
            n as u32,
            plain,
            scale,
            &s,
            &diag,
            &[],
            &mut losses,
            &mut ds,
        );
        let mut d = vec![f32::NAN; n * v];
        cpu_scatter(n, v, &targets, &ds, &mut d);
        let h = 1e-3f32;
        for i in 0..n * v {
            let (mut p, mut m) = (logits.clone(), logits.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p, &targets, n, v) - loss(&m, &targets, n, v)) / (p[i] - m[i]) as f64;
            assert!(
                (fd - d[i] as f64).abs() < 1e-6 + 1e-4 * fd.abs(),
                "d/dl[{i}]: fd {fd} vs {}",
                d[i]
            );
            if !targets.contains(&((i % v) as u32)) {
                assert_eq!(d[i], 0.0);
            }
        }
    }
}
