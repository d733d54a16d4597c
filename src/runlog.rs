//! The run log: one JSON line per logged step in `metrics.jsonl`, and the gradient roles of
//! those steps in `roles.jsonl` (with `--analysis`). Lines are appended whole, so a crash
//! can cut off at most the last one; a resumed run first trims what it will log again.
//! The line itself is shared with the page, which keeps its log in memory.

#[cfg(not(target_arch = "wasm32"))]
use std::fs;
#[cfg(not(target_arch = "wasm32"))]
use std::io::Write;
#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

#[cfg(not(target_arch = "wasm32"))]
use anyhow::{anyhow, Result};
use serde::Serialize;

/// One line of `metrics.jsonl`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LogLine {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub tokens_per_s: f64,
    /// Per language, mean plain cross-entropy over the first eval batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<Vec<(String, f32)>>,
    /// Mean plain cross-entropy on validation batches mixed like training ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_mixed: Option<f32>,
    /// Mean validation loss per token-frequency group (`groups.json` names them); null for
    /// a group with no validation target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Option<f64>>>,
}

#[cfg(not(target_arch = "wasm32"))]
pub fn metrics_path(dir: &Path) -> PathBuf {
    dir.join("metrics.jsonl")
}

#[cfg(not(target_arch = "wasm32"))]
pub fn roles_path(dir: &Path) -> PathBuf {
    dir.join("roles.jsonl")
}

#[cfg(not(target_arch = "wasm32"))]
/// A JSONL file appended one whole line at a time, opened on the first line (a run that
/// fails before logging leaves no empty file).
pub struct Jsonl {
    path: PathBuf,
    file: Option<fs::File>,
}

#[cfg(not(target_arch = "wasm32"))]
impl Jsonl {
    pub fn new(path: PathBuf) -> Jsonl {
        Jsonl { path, file: None }
    }

    pub fn append(&mut self, value: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(value)?;
        line.push('\n');
        let path = &self.path;
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow!(
                            "cannot open '{}': {e}: pass a writable --out",
                            path.display()
                        )
                    })?,
            ),
        };
        // One write per line, so a crash cannot interleave half a line with the next run's.
        file.write_all(line.as_bytes())
            .map_err(|e| anyhow!("cannot write '{}': {e}: check free space", path.display()))
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Keeps the lines of steps up to `step` (a resumed run logs the later ones again) and drops
/// a line cut short by a crash. Rewritten atomically like a checkpoint.
pub fn trim(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if keep == text {
        return Ok(());
    }
    crate::fsio::write_atomic(path, keep.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_whole_lines_up_to_the_step() {
        let d = std::env::temp_dir().join(format!("selfish-runlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("m.jsonl");
        let mut log = Jsonl::new(p.clone());
        for step in 1..=4u64 {
            log.append(&serde_json::json!({ "step": step })).unwrap();
        }
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\": 5, \"lo")
            .unwrap();
        trim(&p, 2).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
