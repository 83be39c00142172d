//! VGT Studio's own WGSL kernels (`src/kernels/*.wgsl`) and the Rust that launches them on burn's
//! wgpu backend through burn's backend-extension mechanism.
//!
//! The kernels fuse what the flow head's sampler does for every step of every token group
//! (issue 8): LayerNorm plus the AdaLN modulation ([`ln_modulate`]) and the whole SDE update
//! with CFG ([`sde_step`]). Each has a twin written with ordinary tensor ops; tests check one
//! against the other. (A skinny-matmul kernel with fused epilogues was tried and measured 2–5×
//! slower than burn's tiled matmul on lavapipe, so the linear layers stay burn's.)
//!
//! They run only on wgpu devices, on f32 tensors that do not track gradients, and only while
//! [`enabled`] (the `--no-custom-kernels` switch turns them off for the whole process).
//! [`usable`] says whether a call may take the fused path; callers fall back to composed ops
//! otherwise.

mod launch;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{DType, Device, Tensor};

pub use launch::{KernelSpec, Variant, all_variants};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns every custom kernel on or off for this process (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether custom kernels are switched on (`--no-custom-kernels` and `VGT_NO_CUSTOM_KERNELS=1`
/// switch them off).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) && std::env::var_os("VGT_NO_CUSTOM_KERNELS").is_none_or(|v| v.is_empty() || v == "0")
}

/// Whether the device runs our WGSL: a wgpu device (burn's wgpu build compiles WGSL).
pub fn is_wgpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(cubecl::Device::Wgpu(_)))
}

/// Whether these tensors may take a fused kernel: switched on, a wgpu device, f32, no autodiff.
pub fn usable<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    let Some(first) = tensors.first() else { return false };
    let device = first.device();
    enabled()
        && !device.is_autodiff()
        && is_wgpu(&device)
        && tensors.iter().all(|t| t.dtype() == DType::F32 && !t.is_autodiff())
}

/// The operations our WGSL kernels implement, as a burn backend extension (the fused path of
/// the wgpu backend, recorded lazily in burn's fusion stream).
#[backend_extension(Cube, Fusion)]
pub trait VgtKernels: Backend {
    /// `(LN(x)·w + b)·(1 + scale) + shift`, shift and scale read from `modulation: [M, S]` at the
    /// column offsets given.
    #[fusion(dtype = x, shape = x)]
    fn fused_ln_modulate(
        x: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f32,
        offsets: [u32; 2],
    ) -> FloatTensor<Self>;

    /// `LN(x)·(1 + scale) + shift` for a LayerNorm without affine parameters.
    #[fusion(dtype = x, shape = x)]
    fn fused_ln_modulate_plain(x: FloatTensor<Self>, modulation: FloatTensor<Self>, eps: f32, offsets: [u32; 2]) -> FloatTensor<Self>;

    /// One stochastic SDE step with CFG (`scalars` = `[t, dt, cfg]`).
    #[fusion(dtype = x, shape = x)]
    fn fused_sde_step(x: FloatTensor<Self>, velocity: FloatTensor<Self>, noise: FloatTensor<Self>, scalars: [f32; 3]) -> FloatTensor<Self>;
}

/// Where the AdaLN shift and scale sit in a modulation row, and the LayerNorm's epsilon.
#[derive(Debug, Clone, Copy)]
pub struct Modulation {
    pub eps: f32,
    /// First column of the shift.
    pub shift: usize,
    /// First column of the scale.
    pub scale: usize,
}

/// The AdaLN input: LayerNorm (affine when `affine` holds its weight and bias) then
/// `·(1 + scale) + shift`, shift and scale being `modulation[:, shift..shift+D]` and
/// `modulation[:, scale..scale+D]`.
///
/// # Shapes
/// - x: `[M, D]`, modulation: `[M, S]` → `[M, D]`
pub fn ln_modulate(x: Tensor<2>, modulation: Tensor<2>, affine: Option<(Tensor<1>, Tensor<1>)>, m: Modulation) -> Tensor<2> {
    let offsets = [m.shift as u32, m.scale as u32];
    let out = match affine {
        Some((w, b)) => Dispatch::fused_ln_modulate(x.into_dispatch(), modulation.into_dispatch(), w.into_dispatch(), b.into_dispatch(), m.eps, offsets),
        None => Dispatch::fused_ln_modulate_plain(x.into_dispatch(), modulation.into_dispatch(), m.eps, offsets),
    };
    Tensor::from_dispatch(out)
}

/// The scalars of one sampler step.
#[derive(Debug, Clone, Copy)]
pub struct SdeStep {
    pub t: f32,
    pub dt: f32,
    /// The guidance scale (used when the velocity has two sets of rows).
    pub cfg: f32,
}

/// One stochastic step of the flow head's SDE sampler; `velocity` has `2M` rows (conditional
/// first) when CFG is on, else `M`.
///
/// # Shapes
/// - x: `[M, D]`, velocity: `[M or 2M, D]`, noise: `[M, D]` → `[M, D]`
pub fn sde_step(x: Tensor<2>, velocity: Tensor<2>, noise: Tensor<2>, step: SdeStep) -> Tensor<2> {
    Tensor::from_dispatch(Dispatch::fused_sde_step(
        x.into_dispatch(),
        velocity.into_dispatch(),
        noise.into_dispatch(),
        [step.t, step.dt, step.cfg],
    ))
}
