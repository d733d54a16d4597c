//! The training loss, defined in one place: how `--loss` spells it, what it combines with,
//! the buffers it needs, the ops it records, what the host writes for it each step and the
//! state it keeps between steps.
//!
//! A loss is a `+`-joined list of terms (`hard:8+counterpart+margin:1`). Each term is one
//! entry of [`TERMS`]: its name and arguments, a line of help, its family (which says what it
//! combines with), and how it sets the [`Plan`] the model records from. Adding a loss is its
//! kernel (`src/kernels/<op>.rs` and its shader), one entry here, and, if it needs a new op,
//! its buffers in [`LossBufs`] and a line in [`record`], at the point of the backward
//! [`LossOps`] names (the model itself stays loss-agnostic).
//!
//! Validation always reports plain cross-entropy; the loss shapes training only.

use std::collections::VecDeque;
use std::fmt;

use anyhow::{anyhow, bail, Result};

use crate::buffers::{Buf, Dtype};
use crate::data::Dataset;
use crate::kernels::agg::AggGate;
use crate::kernels::cosreg::{CosReg, CosRegBwd, CosRegFwd};
use crate::kernels::cross_entropy::{CrossEntropy, Keep, Mean, PerRow, Shaping};
use crate::kernels::cwt::{CwtScatter, CwtScores};
use crate::kernels::row_norms::{AdvBwd, RowNorms};
use crate::kernels::sampled_loss::{self, SampledLoss, MAX_K};
use crate::kernels::{IntoOp, Op, LOOP_LIMIT};
use crate::runtime::Backend;
use crate::tensorfile::{Tensor, TensorFile};

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
    /// What it combines with (see [`combines`]).
    pub family: Family,
    /// What must come with it.
    pub needs: Needs,
    /// Terms it never shares a loss with, beyond its family's rule.
    pub excludes: &'static [&'static str],
    /// Needs the second (low-resource) alphabet.
    pub two_alphabets: bool,
    /// Sets the plan from the (already validated) argument values.
    pub apply: fn(&[f64], &mut Plan),
}

/// Kinds of terms, by what they combine with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Chooses which logits enter the softmax (`hard`, `counterpart`).
    Keep,
    /// Where the threshold's margin comes from; one per loss.
    Margin,
    /// Changes what the threshold does; goes with a margin only.
    Threshold,
    /// A remedy of its own, compared with the threshold rather than mixed with it.
    Alone,
    /// A training option that applies to any loss.
    Option,
}

/// What a term needs beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// A term of the [`Family::Margin`] family.
    Margin,
    /// This term.
    Term(&'static str),
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
    /// A finite number > 0.
    Positive,
    /// A whole number from 1 to the bound.
    Count(u32),
}

const fn arg(name: &'static str, kind: ArgKind) -> Arg {
    Arg { name, kind }
}

const M: Arg = arg("M", ArgKind::NonNegative);
const A: Arg = arg("A", ArgKind::NonNegative);

/// A term with the defaults every field but the first four takes.
const fn term(name: &'static str, rank: u8, args: &'static [Arg], help: &'static str) -> TermDef {
    TermDef {
        name,
        rank,
        args,
        help,
        family: Family::Keep,
        needs: Needs::Nothing,
        excludes: &[],
        two_alphabets: false,
        apply: no_plan,
    }
}

fn no_plan(_: &[f64], _: &mut Plan) {}

/// A margin that follows norms: `A·‖W_y‖` and/or `A·‖h‖` per position.
fn norm_margin(p: &mut Plan, alpha: f64, w: bool, h: bool) {
    p.shaping.per_row = PerRow::Margin;
    p.norms = Some(Norms {
        alpha: alpha as f32,
        table: Table::Head,
        w,
        h,
    });
}

/// Every term `--loss` accepts, in the order help lists them.
pub const TERMS: &[TermDef] = &[
    TermDef {
        family: Family::Margin,
        apply: |a, p| p.keep.margin = Some(a[0] as f32),
        ..term(
            "margin",
            2,
            &[M],
            "the threshold loss: only logits l_j >= l_target - M stay in the softmax (selfish tokens)",
        )
    },
    TermDef {
        apply: |a, p| p.keep.hard = Some(a[0] as u32),
        ..term(
            "hard",
            0,
            &[arg("K", ArgKind::Count(u32::MAX))],
            "dynamic hard negatives: only the K highest-scoring non-targets compete with the target",
        )
    },
    TermDef {
        two_alphabets: true,
        apply: |_, p| p.counterpart = true,
        ..term(
            "counterpart",
            1,
            &[],
            "the target's twin in the other alphabet (t ± V) is a false negative and is never pushed down",
        )
    },
    TermDef {
        family: Family::Alone,
        apply: |a, p| p.head = Head::Sampled(a[0] as u32),
        ..term(
            "sampled",
            3,
            &[arg("K", ArgKind::Count(MAX_K))],
            "skip-gram negative sampling: a sigmoid loss on the target and K negatives drawn from unigram^0.75",
        )
    },
    TermDef {
        family: Family::Margin,
        apply: |a, p| norm_margin(p, a[0], true, false),
        ..term(
            "margin-w",
            4,
            &[A],
            "the threshold loss with a margin A·‖W_target‖ per position (W: the output embedding)",
        )
    },
    TermDef {
        family: Family::Margin,
        apply: |a, p| norm_margin(p, a[0], false, true),
        ..term(
            "margin-h",
            5,
            &[A],
            "the threshold loss with a margin A·‖h‖ per position (h: the final hidden state)",
        )
    },
    TermDef {
        family: Family::Margin,
        apply: |a, p| norm_margin(p, a[0], true, true),
        ..term(
            "margin-wh",
            6,
            &[A],
            "the threshold loss with a margin A·‖W_target‖·‖h‖ per position",
        )
    },
    TermDef {
        family: Family::Threshold,
        needs: Needs::Margin,
        excludes: &["detach-under"],
        apply: |a, p| p.shaping.softminus = Some(a[0] as f32),
        ..term(
            "softminus",
            7,
            &[arg("C", ArgKind::Positive)],
            "a soft threshold: kept logits become C·log(exp((l - τ)/C) - 1) + τ, τ = l_target - margin (needs a margin)",
        )
    },
    TermDef {
        family: Family::Threshold,
        needs: Needs::Term("softminus"),
        apply: |_, p| p.shaping.detach_threshold = true,
        ..term(
            "detach-threshold",
            8,
            &[],
            "softminus's τ carries no gradient into the target logit (needs softminus)",
        )
    },
    TermDef {
        family: Family::Threshold,
        needs: Needs::Margin,
        apply: |_, p| p.shaping.detach_under = true,
        ..term(
            "detach-under",
            9,
            &[],
            "logits under the threshold stay in the softmax but get no gradient (needs a margin)",
        )
    },
    TermDef {
        family: Family::Alone,
        apply: |a, p| p.cosreg = Some(a[0] as f32),
        ..term(
            "cosreg",
            10,
            &[arg("G", ArgKind::NonNegative)],
            "cross-entropy + G × the mean pairwise cosine similarity of the token embeddings (Gao et al. 2019; paper: G = 1)",
        )
    },
    TermDef {
        family: Family::Alone,
        apply: |a, p| {
            p.shaping.per_row = PerRow::TargetOffset;
            p.norms = Some(Norms {
                alpha: a[0] as f32,
                table: Table::Wte,
                w: true,
                h: true,
            });
        },
        ..term(
            "adv",
            11,
            &[A],
            "an adversarial margin: the target logit lowered by A·‖E_target‖·‖h‖ before the softmax (paper: A = 0.005)",
        )
    },
    TermDef {
        family: Family::Alone,
        apply: |_, p| p.head = Head::Cwt,
        ..term(
            "cwt",
            12,
            &[],
            "contrastive weight tying: each position scored against the output embeddings of the batch's targets, softmax over the batch",
        )
    },
    TermDef {
        family: Family::Alone,
        apply: |a, p| p.agg = Some((a[0] as f32, a[1] as u32)),
        ..term(
            "agg",
            13,
            &[A, arg("K", ArgKind::Count(u32::MAX))],
            "adaptive gradient gating (Yu et al. 2022): tokens seen under A times a step over the last K steps are rare, and the output embedding's gradient is gated for them (paper: 0.02:1600)",
        )
    },
    TermDef {
        family: Family::Option,
        apply: |a, p| p.shaping.logit_scale = a[0] as f32,
        ..term(
            "logit-scale",
            20,
            &[arg("S", ArgKind::Positive)],
            "logits times S in training only, the paper's training temperature (also --logit-scale S)",
        )
    },
];

fn def(name: &str) -> &'static TermDef {
    TERMS
        .iter()
        .find(|t| t.name == name)
        .expect("a term of TERMS")
}

/// Whether two (different) terms can share a loss.
pub fn combines(a: &TermDef, b: &TermDef) -> bool {
    use Family::*;
    if a.excludes.contains(&b.name) || b.excludes.contains(&a.name) {
        return false;
    }
    match (a.family, b.family) {
        (Option, _) | (_, Option) => true,
        (Alone, _) | (_, Alone) | (Margin, Margin) => false,
        (Keep, Keep) | (Keep, Margin) | (Margin, Keep) => true,
        (Threshold, Margin) | (Margin, Threshold) | (Threshold, Threshold) => true,
        (Keep, Threshold) | (Threshold, Keep) => false,
    }
}

/// What the model records for a loss: the kernels' arguments, filled in by the terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Plan {
    pub head: Head,
    /// The softmax's kept set (the counterpart rule is set from the vocabulary in [`plan`]).
    pub keep: Keep,
    pub counterpart: bool,
    /// How the kept logits are scored (logit scale, soft threshold, detaching, per-row values).
    pub shaping: Shaping,
    /// Where the per-row values the shaping reads come from.
    pub norms: Option<Norms>,
    /// `cosreg:G`: the regularizer's weight.
    pub cosreg: Option<f32>,
    /// `agg:A:K`: the rarity threshold and the window in steps.
    pub agg: Option<(f32, u32)>,
}

/// Which loss kernel scores the logits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Head {
    /// Softmax cross-entropy over the kept set.
    #[default]
    Softmax,
    /// Negative sampling with K draws per position.
    Sampled(u32),
    /// Softmax over the batch's own targets (contrastive weight tying).
    Cwt,
}

/// Per-position values `alpha · ‖table[target]‖ · ‖h‖` (each norm where asked).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norms {
    pub alpha: f32,
    pub table: Table,
    pub w: bool,
    pub h: bool,
}

/// An embedding table a loss reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Table {
    /// The output embedding (`wte` when tied, `lm_head` when untied).
    Head,
    /// The token embedding.
    Wte,
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

/// The spellings of the terms `keep` selects, comma-separated.
fn spellings(keep: impl Fn(&TermDef) -> bool) -> String {
    TERMS
        .iter()
        .filter(|t| keep(t))
        .map(spelling)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--help` text: every spelling with its meaning, then what combines with what.
pub fn help() -> String {
    let mut s = String::from("plain: cross-entropy over every logit (the default)\n");
    for t in TERMS {
        s.push_str(&format!("{}: {}\n", spelling(t), t.help));
    }
    let family = |f: Family| spellings(|t| t.family == f);
    s.push_str(&format!(
        "Terms combine with '+': {} and one margin ({}) mix freely; {} go with a margin; {} stand alone; {} goes with any loss, and so does --untied.",
        family(Family::Keep),
        family(Family::Margin),
        family(Family::Threshold),
        family(Family::Alone),
        family(Family::Option),
    ));
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

/// A finite number > 0 from the command line (a logit scale, a temperature).
pub fn parse_positive(s: &str) -> Option<f32> {
    parse_margin(s).filter(|&x| x > 0.0)
}

fn parse_arg(spec: &str, term: &str, a: &Arg, text: &str) -> Result<f64> {
    let what = || {
        if term == "margin" {
            "the margin".to_string()
        } else {
            format!("{term}'s {}", a.name)
        }
    };
    match a.kind {
        ArgKind::NonNegative => parse_margin(text).map(|m| m as f64).ok_or_else(|| {
            bad(
                spec,
                &format!("{} must be a finite number >= 0, not '{text}'", what()),
            )
        }),
        ArgKind::Positive => parse_positive(text).map(|m| m as f64).ok_or_else(|| {
            bad(
                spec,
                &format!("{} must be a finite number > 0, not '{text}'", what()),
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

/// Why two terms of one loss do not combine.
fn clash(a: &TermDef, b: &TermDef) -> String {
    if a.family == Family::Margin && b.family == Family::Margin {
        return format!(
            "{} and {} both set the margin: give one",
            spelling(a),
            spelling(b)
        );
    }
    let options = spellings(|t| t.family == Family::Option);
    for t in [a, b] {
        if t.family == Family::Alone {
            return format!("{} combines with nothing but {options}", spelling(t));
        }
    }
    format!(
        "{} and {} do not combine: {} combines with {}",
        spelling(a),
        spelling(b),
        spelling(a),
        spellings(|t| t.name != a.name && combines(a, t))
    )
}

impl Loss {
    pub fn plain() -> Loss {
        Loss::default()
    }

    pub fn parse(s: &str) -> Result<Loss> {
        let loss = Loss::parse_terms(s)?;
        loss.check_needs(s)?;
        Ok(loss)
    }

    /// `--loss` with `--margin` and `--logit-scale` added, checked as one loss (so
    /// `--loss softminus:5 --margin 1` is the soft threshold with its margin).
    pub fn from_flags(loss: &str, margin: Option<f32>, logit_scale: Option<f32>) -> Result<Loss> {
        let l = Loss::parse_terms(loss)?
            .with_margin(margin)?
            .with_logit_scale(logit_scale)?;
        l.check_needs(&l.to_string())?;
        Ok(l)
    }

    /// The terms of a spelling, each valid and every pair combining; what terms need beside
    /// them is checked by [`Loss::check_needs`].
    fn parse_terms(s: &str) -> Result<Loss> {
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
                        "{name} takes {} value(s): {}, as in {}",
                        def.args.len(),
                        spelling(def),
                        example(def)
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
            if let Some(t) = terms.iter().find(|t| !combines(t.def, def)) {
                return Err(bad(s, &clash(t.def, def)));
            }
            terms.push(Term { def, args: values });
        }
        let mut loss = Loss::default();
        for t in terms {
            loss.insert(t);
        }
        Ok(loss)
    }

    /// Refuses a term without what it needs beside it (a soft threshold without a margin).
    fn check_needs(&self, s: &str) -> Result<()> {
        for t in &self.terms {
            let missing = match t.def.needs {
                Needs::Nothing => None,
                Needs::Margin => {
                    (!self.terms.iter().any(|u| u.def.family == Family::Margin)).then(|| {
                        format!(
                            "a margin: add one of {}",
                            spellings(|u| u.family == Family::Margin)
                        )
                    })
                }
                Needs::Term(n) => (self.term(n).is_none()).then(|| spelling(def(n))),
            };
            if let Some(m) = missing {
                return Err(bad(s, &format!("{} needs {m}", spelling(t.def))));
            }
        }
        Ok(())
    }

    /// Adds a term in canonical order.
    fn insert(&mut self, t: Term) {
        self.terms.push(t);
        self.terms.sort_by_key(|t| t.def.rank);
    }

    fn term(&self, name: &str) -> Option<&Term> {
        self.terms.iter().find(|t| t.def.name == name)
    }

    /// The threshold margin, if the loss has a fixed one.
    pub fn margin(&self) -> Option<f32> {
        self.term("margin").map(|t| t.args[0] as f32)
    }

    /// The training-only logit scale (1 unless `logit-scale:S`).
    pub fn logit_scale(&self) -> f32 {
        self.term("logit-scale").map_or(1.0, |t| t.args[0] as f32)
    }

    /// Adds `--margin` to a parsed `--loss` (e.g. `--loss counterpart --margin 1`).
    pub fn with_margin(mut self, margin: Option<f32>) -> Result<Loss> {
        let Some(m) = margin else {
            return Ok(self);
        };
        if self.terms.iter().any(|t| t.def.family == Family::Alone) {
            bail!("--margin applies to the softmax losses, not --loss {self}: drop --margin or pick another --loss");
        }
        let other = self
            .terms
            .iter()
            .any(|t| t.def.family == Family::Margin && t.def.name != "margin");
        match self.margin() {
            Some(x) if x != m => bail!("--loss {self} already sets a margin, so --margin {m} contradicts it: give the margin once"),
            None if other => bail!("--loss {self} already sets a margin, so --margin {m} contradicts it: give the margin once"),
            Some(_) => Ok(self),
            None => {
                self.insert(Term {
                    def: def("margin"),
                    args: vec![m as f64],
                });
                Ok(self)
            }
        }
    }

    /// Adds `--logit-scale` (a finite number > 0) to a parsed `--loss`.
    pub fn with_logit_scale(mut self, scale: Option<f32>) -> Result<Loss> {
        let Some(s) = scale else {
            return Ok(self);
        };
        match self.term("logit-scale") {
            Some(t) if t.args[0] as f32 != s => bail!("--loss {self} already sets a logit scale, so --logit-scale {s} contradicts it: give the scale once"),
            Some(_) => Ok(self),
            None => {
                self.insert(Term {
                    def: def("logit-scale"),
                    args: vec![s as f64],
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

impl Plan {
    /// Refuses batches a loss cannot score: `cwt` compares every position with every other
    /// one in a single loop.
    pub fn check_rows(&self, rows: usize) -> Result<()> {
        if self.head == Head::Cwt && rows > LOOP_LIMIT as usize {
            bail!(
                "--loss cwt scores each position against the whole batch, so batch_size x block_size ({rows}) must be at most {LOOP_LIMIT}: lower --batch-size or --block-size"
            );
        }
        Ok(())
    }
}

/// `margin:1`, `hard:8`: a spelling with example values.
fn example(t: &TermDef) -> String {
    let mut s = t.name.to_string();
    for a in t.args {
        s.push_str(match a.kind {
            ArgKind::NonNegative | ArgKind::Positive => ":1",
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
    /// Per-position margins or target offsets (f32 `[rows]`).
    pub row_vals: Option<Buf>,
    /// `cosreg`: inverse row norms (`[V]`) and the sum of normalized rows (`[C]`).
    pub cosreg: Option<(Buf, Buf)>,
    /// `cwt`: the batch's scores and their gradient (`[rows, rows]`) and the diagonal
    /// targets `0..rows` (u32).
    pub cwt: Option<[Buf; 3]>,
    /// `agg`: the rare flags (u32 `[V]`), the gates (`[2, V]`) and the gated `dlogits`.
    pub agg: Option<[Buf; 3]>,
}

/// What [`record`] reads and writes: the logits and targets of `rows` positions over `cols`
/// tokens, the per-position losses and their mean, the gradient at the logits, and for the
/// losses that look past the logits the hidden states, the tables and their gradients.
#[derive(Clone, Copy, Debug)]
pub struct LossIo {
    pub rows: u32,
    pub cols: u32,
    /// The hidden states' width.
    pub c: u32,
    pub logits: Buf,
    pub targets: Buf,
    pub losses: Buf,
    pub loss: Buf,
    pub dlogits: Buf,
    /// The final hidden states (`ln_f`'s output) and their gradient.
    pub h: Buf,
    pub dh: Buf,
    /// The output embedding (the head), the token embedding and its gradient.
    pub head: Buf,
    pub wte: Buf,
    pub dwte: Buf,
}

impl LossBufs {
    /// `c` is the hidden width and `rows` the positions per batch.
    pub fn alloc(
        plan: &Plan,
        be: &mut dyn Backend,
        vocab: usize,
        c: usize,
        rows: usize,
    ) -> Result<LossBufs> {
        plan.check_rows(rows)?;
        let noise = match plan.head {
            Head::Sampled(_) => {
                let cdf = be.alloc("noise cdf", vocab, Dtype::U32)?;
                be.write_u32(cdf, &sampled_loss::cdf(&vec![1.0; vocab]));
                Some((cdf, be.alloc("noise seeds", 2, Dtype::U32)?))
            }
            Head::Softmax | Head::Cwt => None,
        };
        let row_vals = match plan.norms {
            Some(_) => Some(be.alloc("loss row values", rows, Dtype::F32)?),
            None => None,
        };
        let cosreg = match plan.cosreg {
            Some(_) => Some((
                be.alloc("cosreg inverse norms", vocab, Dtype::F32)?,
                be.alloc("cosreg row sum", c, Dtype::F32)?,
            )),
            None => None,
        };
        let cwt = match plan.head {
            Head::Cwt => {
                let diag = be.alloc("cwt diagonal", rows, Dtype::U32)?;
                be.write_u32(diag, &(0..rows as u32).collect::<Vec<_>>());
                Some([
                    be.alloc("cwt scores", rows * rows, Dtype::F32)?,
                    be.alloc("cwt dscores", rows * rows, Dtype::F32)?,
                    diag,
                ])
            }
            _ => None,
        };
        let agg = match plan.agg {
            Some(_) => {
                let rare = be.alloc("agg rare", vocab, Dtype::U32)?;
                let gates = be.alloc("agg gates", 2 * vocab, Dtype::F32)?;
                // All ones until the first step's counts: plain cross-entropy's gradient.
                be.write_f32(gates, &vec![1.0; 2 * vocab]);
                Some([
                    rare,
                    gates,
                    be.alloc("agg dlogits", rows * vocab, Dtype::F32)?,
                ])
            }
            None => None,
        };
        Ok(LossBufs {
            noise,
            row_vals,
            cosreg,
            cwt,
            agg,
        })
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

/// The loss's ops, at the three points of the backward where a loss can act.
pub struct LossOps {
    /// First: per-position losses, their mean (the training loss) and `dlogits`.
    pub loss: Vec<Op>,
    /// What the head's weight gradient is taken from: `dlogits`, or AGG's gated copy (the
    /// hidden states always get `dlogits`' gradient).
    pub head_dw: Buf,
    /// After the head's backward: additions to the hidden states' gradient.
    pub hidden: Vec<Op>,
    /// Last, once every parameter gradient is written: additions to them.
    pub params: Vec<Op>,
}

/// The ops that score the logits: the fused softmax cross-entropy, negative sampling, or
/// contrastive weight tying's in-batch softmax.
fn head_ops(plan: &Plan, bufs: &LossBufs, io: &LossIo) -> Vec<Op> {
    let scale = 1.0 / io.rows as f32;
    let mut loss = Vec::new();
    match (plan.head, bufs.noise, bufs.cwt) {
        (Head::Sampled(k), Some((cdf, seeds)), _) => loss.push(
            SampledLoss {
                rows: io.rows,
                cols: io.cols,
                k,
                scale,
                logit_scale: plan.shaping.logit_scale,
                logits: io.logits,
                targets: io.targets,
                cdf,
                seeds,
                losses: io.losses,
                dlogits: io.dlogits,
            }
            .op(),
        ),
        (Head::Cwt, _, Some([scores, dscores, diag])) => {
            let (n, v) = (io.rows, io.cols);
            let (logits, targets) = (io.logits, io.targets);
            loss.push(
                CwtScores {
                    n,
                    v,
                    logits,
                    targets,
                    scores,
                }
                .op(),
            );
            let ce = CrossEntropy::new(
                n,
                n,
                Keep::default(),
                scale,
                scores,
                diag,
                io.losses,
                dscores,
            );
            let shaping = Shaping {
                logit_scale: plan.shaping.logit_scale,
                ..Shaping::default()
            };
            loss.push(CrossEntropy { shaping, ..ce }.op());
            let dlogits = io.dlogits;
            loss.push(
                CwtScatter {
                    n,
                    v,
                    targets,
                    dscores,
                    dlogits,
                }
                .op(),
            );
        }
        _ => loss.push(
            CrossEntropy {
                shaping: plan.shaping,
                row_vals: bufs.row_vals,
                ..CrossEntropy::new(
                    io.rows, io.cols, plan.keep, scale, io.logits, io.targets, io.losses,
                    io.dlogits,
                )
            }
            .op(),
        ),
    }
    loss
}

/// The loss's ops (see [`LossOps`]).
pub fn record(plan: &Plan, bufs: &LossBufs, io: &LossIo) -> LossOps {
    let mut loss = Vec::new();
    if let (Some(n), Some(vals)) = (plan.norms, bufs.row_vals) {
        loss.push(
            RowNorms {
                rows: io.rows,
                c: io.c,
                alpha: n.alpha,
                use_w: n.w,
                use_h: n.h,
                h: io.h,
                w: match n.table {
                    Table::Head => io.head,
                    Table::Wte => io.wte,
                },
                targets: io.targets,
                vals,
            }
            .op(),
        );
    }
    loss.extend(head_ops(plan, bufs, io));
    loss.push(
        Mean {
            n: io.rows,
            x: io.losses,
            out: io.loss,
        }
        .op(),
    );
    let (v, c) = (io.cols, io.c);
    let mut params = Vec::new();
    if let (Some(gamma), Some((rinv, s))) = (plan.cosreg, bufs.cosreg) {
        let reg = CosReg {
            v,
            c,
            gamma,
            wte: io.wte,
            rinv,
            s,
        };
        loss.push(CosRegFwd { reg, loss: io.loss }.op());
        params.push(CosRegBwd { reg, dwte: io.dwte }.op());
    }
    let mut head_dw = io.dlogits;
    if let Some([rare, gates, gated]) = bufs.agg {
        loss.push(
            AggGate {
                rows: io.rows,
                cols: v,
                dlogits: io.dlogits,
                targets: io.targets,
                rare,
                gates,
                dlogits_w: gated,
            }
            .op(),
        );
        head_dw = gated;
    }
    let mut hidden = Vec::new();
    if let (PerRow::TargetOffset, Some(vals)) = (plan.shaping.per_row, bufs.row_vals) {
        hidden.push(
            AdvBwd {
                rows: io.rows,
                c,
                v,
                h: io.h,
                targets: io.targets,
                vals,
                dlogits: io.dlogits,
                dh: io.dh,
            }
            .op(),
        );
    }
    LossOps {
        loss,
        head_dw,
        hidden,
        params,
    }
}

/// What a loss keeps on the host from one training step to the next (AGG's window of
/// target counts), part of the training state a checkpoint saves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossState {
    pub agg: Option<AggWindow>,
}

/// The state file's name for AGG's window.
const AGG_WINDOW: &str = "loss.agg.window";

impl LossState {
    pub fn new(plan: &Plan, vocab: usize) -> LossState {
        LossState {
            agg: plan
                .agg
                .map(|(alpha, k)| AggWindow::new(alpha as f64, k as usize, vocab)),
        }
    }

    /// Takes in the targets of the step about to run and writes what its kernels read.
    pub fn before_step(&mut self, bufs: &LossBufs, be: &mut dyn Backend, targets: &[u32]) {
        if let (Some(w), Some([rare, gates, _])) = (self.agg.as_mut(), bufs.agg) {
            w.push(targets);
            let g = w.gates();
            be.write_u32(rare, &g.rare.iter().map(|&r| r as u32).collect::<Vec<_>>());
            be.write_f32(gates, &[g.common, g.rare_target].concat());
        }
    }

    /// The state as tensors of a state file.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        if let Some(w) = &self.agg {
            if !w.steps.is_empty() {
                let data = w.steps.iter().flatten().map(|&c| c as i32).collect();
                out.push(Tensor::i32(AGG_WINDOW, vec![w.steps.len(), w.vocab], data));
            }
        }
        out
    }

    /// Reads back what [`LossState::tensors`] wrote (the loss was checked to be the same).
    pub fn restore(&mut self, f: &TensorFile) -> Result<()> {
        let Some(w) = self.agg.as_mut() else {
            return Ok(());
        };
        let (shape, data) = f.get_i32(AGG_WINDOW).map_err(|_| {
            anyhow!(
                "checkpoint {} has no '{AGG_WINDOW}' (the count window agg:A:K trains with): it cannot resume exactly; pass another --out to start a new run",
                f.label()
            )
        })?;
        if shape.len() != 2 || shape[1] != w.vocab || shape[0] > w.k || data.iter().any(|&c| c < 0)
        {
            bail!(
                "checkpoint {}: '{AGG_WINDOW}' has shape {shape:?}, not [at most {}, {}] counts: the file is damaged; use another checkpoint",
                f.label(),
                w.k,
                w.vocab
            );
        }
        w.steps.clear();
        w.counts.iter_mut().for_each(|c| *c = 0);
        for row in data.chunks(w.vocab) {
            w.add(row.iter().map(|&c| c as u32).collect());
        }
        Ok(())
    }
}

/// AGG's window: each of the last K training steps' target counts, this step's included,
/// as exact integers.
#[derive(Clone, Debug, PartialEq)]
pub struct AggWindow {
    alpha: f64,
    k: usize,
    vocab: usize,
    steps: VecDeque<Vec<u32>>,
    counts: Vec<u64>,
}

/// The gates of one step: rare tokens, and the gate of each token at positions whose target
/// is common or rare.
#[derive(Clone, Debug, PartialEq)]
pub struct AggGates {
    pub rare: Vec<bool>,
    pub common: Vec<f32>,
    pub rare_target: Vec<f32>,
}

impl AggWindow {
    pub fn new(alpha: f64, k: usize, vocab: usize) -> AggWindow {
        AggWindow {
            alpha,
            k,
            vocab,
            steps: VecDeque::new(),
            counts: vec![0; vocab],
        }
    }

    /// Counts one step's targets into the window, dropping the oldest step past K.
    pub fn push(&mut self, targets: &[u32]) {
        let mut c = vec![0u32; self.vocab];
        for &t in targets {
            c[t as usize] += 1;
        }
        self.add(c);
    }

    fn add(&mut self, step: Vec<u32>) {
        for (a, &b) in self.counts.iter_mut().zip(&step) {
            *a += b as u64;
        }
        self.steps.push_back(step);
        while self.steps.len() > self.k {
            let old = self.steps.pop_front().expect("a step to drop");
            for (a, &b) in self.counts.iter_mut().zip(&old) {
                *a -= b as u64;
            }
        }
    }

    /// `f_j = count_j / steps`; rare when `f_j < A`. At common-target positions a rare token
    /// is gated by `f_j`, at rare-target positions by `min(1, count_j / (mean rare count +
    /// 1e-7))`; every other gate is 1.
    pub fn gates(&self) -> AggGates {
        let n = self.steps.len().max(1) as f64;
        let f: Vec<f64> = self.counts.iter().map(|&c| c as f64 / n).collect();
        let rare: Vec<bool> = f.iter().map(|&x| x < self.alpha).collect();
        let nr = rare.iter().filter(|&&r| r).count();
        let rare_sum: u64 = (0..self.vocab)
            .filter(|&j| rare[j])
            .map(|j| self.counts[j])
            .sum();
        let mean = if nr > 0 {
            rare_sum as f64 / nr as f64
        } else {
            0.0
        };
        let gate = |j: usize, g: f64| if rare[j] { g as f32 } else { 1.0 };
        AggGates {
            common: (0..self.vocab).map(|j| gate(j, f[j])).collect(),
            rare_target: (0..self.vocab)
                .map(|j| gate(j, (self.counts[j] as f64 / (mean + 1e-7)).min(1.0)))
                .collect(),
            rare,
        }
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
            ("agg:0.02", "agg takes 2 value(s): agg:A:K"),
            ("cosreg:-1", "cosreg's G must be a finite number >= 0"),
            ("softminus:0", "softminus's C must be a finite number > 0"),
            ("softminus:2", "softminus:C needs a margin: add one of margin:M, margin-w:A"),
            ("detach-under", "detach-under needs a margin"),
            ("margin:1+detach-threshold", "detach-threshold needs softminus:C"),
            ("cwt+margin:1", "cwt combines with nothing but logit-scale:S"),
            ("margin:1+cosreg:1", "cosreg:G combines with nothing but logit-scale:S"),
            ("agg:0.1:5+sampled:3", "agg:A:K combines with nothing"),
            ("margin:1+margin-h:1", "margin:M and margin-h:A both set the margin"),
            (
                "margin:1+softminus:1+detach-under",
                "softminus:C and detach-under do not combine: softminus:C combines with margin:M, margin-w:A, margin-h:A, margin-wh:A, detach-threshold, logit-scale:S",
            ),
            ("hard:3+margin:1+softminus:1", "hard:K and softminus:C do not combine"),
            ("adv:NaN", "adv's A must be a finite number >= 0"),
            ("logit-scale:0", "logit-scale's S must be a finite number > 0"),
            ("logit-scale:inf", "logit-scale's S must be"),
            ("cwt:1", "cwt takes no value"),
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
    fn new_forms_plan_what_their_kernels_need() {
        let p = plan("margin:2+softminus:5+detach-threshold", 130);
        assert_eq!(p.keep.margin, Some(2.0));
        assert_eq!(
            (p.shaping.softminus, p.shaping.detach_threshold),
            (Some(5.0), true)
        );
        let p = plan("margin:1+detach-under+logit-scale:0.46", 130);
        assert!(p.shaping.detach_under);
        assert_eq!(p.shaping.logit_scale, 0.46);
        for (s, w, h) in [
            ("margin-w:4", true, false),
            ("margin-h:0.25", false, true),
            ("margin-wh:0.5", true, true),
        ] {
            let p = plan(s, 130);
            assert_eq!(p.shaping.per_row, PerRow::Margin, "{s}");
            let n = p.norms.unwrap();
            assert_eq!((n.table, n.w, n.h), (Table::Head, w, h), "{s}");
            assert_eq!(p.keep.margin, None);
        }
        let p = plan("adv:0.005", 130);
        assert_eq!(p.shaping.per_row, PerRow::TargetOffset);
        assert_eq!(p.norms.unwrap().table, Table::Wte);
        assert_eq!(plan("cwt", 130).head, Head::Cwt);
        assert_eq!(plan("cosreg:1", 130).cosreg, Some(1.0));
        assert_eq!(plan("agg:0.02:1600", 130).agg, Some((0.02, 1600)));
        // Canonical order, and every spelling reads back as itself.
        for (given, canonical) in [
            (
                "detach-threshold+softminus:5+margin:2",
                "margin:2+softminus:5+detach-threshold",
            ),
            ("detach-under+margin:2", "margin:2+detach-under"),
            ("logit-scale:0.46+margin:1", "margin:1+logit-scale:0.46"),
            ("logit-scale:2+sampled:4", "sampled:4+logit-scale:2"),
            (
                "margin-wh:0.3+hard:4+counterpart",
                "hard:4+counterpart+margin-wh:0.3",
            ),
            ("agg:0.3:2", "agg:0.3:2"),
            ("cwt+logit-scale:0.5", "cwt+logit-scale:0.5"),
        ] {
            let l = Loss::parse(given).unwrap();
            assert_eq!(l.to_string(), canonical);
            assert_eq!(Loss::parse(canonical).unwrap(), l);
        }
        assert_eq!(Loss::parse("margin:1").unwrap().logit_scale(), 1.0);
        assert!(Loss::parse("cwt")
            .unwrap()
            .plan(130)
            .unwrap()
            .check_rows(LOOP_LIMIT as usize + 1)
            .unwrap_err()
            .to_string()
            .contains("--batch-size"));
    }

    #[test]
    fn flags_complete_the_loss() {
        let l = Loss::from_flags("softminus:5+detach-threshold", Some(2.0), Some(0.5)).unwrap();
        assert_eq!(
            l.to_string(),
            "margin:2+softminus:5+detach-threshold+logit-scale:0.5"
        );
        assert_eq!(
            Loss::from_flags("margin:1+logit-scale:0.5", None, Some(0.5)).unwrap(),
            Loss::parse("margin:1+logit-scale:0.5").unwrap()
        );
        for (loss, margin, scale, needle) in [
            ("softminus:5", None, None, "needs a margin"),
            ("margin-w:1", Some(1.0), None, "give the margin once"),
            ("logit-scale:2", None, Some(0.5), "give the scale once"),
            ("cwt", Some(1.0), None, "drop --margin"),
        ] {
            let e = Loss::from_flags(loss, margin, scale)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{loss}: {e}");
        }
        assert_eq!(
            Loss::from_flags("cwt", None, Some(0.46))
                .unwrap()
                .to_string(),
            "cwt+logit-scale:0.46"
        );
    }

    #[test]
    fn agg_window_counts_slide_and_gate() {
        // Three tokens; K = 2 steps; A = 1.5 per step.
        let mut w = AggWindow::new(1.5, 2, 3);
        w.push(&[0, 0, 0, 1]);
        let g = w.gates();
        // counts (3, 1, 0) over 1 step: 1 and 2 are rare; mean rare count 0.5.
        assert_eq!(g.rare, vec![false, true, true]);
        assert_eq!(g.common, vec![1.0, 1.0, 0.0]);
        assert_eq!(g.rare_target, vec![1.0, 1.0, 0.0]);
        w.push(&[2, 2, 0, 1]);
        // counts (4, 2, 2) over 2 steps: f = (2, 1, 1).
        let g = w.gates();
        assert_eq!(g.rare, vec![false, true, true]);
        assert_eq!(g.common, vec![1.0, 1.0, 1.0]);
        w.push(&[0, 0, 0, 0]);
        // The first step left: counts (5, 1, 2), f = (2.5, 0.5, 1).
        assert_eq!(w.counts, vec![5, 1, 2]);
        let g = w.gates();
        assert_eq!(g.common, vec![1.0, 0.5, 1.0]);
        // mean rare count 1.5: 1/1.5 and min(1, 2/1.5).
        assert!((g.rare_target[1] - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(g.rare_target[2], 1.0);
        // The window survives a state file.
        let state = LossState {
            agg: Some(w.clone()),
        };
        let mut f = TensorFile::new();
        for t in state.tensors() {
            f.push(t);
        }
        let mut back = LossState::new(&plan("agg:1.5:2", 3), 3);
        back.restore(&f).unwrap();
        assert_eq!(back, state);
        assert!(LossState::new(&plan("agg:1.5:2", 3), 3)
            .restore(&TensorFile::new())
            .unwrap_err()
            .to_string()
            .contains("loss.agg.window"));
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
            assert!(h.contains(&format!("\n{}: ", spelling(t))), "{h}");
            // ... and says what it combines with.
            assert!(h.lines().last().unwrap().contains(&spelling(t)), "{h}");
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
