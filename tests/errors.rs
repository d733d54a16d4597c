//! Bad input through the real binary, one case per row of "Bad input and faults": each must
//! exit non-zero with exactly one `error:` line naming the problem and the fix, no panic, and
//! leave no file behind or changed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use selfish::tensorfile::{self as checkpoint, TensorFile};

/// The tiny model every case uses; anything but the option under test is valid.
fn tiny() -> Vec<&'static str> {
    common::tiny_model("2")
}

fn selfish(args: &[&str]) -> Output {
    selfish_env(args, &[])
}

fn selfish_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfish"));
    c.args(args).env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run selfish")
}

/// `train --backend cpu` on `data` with the tiny model, then `extra` (later flags win only
/// where clap allows; cases pass flags `tiny` lacks, or use `train_with`).
fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--backend",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(tiny());
    args.extend(extra);
    selfish(&args)
}

/// Like `train` but with `tiny`'s value for `flag` replaced.
fn train_with(data: &Path, out: &Path, flag: &str, value: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train".to_string(),
        "--backend".into(),
        "cpu".into(),
        "--data".into(),
        data.to_str().unwrap().into(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    let mut replaced = false;
    for pair in tiny().chunks(2) {
        args.push(pair[0].into());
        if pair[0] == flag {
            args.push(value.into());
            replaced = true;
        } else {
            args.push(pair[1].into());
        }
    }
    if !replaced {
        args.push(flag.into());
        args.push(value.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    selfish(&refs)
}

/// A few kilobytes of varied text (about 24 distinct characters).
fn corpus_text() -> String {
    let words = [
        "the ", "selfish ", "token ", "KING:\n", "so ", "we ", "go.\n", "Zephyr ",
    ];
    let mut s = String::new();
    let mut i = 0usize;
    while s.len() < 6000 {
        s.push_str(words[i % words.len()]);
        i = (i * 5 + 3) % 101;
    }
    s
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Exit code non-zero, exactly one `error:` line on stderr holding every needle, no panic.
#[track_caller]
fn assert_error(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(o.status.code().is_some(), "killed by a signal: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("error") && !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error should mention {n:?}: {}",
            lines[0]
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("Usage:"),
        "{err}"
    );
    lines[0].to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// A finished 20-step run on the CPU: (text, run folder).
fn trained(dir: &Path) -> (PathBuf, PathBuf) {
    let data = write(dir, "corpus.txt", corpus_text());
    let out = dir.join("run");
    let o = train(
        &data,
        &out,
        &[
            "--steps",
            "20",
            "--eval-interval",
            "10",
            "--eval-batches",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (data, out)
}

#[test]
fn data_errors() {
    let dir = common::tempdir("data");
    let out = dir.join("run");
    let text = corpus_text();

    assert_error(
        &train(&dir.join("nope.txt"), &out, &[]),
        &["nope.txt", "does not exist", "--data"],
    );
    assert_error(
        &train(&dir, &out, &[]),
        &["is a directory", "pass a text file"],
    );
    #[cfg(unix)]
    {
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Reading a FIFO nobody writes to would hang; it must be refused instead.
        assert_error(
            &train(&fifo, &out, &[]),
            &["not a regular file", "save the text to a file"],
        );
        // Root reads anything, so permissions can only be tested as another user.
        if unsafe { libc::geteuid() } != 0 {
            use std::os::unix::fs::PermissionsExt;
            let locked = write(&dir, "locked.txt", &text);
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
            assert_error(&train(&locked, &out, &[]), &["locked.txt", "permissions"]);
        }
    }
    assert_error(
        &train(&write(&dir, "empty.txt", ""), &out, &[]),
        &["is empty", "non-empty"],
    );
    let bad = write(&dir, "latin1.txt", b"hello\nworld\nab\xffcd".as_slice());
    assert_error(
        &train(&bad, &out, &[]),
        &["not UTF-8", "offset 14 (line 3)", "convert it to UTF-8"],
    );
    let one = write(&dir, "one.txt", "a".repeat(1000));
    assert_error(
        &train(&one, &out, &[]),
        &["1 distinct character", "at least 2"],
    );
    // 15 characters: 13 for training, fewer than block_size + 1 = 17.
    let short = write(&dir, "short.txt", &text[..15]);
    assert_error(
        &train(&short, &out, &[]),
        &["text too short", "need at least 17", "smaller block_size"],
    );
    // 150 characters: 135 to train on, but only 15 in the validation tenth.
    let noval = write(&dir, "noval.txt", &text[..150]);
    assert_error(
        &train(&noval, &out, &[]),
        &["validation split too short", "15 validation characters"],
    );
    assert!(!out.exists(), "a refused run must not create --out");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_errors() {
    let dir = common::tempdir("config");
    let data = write(&dir, "corpus.txt", corpus_text());
    let out = dir.join("run");
    for flag in [
        "--n-layer",
        "--n-head",
        "--n-embd",
        "--block-size",
        "--batch-size",
    ] {
        for bad in ["0", "-3", "1.5"] {
            let e = assert_error(
                &train_with(&data, &out, flag, bad, &[]),
                &[flag, "at least 1"],
            );
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }
    assert_error(
        &train(&data, &out, &["--steps", "0"]),
        &["--steps must be at least 1"],
    );
    assert_error(
        &train(&data, &out, &["--steps", "-5"]),
        &["--steps", "whole number"],
    );
    assert_error(
        &train(&data, &out, &["--eval-batches", "0"]),
        &["--eval-batches", "at least 1"],
    );
    assert_error(
        &train(&data, &out, &["--stop-after", "0"]),
        &["--stop-after must be at least 1"],
    );
    assert_error(
        &train_with(&data, &out, "--n-head", "3", &[]),
        &["n_embd 16 is not divisible by n_head 3"],
    );
    assert_error(
        &train_with(&data, &out, "--n-layer", "5000", &[]),
        &["1024 layers", "--n-layer"],
    );
    assert_error(
        &train_with(&data, &out, "--n-embd", "65536", &[]),
        &["4294967295", "lower --n-embd"],
    );
    for m in ["-1", "NaN", "inf", "abc"] {
        assert_error(
            &train(&data, &out, &["--margin", m]),
            &["invalid margin", "finite number >= 0"],
        );
    }
    for lr in ["0", "-1", "NaN", "inf"] {
        assert_error(
            &train(&data, &out, &["--lr", lr]),
            &["learning rate", "--lr"],
        );
    }
    assert_error(&train(&data, &out, &["--min-lr", "-1"]), &["--min-lr"]);
    assert_error(
        &train(&data, &out, &["--low-resource-prob", "-0.5"]),
        &["between 0 and 1"],
    );
    assert_error(
        &selfish(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--backend",
            "foo",
        ]),
        &["unknown backend 'foo'", "vulkan"],
    );
    assert_error(
        &selfish(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--config",
            "huge",
        ]),
        &["unknown config 'huge'", "paper or large"],
    );
    assert_error(
        &train(&data, &out, &["--no-such-flag"]),
        &["--no-such-flag", "--help"],
    );
    assert!(!out.exists(), "a refused run must not create --out");

    let file = write(&dir, "file", "x");
    assert_error(&train(&data, &file, &[]), &["is a file, not a folder"]);
    assert_error(
        &train(&data, &out, &["--resume"]),
        &["no checkpoint", "drop --resume"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of `src` with its safetensors header edited by `edit` (data bytes kept).
fn edit_header(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

/// A copy of `src` with one metadata value changed.
fn edit_meta(src: &Path, dst: &Path, key: &str, value: &str) {
    let mut f = checkpoint::load(src).unwrap();
    f.set_meta(key, value);
    checkpoint::save(dst, &f).unwrap();
}

#[test]
fn checkpoint_and_fixture_errors() {
    let dir = common::tempdir("ckpt");
    let (data, run) = trained(&dir);
    let model = run.join("model.safetensors");
    let eval = |ckpt: &Path| {
        selfish(&[
            "eval",
            "--backend",
            "cpu",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
    };
    let good = std::fs::read(&model).unwrap();
    let alphabet: String = {
        let mut c: Vec<char> = corpus_text().chars().collect();
        c.sort_unstable();
        c.dedup();
        c.into_iter().collect()
    };
    let v = alphabet.chars().count();
    assert!(eval(&model).status.success());

    assert_error(
        &eval(&dir.join("nope.safetensors")),
        &["nope.safetensors", "does not exist"],
    );
    let p = write(&dir, "head.safetensors", &good[..100]);
    assert_error(
        &eval(&p),
        &["head.safetensors", "not a valid safetensors", "truncated"],
    );
    let p = write(&dir, "tail.safetensors", &good[..good.len() - 10]);
    assert_error(&eval(&p), &["tail.safetensors", "not a valid safetensors"]);
    assert_error(&eval(&data), &["corpus.txt", "not a valid safetensors"]);
    // 1 PiB claimed by a 40-byte file: refused before anything is sized from it.
    let mut huge = (1u64 << 50).to_le_bytes().to_vec();
    huge.extend_from_slice(&[b' '; 32]);
    let p = write(&dir, "huge.safetensors", huge);
    assert_error(
        &eval(&p),
        &["header claims 1125899906842624 bytes", "has 40"],
    );

    let fc = "transformer.h.0.mlp.c_fc.weight";
    let p = dir.join("missing.safetensors");
    let mut f = checkpoint::load(&model).unwrap();
    f.tensors.retain(|t| t.name != fc);
    checkpoint::save(&p, &f).unwrap();
    assert_error(
        &eval(&p),
        &["missing.safetensors", &format!("no tensor '{fc}'")],
    );

    let p = dir.join("shape.safetensors");
    edit_header(&model, &p, |h| h[fc]["shape"] = serde_json::json!([16, 64]));
    assert_error(&eval(&p), &[fc, "shape [16, 64]", "expects [64, 16]"]);
    // Same bytes, read as 2-byte or 8-byte elements.
    let p = dir.join("f16.safetensors");
    edit_header(&model, &p, |h| {
        h[fc]["dtype"] = "F16".into();
        h[fc]["shape"] = serde_json::json!([64, 32]);
    });
    assert_error(&eval(&p), &[fc, "dtype F16", "float32"]);
    let p = dir.join("i64.safetensors");
    edit_header(&model, &p, |h| {
        h[fc]["dtype"] = "I64".into();
        h[fc]["shape"] = serde_json::json!([64, 8]);
    });
    assert_error(&eval(&p), &[fc, "dtype I64"]);

    for (key, value, needle) in [
        ("vocab_size", "100", "metadata says vocab_size 100"),
        ("n_embd", "32", "n_embd 32"),
        ("block_size", "64", "position table"),
        ("n_layer", "3", "holds 1 layer"),
        ("n_head", "3", "invalid metadata"),
        ("n_layer", "99999999999", "invalid metadata"),
        ("vocab_size", "many", "not a non-negative integer"),
        ("vocab", "[\"a\",\"b\"]", "alphabet has 2 characters"),
        ("vocab", "{", "vocab"),
    ] {
        let p = dir.join(format!("meta-{key}.safetensors"));
        edit_meta(&model, &p, key, value);
        assert_error(&eval(&p), &["meta-", needle]);
    }

    // The text must be the one the model was trained on, and long enough to evaluate.
    let other = write(&dir, "other.txt", format!("{}XYZ!", corpus_text()));
    let o = selfish(&[
        "eval",
        "--backend",
        "cpu",
        "--checkpoint",
        model.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
    ]);
    assert_error(
        &o,
        &["alphabet of", "differs from the checkpoint's", "trained on"],
    );
    let tiny = write(&dir, "tiny.txt", alphabet.repeat(2));
    let o = selfish(&[
        "eval",
        "--backend",
        "cpu",
        "--checkpoint",
        model.to_str().unwrap(),
        "--data",
        tiny.to_str().unwrap(),
    ]);
    assert_error(
        &o,
        &["validation split too short to evaluate", "longer text"],
    );

    // Resume refuses a checkpoint it cannot continue exactly, and leaves it alone.
    let before = snapshot(&run);
    let resume = |extra: &[&str]| {
        let mut a = vec!["--resume", "--steps", "40"];
        a.extend(extra);
        train(&data, &run, &a)
    };
    assert_error(
        &train_with(
            &data,
            &run,
            "--block-size",
            "32",
            &["--resume", "--steps", "40"],
        ),
        &[
            "block_size 16 in the checkpoint",
            "position table has 16 rows",
            "32 asked for",
        ],
    );
    assert_error(
        &train(&other, &run, &["--resume", "--steps", "40"]),
        &["alphabet", "same model settings and --data"],
    );
    assert_error(
        &resume(&["--low-resource-prob", "0"]),
        &[
            &format!("vocab_size {} in the checkpoint", 2 * v),
            &format!("{v} asked for"),
        ],
    );
    assert_error(
        &train(&data, &run, &["--resume", "--steps", "10"]),
        &["at step 20, past --steps 10"],
    );
    assert_error(
        &train(&data, &run, &[]),
        &["already holds a checkpoint (step 20)", "--resume"],
    );
    assert_error(&resume(&["--lr", "-1"]), &["learning rate"]);
    assert_error(
        &train(&dir.join("gone.txt"), &run, &["--resume"]),
        &["does not exist"],
    );
    assert_eq!(snapshot(&run), before, "a refused run changed its --out");

    let st = run.join("state.safetensors");
    let good_state = std::fs::read(&st).unwrap();
    std::fs::write(&st, &good_state[..good_state.len() / 2]).unwrap();
    assert_error(
        &resume(&[]),
        &["state.safetensors", "not a valid safetensors"],
    );
    std::fs::remove_file(&st).unwrap();
    assert_error(&resume(&[]), &["no state.safetensors", "another --out"]);

    // Fixtures: the folder of `selfish check --fixture`.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt-tiny");
    let fx = dir.join("fixture");
    std::fs::create_dir_all(&fx).unwrap();
    let check = |d: &Path| {
        selfish(&[
            "check",
            "--backend",
            "cpu",
            "--fixture",
            d.to_str().unwrap(),
        ])
    };
    assert_error(
        &check(&dir.join("no-fixture")),
        &["fixture folder", "does not exist"],
    );
    std::fs::copy(src.join("init.safetensors"), fx.join("init.safetensors")).unwrap();
    assert_error(&check(&fx), &["expected.safetensors", "does not exist"]);
    std::fs::copy(
        src.join("expected.safetensors"),
        fx.join("expected.safetensors"),
    )
    .unwrap();
    edit_meta(
        &src.join("init.safetensors"),
        &fx.join("init.safetensors"),
        "block_size",
        "32",
    );
    assert_error(
        &check(&fx),
        &[
            "init.safetensors",
            "block_size 32",
            "position table",
            "[16, 32]",
        ],
    );
    let init = std::fs::read(src.join("init.safetensors")).unwrap();
    std::fs::write(fx.join("init.safetensors"), &init[..init.len() / 3]).unwrap();
    assert_error(
        &check(&fx),
        &["init.safetensors", "not a valid safetensors"],
    );
    let mut exp: TensorFile = checkpoint::load(&src.join("expected.safetensors")).unwrap();
    exp.tensors.retain(|t| t.name != "loss.plain");
    std::fs::copy(src.join("init.safetensors"), fx.join("init.safetensors")).unwrap();
    checkpoint::save(&fx.join("expected.safetensors"), &exp).unwrap();
    assert_error(
        &check(&fx),
        &["expected.safetensors", "no tensor 'loss.plain'"],
    );

    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "a temporary file was left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The backend this platform lacks, for "no adapter".
fn absent_backend() -> &'static str {
    if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    }
}

#[test]
fn gpu_errors() {
    let dir = common::tempdir("gpu");
    let data = write(&dir, "corpus.txt", corpus_text());
    let d = data.to_str().unwrap();
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let fix = "--backend cpu";
    assert_error(
        &selfish(&[
            "train",
            "--data",
            d,
            "--out",
            o,
            "--backend",
            absent_backend(),
        ]),
        &["no GPU adapter found", fix],
    );
    assert_error(
        &selfish_env(
            &["train", "--data", d, "--out", o],
            &[("WGPU_BACKEND", absent_backend())],
        ),
        &["no GPU adapter found", fix],
    );

    // Far over any adapter's binding size: refused from the sizes alone, before allocating.
    let big = selfish(&["train", "--data", d, "--out", o, "--batch-size", "100000"]);
    let e = assert_error(
        &big,
        &[
            "buffer '",
            "bytes",
            "at batch size 100000",
            "per buffer (its limit max_",
            "lower --batch-size to",
        ],
    );
    assert!(
        e.contains("max_storage_buffer_binding_size") || e.contains("max_buffer_size"),
        "{e}"
    );
    // Buffers that each fit but together need terabytes of host memory.
    let many = selfish(&[
        "train",
        "--backend",
        "cpu",
        "--data",
        d,
        "--out",
        o,
        "--n-layer",
        "1000",
        "--batch-size",
        "20000",
    ]);
    assert_error(
        &many,
        &[
            "the model's buffers need",
            "TiB",
            "is available",
            "lower --batch-size to",
        ],
    );
    assert!(!out.exists(), "a refused run must not create --out");
    std::fs::remove_dir_all(&dir).unwrap();
}
