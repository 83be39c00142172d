//! PyTorch `.pth` / `.bin` checkpoints: a zip archive holding `data.pkl` and one file per storage.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::pickle::{self, Value};
use super::{Backing, RawTensor, TensorMap, WeightError, map_file, view_span, zip};

/// Which dict of an mmengine checkpoint to load (spec §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DictChoice {
    /// `ema_state_dict` when present, else `state_dict`, else the object itself (the reference).
    #[default]
    PreferEma,
    /// `state_dict` even when an EMA dict is present.
    Raw,
}

/// Reads every tensor of a `.pth` file, choosing the state dict as the reference loader does and
/// stripping a leading `module.`. Non-tensor entries (`steps`, metadata) are dropped.
pub fn load(path: &Path, choice: DictChoice) -> Result<TensorMap, WeightError> {
    let backing = map_file(path)?;
    read(backing, choice).map_err(|e| e.in_file(path))
}

/// [`load`] from bytes in memory (crafted inputs, fuzzing).
pub fn from_bytes(bytes: Vec<u8>, choice: DictChoice) -> Result<TensorMap, WeightError> {
    read(Arc::new(Backing::Owned(bytes)), choice)
}

fn read(backing: Arc<Backing>, choice: DictChoice) -> Result<TensorMap, WeightError> {
    if backing.len() >= 2 && backing[0] == 0x80 {
        return Err(WeightError::Format(
            "this is a legacy (pre-1.6) PyTorch pickle without a zip container; re-save it with a current torch.save".into(),
        ));
    }
    let entries = zip::read_entries(&backing)?;
    let pkl = entries
        .iter()
        .find(|e| e.name.ends_with("data.pkl"))
        .ok_or_else(|| WeightError::Format("the zip archive has no data.pkl".into()))?;
    let prefix = pkl.name.trim_end_matches("data.pkl").to_string();
    let root = pickle::load(&backing[pkl.offset..pkl.offset + pkl.len])?;
    let storages: HashMap<&str, &zip::ZipEntry> = entries
        .iter()
        .filter_map(|e| e.name.strip_prefix(&prefix).and_then(|n| n.strip_prefix("data/")).map(|k| (k, e)))
        .collect();
    let dict = choose_dict(&root, choice)?;
    let mut out = TensorMap::new();
    for (key, value) in dict {
        let (Value::Str(key), Value::Tensor(t)) = (key, value) else { continue };
        let key = key.strip_prefix("module.").unwrap_or(key);
        if key == "steps" {
            continue;
        }
        let entry = storages.get(t.storage.key.as_str()).ok_or_else(|| {
            WeightError::Format(format!("tensor `{key}` refers to storage {} which is not in the archive", t.storage.key))
        })?;
        let size = t.storage.dtype.size();
        let bad = |what: String| WeightError::Format(format!("tensor `{key}` of shape {:?}: {what}", t.shape));
        let start = t.offset.checked_mul(size).filter(|&b| b <= entry.len);
        let start = start.ok_or_else(|| bad(format!("its storage offset {} lies past its storage of {} bytes", t.offset, entry.len)))?;
        if t.stride.len() != t.shape.len() {
            return Err(bad(format!("{} strides for {} dimensions", t.stride.len(), t.shape.len())));
        }
        let span = view_span(&t.shape, &t.stride).ok_or_else(|| bad(format!("its strides {:?} overflow", t.stride)))?;
        // Bounds within the storage entry itself, not only the file.
        if span.checked_mul(size).is_none_or(|b| b > entry.len - start) {
            return Err(bad(format!(
                "it needs {span} elements from offset {} but its storage holds {}",
                t.offset,
                entry.len / size
            )));
        }
        let tensor = RawTensor::new(t.storage.dtype, t.shape.clone(), backing.clone(), entry.offset + start, Some(t.stride.clone()))
            .map_err(|e| WeightError::Format(format!("tensor `{key}`: {e}")))?;
        out.insert(key.to_string(), tensor);
    }
    Ok(out)
}

fn choose_dict(root: &Value, choice: DictChoice) -> Result<&Vec<(Value, Value)>, WeightError> {
    let order: &[&str] = match choice {
        DictChoice::PreferEma => &["ema_state_dict", "state_dict", "model"],
        DictChoice::Raw => &["state_dict", "model"],
    };
    let picked = order.iter().find_map(|k| root.get(k)).unwrap_or(root);
    match picked {
        Value::Dict(items) => Ok(items),
        other => Err(WeightError::Format(format!(
            "expected a state dict (a dict of tensors) in the pickle, found {}",
            kind(other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Tensor(_) => "a tensor",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        _ => "a plain value",
    }
}
