//! The embedded shapes model (`assets/shapes`, trained by `vgt train-shapes`): compiled into the
//! binary, unpacked once into the user's cache folder, and the default model of every command
//! and of the app.

use std::path::PathBuf;

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
/// renamed into place, so a crash never leaves a half-written model).
pub fn path() -> anyhow::Result<PathBuf> {
    let dir = dir();
    if dir.join("model.safetensors").exists() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (name, bytes) in [("config.json", CONFIG), ("model.safetensors", MODEL), ("tokenizer.json", TOKENIZER)] {
        std::fs::write(tmp.join(name), bytes).with_context(|| format!("writing {}", tmp.join(name).display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another process may have unpacked it first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("model.safetensors").exists() {
            return Err(e).with_context(|| format!("moving the embedded model to {}", dir.display()));
        }
    }
    Ok(dir)
}

/// `--model` if given, else the embedded model.
pub fn or_default(model: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(p) => Ok(p),
        None => path(),
    }
}
