//! The safetensors format, for checkpoints and reference fixtures: tensors and string
//! metadata in memory ([`TensorFile`]), to and from bytes, and from and to files.
//!
//! Reading goes through the `safetensors` crate's validation (offsets, sizes, header
//! length). Writing builds the header here instead of calling `safetensors::serialize`:
//! the crate keeps metadata in a `HashMap`, whose order changes from run to run, and an
//! identical model should produce an identical file.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(not(target_arch = "wasm32"))]
use std::fs;
#[cfg(not(target_arch = "wasm32"))]
use std::io::{ErrorKind, Read};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use safetensors::{Dtype, SafeTensors};

/// Element storage. Little-endian on disk; native here.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn dtype_name(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "F32",
            TensorData::I32(_) => "I32",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data: TensorData::F32(data),
        }
    }

    pub fn i32(name: impl Into<String>, shape: Vec<usize>, data: Vec<i32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data: TensorData::I32(data),
        }
    }
}

/// The contents of one safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    /// In file order when loaded (sorted by name); in insertion order when built.
    pub tensors: Vec<Tensor>,
    pub metadata: BTreeMap<String, String>,
    /// Where the file came from, so lookup errors can name it; empty for in-memory files.
    pub source: String,
}

impl TensorFile {
    pub fn new() -> Self {
        Self::default()
    }

    /// The quoted path, for messages.
    pub fn label(&self) -> &str {
        if self.source.is_empty() {
            "<in memory>"
        } else {
            &self.source
        }
    }

    pub fn push(&mut self, t: Tensor) {
        self.tensors.push(t);
    }

    pub fn set_meta(&mut self, key: impl Into<String>, value: impl ToString) {
        self.metadata.insert(key.into(), value.to_string());
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn require(&self, name: &str) -> Result<&Tensor> {
        self.get(name).ok_or_else(|| {
            anyhow!(
                "checkpoint {} has no tensor '{name}': it was written for a different model or \
                 is incomplete; use a matching checkpoint",
                self.label()
            )
        })
    }

    pub fn get_f32(&self, name: &str) -> Result<(&[usize], &[f32])> {
        let t = self.require(name)?;
        match &t.data {
            TensorData::F32(v) => Ok((&t.shape, v)),
            other => bail!(
                "checkpoint {}: tensor '{name}' is {}, expected F32: use a matching checkpoint",
                self.label(),
                other.dtype_name()
            ),
        }
    }

    pub fn get_i32(&self, name: &str) -> Result<(&[usize], &[i32])> {
        let t = self.require(name)?;
        match &t.data {
            TensorData::I32(v) => Ok((&t.shape, v)),
            other => bail!(
                "checkpoint {}: tensor '{name}' is {}, expected I32: use a matching checkpoint",
                self.label(),
                other.dtype_name()
            ),
        }
    }

    /// F32 data after checking the shape, so a model never loads weights of another size.
    pub fn expect_f32(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let (s, v) = self.get_f32(name)?;
        if s != shape {
            bail!(
                "checkpoint {}: tensor '{name}' has shape {s:?}, the model expects {shape:?}: \
                 use a checkpoint made with the same model settings",
                self.label()
            );
        }
        Ok(v)
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| {
            anyhow!(
                "checkpoint {} has no metadata '{key}': it was not written by this version of \
                 selfish; use a matching checkpoint",
                self.label()
            )
        })
    }

    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.trim().parse().map_err(|_| {
            anyhow!(
                "checkpoint {}: metadata '{key}' = {v:?} is not a non-negative integer: the file \
                 is damaged; use another checkpoint",
                self.label()
            )
        })
    }

    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta(key)?;
        v.trim().parse().map_err(|_| {
            anyhow!(
                "checkpoint {}: metadata '{key}' = {v:?} is not a number: the file is damaged; \
                 use another checkpoint",
                self.label()
            )
        })
    }
}

/// Reads and validates a safetensors file (F32 and I32 tensors only).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(path: &Path) -> Result<TensorFile> {
    let shown = path.display();
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("checkpoint '{shown}' does not exist: check the path")
        }
        Err(e) => bail!("cannot open checkpoint '{shown}': {e}: check its permissions"),
    };
    let meta = f
        .metadata()
        .map_err(|e| anyhow!("cannot stat checkpoint '{shown}': {e}: check the path"))?;
    if !meta.is_file() {
        bail!("checkpoint '{shown}' is not a regular file: pass a .safetensors file");
    }
    let size = meta.len();
    let not_st = |why: String| {
        anyhow!("checkpoint '{shown}' is not a valid safetensors file ({why}): it may be truncated or of another format; re-create it or pass the right file")
    };
    if size < 8 {
        return Err(not_st(format!("only {size} bytes")));
    }
    // The header length is checked against the real file size before anything is sized
    // from it, so a corrupt length cannot trigger a huge allocation.
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes)
        .map_err(|e| anyhow!("cannot read checkpoint '{shown}': {e}: check the file"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > size - 8 {
        return Err(not_st(format!(
            "header claims {header_len} bytes but the file has {size}"
        )));
    }
    let cap = usize::try_from(size)
        .map_err(|_| not_st(format!("{size} bytes is too large for this machine")))?;
    let mut buf = Vec::with_capacity(cap);
    buf.extend_from_slice(&len_bytes);
    f.read_to_end(&mut buf)
        .map_err(|e| anyhow!("cannot read checkpoint '{shown}': {e}: check the file"))?;

    parse(&buf, &format!("'{shown}'"))
}

/// Validates safetensors bytes (F32 and I32 tensors only); `source` names them in messages.
pub fn parse(buf: &[u8], source: &str) -> Result<TensorFile> {
    let shown = source.trim_matches('\'');
    let not_st = |why: String| {
        anyhow!("checkpoint '{shown}' is not a valid safetensors file ({why}): it may be truncated or of another format; re-create it or pass the right file")
    };
    if buf.len() < 8 {
        return Err(not_st(format!("only {} bytes", buf.len())));
    }
    let header_len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if header_len > buf.len() as u64 - 8 {
        return Err(not_st(format!(
            "header claims {header_len} bytes but the file has {}",
            buf.len()
        )));
    }
    let (n, header) = SafeTensors::read_metadata(buf).map_err(|e| not_st(e.to_string()))?;
    let body = &buf[8 + n..];
    let mut names = header.offset_keys();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let Some(info) = header.info(&name) else {
            return Err(not_st(format!(
                "tensor '{name}' is listed but has no entry"
            )));
        };
        let (s, e) = info.data_offsets;
        let bytes = body
            .get(s..e)
            .ok_or_else(|| not_st(format!("tensor '{name}' lies outside the file")))?;
        let data = match info.dtype {
            Dtype::F32 => TensorData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::I32 => TensorData::I32(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            other => bail!(
                "checkpoint '{shown}': tensor '{name}' has dtype {other:?}, but only F32 and I32 \
                 are supported: convert it to float32"
            ),
        };
        tensors.push(Tensor {
            name,
            shape: info.shape.clone(),
            data,
        });
    }
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(TensorFile {
        tensors,
        metadata,
        source: source.to_string(),
    })
}

/// Serializes to safetensors bytes with a deterministic header (keys sorted, data in the
/// order of `file.tensors`).
pub fn to_bytes(file: &TensorFile) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !file.metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = file
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut seen = BTreeSet::new();
    let mut offset = 0usize;
    for t in &file.tensors {
        if t.name.is_empty() || t.name == "__metadata__" {
            bail!("cannot save tensor named {:?}: choose another name", t.name);
        }
        if !seen.insert(t.name.as_str()) {
            bail!(
                "cannot save two tensors named '{}': names must be unique",
                t.name
            );
        }
        let count = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count != Some(t.data.len()) {
            bail!(
                "cannot save tensor '{}': shape {:?} does not match its {} elements",
                t.name,
                t.shape,
                t.data.len()
            );
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.data.dtype_name(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    // Pad with spaces to 8 bytes so the data section stays aligned, as the format suggests.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in &file.tensors {
        match &t.data {
            TensorData::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
    Ok(out)
}

/// Writes atomically (see [`crate::fsio::write_atomic`]): a crash mid-save leaves the
/// previous checkpoint intact.
#[cfg(not(target_arch = "wasm32"))]
pub fn save(path: &Path, file: &TensorFile) -> Result<()> {
    let bytes = to_bytes(file).map_err(|e| anyhow!("cannot save '{}': {e}", path.display()))?;
    crate::fsio::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("selfish-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn err_line(r: Result<TensorFile>) -> String {
        let s = format!("{:#}", r.unwrap_err());
        assert!(!s.contains('\n'), "multi-line error: {s}");
        s
    }

    fn sample() -> TensorFile {
        let mut f = TensorFile::new();
        f.push(Tensor::f32(
            "w",
            vec![2, 3],
            vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0],
        ));
        f.push(Tensor::i32(
            "x",
            vec![2, 2],
            vec![1, -2, i32::MAX, i32::MIN],
        ));
        f.push(Tensor::f32("scalar", vec![1], vec![0.5]));
        f.set_meta("vocab_size", 130);
        f.set_meta("margin", 2.0);
        f.set_meta("name", "tiny");
        f
    }

    #[test]
    fn round_trip() {
        let d = tmp_dir("rt");
        let p = d.join("a.safetensors");
        let f = sample();
        save(&p, &f).unwrap();
        assert!(!d.join("a.safetensors.tmp").exists());
        let g = load(&p).unwrap();
        let (s, w) = g.get_f32("w").unwrap();
        assert_eq!(s, &[2, 3]);
        assert_eq!(w, f.get_f32("w").unwrap().1);
        assert_eq!(g.get_i32("x").unwrap().1, &[1, -2, i32::MAX, i32::MIN]);
        assert_eq!(g.expect_f32("scalar", &[1]).unwrap(), &[0.5]);
        assert!(g.expect_f32("scalar", &[2]).is_err());
        assert!(g.get_f32("x").is_err());
        assert_eq!(g.metadata, f.metadata);
        assert_eq!(g.meta_usize("vocab_size").unwrap(), 130);
        assert_eq!(g.meta_f64("margin").unwrap(), 2.0);
        assert_eq!(g.meta("name").unwrap(), "tiny");
        assert!(g.meta_usize("name").is_err());
        assert!(g.meta("absent").is_err());
        let e = format!("{:#}", g.get_f32("nope").unwrap_err());
        assert!(
            e.contains("has no tensor 'nope'") && e.contains("a.safetensors"),
            "{e}"
        );

        // Deterministic bytes, and readable by the reference crate.
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes, to_bytes(&f).unwrap());
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("x").unwrap().dtype(), Dtype::I32);

        // Overwriting is fine.
        save(&p, &TensorFile::new()).unwrap();
        assert!(load(&p).unwrap().tensors.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn save_rejects_inconsistent_tensors() {
        let d = tmp_dir("bad-save");
        let p = d.join("b.safetensors");
        let mut f = TensorFile::new();
        f.push(Tensor::f32("w", vec![2, 2], vec![1.0; 3]));
        assert!(save(&p, &f).is_err());
        let mut f = TensorFile::new();
        f.push(Tensor::f32("w", vec![1], vec![1.0]));
        f.push(Tensor::f32("w", vec![1], vec![1.0]));
        assert!(save(&p, &f).is_err());
        assert!(!p.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        let d = tmp_dir("bad");
        let e = err_line(load(&d.join("missing.safetensors")));
        assert!(e.contains("does not exist"), "{e}");
        assert!(err_line(load(&d)).contains("not a regular file"));

        let good = to_bytes(&sample()).unwrap();
        let p = d.join("t.safetensors");
        fs::write(&p, &good[..good.len() - 3]).unwrap();
        let e = err_line(load(&p));
        assert!(
            e.contains("not a valid safetensors") && e.contains("t.safetensors"),
            "{e}"
        );

        fs::write(&p, &good[..5]).unwrap();
        err_line(load(&p));

        fs::write(
            &p,
            b"this is certainly not a safetensors file, just some text",
        )
        .unwrap();
        let e = err_line(load(&p));
        assert!(e.contains("header claims"), "{e}");

        let mut junk = 16u64.to_le_bytes().to_vec();
        junk.extend_from_slice(b"{not json at all");
        fs::write(&p, &junk).unwrap();
        err_line(load(&p));

        // 1 TB claimed by a 24-byte file: rejected before anything is sized from it.
        let mut huge = (1u64 << 40).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}              ");
        fs::write(&p, &huge).unwrap();
        let e = err_line(load(&p));
        assert!(e.contains("header claims 1099511627776 bytes"), "{e}");
        let mut max = u64::MAX.to_le_bytes().to_vec();
        max.extend_from_slice(b"{}");
        fs::write(&p, &max).unwrap();
        err_line(load(&p));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unsupported_dtype_is_an_error() {
        struct F64s(Vec<u8>);
        impl safetensors::View for F64s {
            fn dtype(&self) -> Dtype {
                Dtype::F64
            }
            fn shape(&self) -> &[usize] {
                &[2]
            }
            fn data(&self) -> std::borrow::Cow<'_, [u8]> {
                (&self.0[..]).into()
            }
            fn data_len(&self) -> usize {
                self.0.len()
            }
        }
        let bytes: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let out =
            safetensors::serialize([("d", F64s(bytes))], None::<HashMap<String, String>>).unwrap();
        let d = tmp_dir("dtype");
        let p = d.join("f64.safetensors");
        fs::write(&p, out).unwrap();
        let e = err_line(load(&p));
        assert!(e.contains("tensor 'd'") && e.contains("F64"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reference_fixture_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt-tiny");
        let init = load(&dir.join("init.safetensors")).unwrap();
        let v = init.meta_usize("vocab_size").unwrap();
        let c = init.meta_usize("n_embd").unwrap();
        let block = init.meta_usize("block_size").unwrap();
        let layers = init.meta_usize("n_layer").unwrap();
        assert_eq!((v, c, block, layers), (130, 32, 16, 2));
        assert_eq!(init.meta_f64("margin").unwrap(), 2.0);
        init.expect_f32("transformer.wte.weight", &[v, c]).unwrap();
        init.expect_f32("transformer.wpe.weight", &[block, c])
            .unwrap();
        init.expect_f32("transformer.h.1.mlp.c_fc.weight", &[4 * c, c])
            .unwrap();
        init.expect_f32("transformer.ln_f.weight", &[c]).unwrap();

        let exp = load(&dir.join("expected.safetensors")).unwrap();
        let (xs, x) = exp.get_i32("x").unwrap();
        assert_eq!(xs, &[4, 16]);
        assert!(x.iter().all(|&t| (0..v as i32).contains(&t)));
        exp.get_i32("y").unwrap();
        exp.expect_f32("logits", &[4, 16, v]).unwrap();
        let loss = exp.expect_f32("loss.plain", &[1]).unwrap()[0];
        assert!(loss.is_finite() && loss > 0.0);
        exp.get_f32("grad.margin.transformer.wte.weight").unwrap();
    }
}
