//! A minimal, read-only ZIP reader for PyTorch checkpoints.
//!
//! `torch.save` writes an uncompressed ("stored") ZIP archive, ZIP64 when it is large. We only
//! need the central directory (names and where each entry's bytes start), so the entries can be
//! sliced straight out of a memory map. Compressed entries are refused with a clear error.

use super::WeightError;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// One archive member: its name and the byte range of its (uncompressed) data.
#[derive(Debug, Clone)]
pub struct ZipEntry {
    pub name: String,
    pub offset: usize,
    pub len: usize,
}

/// `b[at..at + n]`, `None` when it is out of bounds or `at + n` overflows (offsets come from the
/// file and may be anything).
fn slice(b: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(n)?)
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    slice(b, at, 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    slice(b, at, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    slice(b, at, 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn corrupt(what: impl Into<String>) -> WeightError {
    WeightError::Format(format!("not a valid PyTorch zip archive: {}", what.into()))
}

/// Lists the entries of a ZIP archive held in `bytes`.
pub fn read_entries(bytes: &[u8]) -> Result<Vec<ZipEntry>, WeightError> {
    let eocd = find_eocd(bytes).ok_or_else(|| corrupt("no end-of-central-directory record"))?;
    let mut count = u16_at(bytes, eocd + 10).unwrap_or(0) as u64;
    let mut cd_offset = u32_at(bytes, eocd + 16).unwrap_or(0) as u64;
    if (count == 0xFFFF || cd_offset == 0xFFFF_FFFF) && eocd >= 20 {
        // ZIP64: the locator sits just before the classic record.
        let loc = eocd - 20;
        if u32_at(bytes, loc) == Some(ZIP64_LOCATOR_SIG) {
            let z64 = u64_at(bytes, loc + 8).ok_or_else(|| corrupt("truncated zip64 locator"))?;
            let z64 = usize::try_from(z64).map_err(|_| corrupt("zip64 record offset"))?;
            if u32_at(bytes, z64) != Some(ZIP64_EOCD_SIG) {
                return Err(corrupt("bad zip64 end-of-central-directory record"));
            }
            count = z64.checked_add(32).and_then(|a| u64_at(bytes, a)).ok_or_else(|| corrupt("truncated zip64 record"))?;
            cd_offset = z64.checked_add(48).and_then(|a| u64_at(bytes, a)).ok_or_else(|| corrupt("truncated zip64 record"))?;
        }
    }
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut at = usize::try_from(cd_offset).map_err(|_| corrupt("central directory offset"))?;
    for _ in 0..count {
        let (entry, next) = read_central(bytes, at)?;
        entries.push(entry);
        at = next;
    }
    Ok(entries)
}

fn find_eocd(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 22 {
        return None;
    }
    let lowest = bytes.len().saturating_sub(22 + 65_535);
    (lowest..=bytes.len() - 22).rev().find(|&i| u32_at(bytes, i) == Some(EOCD_SIG))
}

fn read_central(bytes: &[u8], at: usize) -> Result<(ZipEntry, usize), WeightError> {
    let short = || corrupt("truncated central directory");
    let field = |off: usize| at.checked_add(off).ok_or_else(short);
    if u32_at(bytes, at) != Some(CENTRAL_SIG) {
        return Err(corrupt("bad central directory entry"));
    }
    let method = u16_at(bytes, field(10)?).ok_or_else(short)?;
    let mut comp = u32_at(bytes, field(20)?).ok_or_else(short)? as u64;
    let mut size = u32_at(bytes, field(24)?).ok_or_else(short)? as u64;
    let name_len = u16_at(bytes, field(28)?).ok_or_else(short)? as usize;
    let extra_len = u16_at(bytes, field(30)?).ok_or_else(short)? as usize;
    let comment_len = u16_at(bytes, field(32)?).ok_or_else(short)? as usize;
    let mut local = u32_at(bytes, field(42)?).ok_or_else(short)? as u64;
    let name_bytes = slice(bytes, field(46)?, name_len).ok_or_else(short)?;
    let name = String::from_utf8_lossy(name_bytes).into_owned();
    let extra = slice(bytes, field(46 + name_len)?, extra_len).ok_or_else(short)?;
    parse_zip64_extra(extra, &mut size, &mut comp, &mut local);
    if method != 0 || comp != size {
        return Err(WeightError::Format(format!(
            "zip entry `{name}` is compressed (method {method}); PyTorch writes stored entries"
        )));
    }
    let bad_local = || corrupt(format!("bad local header for `{name}`"));
    let local = usize::try_from(local).map_err(|_| bad_local())?;
    if u32_at(bytes, local) != Some(LOCAL_SIG) {
        return Err(bad_local());
    }
    let lname = local.checked_add(26).and_then(|a| u16_at(bytes, a)).ok_or_else(short)? as usize;
    let lextra = local.checked_add(28).and_then(|a| u16_at(bytes, a)).ok_or_else(short)? as usize;
    let offset = local.checked_add(30 + lname + lextra).ok_or_else(bad_local)?;
    let len = usize::try_from(size).map_err(|_| corrupt("entry size"))?;
    if offset.checked_add(len).is_none_or(|end| end > bytes.len()) {
        return Err(WeightError::Format(format!(
            "zip entry `{name}` runs past the end of the file (the file is truncated)"
        )));
    }
    let next = field(46 + name_len + extra_len + comment_len)?;
    Ok((ZipEntry { name, offset, len }, next))
}

/// Applies the ZIP64 extended-information extra field (id 1) to the 32-bit values that overflowed.
fn parse_zip64_extra(extra: &[u8], size: &mut u64, comp: &mut u64, local: &mut u64) {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let id = u16::from_le_bytes([extra[i], extra[i + 1]]);
        let len = u16::from_le_bytes([extra[i + 2], extra[i + 3]]) as usize;
        let body = &extra[(i + 4).min(extra.len())..(i + 4 + len).min(extra.len())];
        if id == 1 {
            let mut at = 0;
            for field in [&mut *size, &mut *comp, &mut *local] {
                if *field == 0xFFFF_FFFF {
                    if let Some(v) = u64_at(body, at) {
                        *field = v;
                    }
                    at += 8;
                }
            }
        }
        i += 4 + len;
    }
}
