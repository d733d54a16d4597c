//! Statistics over seeds: mean, standard deviation and a 95% Student-t interval per run and
//! metric, and paired differences against plain cross-entropy (same seed: same weights and
//! batches), with a verdict in words.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Values of one metric over seeds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); `None` for one value.
    pub sd: Option<f64>,
    /// 95% interval of the mean, `mean ± t(0.975, n-1)·sd/√n`; `None` for one value.
    pub ci95: Option<(f64, f64)>,
    /// `(seed, value)` for every seed.
    pub values: Vec<(u64, f64)>,
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .expect("df >= 1")
        .inverse_cdf(0.975)
}

pub fn summarize(values: &[(u64, f64)]) -> Summary {
    let n = values.len();
    let mean = values.iter().map(|v| v.1).sum::<f64>() / n.max(1) as f64;
    let (sd, ci95) = if n >= 2 {
        let var = values.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let half = t975(n - 1) * sd / (n as f64).sqrt();
        (Some(sd), Some((mean - half, mean + half)))
    } else {
        (None, None)
    };
    Summary {
        n,
        mean,
        sd,
        ci95,
        values: values.to_vec(),
    }
}

/// How a run's paired difference against plain stands.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole 95% interval of the difference is below 0.
    Lower,
    /// The interval contains 0.
    WithinNoise,
    /// The whole interval is above 0.
    Higher,
    /// One seed: no interval.
    NoInterval,
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Lower => "lower than plain beyond seed noise",
            Verdict::WithinNoise => "within noise",
            Verdict::Higher => "higher than plain beyond seed noise",
            Verdict::NoInterval => "one seed: no interval can be given",
        }
    }
}

/// `run - plain` seed by seed, over the seeds both have.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Paired {
    pub diff: Summary,
    /// The difference relative to plain's value of the same seed, in percent.
    pub percent: Summary,
    pub verdict: Verdict,
}

pub fn paired(run: &[(u64, f64)], plain: &[(u64, f64)]) -> Option<Paired> {
    let pairs: Vec<(u64, f64, f64)> = run
        .iter()
        .filter_map(|&(s, v)| plain.iter().find(|p| p.0 == s).map(|p| (s, v, p.1)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let diff = summarize(
        &pairs
            .iter()
            .map(|&(s, v, p)| (s, v - p))
            .collect::<Vec<_>>(),
    );
    let percent = summarize(
        &pairs
            .iter()
            .map(|&(s, v, p)| (s, 100.0 * (v / p - 1.0)))
            .collect::<Vec<_>>(),
    );
    let verdict = match diff.ci95 {
        None => Verdict::NoInterval,
        Some((_, hi)) if hi < 0.0 => Verdict::Lower,
        Some((lo, _)) if lo > 0.0 => Verdict::Higher,
        Some(_) => Verdict::WithinNoise,
    };
    Some(Paired {
        diff,
        percent,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_use_student_t() {
        // t(0.975, 4) = 2.7764 (tables); mean 3, sd sqrt(2.5).
        assert!((t975(4) - 2.776_445).abs() < 1e-5);
        let s = summarize(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]);
        let half = 2.776_445 * 2.5f64.sqrt() / 5f64.sqrt();
        let (lo, hi) = s.ci95.unwrap();
        assert!(
            (s.mean - 3.0).abs() < 1e-12
                && (hi - 3.0 - half).abs() < 1e-5
                && (3.0 - lo - half).abs() < 1e-5
        );
        let one = summarize(&[(7, 2.5)]);
        assert_eq!((one.sd, one.ci95, one.mean), (None, None, 2.5));
    }

    #[test]
    fn paired_verdicts() {
        let plain = [(1, 10.0), (2, 11.0), (3, 10.5)];
        let lower = [(1, 8.0), (2, 9.2), (3, 8.4)];
        let p = paired(&lower, &plain).unwrap();
        assert_eq!(p.verdict, Verdict::Lower);
        assert!((p.diff.mean + 1.966_666_6).abs() < 1e-6);
        let noisy = [(1, 9.0), (2, 12.0), (3, 10.4)];
        assert_eq!(
            paired(&noisy, &plain).unwrap().verdict,
            Verdict::WithinNoise
        );
        let higher = [(1, 11.0), (2, 12.1), (3, 11.4)];
        assert_eq!(paired(&higher, &plain).unwrap().verdict, Verdict::Higher);
        assert_eq!(
            paired(&[(1, 9.0)], &plain).unwrap().verdict,
            Verdict::NoInterval
        );
        // Only seeds both runs have are paired.
        assert_eq!(paired(&[(9, 1.0)], &plain), None);
        assert_eq!(
            paired(&[(2, 9.0), (9, 1.0)], &plain).unwrap().diff.values,
            vec![(2, -2.0)]
        );
    }
}
