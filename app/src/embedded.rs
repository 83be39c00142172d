//! The embedded shapes model (`assets/shapes`, trained by `vgt train-shapes`): compiled into the
//! binary, unpacked once into the user's cache folder, and the default model of every command
//! and of the app.

use std::path::{Path, PathBuf};

use anyhow::Context;

const CONFIG: &[u8] = include_bytes!("../../assets/shapes/config.json");
const MODEL: &[u8] = include_bytes!("../../assets/shapes/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("../../assets/shapes/tokenizer.json");

fn fnv(bytes: &[&[u8]]) -> u64 {
    use vgt_model::train::data::{FNV_OFFSET, fnv1a};
    bytes.iter().fold(FNV_OFFSET, |h, b| fnv1a(b, h))
}

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir)
        .join("vgt-studio")
}

/// Where the embedded model is (or will be) unpacked; nothing is written.
pub fn dir() -> PathBuf {
    cache_root().join(format!("shapes-{:016x}", fnv(&[CONFIG, MODEL, TOKENIZER])))
}

/// The folder of the embedded model, unpacked on first use (atomically: a temporary folder
/// renamed into place, so a crash never leaves a half-written model). A failed unpack (a full
/// disk) removes its temporary folder; those of killed processes are cleared on the next one.
pub fn path() -> anyhow::Result<PathBuf> {
    let dir = dir();
    if dir.join("model.safetensors").exists() {
        return Ok(dir);
    }
    clear_stale_unpacks(&dir);
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let unpacked = unpack(&tmp);
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    unpacked?;
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another process may have unpacked it first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("model.safetensors").exists() {
            return Err(e).with_context(|| format!("moving the embedded model to {}", dir.display()));
        }
    }
    Ok(dir)
}

fn unpack(tmp: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (name, bytes) in [("config.json", CONFIG), ("model.safetensors", MODEL), ("tokenizer.json", TOKENIZER)] {
        let path = tmp.join(name);
        vgt_model::fsutil::write_bytes_atomic(&path, bytes).with_context(|| format!("cannot write {} (unpacking the embedded model)", path.display()))?;
    }
    Ok(())
}

/// Removes `shapes-*.partial-PID` folders left by unpacks that were killed (of this build's
/// model or an earlier one's): an unpack takes well under a second, so one untouched for
/// [`vgt_model::fsutil::STALE_PARTIAL`] is a leftover.
fn clear_stale_unpacks(dir: &Path) {
    let Some(root) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("shapes-") && name.contains(".partial-");
        if ours && e.metadata().is_ok_and(|m| vgt_model::fsutil::is_stale(&m)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `--model` if given, else the embedded model.
pub fn or_default(model: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(p) => Ok(p),
        None => path(),
    }
}
