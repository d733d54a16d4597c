//! Check cases: a tiny program per row of `selfish check`. Named buffers with how they start,
//! the ops to run on them, and which buffers to compare between the GPU and the CPU twin.
//! Backward kernels run after their forward inside one case, so the inputs they saved
//! (LayerNorm statistics, attention probabilities) are consistent. `crate::check` runs them.

use std::ops::Index;

use crate::buffers::{Buf, Dtype};
use crate::kernels::Op;

/// How a buffer starts; random ones draw from the case's seed.
#[derive(Clone, Debug)]
pub enum Init {
    Zero,
    /// N(0, s²)
    Normal(f32),
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// A constant.
    Fill(f32),
    /// Whole numbers in [0, n) as f32: many exact ties.
    Steps(u32),
    /// Uniform integers in [0, n) (u32 buffers).
    Tokens(u32),
    /// These f32 values.
    Values(Vec<f32>),
    /// These u32 values.
    Words(Vec<u32>),
}

pub struct BufSpec {
    pub name: &'static str,
    pub len: usize,
    pub dtype: Dtype,
    pub init: Init,
    /// Compared between the GPU and the CPU twin after the ops ran.
    pub compared: bool,
}

/// A case's buffers, by name.
pub struct Bufs {
    names: Vec<&'static str>,
    bufs: Vec<Buf>,
}

impl Bufs {
    pub fn new(names: Vec<&'static str>, bufs: Vec<Buf>) -> Bufs {
        Bufs { names, bufs }
    }
}

impl Index<&str> for Bufs {
    type Output = Buf;
    fn index(&self, name: &str) -> &Buf {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("check case has no buffer '{name}'"));
        &self.bufs[i]
    }
}

type Build = Box<dyn Fn(&Bufs) -> Vec<Op>>;

pub struct Case {
    /// The op (as in [`crate::kernels::OPS`]) and what the case runs, e.g. `softmax fwd+bwd`.
    pub op: String,
    pub shape: String,
    pub bufs: Vec<BufSpec>,
    /// Makes the ops from the allocated buffers.
    pub build: Build,
    /// Allowed max |gpu - cpu| relative to max |cpu| of each compared buffer.
    pub tol: f64,
}

impl Case {
    pub fn new(op: impl Into<String>, shape: impl Into<String>) -> Case {
        Case {
            op: op.into(),
            shape: shape.into(),
            bufs: Vec::new(),
            build: Box::new(|_| Vec::new()),
            tol: 0.0,
        }
    }

    fn buf(mut self, name: &'static str, len: usize, dtype: Dtype, init: Init, cmp: bool) -> Case {
        assert!(
            self.bufs.iter().all(|b| b.name != name),
            "check case buffer '{name}' declared twice"
        );
        self.bufs.push(BufSpec {
            name,
            len,
            dtype,
            init,
            compared: cmp,
        });
        self
    }

    /// An f32 input.
    pub fn input(self, name: &'static str, len: usize, init: Init) -> Case {
        self.buf(name, len, Dtype::F32, init, false)
    }

    /// A u32 input.
    pub fn words(self, name: &'static str, len: usize, init: Init) -> Case {
        self.buf(name, len, Dtype::U32, init, false)
    }

    /// An f32 output, zero at the start and compared at the end.
    pub fn output(self, name: &'static str, len: usize) -> Case {
        self.buf(name, len, Dtype::F32, Init::Zero, true)
    }

    /// An f32 buffer that starts as `init` and is compared at the end (accumulated outputs,
    /// or outputs that must leave part of their buffer alone).
    pub fn inout(self, name: &'static str, len: usize, init: Init) -> Case {
        self.buf(name, len, Dtype::F32, init, true)
    }

    pub fn ops(mut self, build: impl Fn(&Bufs) -> Vec<Op> + 'static) -> Case {
        self.build = Box::new(build);
        self
    }

    pub fn tol(mut self, tol: f64) -> Case {
        self.tol = tol;
        self
    }

    /// The names of the compared buffers, in declaration order.
    pub fn compared(&self) -> Vec<&'static str> {
        self.bufs
            .iter()
            .filter(|b| b.compared)
            .map(|b| b.name)
            .collect()
    }

    /// The ops on placeholder handles, to see which dispatches a case makes.
    pub fn probe(&self) -> Vec<Op> {
        let names = self.bufs.iter().map(|b| b.name).collect();
        (self.build)(&Bufs::new(names, vec![Buf(0); self.bufs.len()]))
    }
}
