//! The training loss as `--loss` spells it, and the noise distribution `sampled:K` draws from.
//!
//! Softmax-family losses (plain, `margin:M`, `hard:K`, `counterpart`, and any `+`-joined mix of
//! the last three) run the one fused `cross_entropy` kernel with a per-row kept set;
//! `sampled:K` runs `sampled_loss`. `Display` is canonical and parses back to the same value,
//! so it can name runs and sit in checkpoint metadata.

use std::fmt;

use anyhow::{bail, Result};

use crate::data::Dataset;
use crate::kernels::cross_entropy::Keep;
use crate::kernels::sampled_loss::MAX_K;

/// The accepted spellings, for error messages.
pub const FORMS: &str = "plain, margin:M, hard:K, counterpart, sampled:K, or a '+' mix of \
                         margin/hard/counterpart such as hard:8+counterpart";

/// Negative sampling's exponent on unigram counts (word2vec's 3/4).
pub const NOISE_POWER: f64 = 0.75;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Loss {
    /// Threshold ("selfish tokens"): only non-targets with `l_j >= l_t - margin` compete.
    pub margin: Option<f32>,
    /// Dynamic hard negatives: only the K highest-scoring non-targets compete.
    pub hard: Option<u32>,
    /// The target's twin in the other alphabet is a false negative and is never pushed down.
    pub counterpart: bool,
    /// Skip-gram negative sampling with K negatives per position; combines with nothing.
    pub sampled: Option<u32>,
}

fn bad(s: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("invalid --loss '{s}': {why}; accepted forms: {FORMS}")
}

/// A margin from the command line: finite and >= 0.
pub fn parse_margin(s: &str) -> Option<f32> {
    match s.trim().parse::<f32>() {
        // + 0.0 turns -0 into 0, so "margin:-0" prints as margin:0.
        Ok(m) if m.is_finite() && m >= 0.0 => Some(m + 0.0),
        _ => None,
    }
}

impl Loss {
    pub const PLAIN: Loss = Loss {
        margin: None,
        hard: None,
        counterpart: false,
        sampled: None,
    };

    pub fn parse(s: &str) -> Result<Loss> {
        let spec = s.trim();
        if spec.eq_ignore_ascii_case("plain") {
            return Ok(Loss::PLAIN);
        }
        let count = |a: &str, max: u32| -> Result<u32> {
            match a.trim().parse::<u32>() {
                Ok(k) if (1..=max).contains(&k) => Ok(k),
                _ => Err(bad(
                    s,
                    &format!("K must be a whole number from 1 to {max}, not '{a}'"),
                )),
            }
        };
        let mut loss = Loss::PLAIN;
        for part in spec.split('+') {
            let (name, arg) = match part.split_once(':') {
                Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a)),
                None => (part.trim().to_ascii_lowercase(), None),
            };
            let twice = match (name.as_str(), arg) {
                ("margin", Some(a)) => {
                    let m = parse_margin(a).ok_or_else(|| {
                        bad(
                            s,
                            &format!("the margin must be a finite number >= 0, not '{a}'"),
                        )
                    })?;
                    loss.margin.replace(m).is_some()
                }
                ("hard", Some(a)) => loss.hard.replace(count(a, u32::MAX)?).is_some(),
                ("sampled", Some(a)) => loss.sampled.replace(count(a, MAX_K)?).is_some(),
                ("counterpart", None) => std::mem::replace(&mut loss.counterpart, true),
                ("plain", None) => return Err(bad(s, "plain combines with nothing")),
                ("margin" | "hard" | "sampled", None) => {
                    return Err(bad(s, &format!("{name} needs a value, as in {name}:8")))
                }
                _ => return Err(bad(s, &format!("unknown loss '{}'", part.trim()))),
            };
            if twice {
                return Err(bad(s, &format!("{name} is given twice")));
            }
        }
        if loss.sampled.is_some()
            && (loss.margin.is_some() || loss.hard.is_some() || loss.counterpart)
        {
            return Err(bad(s, "sampled:K combines with nothing"));
        }
        Ok(loss)
    }

    /// Adds `--margin` to a parsed `--loss` (e.g. `--loss counterpart --margin 1`).
    pub fn with_margin(mut self, margin: Option<f32>) -> Result<Loss> {
        let Some(m) = margin else {
            return Ok(self);
        };
        if self.sampled.is_some() {
            bail!("--margin applies to the softmax losses, not --loss {self}: drop --margin or pick another --loss");
        }
        if self.margin.is_some_and(|x| x != m) {
            bail!("--loss {self} already sets a margin, so --margin {m} contradicts it: give the margin once");
        }
        self.margin = Some(m);
        Ok(self)
    }

    /// The kept set for a model of `vocab_size` logits; `None` for `sampled:K`.
    /// `counterpart` reads the vocabulary as two alphabets of `vocab_size / 2`.
    pub fn keep(&self, vocab_size: usize) -> Result<Option<Keep>> {
        if self.sampled.is_some() {
            return Ok(None);
        }
        if self.counterpart && (vocab_size < 2 || !vocab_size.is_multiple_of(2)) {
            bail!("--loss {self} needs a two-alphabet vocabulary (an even size), got {vocab_size}: train with --low-resource-prob > 0");
        }
        Ok(Some(Keep {
            margin: self.margin,
            hard: self.hard,
            counterpart: self.counterpart.then_some(vocab_size as u32 / 2),
        }))
    }

    /// Refuses losses the data cannot support: `counterpart` needs the second alphabet.
    pub fn check_data(&self, data: &Dataset, model_vocab: usize) -> Result<()> {
        if self.counterpart && model_vocab != 2 * data.vocab.len() {
            bail!("--loss {self} needs the second (low-resource) alphabet, but this run trains one language: pass --low-resource-prob > 0, or drop counterpart");
        }
        Ok(())
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = self.sampled {
            return write!(f, "sampled:{k}");
        }
        let mut parts = Vec::new();
        if let Some(k) = self.hard {
            parts.push(format!("hard:{k}"));
        }
        if self.counterpart {
            parts.push("counterpart".into());
        }
        if let Some(m) = self.margin {
            parts.push(format!("margin:{m}"));
        }
        if parts.is_empty() {
            parts.push("plain".into());
        }
        write!(f, "{}", parts.join("+"))
    }
}

impl std::str::FromStr for Loss {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Loss> {
        Loss::parse(s)
    }
}

/// Serialised as its `--loss` spelling.
impl serde::Serialize for Loss {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Noise weights over the model vocabulary: (expected training count)^0.75.
///
/// Counts come from the training split. A row moves to the second alphabet with probability
/// p, so character c is expected (1 - p)·n_c times as itself and p·n_c times as its twin; a
/// one-language model (`model_vocab == V`) uses n_c. A token that never occurs in training
/// gets weight 0 and is never drawn, as word2vec leaves out words it has not seen.
pub fn noise_weights(data: &Dataset, model_vocab: usize) -> Vec<f64> {
    let v = data.vocab.len();
    let mut n = vec![0u64; v];
    for &t in &data.train {
        n[t as usize] += 1;
    }
    let p = if model_vocab == 2 * v {
        data.low_resource_prob
    } else {
        0.0
    };
    let mut w: Vec<f64> = n.iter().map(|&c| (1.0 - p) * c as f64).collect();
    if model_vocab == 2 * v {
        w.extend(n.iter().map(|&c| p * c as f64));
    }
    w.resize(model_vocab, 0.0);
    w.iter().map(|&x| x.powf(NOISE_POWER)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for (s, want) in [
            ("plain", Loss::PLAIN),
            (
                "margin:1.5",
                Loss {
                    margin: Some(1.5),
                    ..Loss::PLAIN
                },
            ),
            (
                "hard:8",
                Loss {
                    hard: Some(8),
                    ..Loss::PLAIN
                },
            ),
            (
                "counterpart",
                Loss {
                    counterpart: true,
                    ..Loss::PLAIN
                },
            ),
            (
                "sampled:5",
                Loss {
                    sampled: Some(5),
                    ..Loss::PLAIN
                },
            ),
            (
                "margin:0.5+Counterpart+hard:3",
                Loss {
                    margin: Some(0.5),
                    hard: Some(3),
                    counterpart: true,
                    sampled: None,
                },
            ),
        ] {
            let got = Loss::parse(s).unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(Loss::parse(&got.to_string()).unwrap(), got, "{got}");
        }
        assert_eq!(
            Loss::parse("counterpart+margin:1+hard:2")
                .unwrap()
                .to_string(),
            "hard:2+counterpart+margin:1"
        );
        assert_eq!(Loss::parse("margin:-0").unwrap().to_string(), "margin:0");
    }

    #[test]
    fn bad_values_give_one_line_errors_naming_the_forms() {
        for (s, needle) in [
            ("hard:0", "K must be"),
            ("sampled:0", "K must be"),
            ("sampled:1025", "1 to 1024"),
            ("hard:x", "K must be"),
            ("hard:-3", "K must be"),
            ("hard", "needs a value"),
            ("bogus", "unknown loss"),
            ("margin:-1", "margin must be"),
            ("margin:NaN", "margin must be"),
            ("margin:inf", "margin must be"),
            ("plain+hard:2", "combines with nothing"),
            ("sampled:4+counterpart", "combines with nothing"),
            ("hard:2+hard:3", "twice"),
            ("", "unknown loss"),
        ] {
            let e = Loss::parse(s).unwrap_err().to_string();
            assert!(e.contains(needle), "{s}: {e}");
            assert!(e.contains("accepted forms: plain, margin:M"), "{s}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn margin_flag_combines() {
        let cp = Loss::parse("counterpart").unwrap();
        assert_eq!(
            cp.with_margin(Some(1.0)).unwrap().to_string(),
            "counterpart+margin:1"
        );
        assert_eq!(cp.with_margin(None).unwrap(), cp);
        let m = Loss::parse("margin:2").unwrap();
        assert_eq!(m.with_margin(Some(2.0)).unwrap(), m);
        assert!(m
            .with_margin(Some(1.0))
            .unwrap_err()
            .to_string()
            .contains("give the margin once"));
        let s = Loss::parse("sampled:3").unwrap();
        assert!(s
            .with_margin(Some(1.0))
            .unwrap_err()
            .to_string()
            .contains("drop --margin"));
    }

    #[test]
    fn keep_and_data_checks() {
        let cp = Loss::parse("counterpart+hard:4").unwrap();
        let k = cp.keep(130).unwrap().unwrap();
        assert_eq!((k.counterpart, k.hard, k.margin), (Some(65), Some(4), None));
        assert!(cp.keep(65).is_err());
        assert_eq!(Loss::parse("sampled:2").unwrap().keep(130).unwrap(), None);

        let text = "abcabcaab".repeat(20);
        let one = Dataset::from_text(&text, 0.0).unwrap();
        let e = cp
            .check_data(&one, one.model_vocab())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--low-resource-prob"), "{e}");
        let two = Dataset::from_text(&text, 0.25).unwrap();
        cp.check_data(&two, two.model_vocab()).unwrap();
    }

    #[test]
    fn noise_weights_follow_the_training_counts() {
        // 'a' x3, 'b' x1 per 4 characters; 'c' only in the validation split.
        let text = format!("{}{}", "aaab".repeat(90), "c".repeat(40));
        let two = Dataset::from_text(&text, 0.25).unwrap();
        let na = two.train.iter().filter(|&&t| t == 0).count() as f64;
        let nb = two.train.iter().filter(|&&t| t == 1).count() as f64;
        let w = noise_weights(&two, 6);
        let want = [
            (0.75 * na).powf(0.75),
            (0.75 * nb).powf(0.75),
            0.0,
            (0.25 * na).powf(0.75),
            (0.25 * nb).powf(0.75),
            0.0,
        ];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-9 * b.max(1.0), "{w:?} vs {want:?}");
        }
        let one = Dataset::from_text(&text, 0.0).unwrap();
        assert_eq!(
            noise_weights(&one, 3),
            vec![na.powf(0.75), nb.powf(0.75), 0.0]
        );
    }
}
