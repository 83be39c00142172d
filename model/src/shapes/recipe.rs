//! The recipe of the embedded shapes model (`vgt train-shapes`): a small VGT (InternViT-style
//! encoder with pixel shuffle and the latent head, DC-AE-style decoder, Qwen2-style LLM, flow
//! head), its deterministic initialisation, the AE training on rendered scenes, then the AR
//! training with flow matching on the frozen AE's latents. Everything is seeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::prompts::{Listing, training_example};
use super::{Color, GRID, Object, SIZE, Scene, Shape, Size, render};
use crate::ae::{InputNorm, VgtAe};
use crate::ar::Vgt;
use crate::config::*;
use crate::prompt::{PromptTokenizer, unconditional_text};
use crate::rng::Seeded;
use crate::train::lora::{Adapter, raw_of};
use crate::train::optim::{AdamW, AdamWConfig, Grads, Schedule};
use crate::train::{StepNoise, TIME_SHIFT, TrainBatch};
use crate::weights::apply::{PathStack, apply, module_tensors};
use crate::weights::{DType, TensorMap, st};

/// The shapes model's configuration (64 px images, 4×4 latent tokens of 16 channels: one token
/// per cell of the world's grid).
pub fn config(vocab_size: usize, tokens: TokenIds) -> VgtConfig {
    VgtConfig {
        llm: LlmConfig {
            vocab_size,
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            intermediate_size: 384,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            pad_attention: PadAttention::Eager,
        },
        vision: VisionConfig::InternVit(VitConfig {
            image_size: SIZE,
            patch_size: SIZE / GRID / 2,
            hidden_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 192,
            layer_norm_eps: 1e-6,
        }),
        latent: LatentHeadConfig { dv: 96, num_res_blocks: 2, latent_channels: 16, encoder_norm: true, scale_embedding: 1.0 },
        decoder: DecoderConfig {
            latent_channels: 16,
            // Five stages: ×16 from the 4×4 latent to 64 px.
            block_out_channels: vec![16, 32, 64, 128, 128],
            layers_per_block: vec![1, 1, 1, 1, 1],
            block_types: vec![BlockType::ResBlock; 5],
            qkv_multiscales: vec![vec![]; 5],
            attention_head_dim: 8,
        },
        flow_head: FlowHeadConfig { input_dim: 16, cond_dim: 128, dim: 128, layers: 3, frequency_embedding_size: 256 },
        amq_max_grid: GRID,
        tokens,
        prompt_echo: false,
        order: crate::scheduler::Order::Random,
    }
}

/// Settings of one run of the recipe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecipeOptions {
    pub seed: u64,
    pub ae_steps: usize,
    pub ae_batch: usize,
    pub ae_lr: f64,
    /// The AE stage's latent noise regulariser (spec §2.6 step 7): each latent plus Gaussian
    /// noise of a scale drawn from U(0, ae_noise); the reference's 0.1 by default.
    #[serde(default = "reference_noise")]
    pub ae_noise: f64,
    /// Weight of the AE stage's distillation loss: the mean squared distance of each cell's
    /// latent from its content's prototype (see `prototypes`; 0 before this setting existed).
    #[serde(default)]
    pub ae_distill: f64,
    pub ar_steps: usize,
    pub ar_batch: usize,
    pub ar_lr: f64,
    /// Distinct training scenes for the AR stage (their latents are computed once).
    pub ar_examples: usize,
    /// CFG dropout of the captions (spec §4.1.5).
    pub caption_dropout: f64,
    /// Last stage: decoder steps with the encoder frozen (the generator's latents keep their
    /// meaning), starting from the f16-rounded weights of the first two stages.
    #[serde(default)]
    pub decoder_steps: usize,
    #[serde(default)]
    pub decoder_lr: f64,
    /// The decoder stage's latent noise: each latent gets Gaussian noise of a scale drawn from
    /// U(0, decoder_noise), so that the decoder also draws clean shapes from the slightly-off
    /// latents a generator samples (0.1, the AE stage's value, before this setting existed).
    #[serde(default = "reference_noise")]
    pub decoder_noise: f64,
    /// Flow-head samples per latent token and generator step: (t, ε) pairs drawn for each
    /// condition of one LLM pass (1 before this setting existed, as in the reference).
    #[serde(default = "one")]
    pub head_repeats: usize,
    /// Momentum of the generator's exponential moving average (mmengine's form, `ema ← ema +
    /// m·(θ − ema)`, spec §4.1.4); the generator stage keeps the average. 0: no average, the
    /// final weights (as before this setting existed).
    #[serde(default)]
    pub ar_ema: f64,
    /// Generator step from which the average runs (it starts as a copy of that step's weights).
    #[serde(default)]
    pub ar_ema_from: usize,
    /// Steps of the LLM stage before the generator's: the LLM alone learns to answer
    /// [`super::prompts::questions`] about fresh captions (which colour goes with which shape,
    /// which object a relation puts where), batches of [`LLM_BATCH`] at `ar_lr`. 0: no such
    /// stage (as before this setting existed).
    #[serde(default)]
    pub llm_steps: usize,
    /// Weight of the generator stage's cell loss: a linear classifier, trained alongside and then
    /// dropped, reads what each object cell holds (shape × colour × size, [`CELL_CLASSES`]) from
    /// the condition the flow head gets, and its cross-entropy joins the flow loss. The flow
    /// loss barely rewards the first object drawn for taking the right colour (one cell of the
    /// sixteen depends on it), a cross-entropy does. 0.1 for the shipped model (colour
    /// attribution 0.33 → 0.76); 0: no such loss (as before this setting existed).
    #[serde(default)]
    pub ar_cell_loss: f64,
    /// Weight of the same classifier's cross-entropy over the empty cells (mean over the empty
    /// cells of the rows that kept their caption): it reads from each query whether its cell
    /// stays empty given the prompt and the cells drawn before it, which is where a relation
    /// ("above") or a count puts its objects. 0: object cells only (as before this setting
    /// existed, and by default: at 0.1 it drew single objects better, 0.97 against 0.92, but colour
    /// attribution fell to 0.32 and position did not improve; README).
    #[serde(default)]
    pub ar_empty_loss: f64,
    /// Standard deviation of the position grid's initialisation (`grid_embed`, `P`: what a
    /// drawn latent token carries of its cell; spec §3.5 gives 0.02). 0.02 left the shipped
    /// model's drawn tokens with almost no position (learned rows of norm 0.5 and pairwise
    /// cosine 0.6–0.77, next to the projected latent's 2.5), so a relation ("above") has
    /// nothing to compare; 1/√D (the metaquery grid's) gives every cell its own direction.
    /// Tried at 0.0884: the drawn tokens then carry their cell (per-cell part 0.64), but
    /// position stayed at chance (0.27) and the whole at 0.725 against 0.757, so 0.02 stays.
    #[serde(default = "pos_std")]
    pub pos_std: f64,
    /// The model reads every prompt twice ([`crate::prompt::echoed`]; the model folder's
    /// config says so, and generation does the same). Tried in a random order: the relation
    /// stayed unread (`relation_reading` at chance through step 3000).
    #[serde(default)]
    pub prompt_echo: bool,
    /// Weight of the same classifier's cross-entropy over every cell (object or empty) of the
    /// rows whose caption states a relation ("A above B"): where the first object is drawn says
    /// which of the two it is, and where the first one is says where the second may go. The
    /// cell and empty-cell losses average over all captions, in which such cells are a few
    /// percent, so that their gradient barely reaches the reading of the relation. Tried at
    /// 0.3 in a random order: the relation stayed unread through step 3500. 0: no such loss
    /// (as before this setting existed).
    #[serde(default)]
    pub ar_relation_loss: f64,
    /// Initialise both position grids (the metaquery grid `Q` and the drawn tokens' `P`,
    /// spec §3.5) with a 2-D sine-cosine code of the cell's row and column (at the random
    /// grids' norms) instead of random directions: the row and the column are then features
    /// from the first step. A relation ("A above B") needs the row of a cell times the
    /// relation of the caption; from random grids both factors start near zero, and so does
    /// the gradient of their product. Tried in a random order: the relation stayed unread
    /// through step 4000. false: random grids (as before this setting existed).
    #[serde(default)]
    pub sincos_grids: bool,
    /// The order the generator stage draws the latent tokens in: random (VGT's, spec §4.1.2)
    /// or raster (`sequential`, row by row; the model's config records it and generation
    /// defaults to it). In raster order the first object drawn for "A above B" is A whatever
    /// the cells, so the relation becomes a reading of the prompt alone, and a cell's
    /// neighbours sit at fixed distances in the sequence, which the LLM's rotary positions
    /// express; in a random order only the learned grids tell cells apart, and the models
    /// trained so never learned to use them (README). Sequential for the shipped model;
    /// random when absent (before this setting existed).
    #[serde(default)]
    pub ar_order: crate::scheduler::Order,
    /// The order in which the training captions that list objects without relating them
    /// ("A and B", "A, B and C") name them. In raster order the first object drawn for
    /// "a red circle and a blue square" was either of the two: the raster model trained with
    /// `any` drew the colours swapped (30 of 100 colour-attribution prompts) or colours the
    /// prompt does not name (25). Listed in reading order, the first object named is the first
    /// one drawn, and the same run otherwise got colour attribution 1.00 (from 0.36). Reading
    /// for the shipped model; any when absent (before this setting existed).
    #[serde(default)]
    pub listing: Listing,
}

/// The spec's standard deviation of the position grid (§3.5).
pub const POS_STD: f64 = 0.02;

fn pos_std() -> f64 {
    POS_STD
}

/// Questions per step of the LLM stage.
pub const LLM_BATCH: usize = 32;

fn one() -> usize {
    1
}

/// The noise settings' value before they existed.
fn reference_noise() -> f64 {
    AE_NOISE
}

/// The reference's latent noise regulariser maximum (spec §2.6 step 7, stage 2).
const AE_NOISE: f64 = 0.1;

impl Default for RecipeOptions {
    /// The settings `assets/shapes` was trained with (`assets/shapes/train.log` has the timings).
    fn default() -> Self {
        Self {
            seed: 0,
            ae_steps: 800,
            ae_batch: 8,
            ae_lr: 2e-3,
            ae_noise: AE_NOISE,
            ae_distill: 0.1,
            ar_steps: 11000,
            ar_batch: 16,
            ar_lr: 1e-3,
            ar_examples: 20000,
            caption_dropout: 0.1,
            decoder_steps: 600,
            decoder_lr: 1e-3,
            decoder_noise: AE_NOISE,
            head_repeats: 4,
            ar_ema: 0.001,
            ar_ema_from: 6000,
            llm_steps: 0,
            ar_cell_loss: 0.1,
            ar_empty_loss: 0.0,
            pos_std: POS_STD,
            prompt_echo: false,
            ar_relation_loss: 0.0,
            sincos_grids: false,
            ar_order: crate::scheduler::Order::Sequential,
            listing: Listing::Reading,
        }
    }
}

/// Progress of the recipe.
#[derive(Debug, Clone)]
pub enum RecipeEvent {
    Stage(String),
    /// `seconds` since this process started the stage at step `from` (later than 0 on resume).
    Step { stage: &'static str, step: usize, from: usize, total: usize, loss: f64, seconds: f64 },
}

/// Deterministic initialisation (spec §3.5, §3.6, §4.1.4 where they say; PyTorch-style
/// defaults elsewhere), one generator per parameter path.
struct Init {
    stack: PathStack,
    seed: u64,
    grids: GridInit,
}

/// How the two position grids start ([`RecipeOptions::pos_std`], [`RecipeOptions::sincos_grids`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridInit {
    /// Standard deviation of the drawn tokens' grid (`adaptive_metaquery.pos_encoding.grid_embed`),
    /// or with `sincos` its vectors' norm over √D.
    pub pos_std: f64,
    pub sincos: bool,
}

impl Default for GridInit {
    fn default() -> Self {
        Self { pos_std: POS_STD, sincos: false }
    }
}

impl GridInit {
    pub fn of(o: &RecipeOptions) -> Self {
        Self { pos_std: o.pos_std, sincos: o.sincos_grids }
    }
}

/// A `[1, D, G, G]` grid whose cell `(row, col)` holds a 2-D sine-cosine code (MAE's: the
/// first half of the channels codes the row, the second the column, each as `sin`, `cos` of
/// `pos·ω_k`, `ω_k = 10000^(−k/(D/4))`), scaled so that every cell's vector has norm `norm`.
fn sincos_grid(d: usize, g: usize, norm: f32) -> Vec<f32> {
    let quarter = d / 4;
    let scale = norm / ((2 * quarter) as f32).sqrt();
    let mut out = vec![0f32; d * g * g];
    for row in 0..g {
        for col in 0..g {
            for (half, pos) in [(0, row), (1, col)] {
                for k in 0..quarter {
                    let w = 10000f32.powf(-(k as f32) / quarter as f32);
                    let a = pos as f32 * w;
                    let base = half * 2 * quarter;
                    out[((base + k) * g + row) * g + col] = a.sin() * scale;
                    out[((base + quarter + k) * g + row) * g + col] = a.cos() * scale;
                }
            }
        }
    }
    out
}

fn path_seed(seed: u64, path: &str) -> u64 {
    crate::train::data::fnv1a(path.as_bytes(), seed ^ crate::train::data::FNV_OFFSET)
}

impl ModuleMapper for Init {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let linear = self.stack.is_linear_weight();
        let shape = param.lazy_shape();
        let device = param.lazy_device();
        let n = shape.num_elements();
        let mut rng = Seeded::new(path_seed(self.seed, &path));
        let normal = |rng: &mut Seeded, std: f32| (0..n).map(|_| rng.standard_normal() * std).collect::<Vec<f32>>();
        let uniform = |rng: &mut Seeded, b: f32| (0..n).map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * b).collect::<Vec<f32>>();
        let dims: Vec<usize> = shape.dims::<D>().to_vec();
        let last = path.rsplit('.').next().unwrap_or("");
        let std = if path == "adaptive_metaquery.max_metaquery" { 1.0 / (dims[1] as f32).sqrt() } else { self.grids.pos_std as f32 };
        let values: Vec<f32> = if path.starts_with("adaptive_metaquery.") && self.grids.sincos {
            // Norm of a random row: std·√D.
            sincos_grid(dims[1], dims[2], std * (dims[1] as f32).sqrt())
        } else if path.starts_with("adaptive_metaquery.") {
            normal(&mut rng, std)
        } else if linear && path.starts_with("image_head.") {
            if path.contains("adaLN_modulation") || path.contains("final_layer.linear") {
                vec![0.0; n]
            } else if path.contains("time_embed") {
                normal(&mut rng, 0.02)
            } else {
                // Burn stores [in, out]: xavier bound sqrt(6 / (in + out)).
                uniform(&mut rng, (6.0f32 / (dims[0] + dims[1]) as f32).sqrt())
            }
        } else if linear {
            normal(&mut rng, 0.02)
        } else if D == 4 && path.ends_with("weight") {
            let fan_in = dims[1] * dims[2] * dims[3];
            uniform(&mut rng, 1.0 / (fan_in as f32).sqrt())
        } else if last == "ls1" || last == "ls2" {
            vec![0.1; n]
        } else if D == 1 && (last == "weight") {
            vec![1.0; n]
        } else if D == 1 {
            vec![0.0; n]
        } else {
            // Embeddings, class and position embeddings.
            normal(&mut rng, 0.02)
        };
        let (id, _, mapper) = param.consume();
        let t = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
        let t = if device.is_autodiff() { t.require_grad() } else { t };
        Param::from_mapped_value(id, t, mapper)
    }
}

/// A freshly initialised shapes model (every parameter drawn from `seed`).
pub fn init_model(c: &VgtConfig, seed: u64, grids: GridInit, device: &Device) -> Vgt {
    Vgt::new(c, device).map(&mut Init { stack: PathStack::default(), seed, grids })
}

/// `n` rendered training scenes (every shape) and the scenes themselves.
fn image_batch(rng: &mut Seeded, n: usize, device: &Device) -> (Tensor<4>, Vec<Scene>) {
    let mut values = Vec::with_capacity(n * 3 * SIZE * SIZE);
    let mut scenes = Vec::with_capacity(n);
    for _ in 0..n {
        let (scene, _) = training_example(rng, &Shape::ALL, Listing::Any);
        values.extend(render(&scene).to_chw_signed());
        scenes.push(scene);
    }
    (Tensor::from_data(TensorData::new(values, [n, 3, SIZE, SIZE]), device), scenes)
}

/// What a cell of the grid holds: 0 for nothing, else one of shape × colour × size.
fn cell_class(o: &Object) -> usize {
    let shape = Shape::ALL.iter().position(|&s| s == o.shape).unwrap_or(0);
    let colour = Color::ALL.iter().position(|&c| c == o.color).unwrap_or(0);
    1 + (shape * Color::ALL.len() + colour) * 2 + usize::from(o.size == Size::Large)
}

/// The distillation targets of the AE stage, one per cell content, normalised over the
/// channels like the encoder's latents: the empty cell has its own random vector, and an
/// object's is the sum of fixed random vectors for its shape, its colour and its size, so that
/// "red" or "large" is one direction for every shape (held-out shapes included). This world has
/// no pretrained vision encoder to distil from (spec §4.2 distils from the VLM's own ViT); this
/// table stands in for one: it gives every object type its own latent, well apart from the rest.
fn prototypes(seed: u64, channels: usize) -> Vec<Vec<f32>> {
    let mut rng = Seeded::new(seed ^ 0x9207_0000);
    let mut draw = |n: usize| -> Vec<Vec<f32>> { (0..n).map(|_| (0..channels).map(|_| rng.standard_normal()).collect()).collect() };
    let (empty, shapes, colours, sizes) = (draw(1), draw(Shape::ALL.len()), draw(Color::ALL.len()), draw(2));
    let normalise = |v: Vec<f32>| -> Vec<f32> {
        let mean = v.iter().sum::<f32>() / channels as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / channels as f32;
        v.iter().map(|x| (x - mean) / (var + 1e-6).sqrt()).collect()
    };
    let mut out = vec![normalise(empty[0].clone())];
    for shape in &shapes {
        for colour in &colours {
            for size in &sizes {
                out.push(normalise((0..channels).map(|k| shape[k] + colour[k] + size[k]).collect()));
            }
        }
    }
    out
}

/// The number of [`cell_class`]es: the empty cell and every shape × colour × size.
pub const CELL_CLASSES: usize = 1 + Shape::ALL.len() * Color::ALL.len() * 2;

/// The class of every cell of a scene, row-major (the latent tokens' order).
fn cell_classes(scene: &Scene) -> [usize; GRID * GRID] {
    let mut class = [0usize; GRID * GRID];
    for o in &scene.objects {
        class[o.cell()] = cell_class(o);
    }
    class
}

/// `[B, C, GRID, GRID]`: each cell's prototype.
fn prototype_grid(scenes: &[Scene], protos: &[Vec<f32>], device: &Device) -> Tensor<4> {
    let c = protos[0].len();
    let mut values = vec![0f32; scenes.len() * c * GRID * GRID];
    for (b, scene) in scenes.iter().enumerate() {
        for (cell, &k) in cell_classes(scene).iter().enumerate() {
            for ch in 0..c {
                values[(b * c + ch) * GRID * GRID + cell] = protos[k][ch];
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [scenes.len(), c, GRID, GRID]), device)
}

/// The mean squared error (in [0, 1] units) of decoding `z` with the latent noise regulariser
/// of spec §2.6 step 7: each latent plus Gaussian noise of a scale drawn from U(0, max_noise).
fn reconstruction_loss(ae: &VgtAe, z: Tensor<4>, x: Tensor<4>, max_noise: f64, rng: &mut Seeded) -> Tensor<1> {
    let device = z.device();
    let [b, c, h, w] = z.dims();
    let alpha: Vec<f32> = (0..b).map(|_| (rng.uniform() * max_noise) as f32).collect();
    let eps: Vec<f32> = (0..b * c * h * w).map(|_| rng.standard_normal()).collect();
    let alpha = Tensor::<4>::from_data(TensorData::new(alpha, [b, 1, 1, 1]), &device);
    let eps = Tensor::<4>::from_data(TensorData::new(eps, [b, c, h, w]), &device);
    let y = ae.decode(z + eps * alpha);
    (y - x).div_scalar(2.0).powi_scalar(2).mean()
}

/// Trains the AE (encoder, latent head and decoder) on rendered scenes of every shape with the
/// reconstruction loss, the latent noise regulariser of spec §2.6 step 7 (max `ae_noise`) and
/// the prototype distillation (weight `ae_distill`).
pub fn train_ae(ae: VgtAe, o: &RecipeOptions, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> VgtAe {
    let device = ae.decoder.conv_in.weight.val().device();
    let stage = Stage { name: "ae", steps: o.ae_steps, lr: o.ae_lr, warmup: 100, salt: 0xae00_0000, max_noise: o.ae_noise };
    let protos = prototypes(o.seed, ae.decoder.conv_in.weight.val().dims()[1]);
    fit_reconstruction(ae, &stage, o, events, cancel, &|ae, rng| {
        let (x, scenes) = image_batch(rng, o.ae_batch, &device);
        let z = ae.encode(x.clone(), InputNorm::Always);
        let distill = (o.ae_distill > 0.0).then(|| (z.clone() - prototype_grid(&scenes, &protos, &device)).powi_scalar(2).mean().mul_scalar(o.ae_distill as f32));
        (z, x, distill)
    })
}

/// Fine-tunes the decoder of a trained AE with its encoder frozen: the reconstruction loss of
/// [`train_ae`] on decodes of the frozen encoder's noised latents.
pub fn train_decoder(ae: VgtAe, o: &RecipeOptions, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> VgtAe {
    let device = ae.decoder.conv_in.weight.val().device();
    let inner = device.clone().without_autodiff();
    let encoder = ae.clone().valid();
    let VgtAe { enc, decoder, stride, scale_embedding, encoder_norm, exact_imagenet_constants, family } = ae;
    let dec = VgtAe { enc: None, decoder: decoder.unfreeze(), stride, scale_embedding, encoder_norm, exact_imagenet_constants, family };
    let stage = Stage { name: "decoder", steps: o.decoder_steps, lr: o.decoder_lr, warmup: 50, salt: 0xdec0_0000, max_noise: o.decoder_noise };
    let dec = fit_reconstruction(dec, &stage, o, events, cancel, &|_, rng| {
        let (x, _) = image_batch(rng, o.ae_batch, &inner);
        let z = Tensor::<4>::from_data(encoder.encode(x.clone(), InputNorm::Always).into_data(), &device);
        (z, Tensor::<4>::from_data(x.into_data(), &device), None)
    });
    VgtAe { enc, ..dec }
}

/// One reconstruction stage of the recipe: its steps, peak learning rate, warmup, the salt of
/// its per-step generators and the largest latent noise scale.
struct Stage {
    name: &'static str,
    steps: usize,
    lr: f64,
    warmup: usize,
    salt: u64,
    max_noise: f64,
}

/// The AdamW loop of the reconstruction stages: `batch` gives the latents and the target images
/// of a step (from the module being trained, or not) and any other loss term, then
/// [`reconstruction_loss`] is added.
fn fit_reconstruction(
    ae: VgtAe,
    stage: &Stage,
    o: &RecipeOptions,
    events: &mut dyn FnMut(RecipeEvent),
    cancel: &dyn Fn() -> bool,
    batch: &dyn Fn(&VgtAe, &mut Seeded) -> (Tensor<4>, Tensor<4>, Option<Tensor<1>>),
) -> VgtAe {
    let mut ae = ae;
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 1e-4, ..Default::default() });
    let sched = Schedule { lr: stage.lr, min_lr: stage.lr * 0.05, warmup: stage.warmup.min(stage.steps), warmup_factor: 0.01, total: stage.steps };
    let start = Instant::now();
    for step in 0..stage.steps {
        if cancel() {
            break;
        }
        let mut rng = Seeded::new(o.seed ^ stage.salt ^ step as u64);
        let (z, x, extra) = batch(&ae, &mut rng);
        let loss = reconstruction_loss(&ae, z, x, stage.max_noise, &mut rng);
        let loss = match extra {
            Some(e) => loss + e,
            None => loss,
        };
        let grads = loss.backward();
        let value: f32 = loss.inner().into_scalar();
        let g = Grads::collect(&ae, &grads, 1.0);
        ae = opt.update(ae, g, sched.lr_at(step)).0;
        if step % 10 == 0 || step + 1 == stage.steps {
            events(RecipeEvent::Step { stage: stage.name, step: step + 1, from: 0, total: stage.steps, loss: value as f64, seconds: start.elapsed().as_secs_f64() });
        }
    }
    ae
}

/// One AR training example: the ids of its caption in the instruction template, and the latent
/// `[C, h, w]`.
pub struct Example {
    pub ids: Vec<u32>,
    pub latent: Vec<f32>,
    /// Whether the caption states a relation between its two objects.
    pub relation: bool,
    /// What each latent token's cell holds ([`cell_class`], row-major).
    pub cells: [usize; GRID * GRID],
}

/// Renders `n` training scenes (train shapes only) and encodes them with the frozen AE.
pub fn ar_examples(ae: &VgtAe, tok: &PromptTokenizer, o: &RecipeOptions, device: &Device) -> Result<Vec<Example>, String> {
    let mut rng = Seeded::new(o.seed ^ 0xa700_0000);
    let mut out = Vec::with_capacity(o.ar_examples);
    let chunk = 64;
    while out.len() < o.ar_examples {
        let k = chunk.min(o.ar_examples - out.len());
        let mut pixels = Vec::with_capacity(k * 3 * SIZE * SIZE);
        let mut captions = Vec::with_capacity(k);
        for _ in 0..k {
            let (scene, caption) = training_example(&mut rng, &Shape::TRAIN, o.listing);
            pixels.extend(render(&scene).to_chw_signed());
            captions.push((caption, cell_classes(&scene)));
        }
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [k, 3, SIZE, SIZE]), device);
        let z = ae.encode(x, InputNorm::Always);
        let per = z.dims()[1] * z.dims()[2] * z.dims()[3];
        let values = z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        for (i, (caption, cells)) in captions.into_iter().enumerate() {
            let ids = tok.encode(&tok.conditional(&caption)).map_err(|e| e.to_string())?;
            let relation = super::prompts::Relation::stated(&caption).is_some();
            out.push(Example { ids, latent: values[i * per..(i + 1) * per].to_vec(), relation, cells });
        }
    }
    Ok(out)
}

/// Where an interrupted generator stage continues: its step, the optimiser state, the weight
/// average (empty before the average starts) and the cell loss's classifier with its optimiser
/// state (empty without the cell loss).
pub struct Resume {
    pub step: usize,
    pub optim: TensorMap,
    pub ema: TensorMap,
    pub cells: TensorMap,
}

/// The cell loss's classifier in a checkpoint (`weight`, `bias`, `optim.*` under this prefix).
const CELLS_PREFIX: &str = "cells.";

/// The entries of `map` under `prefix`, without it.
fn entries_under(map: &TensorMap, prefix: &str) -> TensorMap {
    map.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect()
}

/// The classifier (`weight`, `bias`) and its optimiser state (`optim.*`) as checkpoint entries.
fn cells_tensors(head: &burn::nn::Linear, opt: &AdamW) -> TensorMap {
    let mut out: TensorMap = opt.state_tensors().into_iter().map(|(k, v)| (format!("optim.{k}"), v)).collect();
    out.insert("weight".into(), raw_of(head.weight.val(), false));
    if let Some(b) = &head.bias {
        out.insert("bias".into(), raw_of(b.val().unsqueeze::<2>(), false));
    }
    out
}

/// A fresh classifier for the cell loss (all zeros: every class equally likely, and no
/// randomness), or the checkpointed one (`saved` from [`cells_tensors`]; empty: fresh) with its
/// optimiser state at `step`.
fn cells_head(d: usize, saved: &TensorMap, step: usize, device: &Device) -> Result<(burn::nn::Linear, AdamW), String> {
    let mut head = crate::nn::linear(d, CELL_CLASSES, true, device);
    // (A new tensor does not inherit the tracking of gradients: keep the parameter's.)
    head.weight = head.weight.map(|t| t.zeros_like().set_require_grad(t.is_require_grad()));
    head.bias = head.bias.map(|p| p.map(|t| t.zeros_like().set_require_grad(t.is_require_grad())));
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() });
    if saved.is_empty() {
        return Ok((head, opt));
    }
    let (w, b) = (saved.get("weight"), saved.get("bias"));
    let (Some(w), Some(b)) = (w, b) else { return Err("the checkpoint's cell-loss classifier is incomplete".into()) };
    if w.shape != [d, CELL_CLASSES] || b.shape != [1, CELL_CLASSES] {
        return Err(format!("the checkpoint's cell-loss classifier has shapes {:?} and {:?}, expected [{d}, {CELL_CLASSES}] and [1, {CELL_CLASSES}]", w.shape, b.shape));
    }
    let load = |r: &crate::weights::RawTensor| Tensor::<2>::from_data(TensorData::new(r.to_f32(), r.shape.clone()), device);
    let (w, b) = (load(w), load(b).reshape([CELL_CLASSES]));
    head.weight = head.weight.map(|t| w.set_require_grad(t.is_require_grad()));
    head.bias = head.bias.map(|p| p.map(|t| b.set_require_grad(t.is_require_grad())));
    opt.load_state(step, &entries_under(saved, "optim."), &device.clone().without_autodiff());
    Ok((head, opt))
}

/// Trains the generator (everything but the AE) with flow matching on the examples' latents.
/// Starts at `resume`'s step with its optimiser state when given (`model` then holds that
/// step's weights); `checkpoint` (weights, optimiser, the other state as checkpoint entries:
/// the average under `ema.`, the cell loss's classifier under `cells.`; step) is called every
/// `p.checkpoint_every` steps and when cancelled. With `o.ar_ema` the result is the weight
/// average, else the final weights.
#[allow(clippy::too_many_arguments)]
pub fn train_ar(
    model: Vgt,
    tok: &PromptTokenizer,
    examples: &[Example],
    o: &RecipeOptions,
    resume: Option<Resume>,
    p: &Progress,
    checkpoint: &mut dyn FnMut(&Vgt, &AdamW, &TensorMap, usize) -> Result<(), String>,
    events: &mut dyn FnMut(RecipeEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<Vgt, String> {
    let device = model.image_in_projector.weight.val().device();
    let decoder_stages = model.vgt_ae.decoder.up_blocks.len();
    let mut net = crate::train::lora::attach_full(model);
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.05, ..Default::default() });
    let mut ema: Option<Adapter> = None;
    let (first, saved_cells) = match resume {
        Some(r) => {
            opt.load_state(r.step, &r.optim, &device.clone().without_autodiff());
            if o.ar_ema > 0.0 && !r.ema.is_empty() {
                ema = Some(Adapter { rank: 0, alpha: 0.0, lora: Default::default(), full: r.ema, settings: None });
            }
            (r.step, r.cells)
        }
        None => (0, TensorMap::new()),
    };
    let sched = Schedule { lr: o.ar_lr, min_lr: o.ar_lr * 0.05, warmup: 200.min(o.ar_steps), warmup_factor: 0.01, total: o.ar_steps };
    let tokens = tok.token_ids(crate::config::Family::InternVl).map_err(|e| e.to_string())?;
    let uncond = tok.encode(&unconditional_text(None)).map_err(|e| e.to_string())?;
    let lat = examples.first().map(|e| e.latent.len()).unwrap_or(0);
    let c = net.image_in_projector.weight.val().dims()[0];
    let hw = lat / c.max(1);
    let side = (hw as f64).sqrt() as usize;
    // The cell loss's classifier (dropped at the end).
    let mut cells = if o.ar_cell_loss > 0.0 || o.ar_empty_loss > 0.0 || o.ar_relation_loss > 0.0 { Some(cells_head(net.image_out_projector.weight.val().dims()[1], &saved_cells, first, &device)?) } else { None };
    let extras = |ema: &Option<Adapter>, cells: &Option<(burn::nn::Linear, AdamW)>| -> TensorMap {
        let mut out: TensorMap = ema.iter().flat_map(|e| e.full.iter()).map(|(k, v)| (format!("{EMA_PREFIX}{k}"), v.clone())).collect();
        if let Some((head, head_opt)) = cells {
            out.extend(cells_tensors(head, head_opt).into_iter().map(|(k, v)| (format!("{CELLS_PREFIX}{k}"), v)));
        }
        out
    };
    let start = Instant::now();
    let mut cancelled = false;
    for step in first..o.ar_steps {
        if cancel() {
            checkpoint(&net, &opt, &extras(&ema, &cells), step)?;
            cancelled = true;
            break;
        }
        if step > first && p.checkpoint_every > 0 && step % p.checkpoint_every == 0 {
            checkpoint(&net, &opt, &extras(&ema, &cells), step)?;
        }
        let mut rng = Seeded::new(o.seed ^ 0xa800_0000 ^ step as u64);
        let idx: Vec<usize> = (0..o.ar_batch).map(|_| ((rng.uniform() * examples.len() as f64) as usize).min(examples.len() - 1)).collect();
        let mut rows = Vec::with_capacity(idx.len());
        let mut values = Vec::with_capacity(idx.len() * lat);
        let mut labels = Vec::with_capacity(idx.len());
        let mut related = Vec::with_capacity(idx.len());
        for &i in &idx {
            let e = &examples[i];
            let dropped = rng.uniform() < o.caption_dropout;
            rows.push(if dropped { uncond.clone() } else { e.ids.clone() });
            values.extend_from_slice(&e.latent);
            labels.push((!dropped).then_some(e.cells));
            related.push(e.relation);
        }
        let (ids, mask) = crate::prompt::right_pad(rows, 0);
        let z = Tensor::<4>::from_data(TensorData::new(values, [idx.len(), c, side, side]), &device);
        let noise = StepNoise::draw_repeated(&mut rng, idx.len(), hw, c, o.head_repeats.max(1)).in_order(o.ar_order);
        let batch = TrainBatch { ids: &ids, mask: &mask, img_start: &tokens.img_start, latents: z };
        let out = net.train_forward(&batch, &noise, TIME_SHIFT);
        let flow = out.flow.loss;
        let loss = match &cells {
            Some((head, _)) => {
                let CellLoss { objects: ce, empty, relation } = cell_loss(head, out.cond, &labels, &related);
                if step % 500 == 0 {
                    let mut line = format!("generator step {}: cell loss {:.4}", step + 1, ce.clone().inner().into_scalar::<f32>());
                    if o.ar_empty_loss > 0.0 {
                        line += &format!(", empty cells {:.4}", empty.clone().inner().into_scalar::<f32>());
                    }
                    if o.ar_relation_loss > 0.0 {
                        line += &format!(", relation captions {:.4}", relation.clone().inner().into_scalar::<f32>());
                    }
                    events(RecipeEvent::Stage(line));
                }
                flow.clone() + ce.mul_scalar(o.ar_cell_loss as f32) + empty.mul_scalar(o.ar_empty_loss as f32) + relation.mul_scalar(o.ar_relation_loss as f32)
            }
            None => flow.clone(),
        };
        let grads = loss.backward();
        let value: f32 = flow.inner().into_scalar();
        let g = Grads::collect(&net, &grads, 1.0);
        if let Some((head, mut head_opt)) = cells.take() {
            let hg = Grads::collect(&head, &grads, 1.0);
            cells = Some((head_opt.update(head, hg, sched.lr_at(step)).0, head_opt));
        }
        net = opt.update(net, g, sched.lr_at(step)).0;
        if o.ar_ema > 0.0 && step >= o.ar_ema_from {
            let now = Adapter::from_full_training(&net);
            match ema.as_mut() {
                Some(e) => e.ema_update(&now, o.ar_ema),
                None => ema = Some(now),
            }
        }
        if step % 20 == 0 || step + 1 == o.ar_steps {
            events(RecipeEvent::Step { stage: "ar", step: step + 1, from: first, total: o.ar_steps, loss: value as f64, seconds: start.elapsed().as_secs_f64() });
        }
    }
    match ema {
        Some(e) if !cancelled => Ok(apply(net, &e.full, decoder_stages).map_err(|e| format!("the generator's weight average: {e}"))?.0),
        _ => Ok(net),
    }
}

/// The three readings of [`cell_loss`], each `[1]`.
struct CellLoss {
    objects: Tensor<1>,
    empty: Tensor<1>,
    relation: Tensor<1>,
}

/// The cell loss ([`RecipeOptions::ar_cell_loss`], [`RecipeOptions::ar_empty_loss`],
/// [`RecipeOptions::ar_relation_loss`]): the cross-entropy of `head`'s reading of what each
/// cell holds, averaged over the object cells, over the empty cells, and over all cells of the
/// relation captions (`relation[b]`), of the rows that kept their caption (`labels[b]`: `None`
/// for a dropped caption).
///
/// # Shapes
/// - cond: `[B·L, D]` in cell order (row-major within each image)
fn cell_loss(head: &burn::nn::Linear, cond: Tensor<2>, labels: &[Option<[usize; GRID * GRID]>], relation: &[bool]) -> CellLoss {
    let logp = burn::tensor::activation::log_softmax(crate::nn::lin(head, cond), 1);
    let l = GRID * GRID;
    let picks = |keep: &dyn Fn(usize, usize) -> bool| -> Vec<(usize, usize)> {
        labels.iter().enumerate().flat_map(|(b, row)| row.iter().flatten().enumerate().map(move |(cell, &k)| (b, b * l + cell, k))).filter(|&(b, _, k)| keep(b, k)).map(|(_, i, k)| (i, k)).collect()
    };
    CellLoss {
        objects: cross_entropy(logp.clone(), &picks(&|_, k| k != 0)),
        empty: cross_entropy(logp.clone(), &picks(&|_, k| k == 0)),
        relation: cross_entropy(logp, &picks(&|b, _| relation.get(b).copied().unwrap_or(false))),
    }
}

/// The mean of `−logp[row, class]` over `picks` (`(row, class)` pairs; 0 for none).
///
/// # Shapes
/// - logp: `[rows, classes]` → `[1]`
fn cross_entropy(logp: Tensor<2>, picks: &[(usize, usize)]) -> Tensor<1> {
    let [rows, classes] = logp.dims();
    let mut target = vec![0f32; rows * classes];
    for &(r, k) in picks {
        target[r * classes + k] = 1.0;
    }
    let target = Tensor::<2>::from_data(TensorData::new(target, [rows, classes]), &logp.device());
    (logp * target).sum().neg() / picks.len().max(1) as f64
}

/// `n` questions (prompt and question ids, answer id) about fresh training captions.
fn question_batch(rng: &mut Seeded, tok: &PromptTokenizer, listing: Listing, n: usize) -> Result<Vec<(Vec<u32>, u32)>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (_, caption) = training_example(rng, &Shape::TRAIN, listing);
        let asked = super::prompts::questions(&caption);
        if asked.is_empty() {
            continue;
        }
        let (q, a) = super::pick(rng, &asked);
        let mut ids = tok.encode(&tok.conditional(&caption)).map_err(|e| e.to_string())?;
        ids.extend(tok.encode(&q).map_err(|e| e.to_string())?);
        out.push((ids, tok.token_id(&a).ok_or_else(|| format!("the tokenizer has no `{a}`"))?));
    }
    Ok(out)
}

/// Log-probabilities `[n, vocab]` of the answer to each question: the LLM's last hidden state
/// of the row scored against every token embedding.
fn answer_logp(net: &Vgt, questions: &[(Vec<u32>, u32)]) -> Tensor<2> {
    let rows: Vec<Vec<u32>> = questions.iter().map(|(ids, _)| ids.clone()).collect();
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let (ids, mask) = crate::prompt::right_pad(rows, 0);
    let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
    let device = net.llm.norm.weight.lazy_device();
    let positions = crate::ar::prefill_positions(&mask);
    let hidden = net.llm.forward(crate::llm::LlmInput::new(net.embed(&ids), positions).mask(mask), &mut crate::llm::KvCache::new());
    let d = hidden.dims()[2];
    let mut last = vec![0f32; b * t];
    for (r, &n) in lens.iter().enumerate() {
        last[r * t + n - 1] = 1.0;
    }
    let last = Tensor::<3>::from_data(TensorData::new(last, [b, t, 1]), &device);
    let h = (hidden * last).sum_dim(1).reshape([b, d]);
    burn::tensor::activation::log_softmax(h.matmul(net.llm.embed_tokens.weight.val().transpose()), 1)
}

/// The mean cross-entropy of the answers to `questions`.
fn question_loss(net: &Vgt, questions: &[(Vec<u32>, u32)]) -> Tensor<1> {
    let picks: Vec<(usize, usize)> = questions.iter().enumerate().map(|(r, (_, a))| (r, *a as usize)).collect();
    cross_entropy(answer_logp(net, questions), &picks)
}

/// The share of `questions` whose most likely answer is right.
pub fn question_accuracy(net: &Vgt, questions: &[(Vec<u32>, u32)]) -> f64 {
    let best = answer_logp(net, questions).argmax(1).into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default();
    best.iter().zip(questions).filter(|(b, (_, a))| **b == *a as i64).count() as f64 / questions.len().max(1) as f64
}

/// The LLM stage ([`RecipeOptions::llm_steps`]): the LLM alone trained on caption questions
/// with the cross-entropy of their answers. Reports the accuracy on held-out captions before
/// and after. Not checkpointed: a cancel returns an error and `--resume` runs it again.
pub fn train_llm(model: Vgt, tok: &PromptTokenizer, o: &RecipeOptions, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> Result<Vgt, String> {
    let held = question_batch(&mut Seeded::new(o.seed ^ 0x11a0_4e1d), tok, o.listing, 256)?;
    let mut net = crate::train::lora::attach_full(model);
    let accuracy = |net: &Vgt| question_accuracy(&net.clone().valid(), &held);
    events(RecipeEvent::Stage(format!("LLM stage: {:.3} of {} held-out questions answered before it", accuracy(&net), held.len())));
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.05, ..Default::default() });
    let sched = Schedule { lr: o.ar_lr, min_lr: o.ar_lr * 0.1, warmup: 100.min(o.llm_steps), warmup_factor: 0.01, total: o.llm_steps };
    let mut rng = Seeded::new(o.seed ^ 0x11a0_0000);
    let start = Instant::now();
    for step in 0..o.llm_steps {
        if cancel() {
            return Err("cancelled during the LLM stage (it is not checkpointed; --resume runs it again)".into());
        }
        let loss = question_loss(&net, &question_batch(&mut rng, tok, o.listing, LLM_BATCH)?);
        let value: f32 = loss.clone().inner().into_scalar();
        let g = Grads::collect(&net, &loss.backward(), 1.0);
        net = opt.update(net, g, sched.lr_at(step)).0;
        if step % 50 == 0 || step + 1 == o.llm_steps {
            events(RecipeEvent::Step { stage: "llm", step: step + 1, from: 0, total: o.llm_steps, loss: value as f64, seconds: start.elapsed().as_secs_f64() });
        }
    }
    events(RecipeEvent::Stage(format!("LLM stage: {:.3} of the held-out questions answered after it", accuracy(&net))));
    Ok(net)
}

/// How a run keeps its progress in `{out}.work/`: the trained AE (after its stage) and an AR
/// checkpoint (weights and optimiser state) every `checkpoint_every` steps and on cancel.
/// `resume` continues from them; the result is the same as an uninterrupted run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub resume: bool,
    pub checkpoint_every: usize,
}

impl Default for Progress {
    fn default() -> Self {
        Self { resume: false, checkpoint_every: 500 }
    }
}

const SETTINGS: &str = "recipe.json";
const AE_STAGE: &str = "ae-stage.safetensors";
const AR_CHECKPOINT: &str = "ar-checkpoint.safetensors";
/// The checkpoint's step, stored as a tensor so that weights and step are written at once.
const GENERATOR_STAGE: &str = "generator-stage.safetensors";
const STEP_KEY: &str = "run.step";
const LM_HEAD: &str = "lm_head";
const OPTIM_PREFIX: &str = "optim.";
const EMA_PREFIX: &str = "ema.";

fn stages(c: &VgtConfig) -> usize {
    c.decoder.block_out_channels.len()
}

/// Every tensor of `model` (f32, canonical keys).
fn save_model(path: &Path, model: &Vgt, c: &VgtConfig, extra: TensorMap) -> Result<(), String> {
    let mut tensors = module_tensors(&model.clone().valid(), stages(c));
    tensors.extend(extra);
    st::save(path, &tensors, DType::F32, &Default::default()).map_err(|e| e.to_string())
}

/// Loads a saved model into `fresh` (same configuration, built on the training device).
fn load_model(path: &Path, fresh: Vgt, c: &VgtConfig) -> Result<(Vgt, TensorMap), String> {
    let map = st::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (model_part, rest): (TensorMap, TensorMap) = map.into_iter().partition(|(k, _)| !k.starts_with(OPTIM_PREFIX) && !k.starts_with(EMA_PREFIX) && !k.starts_with(CELLS_PREFIX) && k != STEP_KEY);
    let (model, mut report) = apply(fresh, &model_part, stages(c)).map_err(|e| format!("{}: {e}", path.display()))?;
    // The generator stage, like the shipped model, has no `lm_head` (unused: it keeps its
    // initial value).
    report.missing.retain(|k| !k.contains(LM_HEAD));
    report.require_complete().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((model, rest))
}

/// Runs the whole recipe on `device` and writes the model folder `out` (config, f16
/// safetensors, tokenizer, and `recipe.json` with the settings).
pub fn run(o: &RecipeOptions, p: &Progress, out: &Path, device: &Device, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> Result<PathBuf, String> {
    let work = tempfile_dir(out)?;
    let (settings, ae_stage, ar_checkpoint, generator_stage) = (work.join(SETTINGS), work.join(AE_STAGE), work.join(AR_CHECKPOINT), work.join(GENERATOR_STAGE));
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| format!("{path}: {e}")
    };
    if p.resume {
        let saved = std::fs::read(&settings).map_err(|_| format!("nothing to resume in {}: start the run without --resume", work.display()))?;
        let saved: RecipeOptions = serde_json::from_slice(&saved).map_err(|e| format!("{}: {e}", settings.display()))?;
        if &saved != o {
            return Err(format!("the run in {} was started with other settings ({saved:?}); resume it with those", work.display()));
        }
    } else {
        if [&ae_stage, &ar_checkpoint, &generator_stage].iter().any(|f| f.exists()) {
            return Err(format!("{} holds an unfinished run: continue it with --resume, or delete the folder to start over", work.display()));
        }
        std::fs::write(&settings, serde_json::to_vec_pretty(o).unwrap_or_default()).map_err(io(&settings))?;
    }
    let tok_path = work.join("tokenizer.json");
    let vocab = super::tokenizer::write(&tok_path)?;
    let tok = PromptTokenizer::from_file(&tok_path).map_err(|e| e.to_string())?.with_echo(o.prompt_echo);
    let c = VgtConfig { prompt_echo: o.prompt_echo, order: o.ar_order, ..config(vocab, tok.token_ids(crate::config::Family::InternVl).map_err(|e| e.to_string())?) };
    let ad = device.clone().autodiff();
    events(RecipeEvent::Stage(format!("initialising ({} parameters)", crate::nn::count_params(&Vgt::new(&c, device)).0)));
    let shipped = |model: &Vgt| -> TensorMap { module_tensors(&model.clone().valid(), stages(&c)).into_iter().filter(|(k, _)| !k.contains(LM_HEAD)).collect() };
    if !(p.resume && generator_stage.exists()) {
        let model = init_model(&c, o.seed, GridInit::of(o), &ad);
        let model = if p.resume && ae_stage.exists() {
            events(RecipeEvent::Stage(format!("resuming: the autoencoder from {}", ae_stage.display())));
            load_model(&ae_stage, model, &c)?.0
        } else {
            events(RecipeEvent::Stage(format!("training the autoencoder for {} steps", o.ae_steps)));
            let Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae, family } = model;
            let ae = train_ae(vgt_ae, o, events, cancel);
            if cancel() {
                return Err("cancelled during the autoencoder stage (it is not checkpointed; nothing to resume)".into());
            }
            let model = Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae: ae, family };
            save_model(&ae_stage, &model, &c, TensorMap::new())?;
            model
        };
        let (model, resume) = if p.resume && ar_checkpoint.exists() {
            let (model, rest) = load_model(&ar_checkpoint, model, &c)?;
            let step = rest.get(STEP_KEY).and_then(|t| t.to_f32().first().copied()).ok_or_else(|| format!("{}: no step", ar_checkpoint.display()))? as usize;
            let part = |prefix: &str| entries_under(&rest, prefix);
            let (optim, ema, cells) = (part(OPTIM_PREFIX), part(EMA_PREFIX), part(CELLS_PREFIX));
            events(RecipeEvent::Stage(format!("resuming the generator at step {step} of {}", o.ar_steps)));
            (model, Some(Resume { step, optim, ema, cells }))
        } else {
            (model, None)
        };
        let Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae: ae, family } = model;
        let frozen = ae.clone().valid();
        events(RecipeEvent::Stage(format!("encoding {} training scenes", o.ar_examples)));
        let examples = ar_examples(&frozen, &tok, o, &device.clone().without_autodiff())?;
        let ar = Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae: ae.no_grad(), family };
        let ar = if resume.is_none() && o.llm_steps > 0 {
            events(RecipeEvent::Stage(format!("training the LLM on caption questions for {} steps", o.llm_steps)));
            train_llm(ar, &tok, o, events, cancel)?
        } else {
            ar
        };
        let mut checkpoint = |net: &Vgt, opt: &AdamW, others: &TensorMap, step: usize| {
            let mut extra: TensorMap = opt.state_tensors().into_iter().map(|(k, v)| (format!("{OPTIM_PREFIX}{k}"), v)).collect();
            extra.extend(others.iter().map(|(k, v)| (k.clone(), v.clone())));
            extra.insert(STEP_KEY.into(), crate::weights::RawTensor::from_f32(vec![1], &[step as f32]));
            save_model(&ar_checkpoint, net, &c, extra)
        };
        if resume.is_none() {
            events(RecipeEvent::Stage(format!("training the generator for {} steps", o.ar_steps)));
        }
        let ar = train_ar(ar, &tok, &examples, o, resume, p, &mut checkpoint, events, cancel)?;
        if cancel() {
            return Err(format!("cancelled; continue with --resume (checkpoint in {})", work.display()));
        }
        st::save(&generator_stage, &shipped(&ar), DType::F16, &Default::default()).map_err(|e| e.to_string())?;
    } else {
        events(RecipeEvent::Stage(format!("resuming: the generator from {}", generator_stage.display())));
    }
    // The last stage starts from the f16 weights, as a model folder would give them.
    let (model, _) = load_model(&generator_stage, init_model(&c, o.seed, GridInit::of(o), &ad), &c)?;
    let Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae, family } = model;
    let vgt_ae = if o.decoder_steps > 0 {
        events(RecipeEvent::Stage(format!("fine-tuning the decoder for {} steps (encoder frozen)", o.decoder_steps)));
        train_decoder(vgt_ae, o, events, cancel)
    } else {
        vgt_ae
    };
    if cancel() {
        return Err(format!("cancelled in the decoder stage; --resume starts it again (the generator is kept in {})", work.display()));
    }
    let model = Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae, family };
    let tensors = shipped(&model);
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    crate::weights::source::save_converted(out, &c, &tensors, &tok_path, DType::F16).map_err(|e| e.to_string())?;
    std::fs::write(out.join("recipe.json"), serde_json::to_vec_pretty(o).unwrap_or_default()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out.to_path_buf())
}

fn tempfile_dir(out: &Path) -> Result<PathBuf, String> {
    let dir = PathBuf::from(format!("{}.work", out.display()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::RandomSource;

    /// Every cell content (every shape, colour and size, and the empty cell) has its own
    /// prototype, far from the others, and the grid puts it in the object's cell.
    #[test]
    fn every_cell_content_has_its_own_prototype() {
        let protos = prototypes(0, 16);
        let mut seen = std::collections::BTreeSet::new();
        for shape in Shape::ALL {
            for color in Color::ALL {
                for size in [Size::Small, Size::Large] {
                    let k = cell_class(&Object { shape, color, size, cx: 8.0, cy: 8.0 });
                    assert!(k > 0 && k < protos.len(), "{k}");
                    assert!(seen.insert(k), "{shape:?} {color:?} {size:?} shares class {k}");
                }
            }
        }
        assert_eq!(seen.len() + 1, protos.len());
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
        for (i, a) in protos.iter().enumerate() {
            assert!((a.iter().map(|x| x * x).sum::<f32>() / 16.0 - 1.0).abs() < 1e-3, "prototypes are normalised like latents");
            for b in &protos[i + 1..] {
                assert!(dist(a, b) > 1.5, "two prototypes {} apart", dist(a, b));
            }
        }
        let device = crate::device::cpu_device().device;
        let o = Object { shape: Shape::Star, color: Color::Blue, size: Size::Small, cx: 24.0, cy: 40.0 };
        let grid = prototype_grid(&[Scene { objects: vec![o] }], &protos, &device).into_data().try_to_vec::<f32>().unwrap();
        for cell in 0..GRID * GRID {
            let want = if cell == 2 * GRID + 1 { &protos[cell_class(&o)] } else { &protos[0] };
            let got: Vec<f32> = (0..16).map(|ch| grid[ch * GRID * GRID + cell]).collect();
            assert_eq!(&got, want, "cell {cell}");
        }
    }

    /// With `k` head samples per token, the loss is the mean of the `k` single-sample losses:
    /// the repeated conditions stay aligned with their targets.
    #[test]
    fn head_repeats_average_single_sample_losses() {
        let device = crate::device::cpu_device().device;
        let tokens = TokenIds { pad: 0, im_start: 1, im_end: 2, img_start: vec![3] };
        let model = init_model(&config(40, tokens), 5, GridInit::default(), &device);
        let (b, l, c) = (2, GRID * GRID, 16);
        let mut rng = Seeded::new(9);
        let z: Vec<f32> = (0..b * c * l).map(|_| rng.standard_normal()).collect();
        let ids = vec![vec![1, 7, 8, 9, 2], vec![1, 10, 11, 2, 0]];
        let mask = vec![vec![1, 1, 1, 1, 1], vec![1, 1, 1, 1, 0]];
        let loss = |noise: &StepNoise| -> f32 {
            let latents = Tensor::<4>::from_data(TensorData::new(z.clone(), [b, c, GRID, GRID]), &device);
            let batch = TrainBatch { ids: &ids, mask: &mask, img_start: &[3], latents };
            model.train_forward(&batch, noise, TIME_SHIFT).flow.loss.into_scalar()
        };
        let first = StepNoise::draw(&mut rng, b, l, c);
        let second = StepNoise { order: first.order.clone(), u: rng.normal(b * l, 1), eps: rng.normal(b * l, c) };
        let both = StepNoise { order: first.order.clone(), u: [first.u.clone(), second.u.clone()].concat(), eps: [first.eps.clone(), second.eps.clone()].concat() };
        let (a, s, k) = (loss(&first), loss(&second), loss(&both));
        assert!((a - s).abs() > 1e-3, "the two draws should give different losses ({a}, {s})");
        assert!((k - (a + s) / 2.0).abs() < 1e-5, "two head samples: {k}, mean of singles: {}", (a + s) / 2.0);
    }

    /// `pos_std` sets the position grid's spread and nothing else (the metaquery grid keeps its
    /// 1/√D, other parameters their values).
    #[test]
    fn pos_std_sets_the_position_grid() {
        let device = crate::device::cpu_device().device;
        let tokens = TokenIds { pad: 0, im_start: 1, im_end: 2, img_start: vec![3] };
        let c = config(40, tokens);
        let rms = |t: Tensor<4>| -> f32 { t.powf_scalar(2.0).mean().sqrt().into_scalar() };
        let (a, b) = (init_model(&c, 5, GridInit::default(), &device), init_model(&c, 5, GridInit { pos_std: 0.5, sincos: false }, &device));
        let (pa, pb) = (rms(a.adaptive_metaquery.pos_encoding.grid_embed.val()), rms(b.adaptive_metaquery.pos_encoding.grid_embed.val()));
        assert!((pa - 0.02).abs() < 0.005 && (pb - 0.5).abs() < 0.1, "position grid spreads {pa}, {pb}");
        let qa = rms(a.adaptive_metaquery.max_metaquery.val());
        assert_eq!(qa, rms(b.adaptive_metaquery.max_metaquery.val()));
        assert!((qa - 1.0 / (c.llm.hidden_size as f32).sqrt()).abs() < 0.02, "metaquery spread {qa}");
        assert_eq!(a.image_in_projector.weight.val().into_data(), b.image_in_projector.weight.val().into_data());
    }

    /// `--sincos-grids`: each cell of both grids holds its row's code in the first half of the
    /// channels and its column's in the second, at the random grids' norms (1 and 0.02·√D);
    /// every other parameter is as without it.
    #[test]
    fn sincos_grids_code_row_and_column() {
        let device = crate::device::cpu_device().device;
        let tokens = TokenIds { pad: 0, im_start: 1, im_end: 2, img_start: vec![3] };
        let c = config(40, tokens);
        let d = c.llm.hidden_size;
        let (plain, coded) = (init_model(&c, 5, GridInit::default(), &device), init_model(&c, 5, GridInit { pos_std: POS_STD, sincos: true }, &device));
        for (grid, norm) in [(coded.adaptive_metaquery.max_metaquery.val(), 1.0f32), (coded.adaptive_metaquery.pos_encoding.grid_embed.val(), 0.02 * (d as f32).sqrt())] {
            let v: Vec<f32> = grid.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let at = |ch: usize, row: usize, col: usize| v[(ch * GRID + row) * GRID + col];
            for row in 0..GRID {
                for col in 0..GRID {
                    let n = (0..d).map(|ch| at(ch, row, col).powi(2)).sum::<f32>().sqrt();
                    assert!((n - norm).abs() < 1e-4 * norm.max(1.0), "cell ({row}, {col}) norm {n}, expected {norm}");
                    for ch in 0..d / 2 {
                        assert_eq!(at(ch, row, col), at(ch, row, 0), "row code, channel {ch}");
                        assert_eq!(at(d / 2 + ch, row, col), at(d / 2 + ch, 0, col), "column code, channel {ch}");
                    }
                }
            }
            // Row 0: sin 0 = 0 and cos 0 = 1 (scaled) in the row half.
            assert_eq!(at(0, 0, 3), 0.0);
            assert!((at(d / 4, 0, 3) - norm / ((d / 2) as f32).sqrt()).abs() < 1e-6);
            // Rows differ.
            assert_ne!(at(0, 1, 0), at(0, 2, 0));
        }
        assert_eq!(plain.image_in_projector.weight.val().into_data(), coded.image_in_projector.weight.val().into_data());
        assert_eq!(plain.llm.embed_tokens.weight.val().into_data(), coded.llm.embed_tokens.weight.val().into_data());
    }

    /// `vgt train-shapes` with no options reproduces the shipped model: its defaults are the
    /// settings `assets/shapes/recipe.json` records.
    #[test]
    fn the_defaults_are_the_shipped_models_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/shapes/recipe.json");
        let shipped: RecipeOptions = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(shipped, RecipeOptions::default());
    }

    /// With `ar_ema` the generator stage keeps the weight average: it starts as a copy of the
    /// weights at `ar_ema_from`, survives an interruption in the checkpoint, and each later step
    /// moves it by the momentum towards the weights; the raw training itself is unchanged.
    #[test]
    fn the_generator_keeps_its_weight_average_across_a_resume() {
        let device = crate::device::cpu_device().device;
        // A large learning rate, so that one step moves weights far more than f16 rounds them.
        let o = RecipeOptions { ae_steps: 2, ae_batch: 2, ar_steps: 5, ar_batch: 2, ar_examples: 4, ar_lr: 0.05, decoder_steps: 1, ..Default::default() };
        let tmp = tempfile::tempdir().unwrap();
        let p = Progress { resume: false, checkpoint_every: 0 };
        let raw = tmp.path().join("raw");
        run(&o, &p, &raw, &device, &mut |_| {}, &|| false).unwrap();
        let averaged = RecipeOptions { ar_ema: 0.25, ar_ema_from: 3, ..o.clone() };
        let avg = tmp.path().join("avg");
        // Cancelled before generator step 4: the checkpoint holds the weights after step 3 and
        // the average, which started there as a copy.
        let calls = std::cell::Cell::new(0);
        let cancel = || {
            calls.set(calls.get() + 1);
            calls.get() > 2 + 1 + 4
        };
        run(&averaged, &p, &avg, &device, &mut |_| {}, &cancel).unwrap_err();
        let checkpoint = st::load(&tmp.path().join("avg.work").join(AR_CHECKPOINT)).unwrap();
        let generator_keys: Vec<String> = checkpoint.keys().filter_map(|k| k.strip_prefix(EMA_PREFIX).map(String::from)).collect();
        assert!(generator_keys.iter().any(|k| k.contains("image_head")) && generator_keys.iter().any(|k| k.contains("layers.0")), "{generator_keys:?}");
        assert!(!generator_keys.iter().any(|k| k.starts_with("vgt_ae.")), "the frozen AE is not averaged");
        for k in &generator_keys {
            assert_eq!(checkpoint[&format!("{EMA_PREFIX}{k}")].to_f32(), checkpoint[k].to_f32(), "{k}: the average starts as a copy");
        }
        run(&averaged, &Progress { resume: true, ..p }, &avg, &device, &mut |_| {}, &|| false).unwrap();
        let (raw, avg) = (st::load(&raw.join("model.safetensors")).unwrap(), st::load(&avg.join("model.safetensors")).unwrap());
        let mut moved = 0;
        for k in &generator_keys {
            let (before, after, got) = (checkpoint[k].to_f32(), raw[k].to_f32(), avg[k].to_f32());
            for ((b, a), g) in before.iter().zip(&after).zip(&got) {
                let want = b + 0.25 * (a - b);
                assert!((g - want).abs() <= 1e-3 * (1.0 + want.abs()), "{k}: {g} is not the average {want} (before {b}, raw {a})");
                moved += usize::from((a - b).abs() > 1e-2);
            }
        }
        assert!(moved > 100, "the last step should move many weights ({moved})");
        for (k, t) in &raw {
            if k.starts_with("vgt_ae.encoder") {
                assert_eq!(t.to_f32(), avg[k].to_f32(), "{k}: the frozen AE is the raw run's");
            }
        }
    }

    /// The LLM stage changes the LLM and nothing else, the same way from the same seed, and a
    /// cancel inside it is an error that names `--resume`.
    #[test]
    fn the_llm_stage_trains_only_the_llm() {
        let device = crate::device::cpu_device().device.autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokenizer.json");
        let vocab = super::super::tokenizer::write(&path).unwrap();
        let tok = PromptTokenizer::from_file(&path).unwrap();
        let c = config(vocab, tok.token_ids(crate::config::Family::InternVl).unwrap());
        let o = RecipeOptions { llm_steps: 3, ..Default::default() };
        let base = init_model(&c, 1, GridInit::default(), &device);
        let tensors = |m: &Vgt| module_tensors(&m.clone().valid(), stages(&c));
        let (before, after) = (tensors(&base), tensors(&train_llm(base.clone(), &tok, &o, &mut |_| {}, &|| false).unwrap()));
        let again = tensors(&train_llm(base.clone(), &tok, &o, &mut |_| {}, &|| false).unwrap());
        let mut changed = 0;
        for (k, v) in &before {
            let (a, b) = (v.to_f32(), after[k].to_f32());
            assert!(b == again[k].to_f32(), "{k}: the stage is deterministic");
            if k.contains("language_model") {
                changed += usize::from(a != b);
            } else {
                assert!(a == b, "{k} is not the LLM's and must not change");
            }
        }
        assert!(changed > 10, "the LLM's weights change ({changed} tensors)");
        let err = train_llm(base, &tok, &o, &mut |_| {}, &|| true).unwrap_err();
        assert!(err.contains("--resume"), "{err}");
    }

    /// Cells are numbered row-major like the latent tokens, and the cell loss is the mean
    /// cross-entropy over the object cells of the rows that kept their caption.
    #[test]
    fn the_cell_loss_reads_object_cells() {
        let device = crate::device::cpu_device().device;
        let red = Object { shape: Shape::Square, color: Color::Red, size: Size::Small, cx: 24.0, cy: 40.0 };
        let blue = Object { shape: Shape::Circle, color: Color::Blue, size: Size::Large, cx: 56.0, cy: 8.0 };
        let cells = cell_classes(&Scene { objects: vec![red, blue] });
        let (k, j) = (cell_class(&red), cell_class(&blue));
        assert_eq!((cells[2 * GRID + 1], cells[GRID - 1]), (k, j));
        assert_eq!(cells.iter().filter(|&&x| x != 0).count(), 2);
        assert!(k < CELL_CLASSES && j < CELL_CLASSES && k != j && k != 0 && j != 0);
        // A head that ignores its input and favours class k by 2 nats: −log p(k) = ln(e² + 50) − 2
        // and −log p(j) = ln(e² + 50); the second row's caption was dropped and does not count.
        let d = 8;
        let mut head = cells_head(d, &TensorMap::new(), 0, &device).unwrap().0;
        let mut bias = vec![0f32; CELL_CLASSES];
        bias[k] = 2.0;
        head.bias = head.bias.map(|p| p.map(|_| Tensor::<1>::from_data(TensorData::new(bias, [CELL_CLASSES]), &device)));
        let cond = Tensor::<2>::ones([2 * GRID * GRID, d], &device);
        let CellLoss { objects, empty, relation } = cell_loss(&head, cond.clone(), &[Some(cells), None], &[false, true]);
        let (got, got_empty): (f32, f32) = (objects.into_scalar(), empty.into_scalar());
        // No relation caption kept: nothing to average.
        assert_eq!(relation.into_scalar::<f32>(), 0.0);
        // The first row's caption states a relation: all its 16 cells count, one of them class k.
        let relation: f32 = cell_loss(&head, cond, &[Some(cells), None], &[true, true]).relation.into_scalar();
        let want_relation = ((2f32.exp() + (CELL_CLASSES - 1) as f32).ln() * 16.0 - 2.0) / 16.0;
        assert!((relation - want_relation).abs() < 1e-5, "relation loss {relation}, expected {want_relation}");
        let want = ((2f32.exp() + (CELL_CLASSES - 1) as f32).ln() * 2.0 - 2.0) / 2.0;
        assert!((got - want).abs() < 1e-5, "cell loss {got}, expected {want}");
        // Each of the 14 empty cells: −log p(empty) = ln(e² + 50).
        let want_empty = (2f32.exp() + (CELL_CLASSES - 1) as f32).ln();
        assert!((got_empty - want_empty).abs() < 1e-5, "empty-cell loss {got_empty}, expected {want_empty}");
    }

    /// The cell loss reaches the generator: the same steps without it give other weights, and
    /// it reports its value.
    #[test]
    fn the_cell_loss_changes_the_generator() {
        let cpu = crate::device::cpu_device().device;
        let device = cpu.clone().autodiff();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokenizer.json");
        let vocab = super::super::tokenizer::write(&path).unwrap();
        let tok = PromptTokenizer::from_file(&path).unwrap();
        let c = config(vocab, tok.token_ids(crate::config::Family::InternVl).unwrap());
        let mut base = init_model(&c, 1, GridInit::default(), &device);
        base.vgt_ae = base.vgt_ae.no_grad();
        let o = RecipeOptions { ar_steps: 3, ar_batch: 2, ar_examples: 4, ar_cell_loss: 1.0, ..Default::default() };
        let examples = ar_examples(&base.vgt_ae.clone().valid(), &tok, &o, &cpu).unwrap();
        let p = Progress { resume: false, checkpoint_every: 0 };
        let mut reported = Vec::new();
        let mut train = |o: &RecipeOptions| {
            let mut events = |e: RecipeEvent| {
                if let RecipeEvent::Stage(s) = e {
                    reported.push(s);
                }
            };
            let net = train_ar(base.clone(), &tok, &examples, o, None, &p, &mut |_, _, _, _| Ok(()), &mut events, &|| false).unwrap();
            module_tensors(&net.valid(), stages(&c))
        };
        let (x, y) = (train(&o), train(&RecipeOptions { ar_cell_loss: 0.0, ..o.clone() }));
        let z = train(&RecipeOptions { ar_cell_loss: 0.0, ar_empty_loss: 1.0, ..o.clone() });
        let differ = |x: &TensorMap, part: &str| x.iter().any(|(k, v)| k.contains(part) && v.to_f32() != y[k].to_f32());
        for (name, x) in [("cell loss", &x), ("empty-cell loss", &z)] {
            assert!(differ(x, "language_model") && differ(x, "image_out_projector"), "the {name} must train the LLM and the projector");
        }
        // The zero classifier's first losses: ln 51.
        let ln = (CELL_CLASSES as f32).ln();
        assert_eq!(reported, vec![format!("generator step 1: cell loss {ln:.4}"), format!("generator step 1: cell loss {ln:.4}, empty cells {ln:.4}")]);
    }

    /// A run cancelled in the generator stage and continued with `resume` writes the same model,
    /// byte for byte, as an uninterrupted run; starting over on top of it is refused.
    #[test]
    fn an_interrupted_run_resumed_gives_the_same_model() {
        let device = crate::device::cpu_device().device;
        // The weight average runs across the interruption (it is in the checkpoint).
        // So do the cell loss's classifier and its optimiser state.
        let o = RecipeOptions { ae_steps: 2, ae_batch: 2, ar_steps: 5, ar_batch: 2, ar_examples: 4, decoder_steps: 3, ar_ema: 0.5, ar_ema_from: 1, ar_cell_loss: 1.0, ..Default::default() };
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let p = Progress { resume: false, checkpoint_every: 2 };
        run(&o, &p, &a, &device, &mut |_| {}, &|| false).unwrap();
        assert!(!tmp.path().join("a.work").exists(), "a finished run removes its work folder");
        // cancel() is asked once per AE step, once after the AE stage, then once per generator
        // step: this stops before generator step 3 (steps 0–2 done).
        let calls = std::cell::Cell::new(0);
        let cancel = || {
            calls.set(calls.get() + 1);
            calls.get() > 2 + 1 + 3
        };
        let err = run(&o, &p, &b, &device, &mut |_| {}, &cancel).unwrap_err();
        assert!(err.contains("--resume"), "{err}");
        assert!(!b.join("model.safetensors").exists());
        let err = run(&o, &p, &b, &device, &mut |_| {}, &|| false).unwrap_err();
        assert!(err.contains("unfinished run"), "{err}");
        let other = RecipeOptions { ar_steps: 6, ..o.clone() };
        let err = run(&other, &Progress { resume: true, ..p }, &b, &device, &mut |_| {}, &|| false).unwrap_err();
        assert!(err.contains("other settings"), "{err}");
        let mut resumed_at = None;
        let mut events = |e: RecipeEvent| {
            if let RecipeEvent::Step { stage: "ar", from, .. } = e {
                resumed_at = Some(from);
            }
        };
        run(&o, &Progress { resume: true, ..p }, &b, &device, &mut events, &|| false).unwrap();
        assert_eq!(resumed_at, Some(3));
        let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert!(read(&a) == read(&b), "the resumed run's weights differ from the uninterrupted run's");

        // Cancelled in the decoder stage (after 2 + 1 + 5 + 1 questions, at its second step):
        // resuming starts that stage again from the kept generator.
        let c = tmp.path().join("c");
        let calls = std::cell::Cell::new(0);
        let cancel = || {
            calls.set(calls.get() + 1);
            calls.get() > 2 + 1 + 5 + 1 + 1
        };
        let err = run(&o, &p, &c, &device, &mut |_| {}, &cancel).unwrap_err();
        assert!(err.contains("decoder stage"), "{err}");
        run(&o, &Progress { resume: true, ..p }, &c, &device, &mut |_| {}, &|| false).unwrap();
        assert!(read(&a) == read(&c), "resumed from the generator stage, the weights differ");
    }
}

