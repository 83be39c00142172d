//! A safe subset of Python's unpickler, enough for `torch.save` checkpoints.
//!
//! Nothing in the pickle is ever executed. Only these globals are accepted: `collections.OrderedDict`,
//! the tensor-rebuild helpers of `torch._utils`, the typed storage classes (`torch.FloatStorage`,
//! ...), `torch.Size` and `_codecs.encode`. Any other global is refused with an error that names
//! it. This is the set `torch.load(weights_only=True)` allows for plain state dicts.

use super::{DType, WeightError};

/// A storage reference from a persistent id: `('storage', torch.XStorage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub dtype: DType,
    pub key: String,
}

/// A tensor view rebuilt by `torch._utils._rebuild_tensor_v2`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The Python values a checkpoint pickle may contain.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    /// The value under string key `key`, for dicts.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch.Size",
    "_codecs.encode",
];

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "torch.FloatStorage" | "torch.float32" => DType::F32,
        "torch.HalfStorage" | "torch.float16" => DType::F16,
        "torch.BFloat16Storage" | "torch.bfloat16" => DType::BF16,
        "torch.DoubleStorage" | "torch.float64" => DType::F64,
        "torch.LongStorage" | "torch.int64" => DType::I64,
        "torch.IntStorage" | "torch.int32" => DType::I32,
        "torch.ShortStorage" | "torch.int16" => DType::I16,
        "torch.CharStorage" | "torch.int8" => DType::I8,
        "torch.ByteStorage" | "torch.uint8" => DType::U8,
        "torch.BoolStorage" | "torch.bool" => DType::Bool,
        _ => return None,
    })
}

/// The deepest nesting of containers a checkpoint pickle may have (real ones nest about 5 deep).
/// Deeper values would overflow the stack when dropped or printed.
pub const MAX_DEPTH: u32 = 256;

/// What one unpickling may build, in bytes of values (nodes plus string and byte payloads,
/// counting every copy a memo reference makes): far above a real state dict's few megabytes,
/// far below the memory a "billion laughs" pickle asks for.
pub const MAX_VALUE_BYTES: u64 = 1 << 30;

/// The cost of one value node beyond its payload, in the units of [`MAX_VALUE_BYTES`]: its size
/// in memory, plus a little for the vector that holds it.
const NODE_BYTES: u64 = std::mem::size_of::<Value>() as u64 + 16;

/// A value on the machine's stack or in its memo, with its nesting depth and its size.
#[derive(Clone)]
struct Slot {
    value: Value,
    depth: u32,
    bytes: u64,
}

impl Slot {
    fn leaf(value: Value) -> Self {
        let payload = match &value {
            Value::Str(s) => s.len() as u64,
            Value::Bytes(b) => b.len() as u64,
            Value::Global(g) => g.len() as u64,
            Value::Storage(s) => s.key.len() as u64,
            Value::Tensor(t) => (t.storage.key.len() + 8 * (t.shape.len() + t.stride.len())) as u64,
            _ => 0,
        };
        Self { value, depth: 0, bytes: NODE_BYTES + payload }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u32, Slot>,
    /// Bytes of values built so far (every memo copy counted).
    built: u64,
}

fn err(pos: usize, msg: impl std::fmt::Display) -> WeightError {
    WeightError::Pickle(format!("{msg} (at byte {pos} of the pickle)"))
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WeightError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| err(self.pos, "the pickle is truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WeightError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WeightError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WeightError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String, WeightError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or_else(|| err(self.pos, "unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    /// Counts `bytes` more of built values against [`MAX_VALUE_BYTES`].
    fn charge(&mut self, bytes: u64) -> Result<(), WeightError> {
        self.built = self.built.saturating_add(bytes);
        if self.built > MAX_VALUE_BYTES {
            return Err(err(
                self.pos,
                format!("the pickle builds more than {} MiB of values (memo references repeated without end?)", MAX_VALUE_BYTES >> 20),
            ));
        }
        Ok(())
    }
    /// Pushes a value that holds no other value.
    fn push(&mut self, value: Value) -> Result<(), WeightError> {
        let slot = Slot::leaf(value);
        self.charge(slot.bytes)?;
        self.stack.push(slot);
        Ok(())
    }
    /// Pushes a copy of the top of the stack (DUP), its size counted before it is copied.
    fn dup(&mut self) -> Result<(), WeightError> {
        let bytes = self.stack.last().map(|s| s.bytes).ok_or_else(|| err(self.pos, "stack underflow"))?;
        self.charge(bytes)?;
        let v = self.stack.last().cloned().ok_or_else(|| err(self.pos, "stack underflow"))?;
        self.stack.push(v);
        Ok(())
    }
    /// A container of `items`, checked against [`MAX_DEPTH`].
    fn container(&mut self, items: Vec<Slot>, make: fn(Vec<Value>) -> Value) -> Result<Slot, WeightError> {
        let depth = 1 + items.iter().map(|s| s.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(err(self.pos, format!("values nested more than {MAX_DEPTH} deep")));
        }
        self.charge(NODE_BYTES)?;
        let bytes = items.iter().fold(NODE_BYTES, |b, s| b.saturating_add(s.bytes));
        Ok(Slot { value: make(items.into_iter().map(|s| s.value).collect()), depth, bytes })
    }
    fn pop(&mut self) -> Result<Slot, WeightError> {
        self.stack.pop().ok_or_else(|| err(self.pos, "stack underflow"))
    }
    fn pop_value(&mut self) -> Result<Value, WeightError> {
        Ok(self.pop()?.value)
    }
    fn pop_mark(&mut self) -> Result<Vec<Slot>, WeightError> {
        let at = self.stack.iter().rposition(|v| matches!(v.value, Value::Mark));
        let at = at.ok_or_else(|| err(self.pos, "MARK not found"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn str(&mut self, n: usize) -> Result<(), WeightError> {
        let b = self.take(n)?;
        self.push(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }
    fn global(&mut self, module: &str, name: &str) -> Result<Value, WeightError> {
        let full = format!("{module}.{name}");
        if ALLOWED_GLOBALS.contains(&full.as_str()) || storage_dtype(&full).is_some() {
            Ok(Value::Global(full))
        } else {
            Err(WeightError::ForbiddenGlobal(full))
        }
    }
    /// Pushes a copy of memo entry `key`, its size counted before it is copied.
    fn memo_get(&mut self, key: u32) -> Result<(), WeightError> {
        let bytes = self.memo.get(&key).map(|s| s.bytes).ok_or_else(|| err(self.pos, format!("memo {key} missing")))?;
        self.charge(bytes)?;
        let v = self.memo.get(&key).cloned().ok_or_else(|| err(self.pos, format!("memo {key} missing")))?;
        self.stack.push(v);
        Ok(())
    }
    /// Stores a copy of the top of the stack, its size counted before it is copied.
    fn memo_put(&mut self, key: u32) -> Result<(), WeightError> {
        let bytes = self.stack.last().map(|s| s.bytes).ok_or_else(|| err(self.pos, "stack underflow"))?;
        self.charge(bytes)?;
        let v = self.stack.last().cloned().ok_or_else(|| err(self.pos, "stack underflow"))?;
        self.memo.insert(key, v);
        Ok(())
    }
    /// Adds `items` to the container on top of the stack (`dict` pairs or `list` items).
    fn extend_top(&mut self, items: Vec<Slot>, dict: bool) -> Result<(), WeightError> {
        let pos = self.pos;
        let depth = 1 + items.iter().map(|s| s.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(err(pos, format!("values nested more than {MAX_DEPTH} deep")));
        }
        let added = items.iter().fold(0u64, |b, s| b.saturating_add(s.bytes));
        let top = self.stack.last_mut().ok_or_else(|| err(pos, "stack underflow"))?;
        match (&mut top.value, dict) {
            (Value::Dict(d), true) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k.value, v.value));
                }
            }
            (Value::List(l), false) => l.extend(items.into_iter().map(|s| s.value)),
            (other, true) => return Err(err(pos, format!("SETITEMS on {}", describe(other)))),
            (other, false) => return Err(err(pos, format!("APPENDS on {}", describe(other)))),
        }
        top.depth = top.depth.max(depth);
        top.bytes = top.bytes.saturating_add(added);
        Ok(())
    }
}

/// What a value is, for error messages (never the value itself, which may be huge).
fn describe(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a global",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Mark => "a MARK",
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

fn usize_list(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|x| int_of(x).and_then(|i| usize::try_from(i).ok())).collect()
        }
        _ => None,
    }
}

/// Applies an allowed callable to its arguments (REDUCE).
fn reduce(func: &str, args: Value, pos: usize) -> Result<Value, WeightError> {
    let args = match args {
        Value::Tuple(a) => a,
        other => return Err(err(pos, format!("REDUCE arguments are {}, not a tuple", describe(&other)))),
    };
    match func {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch.Size" => Ok(args.into_iter().next().unwrap_or(Value::Tuple(Vec::new()))),
        "_codecs.encode" => match args.first() {
            // Protocol 2 writes bytes as `_codecs.encode(latin1_str, 'latin1')`.
            Some(Value::Str(s)) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
            _ => Err(err(pos, "bad _codecs.encode arguments")),
        },
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let bad = || err(pos, "bad _rebuild_tensor arguments");
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => return Err(bad()),
            };
            let offset = args.get(1).and_then(int_of).and_then(|i| usize::try_from(i).ok()).ok_or_else(bad)?;
            let shape = args.get(2).and_then(usize_list).ok_or_else(bad)?;
            let stride = args.get(3).and_then(usize_list).ok_or_else(bad)?;
            Ok(Value::Tensor(TensorRef { storage, offset, shape, stride }))
        }
        "torch._utils._rebuild_parameter" => {
            args.into_iter().next().ok_or_else(|| err(pos, "bad _rebuild_parameter arguments"))
        }
        other => Err(err(pos, format!("`{other}` cannot be called"))),
    }
}

fn persistent_load(pid: Value, pos: usize) -> Result<Value, WeightError> {
    let items = match pid {
        Value::Tuple(items) => items,
        other => return Err(err(pos, format!("unsupported persistent id ({})", describe(&other)))),
    };
    match (items.first(), items.get(1), items.get(2)) {
        (Some(Value::Str(tag)), Some(Value::Global(class)), Some(key)) if tag == "storage" => {
            let dtype = storage_dtype(class).ok_or_else(|| err(pos, format!("unknown storage `{class}`")))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(err(pos, "bad storage key")),
            };
            Ok(Value::Storage(StorageRef { dtype, key }))
        }
        _ => Err(err(pos, "unsupported persistent id")),
    }
}

/// Unpickles `data`, refusing every global outside the allowed set, values nested deeper than
/// [`MAX_DEPTH`] and more than [`MAX_VALUE_BYTES`] of built values.
pub fn load(data: &[u8]) -> Result<Value, WeightError> {
    let mut m = Machine { data, pos: 0, stack: Vec::new(), memo: Default::default(), built: 0 };
    loop {
        let at = m.pos;
        let op = m.u8()?;
        match op {
            0x80 => {
                m.u8()?; // PROTO
            }
            0x95 => {
                m.take(8)?; // FRAME
            }
            b'.' => return m.pop_value(),
            b'(' => m.push(Value::Mark)?,
            b'}' => m.push(Value::Dict(Vec::new()))?,
            b']' => m.push(Value::List(Vec::new()))?,
            b')' => m.push(Value::Tuple(Vec::new()))?,
            b'N' => m.push(Value::None)?,
            0x88 => m.push(Value::Bool(true))?,
            0x89 => m.push(Value::Bool(false))?,
            b'J' => {
                let v = m.u32()? as i32 as i64;
                m.push(Value::Int(v))?
            }
            b'K' => {
                let v = m.u8()? as i64;
                m.push(Value::Int(v))?
            }
            b'M' => {
                let v = m.u16()? as i64;
                m.push(Value::Int(v))?
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = m.u8()? as usize;
                let b = m.take(n)?;
                if n > 8 {
                    return Err(err(at, "integer too large"));
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                m.push(Value::Int(v))?
            }
            b'G' => {
                let b = m.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                m.push(Value::Float(f64::from_be_bytes(a)))?
            }
            b'X' | b'T' => {
                let n = m.u32()? as usize;
                m.str(n)?
            }
            0x8c | b'U' => {
                let n = m.u8()? as usize;
                m.str(n)?
            }
            b'B' => {
                let n = m.u32()? as usize;
                let v = m.take(n)?.to_vec();
                m.push(Value::Bytes(v))?
            }
            b'C' => {
                let n = m.u8()? as usize;
                let v = m.take(n)?.to_vec();
                m.push(Value::Bytes(v))?
            }
            b't' => {
                let items = m.pop_mark()?;
                let t = m.container(items, Value::Tuple)?;
                m.stack.push(t)
            }
            0x85 | 0x86 | 0x87 => {
                let n = (op - 0x84) as usize;
                if m.stack.len() < n {
                    return Err(err(at, "stack underflow"));
                }
                let items = m.stack.split_off(m.stack.len() - n);
                let t = m.container(items, Value::Tuple)?;
                m.stack.push(t)
            }
            b'q' => {
                let k = m.u8()? as u32;
                m.memo_put(k)?
            }
            b'r' => {
                let k = m.u32()?;
                m.memo_put(k)?
            }
            0x94 => {
                let k = m.memo.len() as u32;
                m.memo_put(k)?
            }
            b'h' => {
                let k = m.u8()? as u32;
                m.memo_get(k)?
            }
            b'j' => {
                let k = m.u32()?;
                m.memo_get(k)?
            }
            b'c' => {
                let module = m.line()?;
                let name = m.line()?;
                let g = m.global(&module, &name)?;
                m.push(g)?
            }
            0x93 => {
                let name = m.pop_value()?;
                let module = m.pop_value()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        let g = m.global(&module, &name)?;
                        m.push(g)?
                    }
                    _ => return Err(err(at, "STACK_GLOBAL needs two strings")),
                }
            }
            b'R' | 0x81 => {
                // REDUCE, or NEWOBJ (cls.__new__(cls, *args)): only allowed callables and classes.
                let args = m.pop()?;
                let func = m.pop_value()?;
                match func {
                    Value::Global(f) => {
                        let (depth, bytes) = (args.depth, args.bytes);
                        let value = reduce(&f, args.value, at)?;
                        m.stack.push(Slot { value, depth, bytes })
                    }
                    other => return Err(err(at, format!("calling {}, which is not callable", describe(&other)))),
                }
            }
            b'b' => {
                // BUILD: object state (e.g. an OrderedDict's `_metadata`); not needed.
                m.pop()?;
            }
            b'Q' => {
                let pid = m.pop_value()?;
                let v = persistent_load(pid, at)?;
                m.push(v)?
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.extend_top(vec![k, v], true)?
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.extend_top(items, true)?
            }
            b'a' => {
                let v = m.pop()?;
                m.extend_top(vec![v], false)?
            }
            b'e' | 0x90 => {
                let items = m.pop_mark()?;
                m.extend_top(items, false)?
            }
            0x8f => m.push(Value::List(Vec::new()))?, // EMPTY_SET, kept as a list
            b'0' => {
                m.pop()?;
            }
            b'2' => m.dup()?,
            other => return Err(err(at, format!("unsupported pickle opcode 0x{other:02x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_dict() {
        // pickle.dumps({'a': 1, 'b': (2, 3.5)}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02K\x02G@\x0c\x00\x00\x00\x00\x00\x00\x86q\x03u.";
        let v = load(data).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Int(1)));
        assert_eq!(v.get("b"), Some(&Value::Tuple(vec![Value::Int(2), Value::Float(3.5)])));
    }

    #[test]
    fn refuses_a_foreign_global() {
        // pickle.dumps(os.system) style: GLOBAL 'os system'
        let data = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        match load(data) {
            Err(WeightError::ForbiddenGlobal(g)) => assert_eq!(g, "os.system"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00";
        assert!(matches!(load(data), Err(WeightError::Pickle(_))));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        // 10^6 nested lists: `]` then (`]` `a`)... would build a value whose drop overflows.
        let mut data = b"\x80\x02".to_vec();
        for _ in 0..1_000_000 {
            data.push(b']');
        }
        for _ in 0..999_999 {
            data.push(b'a');
        }
        data.push(b'.');
        let e = load(&data).unwrap_err().to_string();
        assert!(e.contains("nested more than 256 deep"), "{e}");
        // Tuples and dict values too.
        let mut data = b"\x80\x02".to_vec();
        for _ in 0..100_000 {
            data.push(b'(');
        }
        data.push(b'N');
        for _ in 0..100_000 {
            data.push(b't');
        }
        data.push(b'.');
        assert!(load(&data).unwrap_err().to_string().contains("nested"));
        let mut data = b"\x80\x02".to_vec();
        for _ in 0..100_000 {
            data.extend_from_slice(b"}K\x01");
        }
        data.push(b'N');
        for _ in 0..100_000 {
            data.push(b's');
        }
        data.push(b'.');
        assert!(load(&data).unwrap_err().to_string().contains("nested"));
        // 256 levels are still fine.
        let mut data = b"\x80\x02".to_vec();
        data.extend(std::iter::repeat_n(b']', 256));
        data.extend(std::iter::repeat_n(b'a', 255));
        data.push(b'.');
        assert!(load(&data).is_ok());
    }

    #[test]
    fn memo_reuse_cannot_build_unbounded_values() {
        // "Billion laughs": a list of ten copies of the memoised previous list, 40 times over.
        let mut data = b"\x80\x02]q\x00".to_vec();
        for i in 0u8..40 {
            data.extend_from_slice(b"](");
            for _ in 0..10 {
                data.extend_from_slice(&[b'h', i]);
            }
            data.extend_from_slice(&[b'e', b'q', i + 1]);
        }
        data.push(b'.');
        let e = load(&data).unwrap_err().to_string();
        assert!(e.contains("more than 1024 MiB of values"), "{e}");
    }

    #[test]
    fn long1_handles_negative_numbers() {
        // pickle.dumps(-300, protocol=2) == b'\x80\x02\x8a\x02\xd4\xfe.'
        assert_eq!(load(b"\x80\x02\x8a\x02\xd4\xfe.").unwrap(), Value::Int(-300));
    }
}
