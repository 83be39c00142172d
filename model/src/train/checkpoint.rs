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
    /// The checkpoint keys that found their parameter (what is left was not restored).
    pub used: std::collections::BTreeSet<String>,
}

impl Restore<'_> {
    /// The checkpoint's adapters and tensors that no parameter of the model took: the run's
    /// settings no longer train them (e.g. `run.json`'s targets edited by hand).
    pub fn unused(&self) -> Vec<String> {
        let lora = self.adapter.lora.keys();
        let full = self.adapter.full.keys();
        lora.chain(full).filter(|k| !self.used.contains(*k)).cloned().collect()
    }
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
        let key = match path.strip_suffix(".lora.a").or_else(|| path.strip_suffix(".lora.b")) {
            Some(base) => canonical_key(base),
            None => canonical_key(&path),
        };
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
        self.used.insert(key);
        let mut shape = raw.shape.clone();
        if transpose {
            shape.reverse();
        }
        let expected = param.lazy_shape().to_vec();
        if shape != expected || raw.shape.is_empty() {
            self.missing.push(format!("{path} (shape {shape:?}, expected {expected:?})"));
            return param;
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

// Crash injection for the save protocol's tests: the save stops before its Nth filesystem
// step, as a kill there would leave it.
#[cfg(test)]
thread_local! {
    static STEPS_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// One filesystem step of a checkpoint save (see [`save_checkpoint`]).
fn fs_step<T>(f: impl FnOnce() -> Result<T, TuneError>) -> Result<T, TuneError> {
    #[cfg(test)]
    {
        let left = STEPS_LEFT.with(|c| c.get());
        if let Some(n) = left {
            if n == 0 {
                return Err(TuneError::Invalid("injected crash".into()));
            }
            STEPS_LEFT.with(|c| c.set(Some(n - 1)));
        }
    }
    f()
}

/// Removes a folder of ours if it is there.
fn remove_if_there(dir: &Path) -> Result<(), TuneError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(dir)(e)),
        _ => Ok(()),
    }
}

/// Writes `checkpoint/` so that a kill at any point, or several kills in a row, never loses
/// the last complete checkpoint. The rule: a folder is only ever *named* `checkpoint` or
/// `checkpoint.old` once it is complete, and one of the two always is. New files go into
/// `checkpoint.partial/`; a folder is deleted only after it has been renamed to
/// `checkpoint.trash/`. [`load_checkpoint`] reads `checkpoint/`, else `checkpoint.old/`.
pub(crate) fn save_checkpoint(out: &Path, step: usize, adapter: &Adapter, ema: Option<&Adapter>, opt: &AdamW, base: &str) -> Result<PathBuf, TuneError> {
    let dir = out.join("checkpoint");
    let tmp = out.join("checkpoint.partial");
    let old = out.join("checkpoint.old");
    let trash = out.join("checkpoint.trash");
    // Leftovers of an interrupted save are incomplete by the rule.
    fs_step(|| remove_if_there(&tmp))?;
    fs_step(|| remove_if_there(&trash))?;
    fs_step(|| Ok(adapter.save(&tmp, base)?))?;
    if let Some(e) = ema {
        fs_step(|| Ok(e.save(&tmp.join("ema"), base)?))?;
    }
    fs_step(|| Ok(st::save(&tmp.join("optimizer.safetensors"), &opt.state_tensors(), DType::F32, &Default::default())?))?;
    let state = serde_json::json!({ "step": step, "optimizer_steps": opt.step });
    let state_path = tmp.join("state.json");
    fs_step(|| crate::fsutil::write_bytes_atomic(&state_path, state.to_string().as_bytes()).map_err(io_err(&state_path)))?;
    // Every file above went through `fsutil::write_atomic`, which syncs it and its folder: the
    // new checkpoint is on disk before its folder takes a complete name, so a power loss, not
    // only a kill, keeps the last complete checkpoint.
    if dir.exists() {
        if old.exists() {
            // `checkpoint` is complete, so the older one may go.
            fs_step(|| std::fs::rename(&old, &trash).map_err(io_err(&old)))?;
            fs_step(|| remove_if_there(&trash))?;
        }
        fs_step(|| std::fs::rename(&dir, &old).map_err(io_err(&dir)))?;
    }
    fs_step(|| std::fs::rename(&tmp, &dir).map_err(io_err(&dir)))?;
    crate::fsutil::sync_dir(out).map_err(io_err(out))?;
    if old.exists() {
        fs_step(|| std::fs::rename(&old, &trash).map_err(io_err(&old)))?;
        fs_step(|| remove_if_there(&trash))?;
    }
    Ok(dir)
}

/// Reads the run's checkpoint (`checkpoint/`, else `checkpoint.old/`, see [`save_checkpoint`]).
/// `None` when the folder has neither. A checkpoint that is there but unreadable is an error,
/// never a silent restart.
pub(crate) fn load_checkpoint(out: &Path) -> Result<Option<Resumed>, TuneError> {
    let dir = [out.join("checkpoint"), out.join("checkpoint.old")].into_iter().find(|d| d.is_dir());
    let Some(dir) = dir else { return Ok(None) };
    let state_path = dir.join("state.json");
    let bad = |what: String| TuneError::Invalid(format!("the checkpoint in {} is unusable: {what}", dir.display()));
    let text = crate::fsutil::read_regular_string(&state_path).map_err(|e| bad(format!("cannot read state.json ({})", crate::fsutil::describe_io(&e))))?;
    let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("state.json is invalid JSON ({e})")))?;
    let step = state["step"].as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| bad("state.json has no step".into()))?;
    let optimizer_steps = state["optimizer_steps"].as_u64().and_then(|s| usize::try_from(s).ok());
    if optimizer_steps.is_some_and(|o| o != step) {
        return Err(bad(format!("state.json says step {step} but {} optimiser steps", optimizer_steps.unwrap_or_default())));
    }
    let adapter = Adapter::load(&dir).map_err(|e| bad(e.to_string()))?;
    let optimizer = st::load(&dir.join("optimizer.safetensors")).map_err(|e| bad(e.to_string()))?;
    let ema = if dir.join("ema").exists() { Some(Adapter::load(&dir.join("ema")).map_err(|e| bad(e.to_string()))?) } else { None };
    Ok(Some(Resumed { step, adapter, optimizer, ema }))
}

/// Keeps the first `steps` lines of the loss log (a resumed run rewrites what came after its
/// checkpoint).
pub(crate) fn truncate_log(path: &Path, steps: usize) -> Result<(), TuneError> {
    if !path.exists() {
        return Ok(());
    }
    let text = crate::fsutil::read_regular_string(path).map_err(io_err(path))?;
    let kept: String = text.lines().take(steps).map(|l| format!("{l}\n")).collect();
    crate::fsutil::write_bytes_atomic(path, kept.as_bytes()).map_err(io_err(path))
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWConfig;
    use crate::weights::RawTensor;

    fn adapter(step: usize) -> Adapter {
        let mut full = TensorMap::new();
        full.insert("image_out_projector.bias".into(), RawTensor::from_f32(vec![2], &[step as f32, 1.0]));
        Adapter { rank: 1, alpha: 1.0, lora: Default::default(), full, settings: None }
    }

    fn save_step(out: &Path, step: usize, crash_after: Option<usize>) -> Result<PathBuf, TuneError> {
        STEPS_LEFT.with(|c| c.set(crash_after));
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.step = step;
        let r = save_checkpoint(out, step, &adapter(step), None, &opt, "base");
        STEPS_LEFT.with(|c| c.set(None));
        r
    }

    /// What `--resume` would get: the step, checked against the adapter it came with.
    fn resumed_step(out: &Path) -> usize {
        let r = load_checkpoint(out).unwrap().expect("a complete checkpoint must remain");
        let values = r.adapter.full["image_out_projector.bias"].to_f32();
        assert_eq!(values[0] as usize, r.step, "state.json and the adapter come from one save");
        r.step
    }

    /// A save has this many filesystem steps at most (the count of `fs_step` calls).
    const STEPS: usize = 11;

    /// Kills (the save stopped before its Nth step) in every position of two saves in a row,
    /// then a third save uninterrupted: a complete checkpoint is always there, never older than
    /// the last finished save, and a later save works.
    #[test]
    fn any_sequence_of_kills_keeps_a_complete_checkpoint() {
        for first in 0..=STEPS {
            for second in 0..=STEPS {
                let tmp = tempfile::tempdir().unwrap();
                let out = tmp.path();
                save_step(out, 1, None).unwrap();
                assert_eq!(resumed_step(out), 1);
                let a = save_step(out, 2, Some(first));
                let after_first = resumed_step(out);
                assert!(after_first == 1 || after_first == 2, "kill at {first}: step {after_first}");
                if a.is_ok() {
                    assert_eq!(after_first, 2);
                }
                let b = save_step(out, 3, Some(second));
                let after_second = resumed_step(out);
                assert!(after_second >= after_first, "kills at {first}, {second}: went back to {after_second}");
                if b.is_ok() {
                    assert_eq!(after_second, 3);
                }
                save_step(out, 4, None).unwrap();
                assert_eq!(resumed_step(out), 4, "kills at {first}, {second}");
                let names: Vec<String> = std::fs::read_dir(out).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                assert_eq!(names, vec!["checkpoint".to_string()], "kills at {first}, {second}: leftovers");
            }
        }
    }

    #[test]
    fn an_unreadable_checkpoint_is_an_error_not_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        save_step(tmp.path(), 5, None).unwrap();
        std::fs::write(tmp.path().join("checkpoint/state.json"), b"{\"step\": 18446744073709551615, \"optimizer_steps\": 5}").unwrap();
        let e = load_checkpoint(tmp.path()).err().expect("a wrong step must be refused").to_string();
        assert!(e.contains("unusable"), "{e}");
        std::fs::remove_file(tmp.path().join("checkpoint/state.json")).unwrap();
        let e = load_checkpoint(tmp.path()).err().expect("a missing state.json must be refused").to_string();
        assert!(e.contains("cannot read state.json"), "{e}");
    }
}
