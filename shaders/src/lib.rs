//! VGT Studio's own WGSL kernels (`src/kernels/*.wgsl`) and the Rust that launches them on burn's
//! wgpu backend through burn's backend-extension mechanism.
//!
//! The kernels fuse what the flow head's sampler does for every step of every token group
//! (issue 8): a skinny linear layer reading four columns per load with its bias and SiLU or
//! gated residual fused ([`linear`], [`linear_gated`]), LayerNorm plus the AdaLN modulation
//! ([`ln_modulate`]) and the whole SDE update with CFG ([`sde_step`]). Each has a twin written
//! with ordinary tensor ops; tests check one against the other.
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

pub use launch::{KernelSpec, Variant, all_specs};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns every custom kernel on or off for this process (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether custom kernels are switched on (`--no-custom-kernels` and `VGT_NO_CUSTOM_KERNELS=1`
/// switch them off).
pub fn enabled() -> bool {
    static ENV_OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env_off = *ENV_OFF.get_or_init(|| std::env::var_os("VGT_NO_CUSTOM_KERNELS").is_some_and(|v| !v.is_empty() && v != "0"));
    ENABLED.load(Ordering::Relaxed) && !env_off
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
    /// `epilogue(x · w + b)` for `x: [M, K]`, `w: [K, N]` (contiguous; K and N multiples of 4), `b: [N]`; `silu` applies
    /// `y·σ(y)`.
    #[fusion(dtype = x, shape = linear_shape(x, w))]
    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, silu: bool) -> FloatTensor<Self>;

    /// `x · w` for a layer without bias.
    #[fusion(dtype = x, shape = linear_shape(x, w))]
    fn fused_linear_no_bias(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `residual + gate ⊙ (x · w + b)`, the gate being columns `gate_offset..gate_offset+N` of
    /// `gate_source: [M, G]`.
    #[fusion(dtype = x, shape = residual)]
    fn fused_linear_gated(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        gate_source: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gate_offset: u32,
    ) -> FloatTensor<Self>;

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

fn linear_shape(x: &burn::tensor::Shape, w: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from(vec![x[0], w[1]])
}

/// `epilogue(x · w + b)` with one kernel (see [`VgtKernels::fused_linear`]).
///
/// # Shapes
/// - x: `[M, K]`, w: `[K, N]`, b: `[N]` → `[M, N]`
pub fn linear(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>, silu: bool) -> Tensor<2> {
    Tensor::from_dispatch(Dispatch::fused_linear(x.into_dispatch(), w.into_dispatch(), b.into_dispatch(), silu))
}

/// `x · w (+ b)` with one kernel, for a linear layer with or without bias.
///
/// # Shapes
/// - x: `[M, K]`, w: `[K, N]`, b: `[N]` → `[M, N]`
pub fn linear_opt_bias(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    match b {
        Some(b) => linear(x, w, b, false),
        None => Tensor::from_dispatch(Dispatch::fused_linear_no_bias(x.into_dispatch(), w.into_dispatch())),
    }
}

/// `residual + gate ⊙ (x · w + b)` with one kernel; the gate is `gate_source[:, offset..offset+N]`.
///
/// # Shapes
/// - x: `[M, K]`, w: `[K, N]`, b: `[N]`, gate_source: `[M, G]`, residual: `[M, N]` → `[M, N]`
pub fn linear_gated(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>, gate_source: Tensor<2>, offset: usize, residual: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(Dispatch::fused_linear_gated(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
        gate_source.into_dispatch(),
        residual.into_dispatch(),
        offset as u32,
    ))
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
