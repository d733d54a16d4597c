//! Helpers the integration tests share.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use selfish::rng::Rng;

/// A one-layer model of width 16 over blocks of 16, small enough for any test.
pub const TINY_MODEL: [&str; 8] = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
];

/// [`TINY_MODEL`] with a batch size.
pub fn tiny_model(batch: &'static str) -> Vec<&'static str> {
    let mut v = TINY_MODEL.to_vec();
    v.extend(["--batch-size", batch]);
    v
}

/// A fresh, empty folder for one test, named after it and this process.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("selfish-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A made-up text with a skewed character distribution, so tests need no download.
pub fn synthetic_text(n: usize, seed: u64) -> String {
    let words = [
        "the ",
        "selfish ",
        "token ",
        "jostles ",
        "rare ",
        "and ",
        "common ",
        "letters ",
        "quietly, ",
        "Zephyr ",
        "quoth ",
        "KING:\n",
        "so ",
        "we ",
        "go.\n",
    ];
    let mut rng = Rng::new(seed);
    let mut s = String::new();
    while s.len() < n {
        s.push_str(words[rng.below(words.len())]);
    }
    s
}
