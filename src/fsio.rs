//! Files written so that a crash never leaves half of one: the one atomic-write helper the
//! whole crate uses (checkpoints, logs rewritten on resume, evaluations, the tuning cache).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// `<path>.tmp`, where [`write_atomic`] stages its bytes.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: they go to `<path>.tmp`, are synced, and only then
/// renamed over `path`, so a crash at any moment leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let shown = path.display();
    if path.file_name().is_none_or(|n| n.is_empty()) {
        bail!("cannot save to '{shown}': the path has no file name; pass a file path");
    }
    let tmp = tmp_path(path);
    let io_err = |what: &str, e: std::io::Error| {
        anyhow!(
            "cannot {what} '{}' while saving '{shown}': {e}: check free space and permissions",
            tmp.display()
        )
    };
    let write = || -> Result<()> {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err("create", e))?;
        f.write_all(bytes).map_err(|e| io_err("write", e))?;
        f.flush().map_err(|e| io_err("flush", e))?;
        f.sync_all().map_err(|e| io_err("sync", e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        bail!(
            "cannot rename '{}' to '{shown}': {e}: check permissions",
            tmp.display()
        );
    }
    // Persist the rename itself; not every platform can open a directory, so best effort.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents) or says which folder could not be made.
pub fn create_dir(dir: &Path, what: &str) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| {
        anyhow!(
            "cannot create {what} '{}': {e}: pass a writable folder",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_tmp() {
        let d = std::env::temp_dir().join(format!("selfish-fsio-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_path(&p).exists());
        let e = write_atomic(&d.join("missing/x"), b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("check free space and permissions"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
