//! Checkpoints of a tuning run: the adapter (PEFT layout) with the optimiser state, written
//! atomically, read back for `--resume`, and applied to a freshly attached model.

use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::lora::{Adapter, canonical_key};
use super::optim::AdamW;
use super::run::TuneError;
use crate::rng::Seeded;
use crate::weights::apply::PathStack;
use crate::weights::{DType, TensorMap, st};

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io { path: path.to_path_buf(), source }
}

/// The state a checkpoint restores.
pub(crate) struct Resumed {
    pub step: usize,
    pub adapter: Adapter,
    pub optimizer: TensorMap,
    /// The moving average, when the run keeps one.
    pub ema: Option<Adapter>,
}

/// Sets the adapter factors and fully trained tensors of an attached model from a checkpoint.
pub(crate) struct Restore<'a> {
    pub stack: PathStack,
    pub adapter: &'a Adapter,
    pub device: Device,
    pub missing: Vec<String>,
}

impl ModuleMapper for Restore<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let linear = self.stack.is_linear_weight();
        let (raw, transpose) = if let Some(base) = path.strip_suffix(".lora.a") {
            match self.adapter.lora.get(&canonical_key(base)) {
                Some((a, _)) => (a, true),
                None => {
                    self.missing.push(path);
                    return param;
                }
            }
        } else if let Some(base) = path.strip_suffix(".lora.b") {
            match self.adapter.lora.get(&canonical_key(base)) {
                Some((_, b)) => (b, true),
                None => {
                    self.missing.push(path);
                    return param;
                }
            }
        } else if let Some(t) = self.adapter.full.get(&canonical_key(&path)) {
            (t, linear)
        } else {
            return param;
        };
        if !param.is_require_grad() {
            return param;
        }
        let mut shape = raw.shape.clone();
        if transpose {
            shape.reverse();
        }
        let mut t = Tensor::<2>::from_data(TensorData::new(raw.to_f32(), [raw.shape[0], raw.numel() / raw.shape[0].max(1)]), &self.device.clone().without_autodiff());
        if transpose {
            t = t.transpose();
        }
        let t: Tensor<D> = t.reshape(burn::tensor::Shape::from(shape));
        let (id, _, mapper) = param.consume();
        Param::from_mapped_value(id, Tensor::from_inner(t).require_grad(), mapper)
    }
}

/// Draws the LoRA `A` factors from the run's seed (N(0, 1/r), burn's default init) so a run is
/// reproducible from its seed.
pub(crate) struct SeededInit {
    pub stack: PathStack,
    pub rng: Seeded,
    pub std: f32,
}

impl ModuleMapper for SeededInit {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.stack.path().ends_with(".lora.a") {
            return param;
        }
        let (id, t, mapper) = param.consume();
        let shape = t.shape();
        let device = t.device().without_autodiff();
        let values: Vec<f32> = (0..shape.num_elements()).map(|_| self.rng.standard_normal() * self.std).collect();
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
        Param::from_mapped_value(id, Tensor::from_inner(t).require_grad(), mapper)
    }
}

/// Writes `checkpoint/` atomically: everything into `checkpoint.partial/`, then the old folder
/// is moved aside and the new one renamed into place.
pub(crate) fn save_checkpoint(out: &Path, step: usize, adapter: &Adapter, ema: Option<&Adapter>, opt: &AdamW, base: &str) -> Result<PathBuf, TuneError> {
    let dir = out.join("checkpoint");
    let tmp = out.join("checkpoint.partial");
    let old = out.join("checkpoint.old");
    adapter.save(&tmp, base)?;
    if let Some(e) = ema {
        e.save(&tmp.join("ema"), base)?;
    }
    st::save(&tmp.join("optimizer.safetensors"), &opt.state_tensors(), DType::F32, &Default::default())?;
    let state = serde_json::json!({ "step": step, "optimizer_steps": opt.step });
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap_or_default()).map_err(io_err(&state_path))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(io_err(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(dir)
}

pub(crate) fn load_checkpoint(out: &Path) -> Result<Option<Resumed>, TuneError> {
    let dir = [out.join("checkpoint"), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists());
    let Some(dir) = dir else { return Ok(None) };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TuneError::Invalid(format!("{}: invalid JSON ({e})", state_path.display())))?;
    let step = state["step"].as_u64().ok_or_else(|| TuneError::Invalid(format!("{}: no step", state_path.display())))? as usize;
    let adapter = Adapter::load(&dir)?;
    let optimizer = st::load(&dir.join("optimizer.safetensors"))?;
    let ema = if dir.join("ema").exists() { Some(Adapter::load(&dir.join("ema"))?) } else { None };
    Ok(Some(Resumed { step, adapter, optimizer, ema }))
}

/// Keeps the first `steps` lines of the loss log (a resumed run rewrites what came after its
/// checkpoint).
pub(crate) fn truncate_log(path: &Path, steps: usize) -> Result<(), TuneError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text.lines().take(steps).collect();
    let tmp = path.with_extension("jsonl.partial");
    std::fs::write(&tmp, kept.iter().map(|l| format!("{l}\n")).collect::<String>()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

