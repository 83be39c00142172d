//! Small building blocks shared by the networks (spec §0).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, Reparameterization, Reparameterizer};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::linear as linear_op;
use burn::tensor::{DType, FloatDType};
use burn::tensor::{Device, Tensor};

/// A PyTorch-style `nn.Linear(d_in, d_out, bias)` (weights loaded transposed).
pub fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
}

/// A PyTorch-style affine `nn.LayerNorm(d, eps)`.
pub fn layer_norm(d: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

/// A learned tensor of the given shape (initialised to ones until loaded).
pub fn param<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Initializer::Ones.init(shape, device)
}

/// `RMS_hf` (HF Qwen2 / InternRMSNorm, spec §0): `x·rsqrt(mean(x²)+eps)·w`, no bias.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: param([d], device), eps }
    }

    /// # Shapes
    /// - x: `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        let w = self.weight.val().unsqueeze::<D>();
        x * (var + self.eps).sqrt().recip() * w
    }
}

/// `RMS_dc` (diffusers RMSNorm with weight and bias, spec §0), applied over the channel axis of
/// an NCHW map at every pixel.
#[derive(Module, Debug)]
pub struct ChannelRmsNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl ChannelRmsNorm {
    pub fn new(d: usize, device: &Device) -> Self {
        Self { weight: param([d], device), bias: Initializer::Zeros.init([d], device), eps: 1e-5 }
    }

    /// # Shapes
    /// - x: `[batch, channels, height, width]` → same
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, channels, _, _] = x.dims();
        let var = x.clone().powi_scalar(2).mean_dim(1);
        let w = self.weight.val().reshape([1, channels, 1, 1]);
        let b = self.bias.val().reshape([1, channels, 1, 1]);
        x * (var + self.eps).sqrt().recip() * w + b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn rms_norm_matches_hand_computation() {
        let device = Device::default();
        let norm = RmsNorm::new(2, 0.0, &device);
        // x = [3, 4]: mean(x²) = 12.5, rsqrt = 0.28284271
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        let y: Vec<f32> = norm.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert!((y[0] - 0.848_528_1).abs() < 1e-5 && (y[1] - 1.131_370_8).abs() < 1e-5, "{y:?}");
    }
}

/// Computes an f16-stored parameter in f32: `Param::val()` returns the upcast value, so the
/// networks never see an f16 tensor while the weights take half the memory.
#[derive(Module, Debug)]
pub struct Upcast {
    /// Unused marker (a reparameterisation is a module, and a module needs a field).
    pub marker: usize,
}

impl Reparameterization for Upcast {
    const NAME: &'static str = "upcast";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        base.cast(burn::tensor::FloatDType::F32)
    }
}

struct UpcastHalf;

impl Reparameterizer for UpcastHalf {
    type Reparam = Upcast;

    fn reparameterize<const D: usize>(&mut self, _path: &str, param: Param<Tensor<D>>) -> (Param<Tensor<D>>, Option<Upcast>) {
        let half = param.is_initialized() && param.base().dtype() == burn::tensor::DType::F16;
        (param, half.then_some(Upcast { marker: 0 }))
    }
}

/// Attaches [`Upcast`] to every f16 parameter of `module` (parameters that already have a
/// reparameterisation, such as LoRA adapters that upcast themselves, keep theirs).
pub fn upcast_half<M: Module>(module: M) -> M {
    module.apply_reparameterization(UpcastHalf)
}

#[derive(Default)]
struct ToHalf {
    stack: crate::weights::apply::PathStack,
}

impl ModuleMapper for ToHalf {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        if D >= 2 && param.lazy_shape().num_elements() >= crate::weights::apply::HALF_MIN_ELEMENTS && !crate::weights::apply::keeps_f32(&path) {
            param.map(|t| t.cast(burn::tensor::FloatDType::F16))
        } else {
            param
        }
    }
}

/// Stores the large matrices of an already built module in f16 (for random-weight benchmarks;
/// checkpoints load straight into f16 with [`crate::weights::apply::apply_half`]). Follow with
/// [`upcast_half`].
pub fn half_storage<M: Module>(module: M) -> M {
    module.map(&mut ToHalf::default())
}

#[derive(Default)]
struct Counter {
    total: usize,
    trainable: usize,
    bytes: usize,
}

impl ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        self.total += n;
        let size = if param.is_initialized() { param.base().dtype().size() } else { 4 };
        self.bytes += n * size;
        if param.is_require_grad() {
            self.trainable += n;
        }
    }
}

/// `(parameters, trainable parameters, bytes)` of a module (LoRA factors included; lazy
/// parameters counted at f32).
pub fn count_params<M: Module>(module: &M) -> (usize, usize, usize) {
    let mut c = Counter::default();
    module.visit(&mut c);
    (c.total, c.trainable, c.bytes)
}

struct TrainableToF32;

impl ModuleMapper for TrainableToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() || param.base().dtype() != burn::tensor::DType::F16 {
            return param;
        }
        let (id, t, mapper) = param.consume();
        let t = Tensor::<D>::from_inner(t.inner().cast(burn::tensor::FloatDType::F32)).require_grad();
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Stores every trainable parameter in f32 (after f16 base storage and unfreezing): the
/// optimiser updates f32 values, only frozen weights stay f16.
pub fn trainable_to_f32<M: Module>(module: M) -> M {
    module.map(&mut TrainableToF32)
}

/// Rows up to which a plain f32 linear layer on wgpu runs our skinny-matmul kernel
/// (`vgt-shaders`) instead of burn's tiled matmul: two row tiles of 32.
pub const KERNEL_MAX_ROWS: usize = 64;

/// The weight and bias of `layer` when our skinny-matmul kernel can take it for this `x`: kernels
/// usable for `x` (on, wgpu, f32, no gradients), at most [`KERNEL_MAX_ROWS`] rows, no LoRA adapter,
/// no f16 storage, an f32 weight, both widths multiples of 4.
pub(crate) fn kernel_linear<const D: usize>(layer: &Linear, x: &Tensor<D>) -> Option<(Tensor<2>, Option<Tensor<1>>)> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let w = &layer.weight;
    let plain = w.adapter().is_none() && w.reparameterization::<Upcast>().is_none();
    if rows == 0 || rows > KERNEL_MAX_ROWS || dims[D - 1] % 4 != 0 || !plain || !vgt_shaders::usable(&[x]) {
        return None;
    }
    let weight = w.val();
    (weight.dtype() == DType::F32 && weight.dims()[1] % 4 == 0).then(|| (weight, layer.bias.as_ref().map(|b| b.val())))
}

/// `x·W + b` through the skinny-matmul kernel, when [`kernel_linear`] allows it.
fn few_rows_kernel<const D: usize>(layer: &Linear, x: &Tensor<D>) -> Option<Tensor<D>> {
    let (w, b) = kernel_linear(layer, x)?;
    let mut dims = x.dims();
    let (k, n) = (dims[D - 1], w.dims()[1]);
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = vgt_shaders::linear_opt_bias(x.clone().reshape([rows, k]), w, b);
    dims[D - 1] = n;
    Some(y.reshape(dims))
}

/// `Linear::forward` that never materialises an adapted or upcast weight inside an autodiff
/// graph: with a LoRA adapter it computes `x·W + scale·(x·a)·b`, and while training over an
/// f16 base it multiplies in f16 (the autodiff tape then keeps the f16 weight itself, not an
/// f32 copy per layer). Without an adapter or f16 storage it is `Linear::forward`.
///
/// # Shapes
/// - x: `[..., d_in]` → `[..., d_out]`
pub fn lin<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let w = &layer.weight;
    let adapter = w.adapter();
    let half = w.reparameterization::<Upcast>().is_some();
    if adapter.is_none() && !half {
        return match few_rows_kernel(layer, &x) {
            Some(y) => y,
            None => layer.forward(x),
        };
    }
    let base = w.base();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let mut y = if base.dtype() == DType::F16 && base.is_autodiff() {
        linear_op(x.clone().cast(FloatDType::F16), base, None).cast(FloatDType::F32)
    } else if base.dtype() == DType::F16 {
        linear_op(x.clone(), base.cast(FloatDType::F32), None)
    } else {
        linear_op(x.clone(), base, None)
    };
    if let Some(a) = adapter {
        let low = linear_op(linear_op(x, a.a.val(), None), a.b.val(), None);
        y = y + low.mul_scalar(a.scale);
    }
    match bias {
        Some(b) => y + b.unsqueeze::<D>(),
        None => y,
    }
}
