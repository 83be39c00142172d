//! LoRA on VGT-AR with burn's built-in reparameterisation (`Module::apply_lora`), saved and
//! loaded in the PEFT layout so other tools can read the adapters:
//!
//! - `adapter_config.json`: `peft_type: "LORA"`, `r`, `lora_alpha`, `target_modules`,
//!   `modules_to_save` (the parts trained fully);
//! - `adapter_model.safetensors`: `base_model.model.<key>.lora_A.weight` (`[r, in]`) and
//!   `.lora_B.weight` (`[out, r]`) named after the base model's canonical keys, plus the fully
//!   trained tensors as `base_model.model.<key>`.
//!
//! PEFT's update is `W += (alpha / r)·B·A`; burn's adapter on a `[in, out]` weight is
//! `scale·a·b` with `a = Aᵀ`, `b = Bᵀ`, so the two agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::tensor::Tensor;

use crate::ar::Vgt;
use crate::weights::apply::PathStack;
use crate::weights::{DType, RawTensor, TensorMap, WeightError, st, write_err};

/// The LLM projections LoRA targets by default.
pub const DEFAULT_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The flow head's Linear layers (targets when `flow_head_lora` is on).
const FLOW_HEAD_PREFIX: &str = "image_head.net.";

/// The token embeddings' module path (trained fully with `train_embeddings`).
const EMBEDDINGS: &str = "llm.embed_tokens.";

/// Parts trained fully next to the adapters (module-path prefixes).
const ALWAYS_FULL: &[&str] = &["adaptive_metaquery.", "image_in_projector.", "image_out_projector."];

/// The largest LoRA rank an adapter file may declare.
pub const MAX_RANK: usize = 4096;
/// The largest `lora_alpha` an adapter file may declare (real ones are at most a few hundred).
pub const MAX_ALPHA: f64 = 1e5;
/// The largest magnitude of an adapter value (trained factors and tensors stay far below it).
pub const MAX_ADAPTER_VALUE: f32 = 1e4;
/// The range of a merge weight (`--lora PATH:WEIGHT`, the app's slider).
pub const MAX_MERGE_WEIGHT: f64 = 10.0;

/// An adapter tensor must hold floats, each finite and at most [`MAX_ADAPTER_VALUE`] in size.
fn check_values(name: &str, t: &RawTensor) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("`{name}` holds {} values, expected floats", t.dtype.name()));
    }
    match t.to_f32().iter().find(|v| !(v.is_finite() && v.abs() <= MAX_ADAPTER_VALUE)) {
        Some(v) => Err(format!("`{name}` holds the value {v:?}; an adapter's values are finite and at most {MAX_ADAPTER_VALUE:e} in size")),
        None => Ok(()),
    }
}

/// What to adapt and how.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    /// LLM Linear names (`q_proj`, …) to adapt.
    pub targets: Vec<String>,
    /// Also put adapters on every Linear of the flow head.
    pub flow_head_lora: bool,
    /// Train the flow head fully (instead of, or besides, adapters on it).
    pub train_flow_head: bool,
    /// Train the token embeddings fully: gives a word the base model never saw in training (a
    /// new subject's name) a meaning of its own instead of bending the layers around it.
    #[serde(default)]
    pub train_embeddings: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 16.0,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            flow_head_lora: false,
            train_flow_head: false,
            train_embeddings: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{0}")]
    Invalid(String),
}

/// One float parameter: its module path, id, dims, and whether it is a Linear weight.
struct ParamInfo {
    path: String,
    id: ParamId,
    linear_weight: bool,
}

#[derive(Default)]
struct ParamLister {
    stack: PathStack,
    out: Vec<ParamInfo>,
}

impl ModuleVisitor for ParamLister {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(ParamInfo { path: self.stack.path(), id: param.id, linear_weight: self.stack.is_linear_weight() });
    }
}

fn list_params(model: &Vgt) -> Vec<ParamInfo> {
    let mut v = ParamLister::default();
    model.visit(&mut v);
    v.out
}

impl LoraSettings {
    /// Checks the settings and the target names.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Invalid("the LoRA rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Invalid(format!("the LoRA alpha must be a positive number, got {}", self.alpha)));
        }
        for t in &self.targets {
            if !DEFAULT_TARGETS.contains(&t.as_str()) {
                return Err(LoraError::Invalid(format!(
                    "unknown LoRA target `{t}`; the LLM's Linear layers are {}",
                    DEFAULT_TARGETS.join(", ")
                )));
            }
        }
        if self.targets.is_empty() && !self.flow_head_lora {
            return Err(LoraError::Invalid("no LoRA targets: name at least one LLM projection or enable flow-head LoRA".into()));
        }
        Ok(())
    }

    fn is_target(&self, p: &ParamInfo) -> bool {
        if !p.linear_weight {
            return false;
        }
        if let Some(rest) = p.path.strip_prefix("llm.layers.") {
            let module = rest.rsplit('.').nth(1).unwrap_or("");
            return self.targets.iter().any(|t| t == module);
        }
        self.flow_head_lora && !self.train_flow_head && p.path.starts_with(FLOW_HEAD_PREFIX)
    }

    fn is_full(&self, p: &ParamInfo) -> bool {
        self.is_full_path(&p.path)
    }

    fn is_full_path(&self, path: &str) -> bool {
        ALWAYS_FULL.iter().any(|pre| path.starts_with(pre))
            || (self.train_flow_head && path.starts_with(FLOW_HEAD_PREFIX))
            || (self.train_embeddings && path.starts_with(EMBEDDINGS))
    }

    /// Attaches adapters (every base parameter frozen) and unfreezes the fully trained parts.
    /// The model must live on an autodiff device for training.
    pub fn attach(&self, model: Vgt) -> Result<Vgt, LoraError> {
        self.validate()?;
        let params = list_params(&model);
        let targets: Vec<ParamId> = params.iter().filter(|p| self.is_target(p)).map(|p| p.id).collect();
        if targets.is_empty() {
            return Err(LoraError::Invalid("the LoRA targets match no parameter of this model".into()));
        }
        let full: Vec<ParamId> = params.iter().filter(|p| self.is_full(p)).map(|p| p.id).collect();
        // Adapters in f32 whatever the base's storage: LoRA upcasts an f16 base itself.
        let lora = Lora::new(self.rank, self.alpha).set_dtype(burn::tensor::FloatDType::F32);
        let model = model.apply_lora(lora.set_param_group(ParamGroup::from_ids(targets)));
        Ok(model.unfreeze_group(ParamGroup::from_ids(full)))
    }

    /// Module names PEFT lists in `target_modules`.
    fn target_modules(&self) -> Vec<String> {
        let mut t = self.targets.clone();
        if self.flow_head_lora && !self.train_flow_head {
            t.extend(["fc1", "fc2", "adaLN_modulation.1", "cond_embed", "input_proj", "linear"].map(String::from));
        }
        t
    }

    fn modules_to_save(&self) -> Vec<String> {
        let mut m: Vec<String> = ["adaptive_metaquery", "image_in_projector", "image_out_projector"].map(String::from).to_vec();
        if self.train_flow_head {
            m.push("image_head".into());
        }
        if self.train_embeddings {
            m.push("embed_tokens".into());
        }
        m
    }
}

/// The trainable set of full training (spec §4.1.4): the LLM (embeddings, every layer, the final
/// norm), both position grids, the projectors and the flow head. The AE stays frozen.
pub fn is_fully_trained(path: &str) -> bool {
    path.starts_with("llm.") || path.starts_with(FLOW_HEAD_PREFIX) || ALWAYS_FULL.iter().any(|pre| path.starts_with(pre))
}

/// Freezes everything, then unfreezes the trainable set of full training.
pub fn attach_full(model: Vgt) -> Vgt {
    let ids: Vec<ParamId> = list_params(&model).into_iter().filter(|p| is_fully_trained(&p.path)).map(|p| p.id).collect();
    model.freeze().unfreeze_group(ParamGroup::from_ids(ids))
}

/// The checkpoint key of a trainable module path (the LLM, the position queries, the
/// projectors and the flow head; see [`crate::weights::keymap::canonical_of`]).
pub fn canonical_key(path: &str) -> String {
    crate::weights::keymap::canonical_of(path, 0)
}

/// A trained adapter as plain tensors in checkpoint orientation.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: usize,
    pub alpha: f64,
    /// base weight key (`….q_proj.weight`) → (`A [r, in]`, `B [out, r]`)
    pub lora: BTreeMap<String, (RawTensor, RawTensor)>,
    /// canonical key → replacement tensor (the fully trained parts)
    pub full: TensorMap,
    pub settings: Option<LoraSettings>,
}

/// A tensor's values as a checkpoint tensor (a 2-D one transposed when asked).
pub(crate) fn raw_of<const D: usize>(t: Tensor<D>, transpose: bool) -> RawTensor {
    let t = t.inner();
    let dims = t.dims();
    if transpose && D == 2 {
        let t2: Tensor<2> = t.reshape([dims[0], dims[1]]).transpose();
        let values = t2.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        return RawTensor::from_f32(vec![dims[1], dims[0]], &values);
    }
    let values = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    RawTensor::from_f32(dims.to_vec(), &values)
}

struct AdapterReader<'a> {
    stack: PathStack,
    full: &'a dyn Fn(&str) -> bool,
    a: BTreeMap<String, RawTensor>,
    b: BTreeMap<String, RawTensor>,
    out: Adapter,
}

impl ModuleVisitor for AdapterReader<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.path();
        // burn: a [in, r], b [r, out] → PEFT: A = aᵀ [r, in], B = bᵀ [out, r]
        if let Some(base) = path.strip_suffix(".lora.a") {
            self.a.insert(canonical_key(base), raw_of(param.val(), true));
            return;
        }
        if let Some(base) = path.strip_suffix(".lora.b") {
            self.b.insert(canonical_key(base), raw_of(param.val(), true));
            return;
        }
        if (self.full)(&path) {
            self.out.full.insert(canonical_key(&path), raw_of(param.val(), self.stack.is_linear_weight()));
        }
    }
}

impl Adapter {
    /// Reads the adapters and fully trained tensors out of a model made by [`LoraSettings::attach`].
    pub fn from_model(model: &Vgt, settings: &LoraSettings) -> Self {
        let full = |path: &str| settings.is_full_path(path);
        Self::read(model, settings, &full)
    }

    /// The trainable set of full training (spec §4.1.4) as an adapter with no LoRA factors.
    pub fn from_full_training(model: &Vgt) -> Self {
        Self::read(model, &LoraSettings::default(), &is_fully_trained)
    }

    fn read(model: &Vgt, settings: &LoraSettings, full: &dyn Fn(&str) -> bool) -> Self {
        let out = Adapter { rank: settings.rank, alpha: settings.alpha, lora: BTreeMap::new(), full: TensorMap::new(), settings: Some(settings.clone()) };
        let mut r = AdapterReader { stack: PathStack::default(), full, a: BTreeMap::new(), b: BTreeMap::new(), out };
        model.visit(&mut r);
        let mut out = r.out;
        for (key, a) in r.a {
            if let Some(b) = r.b.get(&key) {
                out.lora.insert(key, (a, b.clone()));
            }
        }
        out
    }

    /// Writes the PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) atomically:
    /// into `DIR.partial/`, then renamed over `DIR`.
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<(), WeightError> {
        let tmp = PathBuf::from(format!("{}.partial", dir.display()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(write_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(write_err(&tmp))?;
        let mut tensors = TensorMap::new();
        for (key, (a, b)) in &self.lora {
            let module = key.strip_suffix(".weight").unwrap_or(key);
            tensors.insert(format!("base_model.model.{module}.lora_A.weight"), a.clone());
            tensors.insert(format!("base_model.model.{module}.lora_B.weight"), b.clone());
        }
        for (key, t) in &self.full {
            tensors.insert(format!("base_model.model.{key}"), t.clone());
        }
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        st::save(&tmp.join("adapter_model.safetensors"), &tensors, DType::F32, &meta)?;
        let settings = self.settings.clone().unwrap_or_default();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "target_modules": settings.target_modules(),
            "modules_to_save": settings.modules_to_save(),
            "vgt_studio": settings,
        });
        let cfg = tmp.join("adapter_config.json");
        let json = serde_json::to_vec_pretty(&config).map_err(|e| WeightError::Format(format!("cannot encode the adapter settings ({e})")))?;
        crate::fsutil::write_bytes_atomic(&cfg, &json).map_err(write_err(&cfg))?;
        crate::fsutil::sync_dir(&tmp).map_err(write_err(&tmp))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(write_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(write_err(dir))?;
        crate::fsutil::sync_parent(dir).map_err(write_err(dir))
    }

    /// Reads a PEFT adapter: its folder, or its `adapter_model.safetensors` (the config is read
    /// from beside it). Refuses what cannot be a trained adapter: a rank or alpha out of range, a
    /// factor without its partner or of the wrong shape, integer tensors, and values that are not
    /// finite or beyond [`MAX_ADAPTER_VALUE`] (they would turn every image black).
    pub fn load(path: &Path) -> Result<Self, LoraError> {
        let is_dir = crate::fsutil::metadata(path)
            .map_err(|e| LoraError::Invalid(format!("{}: {} (expected a LoRA adapter folder or its adapter_model.safetensors)", path.display(), crate::fsutil::describe_io(&e))))?
            .is_dir();
        let (dir, file) = if is_dir {
            (path.to_path_buf(), path.join("adapter_model.safetensors"))
        } else {
            (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = crate::fsutil::read_regular_string(&cfg_path).map_err(|e| {
            LoraError::Invalid(format!("{}: {} (a LoRA adapter folder needs adapter_config.json)", cfg_path.display(), crate::fsutil::describe_io(&e)))
        })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoraError::Invalid(format!("{}: invalid JSON ({e})", cfg_path.display())))?;
        let bad_cfg = |what: String| LoraError::Invalid(format!("{}: {what}", cfg_path.display()));
        let rank = cfg["r"].as_u64().filter(|&r| r > 0 && r <= MAX_RANK as u64).ok_or_else(|| bad_cfg(format!("`r` must be a whole number from 1 to {MAX_RANK}, found {}", cfg["r"])))? as usize;
        let alpha = cfg["lora_alpha"].as_f64().ok_or_else(|| bad_cfg("no `lora_alpha`".into()))?;
        if !(alpha.is_finite() && alpha > 0.0 && alpha <= MAX_ALPHA) {
            return Err(bad_cfg(format!("`lora_alpha` is {alpha:?}, expected a positive number up to {MAX_ALPHA}")));
        }
        let all = st::load(&file)?;
        let bad = |what: String| LoraError::Invalid(format!("{}: {what}", file.display()));
        for (name, t) in &all {
            check_values(name, t).map_err(bad)?;
        }
        let mut lora = BTreeMap::new();
        let mut full = TensorMap::new();
        let mut pending_a = BTreeMap::new();
        let mut pending_b = BTreeMap::new();
        for (name, t) in &all {
            let key = name.strip_prefix("base_model.model.").unwrap_or(name).to_string();
            if let Some(module) = key.strip_suffix(".lora_A.weight") {
                pending_a.insert(module.to_string(), t.clone());
            } else if let Some(module) = key.strip_suffix(".lora_B.weight") {
                pending_b.insert(module.to_string(), t.clone());
            } else {
                full.insert(key, t.clone());
            }
        }
        if let Some(module) = pending_b.keys().find(|m| !pending_a.contains_key(*m)) {
            return Err(bad(format!("`{module}` has lora_B but no lora_A")));
        }
        for (module, a) in pending_a {
            let b = pending_b.remove(&module).ok_or_else(|| bad(format!("`{module}` has lora_A but no lora_B")))?;
            if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != rank || b.shape[1] != rank {
                return Err(bad(format!(
                    "`{module}` has lora_A {:?} and lora_B {:?}, expected [r, in] and [out, r] with r = {rank}",
                    a.shape, b.shape
                )));
            }
            lora.insert(format!("{module}.weight"), (a, b));
        }
        let settings = serde_json::from_value(cfg["vgt_studio"].clone()).ok();
        Ok(Self { rank, alpha, lora, full, settings })
    }

    /// Bakes the adapter into `tensors` (canonical keys, checkpoint orientation) with `weight`:
    /// `W += weight·(alpha/r)·B·A`; fully trained tensors move from the base value towards the
    /// adapter's by `weight` (1 = replace).
    pub fn merge_into(&self, tensors: &mut TensorMap, weight: f64) -> Result<(), LoraError> {
        if !(weight.is_finite() && weight.abs() <= MAX_MERGE_WEIGHT) {
            return Err(LoraError::Invalid(format!("the LoRA weight {weight:?} is out of range: expected -{MAX_MERGE_WEIGHT} to {MAX_MERGE_WEIGHT}")));
        }
        let scale = (weight * self.alpha / self.rank as f64) as f32;
        for (key, (a, b)) in &self.lora {
            let base = tensors.get(key).ok_or_else(|| LoraError::Invalid(format!("the adapter targets `{key}`, which this model does not have")))?;
            let (out_dim, in_dim) = (b.shape[0], a.shape[1]);
            if base.shape != [out_dim, in_dim] {
                return Err(LoraError::Invalid(format!(
                    "the adapter's `{key}` is {out_dim}×{in_dim} but the model's is {:?}",
                    base.shape
                )));
            }
            let (av, bv) = (a.to_f32(), b.to_f32());
            let mut w = base.to_f32();
            let r = self.rank;
            for o in 0..out_dim {
                let brow = &bv[o * r..(o + 1) * r];
                let row = &mut w[o * in_dim..(o + 1) * in_dim];
                for (k, &bk) in brow.iter().enumerate() {
                    let f = scale * bk;
                    if f == 0.0 {
                        continue;
                    }
                    for (x, &ak) in row.iter_mut().zip(&av[k * in_dim..(k + 1) * in_dim]) {
                        *x += f * ak;
                    }
                }
            }
            if w.iter().any(|x| !x.is_finite()) {
                return Err(LoraError::Invalid(format!("merging the adapter makes `{key}` non-finite (NaN or infinity): its weight or alpha is too large")));
            }
            tensors.insert(key.clone(), RawTensor::from_f32(base.shape.clone(), &w));
        }
        for (key, t) in &self.full {
            let base = tensors.get(key).ok_or_else(|| LoraError::Invalid(format!("the adapter replaces `{key}`, which this model does not have")))?;
            if base.shape != t.shape {
                return Err(LoraError::Invalid(format!("the adapter's `{key}` has shape {:?}, the model's {:?}", t.shape, base.shape)));
            }
            let (b, n) = (base.to_f32(), t.to_f32());
            let w = weight as f32;
            let merged: Vec<f32> = b.iter().zip(&n).map(|(b, n)| b + w * (n - b)).collect();
            tensors.insert(key.clone(), RawTensor::from_f32(base.shape.clone(), &merged));
        }
        Ok(())
    }
}

impl Adapter {
    /// One exponential-moving-average step towards `current` (mmengine's form:
    /// `ema ← ema + momentum·(θ − ema)`); tensors new to the average are copied.
    pub fn ema_update(&mut self, current: &Adapter, momentum: f64) {
        let m = momentum as f32;
        let step = |ema: &RawTensor, now: &RawTensor| {
            let (e, n) = (ema.to_f32(), now.to_f32());
            RawTensor::from_f32(now.shape.clone(), &e.iter().zip(&n).map(|(e, n)| e + m * (n - e)).collect::<Vec<f32>>())
        };
        for (k, (a, b)) in &current.lora {
            let next = match self.lora.get(k) {
                Some((ea, eb)) if ea.shape == a.shape && eb.shape == b.shape => (step(ea, a), step(eb, b)),
                _ => (a.clone(), b.clone()),
            };
            self.lora.insert(k.clone(), next);
        }
        for (k, t) in &current.full {
            let next = match self.full.get(k) {
                Some(e) if e.shape == t.shape => step(e, t),
                _ => t.clone(),
            };
            self.full.insert(k.clone(), next);
        }
    }
}

/// `PATH[:WEIGHT]` as given to `--lora` (weight 1 by default). A Windows drive colon or a path
/// that exists as written is never split.
pub fn parse_lora_arg(arg: &str) -> Result<(PathBuf, f64), String> {
    if Path::new(arg).exists() {
        return Ok((PathBuf::from(arg), 1.0));
    }
    if let Some((p, w)) = arg.rsplit_once(':')
        && let Ok(w) = w.parse::<f64>()
    {
        if !(w.is_finite() && w.abs() <= MAX_MERGE_WEIGHT) {
            return Err(format!("LoRA weight `{w:?}` is out of range: expected -{MAX_MERGE_WEIGHT} to {MAX_MERGE_WEIGHT}"));
        }
        return Ok((PathBuf::from(p), w));
    }
    Ok((PathBuf::from(arg), 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VgtConfig;
    use crate::weights::apply::expected_params;
    use crate::weights::keymap::module_path;

    #[test]
    fn canonical_keys_invert_the_module_paths_of_every_trainable_part() {
        let c = VgtConfig::internvl3_0_6b();
        let device = burn::tensor::Device::flex();
        let model = Vgt::for_generation(&c, &device);
        let mut checked = 0;
        for p in expected_params(&model) {
            if p.path.starts_with("vgt_ae.") {
                continue;
            }
            let key = canonical_key(&p.path);
            assert_eq!(module_path(&key, 0), p.path, "{key}");
            checked += 1;
        }
        assert!(checked > 300, "{checked}");
        assert_eq!(
            canonical_key("image_head.net.res_blocks.3.adaLN_modulation.weight"),
            "image_head.net.res_blocks.3.adaLN_modulation.1.weight"
        );
        assert_eq!(canonical_key("image_head.net.time_embed.mlp.fc2.bias"), "image_head.net.time_embed.mlp.2.bias");
    }

    #[test]
    fn merging_adds_scaled_b_times_a_in_checkpoint_orientation() {
        // W [2 out, 3 in] = 0; A [1, 3] = [1, 2, 3]; B [2, 1] = [1, −1]; alpha 2, r 1, weight 0.5
        // → W += 0.5·2·B·A = [[1, 2, 3], [−1, −2, −3]].
        let mut tensors = TensorMap::new();
        tensors.insert("m.weight".into(), RawTensor::from_f32(vec![2, 3], &[0.0; 6]));
        let mut lora = BTreeMap::new();
        lora.insert("m.weight".to_string(), (RawTensor::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]), RawTensor::from_f32(vec![2, 1], &[1.0, -1.0])));
        let adapter = Adapter { rank: 1, alpha: 2.0, lora, full: TensorMap::new(), settings: None };
        adapter.merge_into(&mut tensors, 0.5).unwrap();
        assert_eq!(tensors["m.weight"].to_f32(), vec![1.0, 2.0, 3.0, -1.0, -2.0, -3.0]);
        let mut wrong = TensorMap::new();
        wrong.insert("m.weight".into(), RawTensor::from_f32(vec![3, 2], &[0.0; 6]));
        assert!(adapter.merge_into(&mut wrong, 1.0).unwrap_err().to_string().contains("m.weight"));
    }

    #[test]
    fn ema_moves_towards_the_current_values_by_the_momentum() {
        let t = |v: &[f32]| RawTensor::from_f32(vec![v.len()], v);
        let mut full = TensorMap::new();
        full.insert("w".into(), t(&[1.0, 3.0]));
        let mut ema = Adapter { rank: 1, alpha: 1.0, lora: BTreeMap::new(), full, settings: None };
        let mut now = TensorMap::new();
        now.insert("w".into(), t(&[3.0, -1.0]));
        now.insert("new".into(), t(&[5.0]));
        let current = Adapter { rank: 1, alpha: 1.0, lora: BTreeMap::new(), full: now, settings: None };
        ema.ema_update(&current, 0.25);
        // 1 + 0.25·(3 − 1) = 1.5; 3 + 0.25·(−1 − 3) = 2; a new tensor is copied.
        assert_eq!(ema.full["w"].to_f32(), vec![1.5, 2.0]);
        assert_eq!(ema.full["new"].to_f32(), vec![5.0]);
    }

    #[test]
    fn lora_arguments_take_an_optional_weight() {
        assert_eq!(parse_lora_arg("runs/a/adapter:0.7").unwrap(), (PathBuf::from("runs/a/adapter"), 0.7));
        assert_eq!(parse_lora_arg("runs/a/adapter").unwrap(), (PathBuf::from("runs/a/adapter"), 1.0));
        assert!(parse_lora_arg("a:inf").is_err());
    }
}
