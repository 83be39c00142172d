//! Tuning data: a folder of images with captions, and their latents cached on disk.
//!
//! Captions come from `NAME.txt` next to `NAME.png` (or `.jpg`, `.jpeg`, `.webp`), or from a
//! `captions.jsonl` in the folder (`{"file": "NAME.png", "caption": "…"}` per line; `.txt` files
//! win). An image without a caption gets the caption template with the trigger word.
//! Unreadable images are skipped and listed; a folder without a usable image is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::ae::{InputNorm, VgtAe};
use crate::image_io::{self, Rgb8};
use crate::weights::{DType, RawTensor, TensorMap, st};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// The caption template for images without one; `{trigger}` is replaced by the trigger word.
pub const DEFAULT_TEMPLATE: &str = "a photo of {trigger}";

/// One image and its caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub caption: String,
    /// Whether the caption came from the template.
    pub templated: bool,
}

/// The usable samples, what was skipped (path, reason), and what the user should know
/// (captions cut to [`MAX_CAPTION_BYTES`]).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    pub skipped: Vec<(PathBuf, String)>,
    pub warnings: Vec<String>,
}

/// The most of a caption that is kept: far more than the 256 tokens training reads
/// ([`super::run::MAX_TRAIN_TOKENS`]), so nothing a caption can say is lost, while a huge file
/// is never tokenised whole.
pub const MAX_CAPTION_BYTES: usize = 64 << 10;

/// `text` cut to [`MAX_CAPTION_BYTES`] at a character boundary and trimmed; when it was longer,
/// a warning names `from` and its size in bytes (`size`, or the text's own length).
fn bounded_caption(text: &str, from: &str, size: Option<u64>, warnings: &mut Vec<String>) -> String {
    if text.len() <= MAX_CAPTION_BYTES {
        return text.trim().to_string();
    }
    let mut end = MAX_CAPTION_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let size = size.unwrap_or(text.len() as u64);
    warnings.push(format!("the caption {from} is {size} bytes long; only its first {} KiB are used", MAX_CAPTION_BYTES >> 10));
    text[..end].trim().to_string()
}

/// A `.txt` caption, reading no more of the file than [`bounded_caption`] keeps (a leading
/// byte-order mark removed).
fn read_txt_caption(txt: &Path, warnings: &mut Vec<String>) -> Option<String> {
    use std::io::Read;
    let file = crate::fsutil::open_regular(txt).ok()?;
    let mut bytes = Vec::new();
    // A little more than the bound, so that a longer file is seen to be longer.
    file.take(MAX_CAPTION_BYTES as u64 + 4).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let size = std::fs::metadata(txt).map(|m| m.len()).ok();
    Some(bounded_caption(text, &txt.display().to_string(), size, warnings)).filter(|c| !c.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read the data folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: line {line}: {msg}")]
    Captions { path: PathBuf, line: usize, msg: String },
    #[error("no usable image in {dir} (looked for .png, .jpg, .jpeg, .webp){skipped}")]
    Empty { dir: PathBuf, skipped: String },
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads `captions.jsonl` (a leading byte-order mark is accepted), each caption cut to
/// [`MAX_CAPTION_BYTES`].
fn read_jsonl(path: &Path, warnings: &mut Vec<String>) -> Result<BTreeMap<String, String>, DataError> {
    let mut out = BTreeMap::new();
    if !crate::fsutil::exists(path).map_err(|source| DataError::Io { path: path.into(), source })? {
        return Ok(out);
    }
    let text = crate::fsutil::read_regular_string(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| DataError::Captions { path: path.into(), line: i + 1, msg };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON ({e})")))?;
        let file = v.get("file").or_else(|| v.get("file_name")).or_else(|| v.get("image")).and_then(|x| x.as_str());
        let caption = v.get("caption").or_else(|| v.get("text")).or_else(|| v.get("prompt")).and_then(|x| x.as_str());
        match (file, caption) {
            (Some(f), Some(c)) => {
                let caption = bounded_caption(c, &format!("of {f} in {} (line {})", path.display(), i + 1), None, warnings);
                out.insert(f.to_string(), caption);
            }
            _ => return Err(bad("expected an object with \"file\" and \"caption\"".into())),
        }
    }
    Ok(out)
}

/// Lists the images of `dir` (sorted by name) with their captions. Every image is decoded once
/// to check it; unreadable ones are skipped with their reason.
pub fn scan(dir: &Path, template: &str, trigger: &str) -> Result<Dataset, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.into(), source })?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && is_image(p)).collect();
    paths.sort();
    let mut warnings = Vec::new();
    let jsonl = read_jsonl(&dir.join("captions.jsonl"), &mut warnings)?;
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        if let Err(e) = image_io::read(&path) {
            skipped.push((path, e.to_string()));
            continue;
        }
        let txt = path.with_extension("txt");
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let from_txt = read_txt_caption(&txt, &mut warnings);
        let (caption, templated) = match from_txt.or_else(|| jsonl.get(&name).cloned().filter(|s| !s.is_empty())) {
            Some(c) => (c, false),
            None => (template.replace("{trigger}", trigger), true),
        };
        samples.push(Sample { path, caption, templated });
    }
    if samples.is_empty() {
        let skipped = if skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped: {}", skipped.iter().map(|(p, why)| format!("{} ({why})", p.display())).collect::<Vec<_>>().join(", "))
        };
        return Err(DataError::Empty { dir: dir.into(), skipped });
    }
    Ok(Dataset { samples, skipped, warnings })
}

/// The largest image file read whole (to key its cached latent): far above any photo that fits
/// [`image_io::MAX_PIXELS`].
pub const MAX_IMAGE_FILE_BYTES: u64 = 1 << 30;

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A fingerprint of the AE weights (names, shapes and the first and last 4 KiB of every
/// `vgt_ae.*` tensor) and the training size: cached latents made with another AE or size are
/// recomputed.
pub fn ae_fingerprint(tensors: &TensorMap, size: usize) -> u64 {
    let mut h = fnv1a(&(size as u64).to_le_bytes(), FNV_OFFSET);
    for (k, t) in tensors.iter().filter(|(k, _)| k.starts_with("vgt_ae.")) {
        h = fnv1a(k.as_bytes(), h);
        for d in &t.shape {
            h = fnv1a(&(*d as u64).to_le_bytes(), h);
        }
        let bytes = t.bytes();
        let n = bytes.len();
        h = fnv1a(&bytes[..n.min(4096)], h);
        h = fnv1a(&bytes[n.saturating_sub(4096)..], h);
    }
    h
}

/// The image as the model sees it during training: centre square, `size × size`, [-1, 1].
pub fn prepare(img: &Rgb8, size: usize) -> Vec<f32> {
    image_io::center_square(img, size as u32).to_chw_signed()
}

/// Latents of every sample, from the on-disk cache where the image bytes and the AE match,
/// computed with the frozen AE (eval mode) otherwise. The cache file is rewritten atomically
/// with exactly the current samples.
///
/// # Shapes
/// - returns one `[C, h, w]` tensor (as a `RawTensor`) per sample
pub fn cached_latents(
    samples: &[Sample],
    ae: &VgtAe,
    ae_print: u64,
    size: usize,
    cache: &Path,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<RawTensor>, crate::weights::WeightError> {
    let old = if cache.exists() { st::load(cache).unwrap_or_default() } else { TensorMap::new() };
    let mut out = Vec::with_capacity(samples.len());
    let mut fresh = TensorMap::new();
    for (i, s) in samples.iter().enumerate() {
        progress(i, samples.len());
        let bytes = crate::fsutil::read_bounded(&s.path, MAX_IMAGE_FILE_BYTES).map_err(|source| crate::weights::WeightError::Io { path: s.path.clone(), source })?;
        let key = format!("{:016x}", fnv1a(&bytes, ae_print));
        let z = match old.get(&key) {
            Some(t) => RawTensor::from_f32(t.shape.clone(), &t.to_f32()),
            None => {
                let img = image_io::read(&s.path).map_err(|e| crate::weights::WeightError::Format(e.to_string()))?;
                let x = Tensor::<4>::from_data(TensorData::new(prepare(&img, size), [1, 3, size, size]), device);
                let z = ae.encode(x, InputNorm::Always);
                let [_, c, h, w] = z.dims();
                let values = z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
                RawTensor::from_f32(vec![c, h, w], &values)
            }
        };
        fresh.insert(key, z.clone());
        out.push(z);
    }
    progress(samples.len(), samples.len());
    st::save(cache, &fresh, DType::F32, &BTreeMap::new())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caption in `captions.jsonl` longer than the bound is cut on a character boundary (here
    /// two-byte characters, so the bound falls inside one) and the warning names its line.
    #[test]
    fn a_long_jsonl_caption_is_cut_on_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/images/matplotlib_grace_hopper.jpg");
        std::fs::copy(photo, dir.path().join("a.jpg")).unwrap();
        let caption = format!("x{}", "é".repeat(MAX_CAPTION_BYTES));
        let line = serde_json::json!({"file": "a.jpg", "caption": caption});
        std::fs::write(dir.path().join("captions.jsonl"), format!("\u{feff}{line}\n")).unwrap();
        let set = scan(dir.path(), DEFAULT_TEMPLATE, "sks").unwrap();
        let kept = &set.samples[0].caption;
        assert_eq!(kept.len(), MAX_CAPTION_BYTES - 1, "1 + 2·k bytes, the largest at most the bound");
        assert!(kept.starts_with("xé") && !set.samples[0].templated);
        assert_eq!(set.warnings.len(), 1);
        assert!(set.warnings[0].contains("of a.jpg in") && set.warnings[0].contains("(line 1)"), "{:?}", set.warnings);
    }
}
