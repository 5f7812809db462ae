//! A small reader for GGUF v2/v3 files (llama.cpp's model format): the metadata key/values,
//! the tensor directory and the dequantisation of the block formats SmolLM2's file uses.
//!
//! No crate in the offline registry mirror reads GGUF without pulling a whole inference stack
//! (candle-core), so this is our own code, written from the format description: a header
//! (`GGUF`, version, tensor count, metadata count), the metadata entries, the tensor infos, then
//! the tensor data at `general.alignment`-aligned offsets. Every read is bounds-checked, so a
//! truncated or corrupt file yields a [`LoadError`] naming the file (and the key or tensor)
//! instead of a panic.
//!
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (dequantised to f32 on the host).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::pretrained::LoadError;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when the file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Refuse counts that cannot be real before allocating for them (a corrupt count would otherwise
/// ask for terabytes).
const MAX_COUNT: u64 = 1 << 28;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type, widened.
    U64(u64),
    /// Any signed integer type, widened.
    I64(i64),
    /// `f32` or `f64`, widened.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string (invalid UTF-8 is replaced, never rejected: only token texts use it).
    Str(String),
    /// An array of values (GGUF arrays are homogeneous).
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types this reader can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale `d`, 16 bytes of 4-bit values `q`; `x = (q - 8) * d`.
    Q4_0,
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit values `q`; `x = q * d + m`.
    Q4_1,
    /// Blocks of 32: f16 scale `d`, 32 signed bytes `q`; `x = q * d`.
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGUF dimensions, innermost (contiguous) first: a PyTorch `[out, in]` matrix is `[in, out]`.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    offset: u64,
    /// Byte length of the data.
    len: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensor directory by name.
    pub tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor; every failure names the file and what was being read.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> LoadError {
        LoadError::Format {
            path: self.path.to_path_buf(),
            message: format!(
                "truncated or corrupt while reading {what} at byte {}",
                self.pos
            ),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err(what))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LoadError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<u64, LoadError> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(LoadError::Format {
                path: self.path.to_path_buf(),
                message: format!("implausible {what} {n}"),
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let n = self.count(what)?;
        let s = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, LoadError> {
        let what = format!("the value of `{key}`");
        Ok(match ty {
            0 => Value::U64(u64::from(self.array::<1>(&what)?[0])),
            1 => Value::I64(i64::from(self.array::<1>(&what)?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array(&what)?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array(&what)?))),
            4 => Value::U64(u64::from(self.u32(&what)?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array(&what)?))),
            // An f32 is widened through its shortest decimal form, which is the number the
            // converter was given (1e-5 stays 1e-5 instead of 9.99999974738e-6).
            6 => {
                let v = f32::from_le_bytes(self.array(&what)?);
                Value::F64(v.to_string().parse().unwrap_or(f64::from(v)))
            }
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::Str(self.string(&what)?),
            9 if depth == 0 => {
                let elem = self.u32(&what)?;
                let n = self.count(&what)?;
                let mut items = Vec::with_capacity((n as usize).min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(LoadError::Key {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    message: format!("unsupported metadata value type {other}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Reads and parses `path` (the whole file is read into memory: dequantisation needs every
    /// byte anyway).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF bytes; `path` is only used in error messages.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, LoadError> {
        let (metadata, tensors) = {
            let mut c = Cursor {
                path,
                bytes: &bytes,
                pos: 0,
            };
            if c.take(4, "the magic")? != MAGIC {
                return Err(LoadError::Format {
                    path: path.to_path_buf(),
                    message: "not a GGUF file (the first four bytes are not `GGUF`)".into(),
                });
            }
            let version = c.u32("the version")?;
            if !(2..=3).contains(&version) {
                return Err(LoadError::Format {
                    path: path.to_path_buf(),
                    message: format!("GGUF version {version} is not supported (2 or 3 are)"),
                });
            }
            let n_tensors = c.count("the tensor count")?;
            let n_kv = c.count("the metadata count")?;
            let mut metadata = HashMap::new();
            for _ in 0..n_kv {
                let key = c.string("a metadata key")?;
                let ty = c.u32("a metadata type")?;
                let value = c.value(ty, &key, 0)?;
                metadata.insert(key, value);
            }
            let mut raw = Vec::with_capacity(n_tensors as usize);
            for _ in 0..n_tensors {
                let name = c.string("a tensor name")?;
                let n_dims = c.u32("a tensor rank")?;
                if n_dims > 4 {
                    return Err(tensor_err(path, &name, format!("rank {n_dims} > 4")));
                }
                let mut dims = Vec::with_capacity(n_dims as usize);
                for _ in 0..n_dims {
                    dims.push(c.u64("a tensor dimension")?);
                }
                let ty_id = c.u32("a tensor type")?;
                let offset = c.u64("a tensor offset")?;
                raw.push((name, dims, ty_id, offset));
            }
            let alignment = match metadata.get("general.alignment") {
                None => DEFAULT_ALIGNMENT,
                Some(v) => v
                    .as_u64()
                    .filter(|&a| a > 0)
                    .ok_or_else(|| LoadError::Key {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        message: "must be a positive integer".into(),
                    })?,
            };
            let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
            let mut tensors = HashMap::new();
            for (name, dims, ty_id, offset) in raw {
                let info = tensor_info(path, &name, dims, ty_id, offset, data_start, &bytes)?;
                tensors.insert(name, info);
            }
            (metadata, tensors)
        };
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
            tensors,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A required metadata value.
    pub fn get(&self, key: &str) -> Result<&Value, LoadError> {
        self.metadata.get(key).ok_or_else(|| LoadError::Key {
            path: self.path.clone(),
            key: key.to_string(),
            message: "missing".into(),
        })
    }

    /// A required non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<usize, LoadError> {
        self.get(key)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| self.key_err(key, "must be a non-negative integer"))
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64, LoadError> {
        self.get(key)?
            .as_f64()
            .ok_or_else(|| self.key_err(key, "must be a number"))
    }

    /// A required array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, LoadError> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.key_err(key, "must be an array of strings")),
            _ => Err(self.key_err(key, "must be an array of strings")),
        }
    }

    /// An error about metadata `key`.
    pub fn key_err(&self, key: &str, message: &str) -> LoadError {
        LoadError::Key {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The tensor `name` dequantised to f32, in GGUF order (innermost dimension contiguous),
    /// with its dimensions. `expect` lists the GGUF dimensions the caller requires.
    pub fn tensor_f32(&self, name: &str, expect: &[u64]) -> Result<Vec<f32>, LoadError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| tensor_err(&self.path, name, "missing".into()))?;
        if info.dims != expect {
            return Err(tensor_err(
                &self.path,
                name,
                format!(
                    "has GGUF dimensions {:?}, the model config needs {expect:?}",
                    info.dims
                ),
            ));
        }
        let start = info.offset as usize;
        let data = &self.bytes[start..start + info.len as usize];
        Ok(dequantize(info.ty, data, info.numel() as usize))
    }
}

fn tensor_err(path: &Path, name: &str, message: String) -> LoadError {
    LoadError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        message,
    }
}

/// Validates one directory entry: known type, whole blocks, data inside the file.
fn tensor_info(
    path: &Path,
    name: &str,
    dims: Vec<u64>,
    ty_id: u32,
    offset: u64,
    data_start: u64,
    bytes: &[u8],
) -> Result<TensorInfo, LoadError> {
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
        tensor_err(
            path,
            name,
            format!("ggml type {ty_id} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0 are)"),
        )
    })?;
    let numel = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| tensor_err(path, name, format!("dimensions {dims:?} overflow")))?;
    let (block_elems, block_bytes) = ty.block();
    if numel % block_elems != 0 {
        return Err(tensor_err(
            path,
            name,
            format!("{numel} elements are not whole blocks of {block_elems}"),
        ));
    }
    let len = numel / block_elems * block_bytes;
    let abs = data_start
        .checked_add(offset)
        .filter(|a| {
            a.checked_add(len)
                .is_some_and(|end| end <= bytes.len() as u64)
        })
        .ok_or_else(|| {
            tensor_err(
                path,
                name,
                format!("data (offset {offset}, {len} bytes) lies outside the file"),
            )
        })?;
    Ok(TensorInfo {
        dims,
        ty,
        offset: abs,
        len,
    })
}

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantises `n` elements of type `ty` from `data` (whose length the caller has checked).
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(f16_at)),
        GgmlType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = f16_at(&block[0..2]);
                out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        // In both 4-bit formats the low nibbles of the 16 bytes are elements 0..16 of the block
        // and the high nibbles elements 16..32 (not interleaved).
        GgmlType::Q4_0 => {
            for block in data.chunks_exact(18) {
                let d = f16_at(&block[0..2]);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let d = f16_at(&block[0..2]);
                let m = f16_at(&block[2..4]);
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
    }
    debug_assert_eq!(out.len(), n);
    out
}

/// Undoes llama.cpp's Q/K row permutation.
///
/// llama.cpp applies rotary embeddings to interleaved pairs `(x[2j], x[2j+1])`, Hugging Face's
/// `rotate_half` to pairs `(x[j], x[j + hd/2])`. Its converter therefore reorders the rows of
/// each head of `q_proj`/`k_proj` so that HF row `i * hd/2 + j` (half `i`, pair `j`) is stored
/// as row `2j + i`. Our decoder uses `rotate_half`, so the rows go back: `rows` is the PyTorch
/// `[n_heads * hd, d_in]` matrix in GGUF row order, returned in Hugging Face order.
pub fn unpermute_rows(rows: &[f32], n_heads: usize, d_in: usize) -> Vec<f32> {
    let total_rows = rows.len() / d_in.max(1);
    let hd = total_rows / n_heads.max(1);
    let half = hd / 2;
    let mut out = vec![0.0f32; rows.len()];
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * hd + i * half + j;
                let gg = h * hd + 2 * j + i;
                out[hf * d_in..(hf + 1) * d_in].copy_from_slice(&rows[gg * d_in..(gg + 1) * d_in]);
            }
        }
    }
    out
}
