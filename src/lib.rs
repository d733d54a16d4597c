//! selfish: character-level GPT training on any GPU through WebGPU, with the threshold
//! ("selfish token") cross-entropy of the *Stop Jostling* paper.
//!
//! Layers, each using only those above it:
//! - `buffers`: handles and the CPU twins' memory.
//! - `kernels`: every op's GPU launch and CPU twin (`src/kernels/<op>.rs`, `shaders/<op>.wgsl`).
//! - `runtime`: the executors (GPU, CPU) of op lists; `gpu` opens the device.
//! - `model`: the GPT over any backend; `loss`: the training losses.
//! - `train`, `eval`, `checkpoint`: training, evaluation and sampling, checkpoints.
//! - `settings`: a run's settings as the command line and the page both take them.
//! - the tools around them: `check`, `fixture`, `experiment`, `report`, `bench`, `tune`.
//! - `web` (wasm32): the page's entry points; `serve` (native): the page on 127.0.0.1.

pub mod analysis;
pub mod args;
pub mod buffers;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod eval;
pub mod fixture;
pub mod gpu;
pub mod kernels;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod rng;
pub mod runlog;
pub mod runtime;
pub mod settings;
pub mod tensorfile;
pub mod train;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod check;
#[cfg(not(target_arch = "wasm32"))]
pub mod claim;
#[cfg(not(target_arch = "wasm32"))]
pub mod experiment;
#[cfg(not(target_arch = "wasm32"))]
pub mod fsio;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;
#[cfg(target_arch = "wasm32")]
pub mod web;
