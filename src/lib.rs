//! selfish: character-level GPT training on any GPU through WebGPU, with the threshold
//! ("selfish token") cross-entropy of the *Stop Jostling* paper.

pub mod analysis;
pub mod args;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod experiment;
pub mod fixture;
pub mod gpu;
pub mod kernels;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod train;
pub mod tune;
