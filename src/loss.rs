//! The training loss, defined in one place: how `--loss` spells it, what it combines with,
//! the buffers it needs, the ops it records and what the host writes for it each step.
//!
//! A loss is a `+`-joined list of terms (`hard:8+counterpart+margin:1`). Each term is one
//! entry of [`TERMS`]: its name and arguments, a line of help, its rules, and how it sets the
//! [`Plan`] the model records from. Adding a loss is its kernel (`src/kernels/<op>.rs` and its
//! shader), one entry here, and, if it needs a new op, a line in [`record`].
//!
//! Validation always reports plain cross-entropy; the loss shapes training only.

use std::fmt;

use anyhow::{anyhow, bail, Result};

use crate::buffers::{Buf, Dtype};
use crate::data::Dataset;
use crate::kernels::cross_entropy::{CrossEntropy, Keep, Mean};
use crate::kernels::sampled_loss::{self, SampledLoss, MAX_K};
use crate::kernels::{IntoOp, Op};
use crate::runtime::Backend;

/// Negative sampling's exponent on unigram counts (word2vec's 3/4).
pub const NOISE_POWER: f64 = 0.75;

/// One term of the loss as `--loss` spells it.
pub struct TermDef {
    pub name: &'static str,
    /// Where the term stands in the canonical spelling (`hard:8+counterpart+margin:1`),
    /// which names runs and sits in checkpoints, so it never changes.
    pub rank: u8,
    /// Argument names after the name, `:`-separated (`margin:M`).
    pub args: &'static [Arg],
    /// What it does, in one line (for `--help` and errors).
    pub help: &'static str,
    /// Combines with no other term.
    pub alone: bool,
    /// Needs the second (low-resource) alphabet.
    pub two_alphabets: bool,
    /// Sets the plan from the (already validated) argument values.
    pub apply: fn(&[f64], &mut Plan),
}

/// An argument of a term and its rule.
pub struct Arg {
    pub name: &'static str,
    pub kind: ArgKind,
}

#[derive(Clone, Copy)]
pub enum ArgKind {
    /// A finite number >= 0.
    NonNegative,
    /// A whole number from 1 to the bound.
    Count(u32),
}

const M: Arg = Arg {
    name: "M",
    kind: ArgKind::NonNegative,
};

/// Every term `--loss` accepts, in the order help lists them.
pub const TERMS: &[TermDef] = &[
    TermDef {
        name: "margin",
        rank: 2,
        args: &[M],
        help: "the threshold loss: only logits l_j >= l_target - M stay in the softmax (selfish tokens)",
        alone: false,
        two_alphabets: false,
        apply: |a, p| p.keep.margin = Some(a[0] as f32),
    },
    TermDef {
        name: "hard",
        rank: 0,
        args: &[Arg {
            name: "K",
            kind: ArgKind::Count(u32::MAX),
        }],
        help: "dynamic hard negatives: only the K highest-scoring non-targets compete with the target",
        alone: false,
        two_alphabets: false,
        apply: |a, p| p.keep.hard = Some(a[0] as u32),
    },
    TermDef {
        name: "counterpart",
        rank: 1,
        args: &[],
        help: "the target's twin in the other alphabet (t ± V) is a false negative and is never pushed down",
        alone: false,
        two_alphabets: true,
        apply: |_, p| p.counterpart = true,
    },
    TermDef {
        name: "sampled",
        rank: 3,
        args: &[Arg {
            name: "K",
            kind: ArgKind::Count(MAX_K),
        }],
        help: "skip-gram negative sampling: a sigmoid loss on the target and K negatives drawn from unigram^0.75",
        alone: true,
        two_alphabets: false,
        apply: |a, p| p.head = Head::Sampled(a[0] as u32),
    },
];

/// What the model records for a loss: the kernels' arguments, filled in by the terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Plan {
    pub head: Head,
    /// The softmax's kept set (the counterpart rule is set from the vocabulary in [`plan`]).
    pub keep: Keep,
    pub counterpart: bool,
}

/// Which loss kernel scores the logits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Head {
    /// Softmax cross-entropy over the kept set.
    #[default]
    Softmax,
    /// Negative sampling with K draws per position.
    Sampled(u32),
}

/// A term with its argument values.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub def: &'static TermDef,
    pub args: Vec<f64>,
}

/// The training loss: its terms in [`TERMS`] order (none: plain cross-entropy).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loss {
    pub terms: Vec<Term>,
}

impl PartialEq for TermDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for TermDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The accepted spellings, for error messages.
pub fn forms() -> String {
    let mut v = vec!["plain".to_string()];
    for t in TERMS {
        v.push(spelling(t));
    }
    format!(
        "{}, or a '+' mix of terms that combine, such as hard:8+counterpart",
        v.join(", ")
    )
}

/// `name:A:B` with the argument names.
fn spelling(t: &TermDef) -> String {
    let mut s = t.name.to_string();
    for a in t.args {
        s.push(':');
        s.push_str(a.name);
    }
    s
}

/// `--help` text: every spelling with its meaning.
pub fn help() -> String {
    let mut s = String::from("plain: cross-entropy over every logit (the default)\n");
    for t in TERMS {
        s.push_str(&format!("{}: {}\n", spelling(t), t.help));
    }
    s.push_str("Terms combine with '+' unless a term says it stands alone.");
    s
}

fn bad(s: &str, why: &str) -> anyhow::Error {
    anyhow!("invalid --loss '{s}': {why}; accepted forms: {}", forms())
}

/// A margin from the command line: finite and >= 0.
pub fn parse_margin(s: &str) -> Option<f32> {
    match s.trim().parse::<f32>() {
        // + 0.0 turns -0 into 0, so "margin:-0" prints as margin:0.
        Ok(m) if m.is_finite() && m >= 0.0 => Some(m + 0.0),
        _ => None,
    }
}

fn parse_arg(spec: &str, term: &str, a: &Arg, text: &str) -> Result<f64> {
    match a.kind {
        ArgKind::NonNegative => parse_margin(text).map(|m| m as f64).ok_or_else(|| {
            let what = if term == "margin" {
                "the margin".to_string()
            } else {
                format!("{term}'s {}", a.name)
            };
            bad(
                spec,
                &format!("{what} must be a finite number >= 0, not '{text}'"),
            )
        }),
        ArgKind::Count(max) => match text.trim().parse::<u32>() {
            Ok(k) if (1..=max).contains(&k) => Ok(k as f64),
            _ => Err(bad(
                spec,
                &format!(
                    "{} must be a whole number from 1 to {max}, not '{text}'",
                    a.name
                ),
            )),
        },
    }
}

impl Loss {
    pub fn plain() -> Loss {
        Loss::default()
    }

    pub fn parse(s: &str) -> Result<Loss> {
        let spec = s.trim();
        if spec.eq_ignore_ascii_case("plain") {
            return Ok(Loss::plain());
        }
        let mut terms: Vec<Term> = Vec::new();
        for part in spec.split('+') {
            let mut pieces = part.split(':');
            let name = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let args: Vec<&str> = pieces.collect();
            if name == "plain" {
                return Err(bad(s, "plain combines with nothing"));
            }
            let def = TERMS
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| bad(s, &format!("unknown loss '{}'", part.trim())))?;
            if args.len() != def.args.len() {
                let why = if def.args.is_empty() {
                    format!("{name} takes no value")
                } else if args.is_empty() {
                    format!("{name} needs a value, as in {}", example(def))
                } else {
                    format!(
                        "{name} takes {} value(s): {}",
                        def.args.len(),
                        spelling(def)
                    )
                };
                return Err(bad(s, &why));
            }
            let values = def
                .args
                .iter()
                .zip(&args)
                .map(|(a, text)| parse_arg(s, &name, a, text))
                .collect::<Result<Vec<f64>>>()?;
            if terms.iter().any(|t| t.def.name == def.name) {
                return Err(bad(s, &format!("{name} is given twice")));
            }
            terms.push(Term { def, args: values });
        }
        if let Some(t) = terms.iter().find(|t| t.def.alone) {
            if terms.len() > 1 {
                return Err(bad(
                    s,
                    &format!("{} combines with nothing", spelling(t.def)),
                ));
            }
        }
        let mut loss = Loss::default();
        for t in terms {
            loss.insert(t);
        }
        Ok(loss)
    }

    /// Adds a term in canonical order.
    fn insert(&mut self, t: Term) {
        self.terms.push(t);
        self.terms.sort_by_key(|t| t.def.rank);
    }

    fn term(&self, name: &str) -> Option<&Term> {
        self.terms.iter().find(|t| t.def.name == name)
    }

    /// The threshold margin, if the loss has one.
    pub fn margin(&self) -> Option<f32> {
        self.term("margin").map(|t| t.args[0] as f32)
    }

    /// Adds `--margin` to a parsed `--loss` (e.g. `--loss counterpart --margin 1`).
    pub fn with_margin(mut self, margin: Option<f32>) -> Result<Loss> {
        let Some(m) = margin else {
            return Ok(self);
        };
        if self.terms.iter().any(|t| t.def.alone) {
            bail!("--margin applies to the softmax losses, not --loss {self}: drop --margin or pick another --loss");
        }
        match self.margin() {
            Some(x) if x != m => bail!("--loss {self} already sets a margin, so --margin {m} contradicts it: give the margin once"),
            Some(_) => Ok(self),
            None => {
                let def = TERMS.iter().find(|t| t.name == "margin").expect("margin is a term");
                self.insert(Term {
                    def,
                    args: vec![m as f64],
                });
                Ok(self)
            }
        }
    }

    /// The kernels' arguments for a model of `vocab_size` logits. `counterpart` reads the
    /// vocabulary as two alphabets of `vocab_size / 2`.
    pub fn plan(&self, vocab_size: usize) -> Result<Plan> {
        let mut p = Plan::default();
        for t in &self.terms {
            (t.def.apply)(&t.args, &mut p);
        }
        if p.counterpart {
            if vocab_size < 2 || !vocab_size.is_multiple_of(2) {
                bail!("--loss {self} needs a two-alphabet vocabulary (an even size), got {vocab_size}: train with --low-resource-prob > 0");
            }
            p.keep.counterpart = Some(vocab_size as u32 / 2);
        }
        Ok(p)
    }

    /// Refuses losses the data cannot support: `counterpart` needs the second alphabet.
    pub fn check_data(&self, data: &Dataset, model_vocab: usize) -> Result<()> {
        if let Some(t) = self.terms.iter().find(|t| t.def.two_alphabets) {
            if model_vocab != 2 * data.vocab.len() {
                bail!(
                    "--loss {self} needs the second (low-resource) alphabet, but this run trains one language: pass --low-resource-prob > 0, or drop {}",
                    t.def.name
                );
            }
        }
        Ok(())
    }
}

/// `margin:1`, `hard:8`: a spelling with example values.
fn example(t: &TermDef) -> String {
    let mut s = t.name.to_string();
    for a in t.args {
        s.push_str(match a.kind {
            ArgKind::NonNegative => ":1",
            ArgKind::Count(_) => ":8",
        });
    }
    s
}

/// A number as `--loss` writes it: shortest form of the f32 it came from.
fn number(x: f64) -> String {
    (x as f32).to_string()
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("plain");
        }
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                let mut s = t.def.name.to_string();
                for a in &t.args {
                    s.push(':');
                    s.push_str(&number(*a));
                }
                s
            })
            .collect();
        f.write_str(&parts.join("+"))
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

impl<'de> serde::Deserialize<'de> for Loss {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Loss, D::Error> {
        let s = String::deserialize(d)?;
        Loss::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The buffers a loss needs beyond the model's.
#[derive(Clone, Copy, Debug)]
pub struct LossBufs {
    /// `sampled:K`: the noise table (u32 `[V]`, see `sampled_loss::cdf`; uniform until
    /// [`LossBufs::set_noise`]) and the draw seeds (u32 `[step, run seed]`).
    pub noise: Option<(Buf, Buf)>,
}

/// What [`record`] reads and writes: the logits and targets of `rows` positions over `cols`
/// tokens, the per-position losses and their mean, and the gradient at the logits.
#[derive(Clone, Copy, Debug)]
pub struct LossIo {
    pub rows: u32,
    pub cols: u32,
    pub logits: Buf,
    pub targets: Buf,
    pub losses: Buf,
    pub loss: Buf,
    pub dlogits: Buf,
}

impl LossBufs {
    pub fn alloc(plan: &Plan, be: &mut dyn Backend, vocab: usize) -> Result<LossBufs> {
        let noise = match plan.head {
            Head::Sampled(_) => {
                let cdf = be.alloc("noise cdf", vocab, Dtype::U32)?;
                be.write_u32(cdf, &sampled_loss::cdf(&vec![1.0; vocab]));
                Some((cdf, be.alloc("noise seeds", 2, Dtype::U32)?))
            }
            Head::Softmax => None,
        };
        Ok(LossBufs { noise })
    }

    /// What the host writes before training step `t` (1-based).
    pub fn before_step(&self, be: &mut dyn Backend, t: u64) {
        if let Some((_, seeds)) = self.noise {
            // Word 0 only: the run seed in word 1 stays.
            be.write_u32(seeds, &[t as u32]);
        }
    }

    /// `sampled:K`: the noise distribution (weights over the vocabulary, see
    /// [`noise_weights`]) and the run seed the draws hash with. A no-op for other losses.
    pub fn set_noise(&self, be: &mut dyn Backend, weights: &[f64], seed: u64) -> Result<()> {
        let Some((cdf, seeds)) = self.noise else {
            return Ok(());
        };
        if weights.len() != be.len(cdf) {
            bail!(
                "noise weights cover {} tokens, the model {}",
                weights.len(),
                be.len(cdf)
            );
        }
        be.write_u32(cdf, &sampled_loss::cdf(weights));
        be.write_u32(seeds, &[0, (seed ^ (seed >> 32)) as u32]);
        Ok(())
    }
}

/// The loss's ops: per-position losses and `dlogits` (the gradient of their mean), then the
/// mean itself.
pub fn record(plan: &Plan, bufs: &LossBufs, io: &LossIo) -> Vec<Op> {
    let scale = 1.0 / io.rows as f32;
    let head = match (plan.head, bufs.noise) {
        (Head::Sampled(k), Some((cdf, seeds))) => SampledLoss {
            rows: io.rows,
            cols: io.cols,
            k,
            scale,
            logits: io.logits,
            targets: io.targets,
            cdf,
            seeds,
            losses: io.losses,
            dlogits: io.dlogits,
        }
        .op(),
        _ => CrossEntropy {
            rows: io.rows,
            cols: io.cols,
            keep: plan.keep,
            scale,
            logits: io.logits,
            targets: io.targets,
            losses: io.losses,
            dlogits: io.dlogits,
        }
        .op(),
    };
    let mean = Mean {
        n: io.rows,
        x: io.losses,
        out: io.loss,
    };
    vec![head, mean.op()]
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

    fn plan(s: &str, v: usize) -> Plan {
        Loss::parse(s).unwrap().plan(v).unwrap()
    }

    #[test]
    fn parses_every_form_and_round_trips() {
        let keep = |margin, hard, counterpart| Plan {
            keep: Keep {
                margin,
                hard,
                counterpart,
            },
            counterpart: counterpart.is_some(),
            ..Plan::default()
        };
        for (s, want) in [
            ("plain", Plan::default()),
            ("margin:1.5", keep(Some(1.5), None, None)),
            ("hard:8", keep(None, Some(8), None)),
            ("counterpart", keep(None, None, Some(65))),
            (
                "sampled:5",
                Plan {
                    head: Head::Sampled(5),
                    ..Plan::default()
                },
            ),
            (
                "margin:0.5+Counterpart+hard:3",
                keep(Some(0.5), Some(3), Some(65)),
            ),
        ] {
            let got = Loss::parse(s).unwrap();
            assert_eq!(got.plan(130).unwrap(), want, "{s}");
            assert_eq!(Loss::parse(&got.to_string()).unwrap(), got, "{got}");
        }
        assert_eq!(
            Loss::parse("counterpart+margin:1+hard:2")
                .unwrap()
                .to_string(),
            "hard:2+counterpart+margin:1"
        );
        assert_eq!(Loss::parse("margin:-0").unwrap().to_string(), "margin:0");
        assert_eq!(Loss::parse("margin:0.1").unwrap().to_string(), "margin:0.1");
        let json = serde_json::to_string(&Loss::parse("hard:2+margin:1").unwrap()).unwrap();
        assert_eq!(json, "\"hard:2+margin:1\"");
        let back: Loss = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), "hard:2+margin:1");
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
            ("hard:1:2", "takes 1 value"),
            ("counterpart:3", "takes no value"),
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
            assert!(
                e.contains("accepted forms: plain, margin:M, hard:K, counterpart, sampled:K"),
                "{s}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn margin_flag_combines() {
        let cp = Loss::parse("counterpart").unwrap();
        assert_eq!(
            cp.clone().with_margin(Some(1.0)).unwrap().to_string(),
            "counterpart+margin:1"
        );
        assert_eq!(cp.clone().with_margin(None).unwrap(), cp);
        let m = Loss::parse("margin:2").unwrap();
        assert_eq!(m.clone().with_margin(Some(2.0)).unwrap(), m);
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
        assert_eq!(
            Loss::plain().with_margin(Some(0.5)).unwrap(),
            Loss::parse("margin:0.5").unwrap()
        );
    }

    #[test]
    fn plans_and_data_checks() {
        let p = plan("counterpart+hard:4", 130);
        assert_eq!(
            (p.keep.counterpart, p.keep.hard, p.keep.margin),
            (Some(65), Some(4), None)
        );
        assert!(Loss::parse("counterpart").unwrap().plan(65).is_err());
        assert_eq!(plan("sampled:2", 130).head, Head::Sampled(2));

        let cp = Loss::parse("counterpart+hard:4").unwrap();
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
    fn help_lists_every_term() {
        let h = help();
        for t in TERMS {
            assert!(h.contains(&format!("{}:", spelling(t))), "{h}");
        }
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
