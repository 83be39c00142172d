//! AdamW with the reference's rules (spec §4.1.4): decoupled weight decay only on parameters
//! with two or more dimensions, gradient clipping by the global norm, linear warmup then cosine
//! decay. Written over burn's module traversal so the state is keyed by parameter path and can
//! be saved and restored exactly (`--resume`).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::weights::apply::PathStack;
use crate::weights::{RawTensor, TensorMap};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global-norm clipping threshold (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl Default for AdamWConfig {
    /// The SFT settings of spec §4.1.4.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05, clip_norm: Some(1.0) }
    }
}

/// Linear warmup from `lr·warmup_factor` to `lr` over `warmup` steps, then cosine to `min_lr`
/// at `total` (mmengine's LinearLR + CosineAnnealingLR, spec §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub warmup_factor: f64,
    pub total: usize,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            let f = self.warmup_factor + (1.0 - self.warmup_factor) * step as f64 / self.warmup as f64;
            return self.lr * f;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.min_lr + (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
    }
}

/// First and second moments of one parameter (flattened, on the plain device).
#[derive(Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// The optimiser: its settings, the step count and the moments per parameter path.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimiser steps taken.
    pub step: usize,
    state: BTreeMap<String, Moments>,
}

/// Gradients of the trainable parameters, flattened, keyed by module path.
pub struct Grads {
    pub by_path: BTreeMap<String, Tensor<1>>,
}

impl Grads {
    /// Reads the gradients of every trainable parameter of `module` out of `grads` (leaving the
    /// tape's other entries), scaled by `scale`.
    pub fn collect<M: Module>(module: &M, grads: &Gradients, scale: f64) -> Self {
        let mut v = GradCollector { path: PathStack::default(), grads, out: BTreeMap::new(), scale };
        module.visit(&mut v);
        Self { by_path: v.out }
    }

    /// Adds another micro-batch's gradients (gradient accumulation).
    pub fn accumulate(&mut self, other: Grads) {
        for (k, g) in other.by_path {
            match self.by_path.remove(&k) {
                Some(prev) => self.by_path.insert(k, prev + g),
                None => self.by_path.insert(k, g),
            };
        }
    }

    /// The global L2 norm (one read-back).
    pub fn norm(&self) -> f64 {
        let mut total: Option<Tensor<1>> = None;
        for g in self.by_path.values() {
            let s = g.clone().powi_scalar(2).sum();
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
    }
}

struct GradCollector<'a> {
    path: PathStack,
    grads: &'a Gradients,
    out: BTreeMap<String, Tensor<1>>,
    scale: f64,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = param.base().grad(self.grads) {
            let n = g.shape().num_elements();
            let g = g.reshape([n]).cast(burn::tensor::FloatDType::F32);
            let g = if self.scale == 1.0 { g } else { g.mul_scalar(self.scale as f32) };
            self.out.insert(self.path.path(), g);
        }
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, state: BTreeMap::new() }
    }

    /// Applies one update with learning rate `lr`; returns the module and the gradient norm
    /// before clipping.
    pub fn update<M: Module>(&mut self, module: M, grads: Grads, lr: f64) -> (M, f64) {
        let norm = grads.norm();
        let clip = match self.config.clip_norm {
            Some(max) => (max / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        let mut mapper = Updater { path: PathStack::default(), opt: self, grads: grads.by_path, lr, clip };
        let module = module.map(&mut mapper);
        (module, norm)
    }

    /// The moments as named tensors (`<path>.exp_avg`, `<path>.exp_avg_sq`) for a checkpoint.
    pub fn state_tensors(&self) -> TensorMap {
        let mut out = TensorMap::new();
        for (k, s) in &self.state {
            for (suffix, t) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let values = t.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
                out.insert(format!("{k}.{suffix}"), RawTensor::from_f32(t.dims().to_vec(), &values));
            }
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, step: usize, map: &TensorMap, device: &Device) {
        self.step = step;
        self.state.clear();
        for (k, raw) in map {
            let Some(path) = k.strip_suffix(".exp_avg") else { continue };
            let Some(sq) = map.get(&format!("{path}.exp_avg_sq")) else { continue };
            let t = |r: &RawTensor| Tensor::<1>::from_data(TensorData::new(r.to_f32(), [r.numel()]), device);
            self.state.insert(path.to_string(), Moments { m: t(raw), v: t(sq) });
        }
    }
}

struct Updater<'a> {
    path: PathStack,
    opt: &'a mut AdamW,
    grads: BTreeMap<String, Tensor<1>>,
    lr: f64,
    clip: f64,
}

impl ModuleMapper for Updater<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.path();
        let Some(grad) = self.grads.remove(&path) else { return param };
        let (id, tensor, mapper) = param.consume();
        let c = self.opt.config;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let dtype = tensor.dtype();
        let p = tensor.clone().inner().reshape([n]).cast(burn::tensor::FloatDType::F32);
        let g = if self.clip < 1.0 { grad.mul_scalar(self.clip as f32) } else { grad };
        let (b1, b2) = (c.beta1, c.beta2);
        let moments = match self.opt.state.remove(&path) {
            Some(s) => Moments {
                m: s.m.mul_scalar(b1 as f32) + g.clone().mul_scalar((1.0 - b1) as f32),
                v: s.v.mul_scalar(b2 as f32) + g.clone().powi_scalar(2).mul_scalar((1.0 - b2) as f32),
            },
            None => Moments { m: g.clone().mul_scalar((1.0 - b1) as f32), v: g.powi_scalar(2).mul_scalar((1.0 - b2) as f32) },
        };
        let t = self.opt.step as i32;
        let decay = if D >= 2 { self.lr * c.weight_decay } else { 0.0 };
        let p = if decay > 0.0 { p.mul_scalar((1.0 - decay) as f32) } else { p };
        let step_size = self.lr / (1.0 - b1.powi(t));
        let denom = moments.v.clone().sqrt().div_scalar((1.0 - b2.powi(t)).sqrt() as f32).add_scalar(c.eps as f32);
        let p = p - (moments.m.clone() / denom).mul_scalar(step_size as f32);
        self.opt.state.insert(path, moments);
        let p = if dtype == burn::tensor::DType::F32 { p } else { p.cast(burn::tensor::FloatDType::from(dtype)) };
        let updated = Tensor::<D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::Linear;

    #[test]
    fn schedule_warms_up_linearly_then_follows_mmengine_cosine() {
        let s = Schedule { lr: 1e-4, min_lr: 5e-5, warmup: 50, warmup_factor: 1e-5, total: 5000 };
        assert!((s.lr_at(0) - 1e-9).abs() < 1e-15);
        assert!((s.lr_at(25) - 1e-4 * (1e-5 + (1.0 - 1e-5) * 0.5)).abs() < 1e-15);
        assert!((s.lr_at(50) - 1e-4).abs() < 1e-15);
        // Halfway through the decay: η_min + (lr − η_min)·(1 + cos(π/2))/2 = 7.5e-5.
        assert!((s.lr_at(2525) - 7.5e-5).abs() < 1e-12);
        assert!((s.lr_at(5000) - 5e-5).abs() < 1e-15);
    }

    /// Two updates of `torch.optim.AdamW` written out by hand for a 1-element bias (no weight
    /// decay: 1-D) and a 1×1 weight (decayed), gradients 0.5 then −0.25, lr 0.1.
    #[test]
    fn adamw_matches_the_torch_update_rule_and_decays_only_matrices() {
        let device = burn::tensor::Device::flex().autodiff();
        let lin: Linear = burn::nn::LinearConfig::new(1, 1).init(&device);
        let lin = crate::weights::apply::apply(lin, &[
            ("weight".to_string(), RawTensor::from_f32(vec![1, 1], &[1.0])),
            ("bias".to_string(), RawTensor::from_f32(vec![1], &[1.0])),
        ].into_iter().collect(), 0).unwrap().0;
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.5, clip_norm: None, ..Default::default() });
        let mut lin = lin;
        let (b1, b2, lr, eps, wd) = (0.9f64, 0.95f64, 0.1f64, 1e-8f64, 0.5f64);
        let (mut pw, mut pb, mut m, mut v) = (1.0f64, 1.0f64, 0.0f64, 0.0f64);
        for (t, g) in [(1, 0.5f64), (2, -0.25)] {
            let mut by_path = std::collections::BTreeMap::new();
            by_path.insert("weight".to_string(), Tensor::<1>::from_floats([g as f32], &device.clone().without_autodiff()));
            by_path.insert("bias".to_string(), Tensor::<1>::from_floats([g as f32], &device.clone().without_autodiff()));
            lin = opt.update(lin, Grads { by_path }, lr).0;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let step = lr / (1.0 - b1.powi(t)) * m / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps);
            pw = pw * (1.0 - lr * wd) - step;
            pb -= step;
        }
        let w: f32 = lin.weight.val().inner().into_scalar();
        let b: f32 = lin.bias.as_ref().unwrap().val().inner().into_scalar();
        assert!((w as f64 - pw).abs() < 1e-6, "weight {w} vs {pw}");
        assert!((b as f64 - pb).abs() < 1e-6, "bias {b} vs {pb}");
        assert!((pw - pb).abs() > 1e-3, "the weight is decayed and the bias is not");
    }
}
