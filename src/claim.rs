//! Claims on run folders, so two processes never train into one folder at once.
//!
//! A claim is `<folder>/run.lock`, created with `O_EXCL` (atomic on local and NFSv3+ file
//! systems) and holding who made it. The holder refreshes its modification time as it logs.
//! A claim is stale, and is taken over, when its process is gone (same host) or when it has
//! not been refreshed for [`STALE_AFTER`] (another host, whose processes cannot be seen).

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// A claim another host has not refreshed for this long is taken to be dead.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Who holds a claim.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

impl Holder {
    fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// `pid 123 on host since 2026-12-01 21:45 UTC`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "pid {} on {} since {}",
            self.pid,
            self.host,
            utc(self.since)
        )
    }
}

/// A held claim; dropping it releases the folder.
pub struct Claim {
    path: PathBuf,
}

/// What [`claim`] found.
pub enum Outcome {
    Claimed(Claim),
    /// Another live process holds the folder.
    Held(Holder),
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("run.lock")
}

/// Claims `dir` (created if missing) for this process, taking over a stale claim.
pub fn claim(dir: &Path) -> Result<Outcome> {
    crate::fsio::create_dir(dir, "run folder")?;
    let path = lock_path(dir);
    for _ in 0..3 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let me = serde_json::to_string(&Holder::me())?;
                f.write_all(me.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| {
                        anyhow!("cannot write '{}': {e}: check free space", path.display())
                    })?;
                return Ok(Outcome::Claimed(Claim { path }));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match read(&path) {
                Some(h) if !stale(&path, &h) => return Ok(Outcome::Held(h)),
                // Stale or unreadable (a crash while writing it): remove and try again.
                _ => {
                    let _ = fs::remove_file(&path);
                }
            },
            Err(e) => bail!(
                "cannot create '{}': {e}: pass a writable folder",
                path.display()
            ),
        }
    }
    bail!(
        "cannot claim '{}': other processes keep claiming it: retry",
        dir.display()
    )
}

/// Claims `dir` or fails with who holds it.
pub fn claim_or_fail(dir: &Path, what: &str) -> Result<Claim> {
    match claim(dir)? {
        Outcome::Claimed(c) => Ok(c),
        Outcome::Held(h) => bail!(
            "'{}' is being trained by {}: wait for it to finish, or pass another {what}",
            dir.display(),
            h.describe()
        ),
    }
}

impl Claim {
    /// Marks the claim as alive (for holders on other hosts).
    pub fn refresh(&self) {
        if let Ok(f) = fs::OpenOptions::new().append(true).open(&self.path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Only our own claim: a folder taken over as stale belongs to someone else now.
        if read(&self.path).is_some_and(|h| h.pid == std::process::id() && h.host == hostname()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn read(path: &Path) -> Option<Holder> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn stale(path: &Path, h: &Holder) -> bool {
    if h.host == hostname() {
        return !alive(h.pid);
    }
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_some_and(|a| a > STALE_AFTER)
}

#[cfg(unix)]
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // Signal 0 checks for existence; EPERM means it exists under another user.
    // SAFETY: kill with signal 0 sends nothing.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates or truncates.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "localhost".into())
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_stale_claims_are_taken_over() {
        let d = std::env::temp_dir().join(format!("selfish-claim-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let first = match claim(&d).unwrap() {
            Outcome::Claimed(c) => c,
            Outcome::Held(h) => panic!("held by {h:?}"),
        };
        // The same process asking again sees itself as the (live) holder.
        assert!(matches!(claim(&d).unwrap(), Outcome::Held(h) if h.pid == std::process::id()));
        let e = claim_or_fail(&d, "--out").err().unwrap().to_string();
        assert!(
            e.contains("is being trained by pid") && e.contains("--out"),
            "{e}"
        );
        first.refresh();
        drop(first);
        assert!(!lock_path(&d).exists());
        // A claim by a process that no longer exists is stale.
        let dead = Holder {
            pid: u32::MAX - 7,
            host: hostname(),
            since: 0,
        };
        fs::write(lock_path(&d), serde_json::to_string(&dead).unwrap()).unwrap();
        assert!(matches!(claim(&d).unwrap(), Outcome::Claimed(_)));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dates_read_like_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_796_161_500), "2026-12-01 21:45 UTC");
    }
}
