//! Text corpus, character vocabulary, train/validation split, and batch sampling.
//!
//! The "low-resource" experiment duplicates the alphabet: ids `0..V` are the ordinary
//! language and ids `V..2V` a second language made of the same characters. A training row
//! is moved wholesale into the second alphabet with probability `low_resource_prob`, so the
//! model sees that language rarely and its tokens have to compete with their twins.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::rng::Rng;

/// Where tiny Shakespeare is published.
pub const CORPUS_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
/// SHA-256 of the published file; guards against truncated downloads and edited copies.
pub const CORPUS_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

/// Reads a UTF-8 text file, with errors that say exactly what to fix.
pub fn load_text(path: &Path) -> Result<String> {
    let shown = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("data file '{shown}' does not exist: check the path given to --data")
        }
        Err(e) => bail!("cannot access data file '{shown}': {e}: check its permissions"),
    };
    if meta.is_dir() {
        bail!("data file '{shown}' is a directory: pass a text file to --data");
    }
    // A FIFO with no writer would block the read forever; devices and sockets are no corpus.
    if !meta.is_file() {
        bail!("data file '{shown}' is not a regular file (a pipe, socket or device): save the text to a file and pass that to --data");
    }
    let bytes = fs::read(path)
        .map_err(|e| anyhow!("cannot read data file '{shown}': {e}: check its permissions"))?;
    decode_text(bytes, &shown.to_string())
}

/// The text of a file's bytes (read from disk, or uploaded to the page), which must be
/// non-empty UTF-8.
pub fn decode_text(bytes: Vec<u8>, shown: &str) -> Result<String> {
    if bytes.is_empty() {
        bail!("data file '{shown}' is empty: pass a non-empty UTF-8 text file");
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        anyhow!(
            "data file '{shown}' is not UTF-8: invalid byte at offset {offset} (line {line}): \
             convert it to UTF-8"
        )
    })
}

/// Hex SHA-256 of a file, streamed so large files are not held in memory twice.
fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path)
        .with_context(|| format!("cannot open '{}' to check its hash", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read '{}' to check its hash", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Errors unless `path` hashes to `expected` (lowercase hex).
fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path).map_err(|e| anyhow!("{e:#}"))?;
    if got != expected {
        bail!(
            "file '{}' has SHA-256 {got}, expected {expected} (tiny Shakespeare): delete it and \
             retry to download a fresh copy, or pass --data to use your own text",
            path.display()
        );
    }
    Ok(())
}

/// Returns `path` holding tiny Shakespeare, downloading it with `curl` if absent.
///
/// An existing file is hash-checked rather than trusted, because a partial download or a
/// different text would silently change every reported number.
pub fn ensure_corpus(path: &Path) -> Result<PathBuf> {
    ensure_file(path, CORPUS_URL, CORPUS_SHA256)
}

fn ensure_file(path: &Path, url: &str, sha256: &str) -> Result<PathBuf> {
    let shown = path.display();
    if path.is_dir() {
        bail!("corpus path '{shown}' is a directory: pass a file path, or --data FILE");
    }
    if path.exists() {
        verify_sha256(path, sha256)?;
        return Ok(path.to_path_buf());
    }
    let by_hand = format!("download {url} by hand to '{shown}', or pass --data FILE");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| {
            anyhow!(
                "cannot create directory '{}': {e}: {by_hand}",
                dir.display()
            )
        })?;
    }
    // Downloading beside the target keeps the final rename on one filesystem (atomic), so
    // an interrupted download never leaves a file that looks complete.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".download");
    let tmp = path.with_file_name(tmp_name);
    eprintln!("downloading {url} -> {shown}");
    let status = Command::new("curl")
        .arg("-fL")
        .arg("--progress-bar")
        .arg("-o")
        .arg(&tmp)
        .arg(url)
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("curl is not installed, so the corpus cannot be downloaded: {by_hand}")
        }
        Err(e) => bail!("cannot run curl ({e}): {by_hand}"),
    };
    if !status.success() {
        let _ = fs::remove_file(&tmp);
        bail!("curl failed to download the corpus ({status}): {by_hand}");
    }
    let got = sha256_file(&tmp);
    if got.as_deref().ok() != Some(sha256) {
        let _ = fs::remove_file(&tmp);
        let why = match got {
            Ok(h) => format!("SHA-256 {h}, expected {sha256}"),
            Err(e) => format!("{e:#}"),
        };
        bail!("the downloaded corpus is not the expected file ({why}): retry, or {by_hand}");
    }
    fs::rename(&tmp, path).map_err(|e| {
        anyhow!(
            "cannot move '{}' to '{shown}': {e}: {by_hand}",
            tmp.display()
        )
    })?;
    Ok(path.to_path_buf())
}

/// The character alphabet of one language, sorted so ids do not depend on text order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    pub chars: Vec<char>,
}

impl Vocab {
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.len() < 2 {
            bail!(
                "the text has {} distinct character(s) but a character model needs at least 2 \
                 distinct characters: use a longer, more varied text",
                chars.len()
            );
        }
        if chars.len() > u32::MAX as usize / 2 {
            bail!("the text has too many distinct characters: use a smaller alphabet");
        }
        Ok(Self { chars })
    }

    /// Size of one alphabet (V), not counting the shifted twin.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false once constructed; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    pub fn id(&self, c: char) -> Option<u32> {
        self.chars.binary_search(&c).ok().map(|i| i as u32)
    }

    /// Ids in the first alphabet.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len());
        for (pos, c) in text.chars().enumerate() {
            match self.id(c) {
                Some(i) => out.push(i),
                None => bail!(
                    "character {:?} (U+{:04X}) at position {pos} is not in the model's \
                     vocabulary: use only characters the model was trained on",
                    c,
                    c as u32
                ),
            }
        }
        Ok(out)
    }

    /// Ids of the second alphabet decode like their twins (`id - V`). Ids at or beyond `2V`
    /// are not produced by any model of this vocabulary; they decode to U+FFFD rather than
    /// panicking.
    pub fn decode(&self, ids: &[u32]) -> String {
        let v = self.chars.len();
        ids.iter()
            .map(|&id| {
                let id = id as usize;
                if id < 2 * v {
                    self.chars[id % v]
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect()
    }

    /// JSON array of one-character strings, for checkpoint metadata.
    pub fn to_json(&self) -> String {
        let strings: Vec<String> = self.chars.iter().map(|c| c.to_string()).collect();
        serde_json::to_string(&strings).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let fix = "the checkpoint's vocab metadata is damaged: re-save the checkpoint";
        let strings: Vec<String> = serde_json::from_str(json)
            .map_err(|e| anyhow!("vocabulary is not a JSON array of strings ({e}): {fix}"))?;
        let mut chars = Vec::with_capacity(strings.len());
        for s in &strings {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => bail!("vocabulary entry {s:?} is not exactly one character: {fix}"),
            }
        }
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            bail!("vocabulary is not sorted and distinct: {fix}");
        }
        Self::from_chars(chars)
    }
}

/// Encoded corpus split into training and validation parts.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub vocab: Vocab,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// Probability that a training row is moved into the second alphabet; 0 disables the
    /// second language entirely.
    pub low_resource_prob: f64,
}

impl Dataset {
    /// Builds the vocabulary from `text` itself.
    pub fn from_text(text: &str, low_resource_prob: f64) -> Result<Self> {
        Self::with_vocab(Vocab::from_text(text)?, text, low_resource_prob)
    }

    /// Uses a given vocabulary (e.g. a checkpoint's), so ids stay the ones the model learned.
    pub fn with_vocab(vocab: Vocab, text: &str, low_resource_prob: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&low_resource_prob) {
            bail!(
                "low-resource probability {low_resource_prob} is outside [0, 1]: pass a value \
                 between 0 and 1"
            );
        }
        let mut tokens = vocab.encode(text)?;
        // First 90% by character count, like nanoGPT's shakespeare_char; exact integer
        // arithmetic so the split point never depends on float rounding.
        let n = tokens.len();
        let split = n / 10 * 9 + n % 10 * 9 / 10;
        let val = tokens.split_off(split);
        Ok(Self {
            vocab,
            train: tokens,
            val,
            low_resource_prob,
        })
    }

    /// The same text with training rows moved at probability `p` (a run option may set its
    /// own: the low-resource-only baseline trains at 1).
    pub fn mixed_at(&self, p: f64) -> std::borrow::Cow<'_, Dataset> {
        if p == self.low_resource_prob {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(Dataset {
                low_resource_prob: p,
                ..self.clone()
            })
        }
    }

    /// Ids the model must cover: both alphabets when the second language is in use.
    pub fn model_vocab(&self) -> usize {
        if self.low_resource_prob > 0.0 {
            2 * self.vocab.len()
        } else {
            self.vocab.len()
        }
    }

    pub fn check_sizes(&self, block: usize) -> Result<()> {
        if block == 0 {
            bail!("block_size is 0: pass a block_size of at least 1");
        }
        let need = block.saturating_add(1);
        if self.train.len() < need {
            bail!(
                "text too short: {} training characters for block_size {block}; need at least \
                 {need}: use a longer text or a smaller block_size",
                self.train.len()
            );
        }
        if self.val.len() < need {
            bail!(
                "validation split too short to evaluate: {} validation characters (last 10% of \
                 the text) for block_size {block}; need at least {need}: use a longer text or a \
                 smaller block_size",
                self.val.len()
            );
        }
        Ok(())
    }

    /// Random training batch as row-major `[batch, block]` inputs and targets.
    ///
    /// Per row, in row order: the start position, then the alphabet coin. The coin is drawn
    /// even when `low_resource_prob` is 0, so runs with different probabilities and the same
    /// seed read the same text positions.
    ///
    /// Call [`Dataset::check_sizes`] first; a training split shorter than `block + 1` is a
    /// caller bug and panics.
    pub fn sample_batch(&self, rng: &mut Rng, batch: usize, block: usize) -> (Vec<u32>, Vec<u32>) {
        self.mixed_batch(&self.train, rng, batch, block)
    }

    /// A validation batch drawn and mixed like training batches (what the best checkpoint is
    /// chosen by).
    pub fn val_batch(&self, rng: &mut Rng, batch: usize, block: usize) -> (Vec<u32>, Vec<u32>) {
        self.mixed_batch(&self.val, rng, batch, block)
    }

    fn mixed_batch(
        &self,
        split: &[u32],
        rng: &mut Rng,
        batch: usize,
        block: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        assert!(
            block >= 1 && split.len() > block,
            "sample_batch: call check_sizes first"
        );
        let shift = self.vocab.len() as u32;
        let mut x = Vec::with_capacity(batch * block);
        let mut y = Vec::with_capacity(batch * block);
        for _ in 0..batch {
            let i = rng.below(split.len() - block);
            let second = rng.uniform() < self.low_resource_prob;
            let add = if second { shift } else { 0 };
            x.extend(split[i..i + block].iter().map(|&t| t + add));
            y.extend(split[i + 1..i + block + 1].iter().map(|&t| t + add));
        }
        (x, y)
    }

    /// Validation tokens in the second alphabet: the same text, every id moved up by V.
    pub fn val_shifted(&self) -> Vec<u32> {
        shift_tokens(&self.val, self.vocab.len() as u32)
    }
}

pub fn shift_tokens(tokens: &[u32], by: u32) -> Vec<u32> {
    tokens.iter().map(|&t| t + by).collect()
}

/// Number of non-overlapping evaluation windows of `block` tokens (each needs one extra
/// token for its last target).
pub fn num_eval_windows(len: usize, block: usize) -> usize {
    if block == 0 {
        return 0;
    }
    len.saturating_sub(1) / block
}

/// Non-overlapping windows `(x, y)` covering the tokens once: window `w` reads inputs
/// `tokens[wT..wT+T]` and targets one position later. Deterministic, so every evaluation
/// scores exactly the same targets.
pub fn eval_windows(tokens: &[u32], block: usize) -> impl Iterator<Item = (&[u32], &[u32])> {
    (0..num_eval_windows(tokens.len(), block)).map(move |w| {
        let s = w * block;
        (&tokens[s..s + block], &tokens[s + 1..s + block + 1])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("selfish-data-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn one_line(e: &anyhow::Error) -> String {
        let s = format!("{e:#}");
        assert!(!s.contains('\n'), "multi-line error: {s}");
        s
    }

    #[test]
    fn load_text_errors() {
        let d = tmp_dir("load");
        let missing = d.join("nope.txt");
        let e = one_line(&load_text(&missing).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");

        let e = one_line(&load_text(&d).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");

        let empty = d.join("empty.txt");
        fs::write(&empty, b"").unwrap();
        let e = one_line(&load_text(&empty).unwrap_err());
        assert!(e.contains("is empty"), "{e}");

        let bad = d.join("bad.txt");
        let mut f = fs::File::create(&bad).unwrap();
        f.write_all(b"ab\ncd\nef\xffgh").unwrap();
        drop(f);
        let e = one_line(&load_text(&bad).unwrap_err());
        assert!(e.contains("not UTF-8"), "{e}");
        assert!(e.contains("offset 8 (line 3)"), "{e}");

        let good = d.join("good.txt");
        fs::write(&good, "héllo\n").unwrap();
        assert_eq!(load_text(&good).unwrap(), "héllo\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hash_check_on_local_files() {
        let d = tmp_dir("hash");
        let p = d.join("abc.txt");
        fs::write(&p, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&p, abc).unwrap();
        // An existing file is verified, never re-downloaded (so no network here).
        assert_eq!(ensure_file(&p, "http://invalid.invalid/", abc).unwrap(), p);
        let e = one_line(&ensure_corpus(&p).unwrap_err());
        assert!(e.contains("SHA-256") && e.contains("delete it"), "{e}");
        assert!(e.contains(CORPUS_SHA256), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn vocab_basics() {
        let v = Vocab::from_text("hello world").unwrap();
        assert_eq!(v.chars, vec![' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        assert_eq!(v.len(), 8);
        let ids = v.encode("hold").unwrap();
        assert_eq!(ids, vec![3, 5, 4, 1]);
        assert_eq!(v.decode(&ids), "hold");
        let shifted: Vec<u32> = ids.iter().map(|&i| i + 8).collect();
        assert_eq!(v.decode(&shifted), "hold");
        assert_eq!(v.decode(&[16, 100]), "\u{FFFD}\u{FFFD}");

        let e = one_line(&v.encode("hold!").unwrap_err());
        assert!(e.contains("'!'") && e.contains("position 4"), "{e}");

        let e = one_line(&Vocab::from_text("aaaa").unwrap_err());
        assert!(e.contains("needs at least 2 distinct characters"), "{e}");
        assert!(Vocab::from_text("").is_err());
    }

    #[test]
    fn vocab_json_round_trip() {
        let v = Vocab::from_text("ab\n\"é\\").unwrap();
        let j = v.to_json();
        assert_eq!(Vocab::from_json(&j).unwrap(), v);
        assert!(Vocab::from_json("[\"a\",\"bc\"]").is_err());
        assert!(Vocab::from_json("[\"b\",\"a\"]").is_err());
        assert!(Vocab::from_json("[\"a\"]").is_err());
        assert!(Vocab::from_json("{").is_err());
        one_line(&Vocab::from_json("[1,2]").unwrap_err());
    }

    #[test]
    fn split_and_sizes() {
        let text: String = "abcdefghij".repeat(10); // 100 chars
        let ds = Dataset::from_text(&text, 0.0).unwrap();
        assert_eq!(ds.train.len(), 90);
        assert_eq!(ds.val.len(), 10);
        assert_eq!(ds.model_vocab(), 10);
        assert_eq!(Dataset::from_text(&text, 0.1).unwrap().model_vocab(), 20);
        assert!(Dataset::from_text(&text, 1.5).is_err());
        assert!(Dataset::from_text(&text, f64::NAN).is_err());
        ds.check_sizes(9).unwrap();
        let e = one_line(&ds.check_sizes(10).unwrap_err());
        assert!(e.contains("validation split too short"), "{e}");
        let e = one_line(&ds.check_sizes(90).unwrap_err());
        assert!(
            e.contains("text too short: 90 training characters for block_size 90"),
            "{e}"
        );
        assert!(ds.check_sizes(0).is_err());
        // Split matches int(n * 0.9) for the real corpus size.
        let n = 1_115_394usize;
        assert_eq!(n / 10 * 9 + n % 10 * 9 / 10, 1_003_854);
    }

    #[test]
    fn batches_are_windows_and_reproducible() {
        let text: String = (0..500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let ds = Dataset::from_text(&text, 0.3).unwrap();
        let v = ds.vocab.len() as u32;
        let (b, t) = (64, 8);
        let (x, y) = ds.sample_batch(&mut Rng::new(9), b, t);
        let (x2, y2) = ds.sample_batch(&mut Rng::new(9), b, t);
        assert_eq!((&x, &y), (&x2, &y2));
        assert_eq!(x.len(), b * t);
        let mut shifted_rows = 0;
        for r in 0..b {
            let xr = &x[r * t..(r + 1) * t];
            let yr = &y[r * t..(r + 1) * t];
            let second = xr[0] >= v;
            shifted_rows += second as usize;
            for k in 0..t {
                // All tokens of a row are in the same alphabet.
                assert_eq!(xr[k] >= v, second);
                assert_eq!(yr[k] >= v, second);
                let (a, bb) = (xr[k] % v, yr[k] % v);
                assert_eq!(bb, (a + 1) % 26); // next letter
            }
        }
        assert!(shifted_rows > 5 && shifted_rows < 40, "{shifted_rows}");

        // Same seed, different probability: same text positions.
        let plain = Dataset::from_text(&text, 0.0).unwrap();
        let (xp, _) = plain.sample_batch(&mut Rng::new(9), b, t);
        let unshift: Vec<u32> = x.iter().map(|&i| i % v).collect();
        assert_eq!(xp, unshift);

        // Probability 1 (the low-resource-only baseline): every row in the second alphabet,
        // at the same positions.
        let only = Dataset::from_text(&text, 1.0).unwrap();
        assert_eq!(only.model_vocab(), 2 * v as usize);
        let (xo, yo) = only.sample_batch(&mut Rng::new(9), b, t);
        assert!(xo.iter().chain(&yo).all(|&i| i >= v));
        assert_eq!(xo.iter().map(|&i| i - v).collect::<Vec<_>>(), xp);
    }

    #[test]
    fn sampling_reaches_both_ends() {
        // Distinct letters, so a row's first token identifies its start.
        let ds = Dataset::from_text("abcdefghijklmnopqrstuvwxyz", 0.0).unwrap();
        assert_eq!(ds.train.len(), 23);
        let block = 4;
        let last_start = ds.train.len() - block - 1;
        let mut rng = Rng::new(1);
        let mut seen = vec![false; last_start + 1];
        for _ in 0..2000 {
            let (x, y) = ds.sample_batch(&mut rng, 1, block);
            let start = x[0] as usize;
            assert_eq!(x, ds.train[start..start + block]);
            assert_eq!(y, ds.train[start + 1..start + block + 1]);
            seen[start] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn eval_windows_cover_once() {
        let toks: Vec<u32> = (0..11).collect();
        let w: Vec<_> = eval_windows(&toks, 3).collect();
        assert_eq!(w.len(), 3); // (11 - 1) / 3
        assert_eq!(num_eval_windows(11, 3), 3);
        assert_eq!(w[0], (&[0, 1, 2][..], &[1, 2, 3][..]));
        assert_eq!(w[2], (&[6, 7, 8][..], &[7, 8, 9][..]));
        assert_eq!(eval_windows(&toks, 10).count(), 1);
        assert_eq!(eval_windows(&toks, 11).count(), 0);
        assert_eq!(eval_windows(&[], 3).count(), 0);
        assert_eq!(eval_windows(&toks, 0).count(), 0);

        let ds = Dataset::from_text(&"abcd".repeat(30), 0.5).unwrap();
        let s = ds.val_shifted();
        assert!(s.iter().zip(&ds.val).all(|(&a, &b)| a == b + 4));
    }
}
