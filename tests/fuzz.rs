//! Property-based fuzzing of everything that reads untrusted bytes: the safetensors reader
//! (checkpoints and fixtures) and the text loader. Each case must return `Ok` or `Err`, never
//! panic, and allocate at most a small multiple of its input's size.
//!
//! 256 cases per property by default (a few seconds); for a longer run:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use selfish::data::{load_text, Dataset, Vocab};
use selfish::fixture::Fixture;
use selfish::tensorfile::{self, Tensor, TensorFile};

/// Counts this thread's live heap bytes and their peak, so a test can bound what one call
/// allocates. Thread-local, because the test harness runs other tests on other threads.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add_signed(delta);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result with the most heap it held at once beyond what was live
/// before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// Reading `n` bytes may hold the file, the decoded tensors and the parsed header at once:
/// a few times `n`, plus a fixed allowance. Never anything sized from what the file claims.
fn assert_bounded(peak: usize, n: usize, what: &str) {
    let limit = 8 * n + (256 << 10);
    assert!(
        peak <= limit,
        "{what}: {peak} bytes held for a {n}-byte input"
    );
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("selfish-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small valid model file, as `selfish train` writes one.
fn model_bytes() -> Vec<u8> {
    let cfg = selfish::model::GptConfig {
        vocab_size: 6,
        block_size: 4,
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        untied: false,
    };
    let mut rng = selfish::rng::Rng::new(3);
    let params = selfish::model::init_params(&cfg, &mut rng);
    let mut f = TensorFile::new();
    for (s, v) in selfish::model::specs(&cfg).iter().zip(params.iter()) {
        f.push(Tensor::f32(s.name.clone(), s.shape.clone(), v.clone()));
    }
    for (k, v) in [
        ("vocab_size", 6),
        ("block_size", 4),
        ("n_layer", 1),
        ("n_head", 2),
        ("n_embd", 8),
    ] {
        f.set_meta(k, v);
    }
    f.set_meta("vocab", Vocab::from_text("abcdef").unwrap().to_json());
    f.set_meta("step", 3);
    tensorfile::to_bytes(&f).unwrap()
}

/// Every way one file can be damaged: bit flips, a cut, a new header length, edited header
/// text (digits, brackets, quotes), or junk appended.
#[derive(Clone, Debug)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    HeaderLen(u64),
    HeaderByte(usize, u8),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        any::<usize>().prop_map(Damage::Truncate),
        prop_oneof![any::<u64>(), 0u64..4096].prop_map(Damage::HeaderLen),
        (
            any::<usize>(),
            prop::sample::select(b"0123456789[]{},:\" -e.9".to_vec())
        )
            .prop_map(|(i, c)| Damage::HeaderByte(i, c)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Append),
    ];
    prop::collection::vec(one, 1..4)
}

fn apply(mut b: Vec<u8>, ds: &[Damage]) -> Vec<u8> {
    for d in ds {
        match d {
            Damage::Flip(i, x) if !b.is_empty() => {
                let n = b.len();
                b[i % n] ^= x;
            }
            Damage::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Damage::HeaderLen(v) if b.len() >= 8 => b[..8].copy_from_slice(&v.to_le_bytes()),
            Damage::HeaderByte(i, c) if b.len() > 8 => {
                let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()).min(b.len() as u64 - 8);
                let at = 8 + i % (hlen.max(1) as usize);
                if at < b.len() {
                    b[at] = *c;
                }
            }
            Damage::Append(x) => b.extend_from_slice(x),
            _ => {}
        }
    }
    b
}

fn load_bytes(dir: &Path, bytes: &[u8]) {
    let p = dir.join("case.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let (r, peak) = peak_of(|| {
        // The whole read path of `eval` and `--resume`: parse, then trust nothing in it.
        tensorfile::load(&p).and_then(|f| {
            let cfg = selfish::checkpoint::gpt_config(&f)?;
            for s in selfish::model::specs(&cfg).iter() {
                f.expect_f32(&s.name, &s.shape)?;
            }
            Vocab::from_json(f.meta("vocab")?)?;
            Ok(())
        })
    });
    if let Err(e) = r {
        assert!(!format!("{e:#}").contains('\n'), "multi-line error: {e:#}");
    }
    assert_bounded(peak, bytes.len(), "tensorfile::load");
}

proptest! {
    #[test]
    fn checkpoint_reader_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_bytes(&scratch("any"), &bytes);
    }

    #[test]
    fn checkpoint_reader_survives_damaged_files(ds in damage()) {
        load_bytes(&scratch("damaged"), &apply(model_bytes(), &ds));
    }

    #[test]
    fn fixture_loader_survives_damaged_files(which in 0..2usize, ds in damage()) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt-tiny");
        let dir = scratch("fixture");
        let names = ["init.safetensors", "expected.safetensors"];
        let mut total = 0;
        for (i, n) in names.iter().enumerate() {
            let good = std::fs::read(src.join(n)).unwrap();
            let bytes = if i == which { apply(good, &ds) } else { good };
            total += bytes.len();
            std::fs::write(dir.join(n), bytes).unwrap();
        }
        let (r, peak) = peak_of(|| Fixture::load(&dir).map(|f| f.batch));
        if let Err(e) = r {
            let msg = format!("{e:#}");
            prop_assert!(!msg.contains('\n'), "multi-line error: {}", msg);
        }
        assert_bounded(peak, total, "Fixture::load");
    }

    #[test]
    fn text_loader_survives_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            "[a-c\\n]{0,80}".prop_map(String::into_bytes),
            any::<String>().prop_map(String::into_bytes),
        ],
        p in prop_oneof![Just(0.0), Just(0.5), Just(1.0), any::<f64>()],
        block in 0usize..40,
        batch in 1usize..4,
    ) {
        let path = scratch("text").join("case.txt");
        std::fs::write(&path, &bytes).unwrap();
        let (r, peak) = peak_of(|| -> anyhow::Result<()> {
            let text = load_text(&path)?;
            let ds = Dataset::from_text(&text, p)?;
            ds.check_sizes(block)?;
            let (x, y) = ds.sample_batch(&mut selfish::rng::Rng::new(1), batch, block);
            assert!(x.iter().chain(&y).all(|&t| (t as usize) < ds.model_vocab()));
            Ok(())
        });
        if let Err(e) = r {
            let msg = format!("{e:#}");
            prop_assert!(!msg.contains('\n'), "multi-line error: {}", msg);
        }
        assert_bounded(peak, bytes.len(), "load_text + Dataset");
    }

    #[test]
    fn vocabulary_metadata_survives_any_string(s in any::<String>()) {
        if let Ok(v) = Vocab::from_json(&s) {
            prop_assert_eq!(Vocab::from_json(&v.to_json()).unwrap(), v);
        }
    }
}
