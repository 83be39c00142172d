//! Checkpoint loading (spec §5): PyTorch `.pth` zip pickles (read safely), mmengine dicts,
//! safetensors (single and sharded), Hugging Face InternVL3 folders; f32, f16 and bf16 storage.
//!
//! Every source is read into a [`TensorMap`] of raw, memory-mapped tensors under the canonical
//! key names of the VGT-AR state dict (spec §5.2, `vgt_ae.` prefix for the AE), then applied to
//! the burn modules by [`apply`].

pub mod apply;
pub mod keymap;
pub mod pickle;
pub mod pth;
pub mod source;
pub mod st;
pub mod zip;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of checkpoint loading. Messages say what was expected and what was found, path last.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Format(String),
    #[error("invalid pickle: {0}")]
    Pickle(String),
    #[error(
        "refusing the pickle global `{0}`: a checkpoint may only hold tensors, dicts and plain values, and nothing in it is executed"
    )]
    ForbiddenGlobal(String),
    #[error("{source} in {}", path.display())]
    InFile { path: PathBuf, source: Box<WeightError> },
    #[error("the checkpoint lacks {} tensor(s) the model needs: {}", .0.len(), .0.join(", "))]
    Missing(Vec<String>),
    #[error("{}", .0.join("; "))]
    Mismatch(Vec<String>),
}

impl WeightError {
    /// Attaches the file the error came from.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            e @ (WeightError::Io { .. } | WeightError::Write { .. } | WeightError::InFile { .. }) => e,
            e => WeightError::InFile { path: path.to_path_buf(), source: Box::new(e) },
        }
    }
}

/// The error of a failed write to `path`, for `map_err`.
pub fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightError + use<> {
    let path = path.to_path_buf();
    move |source| WeightError::Write { path, source }
}

/// Element types a checkpoint can store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
    /// The safetensors name of this dtype.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

/// The bytes behind tensors: a memory-mapped file or an owned buffer.
pub enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Memory-maps `path` read-only.
pub fn map_file(path: &Path) -> Result<Arc<Backing>, WeightError> {
    let io = |source| WeightError::Io { path: path.to_path_buf(), source };
    let file = crate::fsutil::open_regular(path).map_err(io)?;
    // SAFETY: the map is read-only; a checkpoint changed on disk while loading is a user error
    // that can at worst corrupt the values read, which the shape checks do not rely on.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(Backing::Mmap(map)))
}

/// One tensor of a checkpoint, not yet decoded: dtype, shape and where its bytes are.
#[derive(Clone)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    backing: Arc<Backing>,
    offset: usize,
    /// Element strides when the stored view is not contiguous row-major.
    strides: Option<Vec<usize>>,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawTensor({:?}, {:?})", self.dtype, self.shape)
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The largest broadcast view (stride 0) a checkpoint may hold, materialised: a real weight is
/// never one, and `expand`ed buffers are small.
pub const MAX_BROADCAST_BYTES: usize = 64 << 20;

/// The element count of `shape`, `None` when it overflows.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// One past the last element a strided view touches (`1 + Σ (dᵢ − 1)·sᵢ`), `None` on overflow.
/// An empty view touches nothing.
pub fn view_span(shape: &[usize], strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().zip(strides).try_fold(1usize, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)))
}

impl RawTensor {
    /// A tensor over `backing[offset..]` with the given element strides. Checks the bounds with
    /// checked arithmetic (a shape, stride or offset from a file may be anything) and refuses
    /// large broadcast views (stride 0), whose materialised size the file does not hold.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        backing: Arc<Backing>,
        offset: usize,
        strides: Option<Vec<usize>>,
    ) -> Result<Self, WeightError> {
        let bad = |what: String| WeightError::Format(format!("tensor data of shape {shape:?} ({}) {what}", dtype.name()));
        let numel = checked_numel(&shape).ok_or_else(|| bad("has more elements than this machine can address".into()))?;
        let bytes = numel.checked_mul(dtype.size()).ok_or_else(|| bad("has more bytes than this machine can address".into()))?;
        if let Some(s) = &strides
            && s.len() != shape.len()
        {
            return Err(bad(format!("has {} strides for {} dimensions", s.len(), shape.len())));
        }
        let strides = strides.filter(|s| *s != contiguous_strides(&shape));
        let span = match &strides {
            _ if numel == 0 => Some(0),
            None => Some(numel),
            Some(s) => view_span(&shape, s),
        };
        let span = span.ok_or_else(|| bad("has strides that overflow".into()))?;
        if numel > span && bytes > MAX_BROADCAST_BYTES {
            return Err(bad(format!(
                "is a broadcast view (strides of 0 or overlapping) of {span} stored elements that would take {} MiB once materialised",
                bytes >> 20
            )));
        }
        let end = span.checked_mul(dtype.size()).and_then(|b| b.checked_add(offset));
        if end.is_none_or(|end| end > backing.len()) {
            return Err(bad("runs past the end of its storage (the file is truncated or corrupt)".into()));
        }
        Ok(Self { dtype, shape, backing, offset, strides })
    }

    /// An owned f32 tensor (used by tests and converters).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { dtype: DType::F32, shape, backing: Arc::new(Backing::Owned(bytes)), offset: 0, strides: None }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The little-endian bytes in row-major order (copied only for strided views).
    pub fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        let size = self.dtype.size();
        match &self.strides {
            None => std::borrow::Cow::Borrowed(&self.backing[self.offset..self.offset + self.numel() * size]),
            Some(strides) => {
                let mut out = Vec::with_capacity(self.numel() * size);
                let mut index = vec![0usize; self.shape.len()];
                for _ in 0..self.numel() {
                    let at: usize = index.iter().zip(strides).map(|(i, s)| i * s).sum();
                    let start = self.offset + at * size;
                    out.extend_from_slice(&self.backing[start..start + size]);
                    for d in (0..index.len()).rev() {
                        index[d] += 1;
                        if index[d] < self.shape[d] {
                            break;
                        }
                        index[d] = 0;
                    }
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// Decodes the values to f32 (floats widened or narrowed, integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        let bytes = self.bytes();
        let n = self.dtype.size();
        let chunks = bytes.chunks_exact(n);
        match self.dtype {
            DType::F32 => chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => chunks.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => chunks.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F64 => chunks.map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            DType::I64 => chunks.map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            DType::I32 => chunks.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            DType::I16 => chunks.map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            DType::I8 => chunks.map(|c| c[0] as i8 as f32).collect(),
            DType::U8 | DType::Bool => chunks.map(|c| c[0] as f32).collect(),
        }
    }

    /// Re-encodes a float tensor as `to` (F32, F16 or BF16), little-endian.
    pub fn encode_float(&self, to: DType) -> Vec<u8> {
        if to == self.dtype {
            return self.bytes().into_owned();
        }
        let values = self.to_f32();
        match to {
            DType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Tensors by canonical key name.
pub type TensorMap = BTreeMap<String, RawTensor>;
