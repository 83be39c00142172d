//! The recipe of the embedded shapes model (`vgt train-shapes`): a small VGT (InternViT-style
//! encoder with pixel shuffle and the latent head, DC-AE-style decoder, Qwen2-style LLM, flow
//! head), its deterministic initialisation, the AE training on rendered scenes, then the AR
//! training with flow matching on the frozen AE's latents. Everything is seeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::prompts::training_example;
use super::{SIZE, Shape, render};
use crate::ae::{InputNorm, VgtAe};
use crate::ar::Vgt;
use crate::config::*;
use crate::prompt::{PromptTokenizer, conditional_text, unconditional_text};
use crate::rng::Seeded;
use crate::train::optim::{AdamW, AdamWConfig, Grads, Schedule};
use crate::train::{StepNoise, TIME_SHIFT, TrainBatch};
use crate::weights::apply::{PathStack, module_tensors};
use crate::weights::DType;

/// The shapes model's configuration (64 px images, 8×8 latent tokens of 8 channels).
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
        vit: VitConfig {
            image_size: SIZE,
            patch_size: 4,
            hidden_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 192,
            layer_norm_eps: 1e-6,
        },
        latent: LatentHeadConfig { dv: 96, num_res_blocks: 2, latent_channels: 8, encoder_norm: true, scale_embedding: 1.0 },
        decoder: DecoderConfig {
            latent_channels: 8,
            block_out_channels: vec![24, 48, 96, 96],
            layers_per_block: vec![1, 1, 1, 1],
            block_types: vec![BlockType::ResBlock; 4],
            qkv_multiscales: vec![vec![]; 4],
            attention_head_dim: 8,
        },
        flow_head: FlowHeadConfig { input_dim: 8, cond_dim: 128, dim: 128, layers: 3, frequency_embedding_size: 256 },
        amq_max_grid: SIZE / 8,
        tokens,
    }
}

/// Settings of one run of the recipe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecipeOptions {
    pub seed: u64,
    pub ae_steps: usize,
    pub ae_batch: usize,
    pub ae_lr: f64,
    pub ar_steps: usize,
    pub ar_batch: usize,
    pub ar_lr: f64,
    /// Distinct training scenes for the AR stage (their latents are computed once).
    pub ar_examples: usize,
    /// CFG dropout of the captions (spec §4.1.5).
    pub caption_dropout: f64,
}

impl Default for RecipeOptions {
    /// The settings `assets/shapes` was trained with (38 minutes on this 2-core machine).
    fn default() -> Self {
        Self { seed: 0, ae_steps: 800, ae_batch: 8, ae_lr: 2e-3, ar_steps: 3000, ar_batch: 16, ar_lr: 1e-3, ar_examples: 6000, caption_dropout: 0.1 }
    }
}

/// Progress of the recipe.
#[derive(Debug, Clone)]
pub enum RecipeEvent {
    Stage(String),
    Step { stage: &'static str, step: usize, total: usize, loss: f64, seconds: f64 },
}

/// Deterministic initialisation (spec §3.5, §3.6, §4.1.4 where they say; PyTorch-style
/// defaults elsewhere), one generator per parameter path.
struct Init {
    stack: PathStack,
    seed: u64,
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
        let values: Vec<f32> = if path == "adaptive_metaquery.max_metaquery" {
            normal(&mut rng, 1.0 / (dims[1] as f32).sqrt())
        } else if path.starts_with("adaptive_metaquery.") {
            normal(&mut rng, 0.02)
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
pub fn init_model(c: &VgtConfig, seed: u64, device: &Device) -> Vgt {
    Vgt::new(c, device).map(&mut Init { stack: PathStack::default(), seed })
}

fn image_batch(rng: &mut Seeded, n: usize, device: &Device) -> Tensor<4> {
    let mut values = Vec::with_capacity(n * 3 * SIZE * SIZE);
    for _ in 0..n {
        let (scene, _) = training_example(rng, &Shape::ALL);
        values.extend(render(&scene).to_chw_signed());
    }
    Tensor::from_data(TensorData::new(values, [n, 3, SIZE, SIZE]), device)
}

/// Trains the AE (encoder, latent head and decoder) on rendered scenes of every shape with the
/// reconstruction loss and the latent noise regulariser of spec §2.6 step 7 (max 0.1).
pub fn train_ae(ae: VgtAe, o: &RecipeOptions, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> VgtAe {
    let device = ae.decoder.conv_in.weight.val().device();
    let mut ae = ae;
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 1e-4, ..Default::default() });
    let sched = Schedule { lr: o.ae_lr, min_lr: o.ae_lr * 0.05, warmup: 100.min(o.ae_steps), warmup_factor: 0.01, total: o.ae_steps };
    let start = Instant::now();
    for step in 0..o.ae_steps {
        if cancel() {
            break;
        }
        let mut rng = Seeded::new(o.seed ^ 0xae00_0000 ^ step as u64);
        let x = image_batch(&mut rng, o.ae_batch, &device);
        let z = ae.encode(x.clone(), InputNorm::Always);
        let [b, c, h, w] = z.dims();
        let alpha: Vec<f32> = (0..b).map(|_| rng.uniform() as f32 * 0.1).collect();
        let eps: Vec<f32> = (0..b * c * h * w).map(|_| rng.standard_normal()).collect();
        let alpha = Tensor::<4>::from_data(TensorData::new(alpha, [b, 1, 1, 1]), &device);
        let eps = Tensor::<4>::from_data(TensorData::new(eps, [b, c, h, w]), &device);
        let y = ae.decode(z + eps * alpha);
        let loss = (y - x).div_scalar(2.0).powi_scalar(2).mean();
        let grads = loss.backward();
        let value: f32 = loss.inner().into_scalar();
        let g = Grads::collect(&ae, &grads, 1.0);
        ae = opt.update(ae, g, sched.lr_at(step)).0;
        if step % 10 == 0 || step + 1 == o.ae_steps {
            events(RecipeEvent::Step { stage: "ae", step: step + 1, total: o.ae_steps, loss: value as f64, seconds: start.elapsed().as_secs_f64() });
        }
    }
    ae
}

/// One AR training example: the ids of its caption in the instruction template, and the latent
/// `[C, h, w]`.
pub struct Example {
    pub ids: Vec<u32>,
    pub latent: Vec<f32>,
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
            let (scene, caption) = training_example(&mut rng, &Shape::TRAIN);
            pixels.extend(render(&scene).to_chw_signed());
            captions.push(caption);
        }
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [k, 3, SIZE, SIZE]), device);
        let z = ae.encode(x, InputNorm::Always);
        let per = z.dims()[1] * z.dims()[2] * z.dims()[3];
        let values = z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        for (i, caption) in captions.into_iter().enumerate() {
            let ids = tok.encode(&conditional_text(&caption)).map_err(|e| e.to_string())?;
            out.push(Example { ids, latent: values[i * per..(i + 1) * per].to_vec() });
        }
    }
    Ok(out)
}

/// Trains the generator (everything but the AE) with flow matching on the examples' latents.
pub fn train_ar(
    model: Vgt,
    tok: &PromptTokenizer,
    examples: &[Example],
    o: &RecipeOptions,
    events: &mut dyn FnMut(RecipeEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<Vgt, String> {
    let device = model.image_in_projector.weight.val().device();
    let mut net = crate::train::lora::attach_full(model);
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.05, ..Default::default() });
    let sched = Schedule { lr: o.ar_lr, min_lr: o.ar_lr * 0.05, warmup: 200.min(o.ar_steps), warmup_factor: 0.01, total: o.ar_steps };
    let tokens = tok.token_ids();
    let uncond = tok.encode(&unconditional_text(None)).map_err(|e| e.to_string())?;
    let lat = examples.first().map(|e| e.latent.len()).unwrap_or(0);
    let c = net.image_in_projector.weight.val().dims()[0];
    let hw = lat / c.max(1);
    let side = (hw as f64).sqrt() as usize;
    let start = Instant::now();
    for step in 0..o.ar_steps {
        if cancel() {
            break;
        }
        let mut rng = Seeded::new(o.seed ^ 0xa800_0000 ^ step as u64);
        let idx: Vec<usize> = (0..o.ar_batch).map(|_| ((rng.uniform() * examples.len() as f64) as usize).min(examples.len() - 1)).collect();
        let mut rows = Vec::with_capacity(idx.len());
        let mut values = Vec::with_capacity(idx.len() * lat);
        for &i in &idx {
            let e = &examples[i];
            rows.push(if rng.uniform() < o.caption_dropout { uncond.clone() } else { e.ids.clone() });
            values.extend_from_slice(&e.latent);
        }
        let (ids, mask) = crate::prompt::right_pad(rows, 0);
        let z = Tensor::<4>::from_data(TensorData::new(values, [idx.len(), c, side, side]), &device);
        let noise = StepNoise::draw(&mut rng, idx.len(), hw, c);
        let batch = TrainBatch { ids: &ids, mask: &mask, img_start: tokens.img_start, latents: z };
        let loss = net.train_forward(&batch, &noise, TIME_SHIFT).flow.loss;
        let grads = loss.backward();
        let value: f32 = loss.inner().into_scalar();
        let g = Grads::collect(&net, &grads, 1.0);
        net = opt.update(net, g, sched.lr_at(step)).0;
        if step % 20 == 0 || step + 1 == o.ar_steps {
            events(RecipeEvent::Step { stage: "ar", step: step + 1, total: o.ar_steps, loss: value as f64, seconds: start.elapsed().as_secs_f64() });
        }
    }
    Ok(net)
}

/// Runs the whole recipe on `device` and writes the model folder `out` (config, f16
/// safetensors, tokenizer, and `recipe.json` with the settings).
pub fn run(o: &RecipeOptions, out: &Path, device: &Device, events: &mut dyn FnMut(RecipeEvent), cancel: &dyn Fn() -> bool) -> Result<PathBuf, String> {
    let work = tempfile_dir(out)?;
    let tok_path = work.join("tokenizer.json");
    let vocab = super::tokenizer::write(&tok_path)?;
    let tok = PromptTokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;
    let c = config(vocab, tok.token_ids());
    let ad = device.clone().autodiff();
    events(RecipeEvent::Stage(format!("initialising ({} parameters)", crate::nn::count_params(&Vgt::new(&c, device)).0)));
    let model = init_model(&c, o.seed, &ad);
    events(RecipeEvent::Stage(format!("training the autoencoder for {} steps", o.ae_steps)));
    let Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae } = model;
    let ae = train_ae(vgt_ae, o, events, cancel);
    if cancel() {
        return Err("cancelled".into());
    }
    let frozen = ae.valid();
    events(RecipeEvent::Stage(format!("encoding {} training scenes", o.ar_examples)));
    let examples = ar_examples(&frozen, &tok, o, &device.clone().without_autodiff())?;
    events(RecipeEvent::Stage(format!("training the generator for {} steps", o.ar_steps)));
    let ar = Vgt { llm, adaptive_metaquery, image_in_projector, image_out_projector, image_head, vgt_ae: ae.no_grad() };
    let ar = train_ar(ar, &tok, &examples, o, events, cancel)?;
    if cancel() {
        return Err("cancelled".into());
    }
    let model = ar.valid();
    let tensors = module_tensors(&model, c.decoder.block_out_channels.len());
    let tensors: crate::weights::TensorMap = tensors.into_iter().filter(|(k, _)| !k.starts_with("lmm.language_model.lm_head")).collect();
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
