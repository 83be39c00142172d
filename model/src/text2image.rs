//! Prompt in, images out: tokenizer, CFG batch, generation and decoding together.

use burn::tensor::{Device, Tensor};

use crate::ar::Vgt;
use crate::config::TokenIds;
use crate::generate::{GenerateError, GenerateOptions, Hooks, Rows, generate};
use crate::image_io::Rgb8;
use crate::prompt::{PromptError, PromptTokenizer, build_batch};
use crate::rng::PerImage;
use crate::weights::apply::{Storage, apply, apply_half};
use crate::weights::source::LoadedModel;
use crate::weights::WeightError;

#[derive(Debug, thiserror::Error)]
pub enum TextToImageError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("the model folder has no tokenizer.json")]
    NoTokenizer,
}

/// A loaded generator.
pub struct TextToImage {
    pub model: Vgt,
    pub tokenizer: PromptTokenizer,
    pub tokens: TokenIds,
    pub device: Device,
}

/// One request: a prompt, how many images, and the settings.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative: Option<String>,
    pub images: usize,
    pub seed: u64,
    pub options: GenerateOptions,
    /// The batch index of the first image: images `first_image .. first_image + images` of the
    /// batch of `seed` (each image has its own noise stream, `rng::PerImage`), so one image of
    /// a batch can be made again alone.
    pub first_image: usize,
}

impl TextToImage {
    pub fn new(loaded: &LoadedModel, device: &Device) -> Result<Self, TextToImageError> {
        Self::with_storage(loaded, device, Storage::F32)
    }

    /// [`TextToImage::new`] with a choice of weight storage (f16 matrices halve the memory).
    pub fn with_storage(loaded: &LoadedModel, device: &Device, storage: Storage) -> Result<Self, TextToImageError> {
        let c = &loaded.config;
        let path = loaded.tokenizer.as_ref().ok_or(TextToImageError::NoTokenizer)?;
        let (tokenizer, tokens) = PromptTokenizer::for_model(path, c)?;
        let stages = c.decoder.block_out_channels.len();
        let (model, report) = match storage {
            Storage::F32 => apply(Vgt::for_generation(c, device), &loaded.tensors, stages)?,
            Storage::HalfMatrices => apply_half(Vgt::for_generation(c, device), &loaded.tensors, stages)?,
        };
        report.require_complete()?;
        Ok(Self { model, tokenizer, tokens, device: device.clone() })
    }

    /// What building the prompt batch would change (truncations), for the user.
    pub fn prompt_warnings(&self, req: &Request) -> Result<Vec<String>, TextToImageError> {
        let batch = build_batch(&self.tokenizer, &[req.prompt.as_str()], req.negative.as_deref(), 1, req.options.cfg > 1.0, self.tokens.pad)?;
        Ok(batch.warnings)
    }

    /// Generates `req.images` images. `progress(done, total)` runs after every group and may
    /// return `false` to cancel.
    pub fn generate(
        &self,
        req: &Request,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Rgb8>, TextToImageError> {
        self.generate_with_preview(req, progress, None)
    }

    /// [`TextToImage::generate`] with a callback after every token group (live previews).
    pub fn generate_with_preview<'a>(
        &self,
        req: &Request,
        progress: &'a mut dyn FnMut(usize, usize) -> bool,
        on_group: Option<&'a mut dyn FnMut(crate::generate::GroupDone<'_>)>,
    ) -> Result<Vec<Rgb8>, TextToImageError> {
        let opts = &req.options;
        let cfg = opts.cfg > 1.0;
        let batch = build_batch(&self.tokenizer, &[req.prompt.as_str()], req.negative.as_deref(), req.images.max(1), cfg, self.tokens.pad)?;
        let mut rng = PerImage::new(req.seed, req.first_image, req.images.max(1));
        let rows = Rows { ids: &batch.ids, mask: &batch.mask, img_start: &self.tokens.img_start };
        let hooks = Hooks { progress, observe: None, profile: None, on_group };
        Ok(pictures(generate(&self.model, rows, opts, &mut rng, hooks)?))
    }
}

/// A batch of images in ≈[-1, 1] as RGB pictures (spec §2.10).
///
/// # Shapes
/// - images: `[batch, 3, h, w]`
pub fn pictures(images: Tensor<4>) -> Vec<Rgb8> {
    let [b, _, h, w] = images.dims();
    let values: Vec<f32> = images.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let per = 3 * h * w;
    (0..b).map(|i| to_pixels(&values[i * per..(i + 1) * per], w as u32, h as u32)).collect()
}

/// A picture of a latent grid: channels `0, 1, 2` as RGB, each scaled by `scale` around 0
/// (the latents are channel-normalised, so ±2.5 covers almost everything). Cells not yet
/// generated (`None`) are mid-grey.
pub fn latent_grid_picture(cells: &[Option<Vec<f32>>], h: usize, w: usize, scale: f32) -> Rgb8 {
    let mut pixels = vec![128u8; 3 * h * w];
    for (i, cell) in cells.iter().enumerate().take(h * w) {
        if let Some(z) = cell {
            for c in 0..3 {
                let v = z.get(c).copied().unwrap_or(0.0) / scale;
                pixels[i * 3 + c] = (127.5 * v + 128.0).clamp(0.0, 255.0) as u8;
            }
        }
    }
    Rgb8 { width: w as u32, height: h as u32, pixels }
}

/// `trunc(clamp(127.5·x + 128, 0, 255))` (spec §2.10), channel-first in, RGB out.
pub fn to_pixels(chw: &[f32], width: u32, height: u32) -> Rgb8 {
    let n = (width * height) as usize;
    let mut pixels = vec![0u8; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            pixels[i * 3 + c] = (127.5 * chw[c * n + i] + 128.0).clamp(0.0, 255.0) as u8;
        }
    }
    Rgb8 { width, height, pixels }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pixel_rule_truncates_after_the_offset() {
        // Channel-first [R: −1, 0 | G: 1, −0.999 | B: 0.5, 0.2]:
        // −1 → 0.5 → 0; 1 → 255.5 → 255; 0.5 → 191.75 → 191; 0 → 128; −0.999 → 0.6 → 0; 0.2 → 153.5 → 153.
        let px = super::to_pixels(&[-1.0, 0.0, 1.0, -0.999, 0.5, 0.2], 2, 1);
        assert_eq!(px.pixels, vec![0, 255, 191, 128, 0, 153]);
    }
}
