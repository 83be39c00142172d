//! Replays every golden fixture case under `$VGT_FIXTURES` (default `../shared/fixtures`), for
//! every model folder there, on every backend this machine has. Each case is its own test named
//! `<model>/<case>`; a failure names the output and its worst element (index, got, want).
//!
//! Case kinds, and fixture models of a family not yet supported, that belong to later work are
//! listed in `PENDING` / `PENDING_MODELS` and reported as ignored (kind "pending"); a case that is
//! neither implemented nor pending fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
use vgt_model::ae::InputNorm;
use vgt_model::ar::Vgt;
use vgt_model::llm::{KvCache, LlmInput};
use vgt_model::burn::tensor::activation::silu;
use vgt_model::burn::tensor::{Device, Tensor};
use vgt_model::device::ComputeDevice;
use vgt_model::vit::qwen::{QwenTrace, QwenVit};
use vgt_model::vit::{VisionTower, pixel_shuffle};
use vgt_model::config::FlowHeadConfig;
use vgt_model::flow_head::{FlowHead, FlowNet, timestep_features};
use vgt_model::generate::{GenerateOptions, Hooks, Rows, generate};
use vgt_model::rng::{Replay, torch_randperm};
use vgt_model::sampler::{SampleOptions, sample, time_grid};
use vgt_model::scheduler::{CfgSchedule, Order};
use vgt_model::train::optim::Grads;
use vgt_model::train::{StepNoise, TIME_SHIFT, TrainBatch, flow_matching_loss};
use vgt_model::weights::apply::{apply, apply_component, expected_params};
use vgt_model::weights::{TensorMap, source};
use vgt_tests::*;

/// Kinds whose implementation is tracked by other issues.
const PENDING: &[&str] = &[];

/// Fixture models of a family the project does not support yet (none now).
const PENDING_MODELS: &[&str] = &[];

struct Case {
    model: PathBuf,
    dir: PathBuf,
    kind: String,
    params: serde_json::Value,
    atol: f32,
    rtol: f32,
    outputs: Vec<String>,
}

fn discover() -> Vec<Case> {
    let mut cases = Vec::new();
    let Ok(models) = std::fs::read_dir(fixtures_dir()) else { return cases };
    let mut models: Vec<_> = models.flatten().map(|e| e.path()).filter(|p| p.join("cases").is_dir()).collect();
    models.sort();
    for model in models {
        let mut dirs: Vec<_> = std::fs::read_dir(model.join("cases")).unwrap().flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
            let tol = &json["tolerance"];
            cases.push(Case {
                model: model.clone(),
                dir,
                kind: json["kind"].as_str().unwrap_or("").to_string(),
                params: json["params"].clone(),
                atol: tol["atol"].as_f64().unwrap_or(0.0) as f32,
                rtol: tol["rtol"].as_f64().unwrap_or(0.0) as f32,
                outputs: json["outputs"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default(),
            });
        }
    }
    cases
}

/// What a case runs on: the whole model, the flow head alone (head-micro), or nothing.
enum Loaded {
    Full(Box<Vgt>),
    Head(FlowHead),
    Nothing,
}

impl Loaded {
    fn full(&self) -> Result<&Vgt, Failed> {
        match self {
            Loaded::Full(m) => Ok(m),
            _ => Err("this case needs a whole model folder".into()),
        }
    }
    fn net(&self) -> Result<&FlowNet, Failed> {
        match self {
            Loaded::Full(m) => Ok(&m.image_head.net),
            Loaded::Head(h) => Ok(&h.net),
            Loaded::Nothing => Err("no model".into()),
        }
    }
}

fn load_for(case: &Case, device: &Device) -> Result<Loaded, Failed> {
    if matches!(case.kind.as_str(), "time_grid" | "randperm" | "text_conditions") {
        return Ok(Loaded::Nothing);
    }
    let head = case.model.join("head.safetensors");
    if head.exists() {
        let map = vgt_model::weights::st::load(&head).map_err(|e| e.to_string())?;
        let shapes = source::shapes_of(&map);
        let shape = |k: &str| shapes.get(k).cloned().ok_or_else(|| format!("{k} missing"));
        let ip = shape("image_head.net.input_proj.weight")?;
        let config = FlowHeadConfig {
            input_dim: ip[1],
            cond_dim: shape("image_head.net.cond_embed.weight")?[1],
            dim: ip[0],
            layers: shapes.keys().filter(|k| k.ends_with(".in_ln.weight")).count(),
            frequency_embedding_size: shape("image_head.net.time_embed.mlp.0.weight")?[1],
        };
        let (h, report) = apply_component(FlowHead::new(&config, device), &map, 0, "image_head.").map_err(|e| e.to_string())?;
        report.require_complete().map_err(|e| e.to_string())?;
        return Ok(Loaded::Head(h));
    }
    Ok(Loaded::Full(Box::new(load_model(&case.model, device)?)))
}

/// Fixture models whose generator restored the exact f32 ImageNet constants instead of the
/// reference's bf16-rounded buffers (`internvl-tiny/README.md`, "Reference adaptations" 3).
const EXACT_IMAGENET_CONSTANTS: &[&str] = &["internvl-tiny"];

fn load_model(dir: &Path, device: &Device) -> Result<Vgt, Failed> {
    let loaded = source::open(dir).map_err(|e| e.to_string())?;
    let stages = loaded.config.decoder.block_out_channels.len();
    let (mut model, report) = apply(Vgt::new(&loaded.config, device), &loaded.tensors, stages).map_err(|e| e.to_string())?;
    report.require_complete().map_err(|e| e.to_string())?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if EXACT_IMAGENET_CONSTANTS.contains(&name.as_str()) {
        model.vgt_ae.exact_imagenet_constants = true;
    }
    Ok(model)
}

/// Output names → values, produced by one case kind.
type Produced = BTreeMap<String, Vec<f32>>;

fn put<const D: usize>(out: &mut Produced, name: String, t: Tensor<D>) {
    out.insert(name, values(t));
}

/// Every `[..., ::k, ::k]` view the geometry fixture stores for large maps.
fn strided(t: Tensor<4>, k: usize) -> Tensor<4> {
    let [b, c, h, w] = t.dims();
    t.reshape([b, c, h / k, k, w / k, k]).narrow(3, 0, 1).narrow(5, 0, 1).reshape([b, c, h / k, w / k])
}

/// A 2-D integer tensor as rows of i64.
fn int_rows(t: &vgt_model::weights::RawTensor) -> Vec<Vec<i64>> {
    let v = t.to_f32();
    let cols = t.shape[1];
    v.chunks(cols).map(|r| r.iter().map(|&x| x as i64).collect()).collect()
}

fn suffixes(inputs: &TensorMap, base: &str) -> Vec<String> {
    inputs.keys().filter_map(|k| k.strip_prefix(base).map(str::to_string)).filter(|s| s.is_empty() || s.starts_with('_')).collect()
}

/// `tokenizer.encode("<img>")` of a case: its own `img_start_token_id`, else the model's
/// `tokens.img_start_token_ids` (a list for Qwen2.5-VL) or `tokens.img_start_token_id`.
fn img_start(case: &Case) -> Result<Vec<u32>, Failed> {
    if let Some(id) = case.params["img_start_token_id"].as_u64() {
        return Ok(vec![id as u32]);
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(case.model.join("model.json"))?)?;
    let t = &json["tokens"];
    match (t["img_start_token_ids"].as_array(), t["img_start_token_id"].as_u64()) {
        (Some(list), _) => Ok(list.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()),
        (None, Some(id)) => Ok(vec![id as u32]),
        _ => Err("no <img> ids in the case or model.json".into()),
    }
}

/// The InternViT of a model (for its dump points).
fn internvit(model: &Vgt) -> Result<&vgt_model::vit::InternVit, Failed> {
    match &model.vgt_ae.encoder_half().encoder {
        VisionTower::InternVit(v) => Ok(v),
        VisionTower::Qwen25Vl(_) => Err("this case needs an InternViT model".into()),
    }
}

fn qwen_vit(model: &Vgt) -> Option<&QwenVit> {
    match &model.vgt_ae.encoder_half().encoder {
        VisionTower::Qwen25Vl(v) => Some(v),
        VisionTower::InternVit(_) => None,
    }
}

/// Qwen2.5-VL tower dump points (fixture `vit_forward`): patches, patch embedding and rotary
/// angles in merge-block order over the batch; window order and boundaries over the batch;
/// blocks and the windowed merger output in window order.
fn qwen_vit_trace(vit: &QwenVit, pixels: Tensor<4>, sfx: &str, out: &mut Produced) -> Tensor<3> {
    let [b, _, h, w] = pixels.dims();
    let mut t = QwenTrace::default();
    let y = vit.forward_traced(pixels, Some(&mut t));
    let flat = |x: Tensor<3>| {
        let [b, n, d] = x.dims();
        x.reshape([b * n, d])
    };
    put(out, format!("patches{sfx}"), flat(t.patches.clone().unwrap()));
    put(out, format!("patch_embed{sfx}"), flat(t.patch_embed.clone().unwrap()));
    out.insert(format!("rotary_angles{sfx}"), std::iter::repeat_n(t.rotary_angles.clone(), b).flatten().collect());
    let win = t.windows.clone().unwrap();
    let units = (h / vit.patch_size / 2) * (w / vit.patch_size / 2);
    let order: Vec<f32> = (0..b).flat_map(|i| win.order.iter().map(move |&u| (i * units + u) as f32)).collect();
    out.insert(format!("window_order{sfx}"), order);
    let mut bounds = vec![0f32];
    for _ in 0..b {
        for &s in &win.sizes {
            bounds.push(bounds.last().unwrap() + 4.0 * s as f32);
        }
    }
    out.insert(format!("window_boundary_positions{sfx}"), bounds);
    for (i, x) in t.blocks.iter().enumerate() {
        put(out, format!("block{i}_out{sfx}"), flat(x.clone()));
    }
    put(out, format!("merger_out_windowed{sfx}"), flat(t.merger_windowed.clone().unwrap()));
    put(out, format!("merger_out{sfx}"), y.clone());
    y
}

/// ViT dump points under both fixture sets' names.
fn vit_trace(model: &Vgt, pixels: Tensor<4>, sfx: &str, out: &mut Produced) -> Result<Tensor<3>, Failed> {
    if let Some(q) = qwen_vit(model) {
        return Ok(qwen_vit_trace(q, pixels, sfx, out));
    }
    let vit = internvit(model)?;
    let [_, _, h, w] = pixels.dims();
    let p = model.vgt_ae.stride / 2;
    put(out, format!("pos_embed{sfx}"), vit.embeddings.position(h / p, w / p));
    let mut x = vit.embeddings.forward(pixels);
    put(out, format!("embeddings{sfx}"), x.clone());
    put(out, format!("vit_embeddings{sfx}"), x.clone());
    for (i, layer) in vit.encoder.layers.iter().enumerate() {
        x = layer.forward(x);
        put(out, format!("layer{i}_out{sfx}"), x.clone());
        put(out, format!("vit_layer{i}{sfx}"), x.clone());
    }
    let [b, n, d] = x.dims();
    let last = x.narrow(1, 1, n - 1).reshape([b, n - 1, d]);
    put(out, format!("last_hidden{sfx}"), last.clone());
    let ps = pixel_shuffle(last, h / p, w / p);
    put(out, format!("pixel_shuffle{sfx}"), ps.clone());
    let mlp1 = model.vgt_ae.encoder_half().mlp1.as_ref().ok_or("an InternViT AE without mlp1")?.forward(ps);
    put(out, format!("mlp1{sfx}"), mlp1.clone());
    put(out, format!("mlp1_out{sfx}"), mlp1.clone());
    Ok(mlp1)
}

fn encode_trace(model: &Vgt, image: Tensor<4>, sfx: &str, out: &mut Produced) -> Result<(), Failed> {
    let ae = &model.vgt_ae;
    let [_, _, h, w] = image.dims();
    let (lh, lw) = (h / ae.stride, w / ae.stride);
    let pixels = ae.normalize(image.clone(), InputNorm::ReferenceMinRule);
    put(out, format!("pixel_values{sfx}"), pixels.clone());
    let feats = vit_trace(model, pixels, sfx, out)?;
    put(out, format!("vit_out{sfx}"), feats.clone());
    let mut x = feats.clone();
    for block in &ae.encoder_half().down_blocks {
        x = x.clone() + block.mlp.forward(x);
    }
    put(out, format!("res_blocks_out{sfx}"), x.clone());
    put(out, format!("down_mlp_out{sfx}"), ae.encoder_half().down_mlp.forward(x));
    let pre = ae.latent_pre_norm(feats, lh, lw);
    put(out, format!("latent_pre_norm{sfx}"), pre);
    // The production path, end to end.
    put(out, format!("latent{sfx}"), ae.encode(image, InputNorm::ReferenceMinRule));
    Ok(())
}

fn decode_trace(model: &Vgt, z: Tensor<4>, sfx: &str, out: &mut Produced) -> Tensor<4> {
    let dec = &model.vgt_ae.decoder;
    let mut x = dec.stem(z.clone());
    put(out, format!("conv_in_out{sfx}"), x.clone());
    put(out, format!("dec_conv_in_out{sfx}"), x.clone());
    put(out, format!("dec_after_conv_in{sfx}"), x.clone());
    for (s, stage) in dec.up_blocks.iter().enumerate().rev() {
        x = stage.forward(x);
        put(out, format!("up_block{s}_out{sfx}"), x.clone());
        put(out, format!("dec_up_block{s}_out{sfx}"), x.clone());
        put(out, format!("dec_stage{s}{sfx}"), x.clone());
        for k in [2, 4, 8] {
            if x.dims()[2] % k == 0 && x.dims()[3] % k == 0 {
                put(out, format!("dec_stage{s}_s{k}{sfx}"), strided(x.clone(), k));
            }
        }
    }
    let y = dec.head(x);
    put(out, format!("decoder_out{sfx}"), y.clone());
    put(out, format!("dec_out{sfx}"), y.clone());
    if y.dims()[2] % 8 == 0 && y.dims()[3] % 8 == 0 {
        put(out, format!("dec_out_s8{sfx}"), strided(y, 8));
    }
    model.vgt_ae.decode(z)
}

fn run_kind(case: &Case, loaded: &Loaded, device: &Device) -> Result<Produced, Failed> {
    let inputs = read_tensors(&case.dir.join("inputs.safetensors"));
    let mut out = Produced::new();
    match case.kind.as_str() {
        "time_grid" => {
            for n in case.params["ns"].as_array().into_iter().flatten() {
                let n = n.as_u64().unwrap() as usize;
                out.insert(format!("time_grid_n{n}"), time_grid(n));
            }
        }
        "randperm" => {
            for pair in case.params["pairs"].as_array().into_iter().flatten() {
                let (seed, n) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap() as usize);
                out.insert(format!("s{seed}_n{n}_order"), torch_randperm(seed, n).into_iter().map(|x| x as f32).collect());
            }
        }
        "flow_net" => {
            let net = loaded.net()?;
            let x = to_device::<2>(&inputs["x"], device);
            let t = to_device::<1>(&inputs["t"], device);
            let c = to_device::<2>(&inputs["c"], device);
            let size = net.time_embed.mlp.fc1.weight.val().dims()[0];
            put(&mut out, "t_freq".into(), timestep_features(t.clone(), size));
            let t_embed = net.time_embed.mlp.forward(timestep_features(t.clone(), size));
            put(&mut out, "t_embed".into(), t_embed.clone());
            put(&mut out, "t_emb".into(), t_embed);
            put(&mut out, "c_embed".into(), net.cond_embed.forward(c.clone()));
            put(&mut out, "c_emb".into(), net.cond_embed.forward(c.clone()));
            let y = net.condition(t.clone(), c.clone());
            let mut h = net.input_proj.forward(x.clone());
            put(&mut out, "x_proj".into(), h.clone());
            put(&mut out, "final_modulation".into(), net.final_layer.adaLN_modulation.forward(silu(y.clone())));
            for (i, b) in net.res_blocks.iter().enumerate() {
                put(&mut out, format!("block{i}_modulation"), b.adaLN_modulation.forward(silu(y.clone())));
                h = b.forward(h, y.clone());
                put(&mut out, format!("block{i}_out"), h.clone());
            }
            put(&mut out, "v".into(), net.forward(x, t, c));
        }
        "flow_sample" => {
            let net = loaded.net()?;
            let noise = &inputs["noise"];
            let steps = noise.shape[0];
            let per = noise.shape[1] * noise.shape[2];
            let all = noise.to_f32();
            let mut rng = Replay { order: Vec::new(), noise: all.chunks(per).map(<[f32]>::to_vec).collect() };
            let opts = SampleOptions { cfg: case.params["cfg"].as_f64().unwrap_or(1.0), num_steps: steps, t_bf16: false };
            let tr = sample(net, to_device::<2>(&inputs["c"], device), opts, &mut rng, true);
            out.insert("timesteps".into(), time_grid(steps));
            out.insert("velocities".into(), tr.velocities.into_iter().flat_map(values).collect());
            out.insert("xs".into(), tr.xs.into_iter().flat_map(values).collect());
            put(&mut out, "x".into(), tr.x);
        }
        "generate" => {
            let model = loaded.full()?;
            let flash = case.params["pad_policy"] == "flash";
            let owned;
            let model = if flash != model.llm.pad_attention_flash {
                let mut copy = model.clone();
                copy.llm.pad_attention_flash = flash;
                owned = copy;
                &owned
            } else {
                model
            };
            let ids: Vec<Vec<u32>> = int_rows(&inputs["input_ids"]).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
            let mask: Vec<Vec<u8>> = int_rows(&inputs["attention_mask"]).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
            let mut noise = std::collections::VecDeque::new();
            for g in 0.. {
                let Some(t) = inputs.get(&format!("noise_g{g}")) else { break };
                let per = t.shape[1] * t.shape[2];
                noise.extend(t.to_f32().chunks(per).map(<[f32]>::to_vec));
            }
            let order = inputs["order"].to_f32().into_iter().map(|x| x as usize).collect();
            let mut rng = Replay { order, noise };
            let p = &case.params;
            let opts = GenerateOptions {
                cfg: p["cfg_scale"].as_f64().unwrap(),
                num_steps: p["num_steps"].as_u64().unwrap() as usize,
                height: p["height"].as_u64().unwrap() as usize,
                width: p["width"].as_u64().unwrap() as usize,
                acc_ratio: p["acc_ratio"].as_u64().unwrap() as usize,
                order: if p["scheduler_type"] == "sequential" { Order::Sequential } else { Order::Random },
                cfg_schedule: if p["cfg_schedule"] == "constant" { CfgSchedule::Constant } else { CfgSchedule::Linear },
                t_bf16: false,
            };
            let img = img_start(case)?;
            let rows = Rows { ids: &ids, mask: &mask, img_start: &img };
            let mut record = |name: &str, v: Vec<f32>| {
                out.insert(name.to_string(), v);
            };
            let mut go = |_: usize, _: usize| true;
            let hooks = Hooks { progress: &mut go, observe: Some(&mut record), profile: None, on_group: None };
            let image = generate(model, rows, &opts, &mut rng, hooks).map_err(|e| e.to_string())?;
            if image.dims()[2] % 8 == 0 && image.dims()[3] % 8 == 0 {
                put(&mut out, "image_s8".into(), strided(image, 8));
            }
            let lh = opts.height / model.vgt_ae.stride;
            let lw = opts.width / model.vgt_ae.stride;
            let (q, p) = model.adaptive_metaquery.crop(lh, lw);
            put(&mut out, "amq_query_crop".into(), q);
            put(&mut out, "amq_pos_crop".into(), p);
        }
        "vit_forward" => {
            let model = loaded.full()?;
            for sfx in suffixes(&inputs, "pixel_values") {
                let pixels = to_device::<4>(&inputs[&format!("pixel_values{sfx}")], device);
                put(&mut out, format!("pixel_values{sfx}"), pixels.clone());
                vit_trace(model, pixels, &sfx, &mut out)?;
            }
            // The Qwen fixtures start from the image and record the normalised pixels.
            for sfx in suffixes(&inputs, "image") {
                let image = to_device::<4>(&inputs[&format!("image{sfx}")], device);
                let pixels = model.vgt_ae.normalize(image, InputNorm::ReferenceMinRule);
                put(&mut out, format!("pixel_values{sfx}"), pixels.clone());
                vit_trace(model, pixels, &sfx, &mut out)?;
            }
        }
        "text_conditions" => {
            let loaded = source::open(&case.model).map_err(|e| e.to_string())?;
            let path = loaded.tokenizer.ok_or("the model has no tokenizer.json")?;
            let (tok, tokens) = vgt_model::prompt::PromptTokenizer::for_model(&path, &loaded.config).map_err(|e| e.to_string())?;
            let prompts: Vec<&str> = case.params["prompts"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
            let batch = vgt_model::prompt::build_batch(&tok, &prompts, None, 1, true, tokens.pad).map_err(|e| e.to_string())?;
            out.insert("input_ids".into(), batch.ids.iter().flatten().map(|&x| x as f32).collect());
            out.insert("attention_mask".into(), batch.mask.iter().flatten().map(|&x| x as f32).collect());
            out.insert("img_start_ids".into(), tokens.img_start.iter().map(|&x| x as f32).collect());
        }
        "ae_encode" => {
            let model = loaded.full()?;
            for sfx in suffixes(&inputs, "image") {
                encode_trace(model, to_device::<4>(&inputs[&format!("image{sfx}")], device), &sfx, &mut out)?;
            }
        }
        "dcae_decode" => {
            let model = loaded.full()?;
            for sfx in suffixes(&inputs, "latent") {
                let img = decode_trace(model, to_device::<4>(&inputs[&format!("latent{sfx}")], device), &sfx, &mut out);
                put(&mut out, format!("image{sfx}"), img);
            }
        }
        "ae_reconstruct" => {
            let model = loaded.full()?;
            let base = if inputs.contains_key("pixel_values") { "pixel_values" } else { "image" };
            for sfx in suffixes(&inputs, base) {
                let image = to_device::<4>(&inputs[&format!("{base}{sfx}")], device);
                encode_trace(model, image.clone(), &sfx, &mut out)?;
                let z = model.vgt_ae.encode(image, InputNorm::ReferenceMinRule);
                let img = decode_trace(model, z, &sfx, &mut out);
                put(&mut out, format!("reconstruction{sfx}"), img.clone());
                put(&mut out, format!("image{sfx}"), img);
            }
        }
        "amq_projectors" => {
            let model = loaded.full()?;
            for g in case.params["grids"].as_array().into_iter().flatten() {
                let (h, w) = (g[0].as_u64().unwrap() as usize, g[1].as_u64().unwrap() as usize);
                let (q, p) = model.adaptive_metaquery.crop(h, w);
                put(&mut out, format!("metaquery_{h}x{w}"), q);
                put(&mut out, format!("pos_{h}x{w}"), p);
            }
            put(&mut out, "in_proj".into(), model.image_in_projector.forward(to_device::<2>(&inputs["z"], device)));
            put(&mut out, "out_proj".into(), model.image_out_projector.forward(to_device::<2>(&inputs["h"], device)));
            let ids = img_start(case)?;
            put(&mut out, "img_start_embed".into(), model.embed(&[ids]));
        }
        "llm_prefill" | "llm_cached_calls" => {
            let model = loaded.full()?;
            let mut model_llm = model.llm.clone();
            model_llm.pad_attention_flash = case.params["pad_policy"] == "flash";
            let mask: Vec<Vec<u8>> = int_rows(&inputs["full_attention_mask"]).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
            let mut cache = KvCache::new();
            for k in 0.. {
                let (e, p) = if case.kind == "llm_prefill" {
                    if k > 0 { break }
                    ("inputs_embeds".to_string(), "position_ids".to_string())
                } else {
                    (format!("call{k}_inputs_embeds"), format!("call{k}_position_ids"))
                };
                let Some(embeds) = inputs.get(&e) else { break };
                let mut input = LlmInput::new(to_device::<3>(embeds, device), int_rows(&inputs[&p]));
                if k == 0 {
                    input = input.mask(mask.clone());
                }
                let h = model_llm.forward(input, &mut cache);
                let name = if case.kind == "llm_prefill" { "last_hidden_state".to_string() } else { format!("call{k}_last_hidden_state") };
                put(&mut out, name, h);
            }
            if case.kind == "llm_prefill" {
                // Assemble the prefill from ids, mask, the <img> id and the query cells ourselves.
                let ids: Vec<Vec<u32>> = int_rows(&inputs["input_ids"]).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
                let m: Vec<Vec<u8>> = int_rows(&inputs["attention_mask"]).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
                let grid = &case.params["grid"];
                let (h, w) = (grid[0].as_u64().unwrap() as usize, grid[1].as_u64().unwrap() as usize);
                let (q, p) = model.adaptive_metaquery.crop(h, w);
                let cells: Vec<usize> = case.params["query_cells"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
                let img = img_start(case)?;
                let (embeds, _, positions) = model.prefill_input(&ids, &m, &img, q + p, &cells);
                put(&mut out, "assembled_inputs_embeds".into(), embeds);
                out.insert("assembled_position_ids".into(), positions.iter().flatten().map(|&x| x as f32).collect());
            }
        }
        "train_loss" => train_loss(case, loaded, &inputs, device, &mut out)?,
        other => return Err(format!("unknown case kind `{other}`").into()),
    }
    Ok(out)
}

/// The training loss and gradients (spec §4.1): the flow head alone (head-micro) or the whole
/// training forward; gradients are compared in checkpoint orientation.
fn train_loss(case: &Case, loaded: &Loaded, inputs: &TensorMap, device: &Device, out: &mut Produced) -> Result<(), Failed> {
    let (loss, prefix, stages) = match loaded {
        Loaded::Head(head) => {
            let m = inputs["u"].numel();
            let mask = match inputs.get("loss_mask_f32") {
                Some(t) => to_device::<1>(t, device),
                None => Tensor::<1>::ones([m], device),
            };
            let f = flow_matching_loss(
                &head.net,
                to_device::<2>(&inputs["target"], device),
                to_device::<2>(&inputs["c"], device),
                to_device::<2>(&inputs["eps"], device),
                to_device::<1>(&inputs["u"], device),
                mask,
                case.params["timeshift"].as_f64().unwrap_or(TIME_SHIFT),
            );
            put(out, "t".into(), f.t);
            put(out, "xt".into(), f.xt);
            put(out, "v".into(), f.v);
            (f.loss, "image_head.", 0)
        }
        Loaded::Full(model) => {
            let ids: Vec<Vec<u32>> = int_rows(&inputs["input_ids"]).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
            let mask: Vec<Vec<u8>> = int_rows(&inputs["attention_mask"]).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
            let latents = model.vgt_ae.encode(to_device::<4>(&inputs["pixel_values"], device), InputNorm::ReferenceMinRule).detach();
            put(out, "latents".into(), latents.clone());
            let img = img_start(case)?;
            let batch = TrainBatch { ids: &ids, mask: &mask, img_start: &img, latents };
            let noise = StepNoise {
                order: inputs["order"].to_f32().into_iter().map(|x| x as usize).collect(),
                u: inputs["u"].to_f32(),
                eps: inputs["eps"].to_f32(),
            };
            let o = model.train_forward(&batch, &noise, case.params["timeshift"].as_f64().unwrap_or(TIME_SHIFT));
            put(out, "t".into(), o.flow.t);
            put(out, "xt".into(), o.flow.xt);
            put(out, "v".into(), o.flow.v);
            put(out, "cond".into(), o.cond);
            (o.flow.loss, "", model.vgt_ae.decoder.up_blocks.len())
        }
        Loaded::Nothing => return Err("no model".into()),
    };
    put(out, "loss".into(), loss.clone());
    let grads = loss.backward();
    let (by_path, fields) = match loaded {
        Loaded::Head(h) => (Grads::collect(h, &grads, 1.0).by_path, expected_params(h)),
        Loaded::Full(m) => (Grads::collect(m.as_ref(), &grads, 1.0).by_path, expected_params(m.as_ref())),
        Loaded::Nothing => unreachable!(),
    };
    for key in case.params["grad_params"].as_array().into_iter().flatten().filter_map(|k| k.as_str()) {
        let path = vgt_model::weights::keymap::module_path(key, stages);
        let path = path.strip_prefix(prefix).unwrap_or(&path).to_string();
        let g = by_path.get(&path).ok_or_else(|| format!("no gradient for `{key}` (module path `{path}`)"))?;
        let field = fields.iter().find(|f| f.path == path).ok_or_else(|| format!("no parameter `{path}`"))?;
        let mut v = values(g.clone());
        if field.linear_weight {
            let (o, i) = (field.shape[0], field.shape[1]);
            v = (0..o * i).map(|k| v[(k % i) * o + k / i]).collect();
        }
        out.insert(format!("grad.{key}"), v);
    }
    Ok(())
}

fn run_case(case: &Case, devices: &[ComputeDevice]) -> Result<(), Failed> {
    let want = read_tensors(&case.dir.join("outputs.safetensors"));
    let mut failures = Vec::new();
    for dev in devices {
        let device = if case.kind == "train_loss" { dev.device.clone().autodiff() } else { dev.device.clone() };
        let loaded = load_for(case, &device)?;
        let got = run_kind(case, &loaded, &device)?;
        for name in &case.outputs {
            match got.get(name) {
                None => failures.push(format!("[{}] output `{name}` is not produced", dev.kind.name())),
                Some(g) => {
                    if let Some(msg) = compare(name, g, &want[name].to_f32(), case.atol, case.rtol) {
                        failures.push(format!("[{}] {msg}", dev.kind.name()));
                    }
                }
            }
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("\n").into()) }
}

fn main() {
    let args = Arguments::from_args();
    let devices = std::sync::Arc::new(test_devices());
    let trials = discover()
        .into_iter()
        .map(|case| {
            let name = format!(
                "{}/{}",
                case.model.file_name().unwrap().to_string_lossy(),
                case.dir.file_name().unwrap().to_string_lossy()
            );
            let family = case.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let pending = PENDING.contains(&case.kind.as_str()) || PENDING_MODELS.contains(&family.as_str());
            let devices = devices.clone();
            Trial::test(name, move || run_case(&case, &devices)).with_kind(if pending { "pending" } else { "" }).with_ignored_flag(pending)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
