//! safetensors files, single and sharded (`model.safetensors.index.json`).

use std::path::Path;

use super::{DType, RawTensor, TensorMap, WeightError, map_file};

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// Reads every tensor of one `.safetensors` file (memory-mapped; nothing is copied).
pub fn load(path: &Path) -> Result<TensorMap, WeightError> {
    let backing = map_file(path)?;
    read(&backing, path).map_err(|e| e.in_file(path))
}

/// [`load`] from bytes in memory (crafted inputs, fuzzing).
pub fn from_bytes(bytes: Vec<u8>) -> Result<TensorMap, WeightError> {
    read(&std::sync::Arc::new(super::Backing::Owned(bytes)), Path::new(""))
}

fn read(backing: &std::sync::Arc<super::Backing>, _path: &Path) -> Result<TensorMap, WeightError> {
    let bytes: &[u8] = backing;
    if bytes.len() < 8 {
        return Err(WeightError::Format("not a safetensors file: shorter than its 8-byte header length".into()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let header_end = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).filter(|&e| e <= bytes.len());
    let header_end = header_end.ok_or_else(|| {
        WeightError::Format(format!("not a safetensors file: header length {n} exceeds the file size {}", bytes.len()))
    })?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| WeightError::Format(format!("not a safetensors file: bad JSON header ({e})")))?;
    let mut out = TensorMap::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| WeightError::Format(format!("tensor `{name}`: {what} in the safetensors header"));
        let dtype_name = info.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("no dtype"))?;
        let dtype = dtype_of(dtype_name).ok_or_else(|| bad(&format!("unsupported dtype {dtype_name}")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok())).collect())
            .ok_or_else(|| bad("no shape"))?;
        let offsets: Vec<usize> = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok())).collect())
            .ok_or_else(|| bad("no data_offsets"))?;
        let [start, end] = offsets[..] else { return Err(bad("malformed data_offsets")) };
        let need = super::checked_numel(&shape).and_then(|n| n.checked_mul(dtype.size()));
        let need = need.ok_or_else(|| bad(&format!("shape {shape:?} has more bytes than this machine can address")))?;
        if end < start || end - start != need {
            return Err(WeightError::Format(format!(
                "tensor `{name}` of shape {shape:?} ({dtype_name}) should take {need} bytes, the header gives {}",
                end.saturating_sub(start)
            )));
        }
        let start = header_end.checked_add(start).ok_or_else(|| bad("data_offsets overflow"))?;
        let tensor = RawTensor::new(dtype, shape, backing.clone(), start, None)
            .map_err(|e| WeightError::Format(format!("tensor `{name}`: {e}")))?;
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

/// Reads a sharded checkpoint through its `*.safetensors.index.json`.
pub fn load_sharded(index: &Path) -> Result<TensorMap, WeightError> {
    let text = crate::fsutil::read_regular_string(index).map_err(|source| WeightError::Io { path: index.into(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightError::Format(format!("bad index JSON ({e})")).in_file(index))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        WeightError::Format("the index has no `weight_map` object".into()).in_file(index)
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards = Vec::new();
    for (key, v) in map {
        let shard = v.as_str().ok_or_else(|| WeightError::Format(format!("the index maps `{key}` to {v}, expected a file name")).in_file(index))?;
        check_shard_name(shard).map_err(|why| WeightError::Format(format!("the index maps `{key}` to the shard {shard:?}, which {why}")).in_file(index))?;
        shards.push(shard);
    }
    shards.sort_unstable();
    shards.dedup();
    let mut out = TensorMap::new();
    for shard in shards {
        out.extend(load(&dir.join(shard))?);
    }
    for key in map.keys() {
        if !out.contains_key(key) {
            return Err(WeightError::Format(format!("the index lists `{key}` but its shard lacks it")).in_file(index));
        }
    }
    Ok(out)
}

/// A shard must be a plain file name in the index's folder: nothing that leads elsewhere (a
/// separator of either kind, `..`, an absolute path, a drive) and nothing empty or hidden.
fn check_shard_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.contains('\0') {
        return Err("is empty or holds a NUL character");
    }
    if name.contains('/') || name.contains('\\') || name.contains(':') {
        return Err("is not a plain file name in the model folder (it has a path separator or a drive)");
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return Err("is not a plain file name in the model folder");
    }
    Ok(())
}

/// Writes `tensors` as one safetensors file, every float converted to `float_dtype`.
/// Writes to a temporary file and renames it, so a crash never leaves a half-written file.
pub fn save(
    path: &Path,
    tensors: &TensorMap,
    float_dtype: DType,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), WeightError> {
    let io = |source| WeightError::Write { path: path.to_path_buf(), source };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0usize;
    let mut plan = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = if t.dtype.is_float() { float_dtype } else { t.dtype };
        let len = t.numel() * dtype.size();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        plan.push((t, dtype));
        offset += len;
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap_or_default();
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    crate::fsutil::write_atomic(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for (t, dtype) in plan {
            let bytes = if t.dtype.is_float() { t.encode_float(dtype) } else { t.bytes().into_owned() };
            w.write_all(&bytes)?;
        }
        Ok(())
    })
    .map_err(io)
}
