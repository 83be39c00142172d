//! Image files in and out: PNG, JPEG and WebP through the `image` crate, centre-cropped and
//! resized to the model's size, as `[3, S, S]` values in [-1, 1]; PNGs written atomically.

use std::path::{Path, PathBuf};

use image::{ImageReader, RgbImage, imageops::FilterType};

/// The largest image side we decode.
pub const MAX_SIDE: u32 = 16384;
/// The most pixels we decode (a 48-megapixel photo fits): what decoding, conversion to RGB and
/// the centre crop hold at once stays under about 1 GB. No format the `image` crate reads can
/// decode at a reduced size, so a larger image is refused with its size rather than decoded.
pub const MAX_PIXELS: u64 = 50_000_000;
/// The smallest image side we accept.
pub const MIN_SIDE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not an image we can read (PNG, JPEG or WebP): {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{} is {w}×{h} pixels, larger than the {MAX_SIDE}-pixel side this tool decodes", path.display())]
    TooLarge { path: PathBuf, w: u32, h: u32 },
    #[error("{} is {w}×{h} pixels ({:.0} megapixels), more than the {} megapixels this tool decodes; scale it down first", path.display(), (*w as f64) * (*h as f64) / 1e6, MAX_PIXELS / 1_000_000)]
    TooManyPixels { path: PathBuf, w: u32, h: u32 },
    #[error("{} is {w}×{h} pixels, smaller than the {MIN_SIDE}-pixel side an image needs", path.display())]
    TooSmall { path: PathBuf, w: u32, h: u32 },
    #[error("cannot write {}: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
}

/// A plain RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgb8 {
    fn from_image(img: RgbImage) -> Self {
        Self { width: img.width(), height: img.height(), pixels: img.into_raw() }
    }

    /// Channel-first values in [-1, 1] (`x/127.5 − 1`, i.e. ToTensor then Normalize(0.5, 0.5)).
    pub fn to_chw_signed(&self) -> Vec<f32> {
        let n = (self.width * self.height) as usize;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
        out
    }

    /// From channel-first values in [-1, 1], clamped, as the reconstruction demo does:
    /// `trunc(clamp((x+1)/2, 0, 1)·255)`.
    pub fn from_chw_signed(values: &[f32], width: u32, height: u32) -> Self {
        let n = (width * height) as usize;
        let mut pixels = vec![0u8; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                pixels[i * 3 + c] = (((values[c * n + i] + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
            }
        }
        Self { width, height, pixels }
    }

    /// Writes a PNG with `iTXt` chunks (e.g. the A1111-style `parameters`), atomically
    /// ([`crate::fsutil::write_atomic`]: a full disk leaves no file, and the error names it).
    pub fn save_png_with_text(&self, path: &Path, text: &[(&str, &str)]) -> Result<(), ImageError> {
        let err = |msg: String| ImageError::Write { path: path.to_path_buf(), msg };
        crate::fsutil::write_atomic(path, |w| {
            let mut enc = png::Encoder::new(w, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            for (k, v) in text {
                enc.add_itxt_chunk(k.to_string(), v.to_string()).map_err(std::io::Error::other)?;
            }
            let mut w = enc.write_header().map_err(std::io::Error::other)?;
            w.write_image_data(&self.pixels).map_err(std::io::Error::other)?;
            w.finish().map_err(std::io::Error::other)
        })
        .map_err(|e| err(crate::fsutil::describe_io(&e)))
    }

    /// Writes a PNG whole or not at all (see [`Rgb8::save_png_with_text`]).
    pub fn save_png(&self, path: &Path) -> Result<(), ImageError> {
        use image::ImageEncoder;
        let err = |msg: String| ImageError::Write { path: path.to_path_buf(), msg };
        if self.pixels.len() != 3 * self.width as usize * self.height as usize {
            return Err(err("bad buffer".into()));
        }
        crate::fsutil::write_atomic(path, |w| {
            image::codecs::png::PngEncoder::new(w)
                .write_image(&self.pixels, self.width, self.height, image::ExtendedColorType::Rgb8)
                .map_err(std::io::Error::other)
        })
        .map_err(|e| err(crate::fsutil::describe_io(&e)))
    }
}

/// The text chunks (`tEXt`, `zTXt`, `iTXt`) of a PNG file, as `(keyword, text)`.
pub fn png_text(path: &Path) -> Result<Vec<(String, String)>, ImageError> {
    let fmt = |msg: String| ImageError::Format { path: path.to_path_buf(), msg };
    let file = crate::fsutil::open_regular(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_ignore_text_chunk(false);
    let reader = decoder.read_info().map_err(|e| fmt(e.to_string()))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    Ok(out)
}

/// Reads an image, checking its size from the header before decoding anything.
pub fn read(path: &Path) -> Result<Rgb8, ImageError> {
    let fmt = |msg: String| ImageError::Format { path: path.to_path_buf(), msg };
    crate::fsutil::require_regular(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    let reader = ImageReader::open(path)
        .map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?
        .with_guessed_format()
        .map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    if reader.format().is_none() {
        return Err(fmt("unrecognised file format".into()));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| fmt(e.to_string()))?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(ImageError::TooLarge { path: path.to_path_buf(), w, h });
    }
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(ImageError::TooManyPixels { path: path.to_path_buf(), w, h });
    }
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(ImageError::TooSmall { path: path.to_path_buf(), w, h });
    }
    let mut reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    // The decoder enforces the same bounds (a header that lies about its size stops there).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| fmt(e.to_string()))?;
    // `into_rgb8` keeps an RGB image's buffer instead of copying it.
    Ok(Rgb8::from_image(img.into_rgb8()))
}

/// Centre-crops to a square (offsets rounded as torchvision's CenterCrop) and resizes to
/// `size × size` with a bicubic (Catmull-Rom) filter; a no-op when the size already matches.
pub fn center_square(img: &Rgb8, size: u32) -> Rgb8 {
    let side = img.width.min(img.height);
    let left = ((img.width - side) as f64 / 2.0).round() as usize;
    let top = ((img.height - side) as f64 / 2.0).round() as usize;
    // The crop copied row by row from the buffer (no copy of the whole image first).
    let (w, s) = (img.width as usize, side as usize);
    let mut crop = Vec::with_capacity(3 * s * s);
    for row in top..top + s {
        crop.extend_from_slice(&img.pixels[3 * (row * w + left)..3 * (row * w + left + s)]);
    }
    let cropped = RgbImage::from_raw(side, side, crop).expect("consistent buffer"); // invariant: side²·3 bytes
    let out = if side == size { cropped } else { image::imageops::resize(&cropped, size, size, FilterType::CatmullRom) };
    Rgb8::from_image(out)
}

/// Places images side by side on one canvas (all must share a height).
pub fn side_by_side(images: &[&Rgb8]) -> Rgb8 {
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let width: u32 = images.iter().map(|i| i.width).sum();
    let mut canvas = RgbImage::new(width, height);
    let mut x = 0;
    for img in images {
        let rgb = RgbImage::from_raw(img.width, img.height, img.pixels.clone()).expect("consistent buffer"); // invariant: Rgb8 holds w·h·3 bytes
        image::imageops::replace(&mut canvas, &rgb, x as i64, 0);
        x += img.width;
    }
    Rgb8::from_image(canvas)
}

/// A heat map of the per-pixel absolute error (mean over channels), scaled so that an error of
/// `max_err` (in [0, 1] units) is full red.
pub fn error_heatmap(a: &Rgb8, b: &Rgb8, max_err: f32) -> Rgb8 {
    let pixels = a
        .pixels
        .chunks_exact(3)
        .zip(b.pixels.chunks_exact(3))
        .flat_map(|(p, q)| {
            let e = p.iter().zip(q).map(|(x, y)| (*x as f32 - *y as f32).abs()).sum::<f32>() / (3.0 * 255.0);
            heat_color((e / max_err).clamp(0.0, 1.0))
        })
        .collect();
    Rgb8 { width: a.width, height: a.height, pixels }
}

/// The heat map's colour for `t` in [0, 1]: black → red (0.5) → yellow (1).
pub fn heat_color(t: f32) -> [u8; 3] {
    let r = (t * 2.0).min(1.0);
    let g = (t * 2.0 - 1.0).max(0.0);
    [(r * 255.0) as u8, (g * 255.0) as u8, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_round_trip_is_exact_for_8_bit_values() {
        let img = Rgb8 { width: 2, height: 1, pixels: vec![0, 128, 255, 10, 20, 30] };
        let v = img.to_chw_signed();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[4], 1.0);
        let back = Rgb8::from_chw_signed(&v, 2, 1).pixels;
        assert_eq!((back[0], back[2]), (0, 255));
        assert!(back[1] == 127 || back[1] == 128, "truncation loses at most one level: {}", back[1]);
    }
}
