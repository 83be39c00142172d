//! Reconstruction through VGT-AE: image → latent → image, with its metrics (spec §1.2, §6.2).

use burn::tensor::{Device, Tensor, TensorData};

use crate::ae::{InputNorm, VgtAe};
use crate::config::VgtConfig;
use crate::image_io::Rgb8;
use crate::metrics::{psnr, ssim};
use crate::resize::{Filter, resize};
use crate::weights::apply::apply_component;
use crate::weights::source::LoadedModel;
use crate::weights::{TensorMap, WeightError};

/// The autoencoder on a device, ready to reconstruct.
pub struct Reconstructor {
    pub ae: VgtAe,
    pub config: VgtConfig,
    pub device: Device,
}

/// One reconstruction and its measurements.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    pub input: Rgb8,
    pub output: Rgb8,
    /// `[batch, channels, h, w]`
    pub latent_shape: [usize; 4],
    /// The latent values (row-major in `latent_shape`).
    pub latent: Vec<f32>,
    pub metrics: Metrics,
}

/// PSNR (dB) and SSIM on [0, 1] images; `reference_*` follow the reference evaluator (§6.2).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Metrics {
    pub psnr: f64,
    pub ssim: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_psnr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_ssim: Option<f64>,
}

impl Reconstructor {
    /// Loads only the `vgt_ae.*` tensors of a model onto `device`.
    pub fn new(model: &LoadedModel, device: &Device) -> Result<Self, WeightError> {
        Self::from_parts(&model.config, &model.tensors, device)
    }

    pub fn from_parts(config: &VgtConfig, tensors: &TensorMap, device: &Device) -> Result<Self, WeightError> {
        let stages = config.decoder.block_out_channels.len();
        let (ae, report) = apply_component(VgtAe::new(config, device), tensors, stages, "vgt_ae.")?;
        report.require_complete()?;
        Ok(Self { ae, config: config.clone(), device: device.clone() })
    }

    /// The native input size (448 for the released AE).
    pub fn native_size(&self) -> usize {
        self.config.native_size()
    }

    fn to_tensor(&self, img: &Rgb8) -> Tensor<4> {
        let (w, h) = (img.width as usize, img.height as usize);
        Tensor::from_data(TensorData::new(img.to_chw_signed(), [1, 3, h, w]), &self.device)
    }

    /// Encodes and decodes `input` (already at a size that is a multiple of the stride).
    pub fn reconstruct(&self, input: &Rgb8, reference_protocol: bool) -> Reconstruction {
        let x = self.to_tensor(input);
        let z = self.ae.encode(x.clone(), InputNorm::Always);
        let latent_shape = z.dims();
        let latent: Vec<f32> = z.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        let y = self.ae.decode(z);
        let [_, _, h, w] = y.dims();
        let values: Vec<f32> = y.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        let output = Rgb8::from_chw_signed(&values, w as u32, h as u32);
        let unit = |v: &[f32]| v.iter().map(|x| ((x + 1.0) / 2.0).clamp(0.0, 1.0)).collect::<Vec<f32>>();
        let want = unit(&input.to_chw_signed());
        let got = unit(&values);
        let mut metrics = Metrics {
            psnr: psnr(&got, &want, 1.0),
            ssim: ssim(&got, &want, 3, h, w, 1.0),
            reference_psnr: None,
            reference_ssim: None,
        };
        if reference_protocol {
            // Both resized to 256 (bilinear), the reconstruction clamped to [-1, 1]; SSIM with
            // data_range 2 on [0, 1] images, as the reference evaluator does.
            let a = resize(y.clamp(-1.0, 1.0), 256, 256, Filter::Bilinear);
            let b = resize(x, 256, 256, Filter::Bilinear);
            let to01 = |t: Tensor<4>| -> Vec<f32> {
                ((t + 1.0) / 2.0).into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
            };
            let (a, b) = (to01(a), to01(b));
            metrics.reference_psnr = Some(psnr(&a, &b, 1.0));
            metrics.reference_ssim = Some(ssim(&a, &b, 3, 256, 256, 2.0));
        }
        Reconstruction { input: input.clone(), output, latent_shape, latent, metrics }
    }
}
