//! The WGSL sources, their variants, and their launches on burn's cube backend (wgpu).

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous};
use burn::tensor::{DType, Shape};
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim, prelude::KernelId};

use crate::VgtKernels;

const LINEAR: &str = include_str!("kernels/linear.wgsl");
const LN_MODULATE: &str = include_str!("kernels/ln_modulate.wgsl");
const SDE_STEP: &str = include_str!("kernels/sde_step.wgsl");

/// Invocations per workgroup of every kernel here.
const WORKGROUP: u32 = 64;
/// Rows of `x` one invocation of the linear kernel may compute: the smallest of these that
/// covers a call's rows. One invocation reading its columns of W once for up to 32 rows measured
/// 2.2× faster than burn's matmul on lavapipe at the flow head's shapes (8 rows: 1.15×).
const ROW_TILES: [u32; 6] = [1, 2, 4, 8, 16, 32];
/// The most workgroups one dispatch dimension may have (WebGPU's limit).
const MAX_GROUPS: u32 = 65535;

/// Every kernel text we launch: one per template variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    LinearPlain,
    LinearSilu,
    LinearGated,
    LnModulateAffine,
    LnModulatePlain,
    SdeStep,
}

impl Variant {
    fn is_linear(self) -> bool {
        matches!(self, Variant::LinearPlain | Variant::LinearSilu | Variant::LinearGated)
    }
}

/// Every kernel text we may launch (each linear variant at every row tile), for validation.
pub fn all_specs() -> Vec<KernelSpec> {
    use Variant::*;
    let mut specs = Vec::new();
    for variant in [LinearPlain, LinearSilu, LinearGated, LnModulateAffine, LnModulatePlain, SdeStep] {
        if !variant.is_linear() {
            specs.push(KernelSpec::of(variant));
            continue;
        }
        for rows in ROW_TILES {
            for (transposed_weight, bias) in [(false, false), (false, true), (true, false), (true, true)] {
                specs.push(KernelSpec { variant, rows, transposed_weight, bias });
            }
        }
    }
    specs
}

/// One kernel text: a variant and, for the linear kernels, the rows one invocation computes and
/// the weight's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    pub variant: Variant,
    pub rows: u32,
    /// W is the transposed view of a contiguous `[N, K]` (else contiguous `[K, N]`).
    pub transposed_weight: bool,
    /// The linear layer adds a bias.
    pub bias: bool,
}

impl KernelSpec {
    fn of(variant: Variant) -> Self {
        Self { variant, rows: 1, transposed_weight: false, bias: false }
    }

    /// The `.wgsl` file (under `shaders/src/kernels/`) the variant comes from.
    pub fn file(&self) -> &'static str {
        match self.variant {
            Variant::LinearPlain | Variant::LinearSilu | Variant::LinearGated => "linear.wgsl",
            Variant::LnModulateAffine | Variant::LnModulatePlain => "ln_modulate.wgsl",
            Variant::SdeStep => "sde_step.wgsl",
        }
    }

    /// The text handed to the device, every `{{ name }}` template slot filled.
    pub fn wgsl(&self) -> String {
        let (template, fills): (&str, Vec<(&str, &str)>) = match self.variant {
            Variant::LinearPlain => (LINEAR, vec![("extra_bindings", ""), ("epilogue", EPILOGUE_PLAIN)]),
            Variant::LinearSilu => (LINEAR, vec![("extra_bindings", ""), ("epilogue", EPILOGUE_SILU)]),
            Variant::LinearGated => (LINEAR, vec![("extra_bindings", GATED_BINDINGS), ("epilogue", EPILOGUE_GATED)]),
            Variant::LnModulateAffine => (LN_MODULATE, vec![("affine_bindings", AFFINE_BINDINGS), ("affine", AFFINE)]),
            Variant::LnModulatePlain => (LN_MODULATE, vec![("affine_bindings", ""), ("affine", NOT_AFFINE)]),
            Variant::SdeStep => (SDE_STEP, vec![]),
        };
        let mut text = template.replace("{{ workgroup_size }}", &WORKGROUP.to_string());
        text = text.replace("{{ rows_per_invocation }}", &self.rows.to_string());
        let rows = 0..self.rows;
        let decls: Vec<String> = rows.clone().map(|r| format!("    var acc{r} = vec4<f32>(0.0);")).collect();
        let (loads, update) = if self.transposed_weight { (W_LOADS_NK, UPDATE_NK) } else { (W_LOADS_KN, UPDATE_KN) };
        let updates: Vec<String> = rows
            .clone()
            .map(|r| format!("        let x{r} = x[row_index(m0, {r}u, M, K4, k4)];\n        {}", update.replace("{r}", &r.to_string())))
            .collect();
        let writes: Vec<String> = rows.map(|r| format!("    store(m0 + {r}u, M, n4, N4, acc{r} + bias);")).collect();
        text = text.replace("{{ w_loads }}", loads);
        // Without bias `b` must still be referenced, or the driver's bind group layout drops it.
        text = text.replace("{{ bias }}", if self.bias { "b[n4]" } else { "select(vec4<f32>(0.0), b[0], false)" });
        text = text.replace("{{ acc_decls }}", &decls.join("\n"));
        text = text.replace("{{ acc_updates }}", &updates.join("\n"));
        text = text.replace("{{ acc_writes }}", &writes.join("\n"));
        for (name, value) in fills {
            text = text.replace(&format!("{{{{ {name} }}}}"), value);
        }
        text
    }
}

// W as [K, N]: four columns of row k per load; x's four k broadcast over them.
const W_LOADS_KN: &str = "        let row = 4u * k4 * N4 + col;\n        let w0 = w[row];\n        let w1 = w[row + N4];\n        \
let w2 = w[row + 2u * N4];\n        let w3 = w[row + 3u * N4];";
const UPDATE_KN: &str =
    "acc{r} = fma(vec4<f32>(x{r}.x), w0, fma(vec4<f32>(x{r}.y), w1, fma(vec4<f32>(x{r}.z), w2, fma(vec4<f32>(x{r}.w), w3, acc{r}))));";
// W as the transpose of [N, K]: four k of each of the four columns per load, dotted with x's.
const W_LOADS_NK: &str = "        let row = 4u * col * K4 + k4;\n        let c0 = w[row];\n        let c1 = w[row + K4];\n        \
let c2 = w[row + 2u * K4];\n        let c3 = w[row + 3u * K4];";
const UPDATE_NK: &str = "acc{r} += vec4<f32>(dot(x{r}, c0), dot(x{r}, c1), dot(x{r}, c2), dot(x{r}, c3));";
const EPILOGUE_PLAIN: &str = "fn epilogue(y: vec4<f32>, m: u32, n4: u32, N4: u32) -> vec4<f32> {\n    return y;\n}\n";
const EPILOGUE_SILU: &str =
    "fn epilogue(y: vec4<f32>, m: u32, n4: u32, N4: u32) -> vec4<f32> {\n    return y / (vec4<f32>(1.0) + exp(-y));\n}\n";
const GATED_BINDINGS: &str = "@group(0) @binding(5) var<storage, read_write> gate: array<vec4<f32>>;\n\
@group(0) @binding(6) var<storage, read_write> res: array<vec4<f32>>;\n";
const EPILOGUE_GATED: &str = "fn epilogue(y: vec4<f32>, m: u32, n4: u32, N4: u32) -> vec4<f32> {\n    \
return res[m * N4 + n4] + gate[m * info[3] + info[4] + n4] * y;\n}\n";
const AFFINE_BINDINGS: &str = "@group(0) @binding(4) var<storage, read_write> ln_w: array<f32>;\n\
@group(0) @binding(5) var<storage, read_write> ln_b: array<f32>;\n";
const AFFINE: &str = "fn affine(j: u32, v: f32) -> f32 {\n    return v * ln_w[j] + ln_b[j];\n}\n";
const NOT_AFFINE: &str = "fn affine(j: u32, v: f32) -> f32 {\n    return v;\n}\n";

impl KernelSource for KernelSpec {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.wgsl())
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(*self)
    }
    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

fn dims(t: &CubeTensor) -> Vec<usize> {
    t.meta.shape().iter().copied().collect()
}

/// A new contiguous f32 tensor on `like`'s device.
fn empty_like(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    let numel: usize = shape.iter().product();
    let handle = like.client.empty(numel * DType::F32.size());
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::from(shape), handle, DType::F32)
}

/// Launches the kernel `spec` over `count` workgroups with buffers in binding order: `inputs`, `out`,
/// the `info` words, then `extra`.
fn launch(spec: KernelSpec, count: CubeCount, inputs: &[&CubeTensor], out: &CubeTensor, info: &[u32], extra: &[&CubeTensor]) {
    let client = &out.client;
    let info = client.create_from_slice(bytemuck::cast_slice(info));
    let mut buffers: Vec<_> = inputs.iter().map(|t| t.handle.clone().binding()).collect();
    buffers.push(out.handle.clone().binding());
    buffers.push(info.binding());
    buffers.extend(extra.iter().map(|t| t.handle.clone().binding()));
    let kernel = SourceKernel::new(spec, CubeDim::new_1d(WORKGROUP));
    client.launch(Box::new(kernel), count, KernelArguments::new().with_buffers(buffers));
}

/// `groups` workgroups in x, spilling into y past WebGPU's per-dimension limit (the kernels
/// index `x + y·65535`).
fn spread(groups: u32) -> CubeCount {
    CubeCount::Static(groups.clamp(1, MAX_GROUPS), groups.div_ceil(MAX_GROUPS).max(1), 1)
}

/// The linear kernels' dispatch: groups of WORKGROUP·4 columns in x, row tiles in y.
fn launch_linear(spec: LinearSpec, [x, w, b]: [&CubeTensor; 3], out: &CubeTensor, info: &[u32], extra: &[&CubeTensor]) {
    let [m, n] = [info[0], info[2]];
    let rows = ROW_TILES.iter().copied().find(|&t| t >= m).unwrap_or(ROW_TILES[ROW_TILES.len() - 1]);
    let count = CubeCount::Static((n / 4).div_ceil(WORKGROUP), m.div_ceil(rows), 1);
    let LinearSpec { variant, transposed_weight, bias } = spec;
    launch(KernelSpec { variant, rows, transposed_weight, bias }, count, &[x, w, b], out, info, extra);
}

/// What a linear launch needs besides its row tile.
struct LinearSpec {
    variant: Variant,
    transposed_weight: bool,
    bias: bool,
}

/// A contiguous `x`, a weight the kernel reads (contiguous `[K, N]` or the transposed view of a
/// contiguous `[N, K]`; any other layout is copied), whether it is the transposed view, and
/// `[M, K, N]`.
fn linear_operands(x: CubeTensor, w: CubeTensor) -> (CubeTensor, CubeTensor, bool, [u32; 3]) {
    let x = into_contiguous(x);
    let ([m, k], n) = ([dims(&x)[0], dims(&x)[1]], dims(&w)[1]);
    assert!(dims(&w)[0] == k && k % 4 == 0 && n % 4 == 0, "fused linear: x {:?}, weight {:?} (needs K and N multiples of 4)", dims(&x), dims(&w));
    let strides: Vec<usize> = w.meta.strides().iter().copied().collect();
    let (w, transposed) = if w.meta.is_tiled() || (strides != [n, 1] && strides != [1, k]) {
        (into_contiguous(w), false)
    } else {
        (w, strides == [1, k])
    };
    (x, w, transposed, [m as u32, k as u32, n as u32])
}

fn ln_info(x: &CubeTensor, modulation: &CubeTensor, eps: f32, offsets: [u32; 2]) -> [u32; 6] {
    let [m, d] = [dims(x)[0], dims(x)[1]];
    let stride = dims(modulation)[1];
    [m as u32, d as u32, stride as u32, offsets[0], offsets[1], eps.to_bits()]
}

impl VgtKernels for CubeBackend {
    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, silu: bool) -> FloatTensor<Self> {
        let ((x, w, transposed_weight, [m, k, n]), b) = (linear_operands(x, w), into_contiguous(b));
        let out = empty_like(&x, vec![m as usize, n as usize]);
        let variant = if silu { Variant::LinearSilu } else { Variant::LinearPlain };
        let spec = LinearSpec { variant, transposed_weight, bias: true };
        launch_linear(spec, [&x, &w, &b], &out, &[m, k, n, 0, 0], &[]);
        out
    }

    fn fused_linear_no_bias(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        // The weight's binding stands in for the bias the kernel does not read.
        let (x, w, transposed_weight, [m, k, n]) = linear_operands(x, w);
        let out = empty_like(&x, vec![m as usize, n as usize]);
        let spec = LinearSpec { variant: Variant::LinearPlain, transposed_weight, bias: false };
        launch_linear(spec, [&x, &w, &w], &out, &[m, k, n, 0, 0], &[]);
        out
    }

    fn fused_linear_gated(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        gate_source: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gate_offset: u32,
    ) -> FloatTensor<Self> {
        let ((x, w, transposed_weight, [m, k, n]), b) = (linear_operands(x, w), into_contiguous(b));
        let (gate, residual) = (into_contiguous(gate_source), into_contiguous(residual));
        let stride = dims(&gate)[1] as u32;
        assert!(stride % 4 == 0 && gate_offset % 4 == 0, "fused gated linear: gate stride {stride} and offset {gate_offset} must be multiples of 4");
        let out = empty_like(&x, vec![m as usize, n as usize]);
        let spec = LinearSpec { variant: Variant::LinearGated, transposed_weight, bias: true };
        launch_linear(spec, [&x, &w, &b], &out, &[m, k, n, stride / 4, gate_offset / 4], &[&gate, &residual]);
        out
    }

    fn fused_ln_modulate(
        x: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f32,
        offsets: [u32; 2],
    ) -> FloatTensor<Self> {
        let (x, modulation) = (into_contiguous(x), into_contiguous(modulation));
        let (weight, bias) = (into_contiguous(weight), into_contiguous(bias));
        let out = empty_like(&x, dims(&x));
        let info = ln_info(&x, &modulation, eps, offsets);
        launch(KernelSpec::of(Variant::LnModulateAffine), spread(info[0]), &[&x, &modulation], &out, &info, &[&weight, &bias]);
        out
    }

    fn fused_ln_modulate_plain(x: FloatTensor<Self>, modulation: FloatTensor<Self>, eps: f32, offsets: [u32; 2]) -> FloatTensor<Self> {
        let (x, modulation) = (into_contiguous(x), into_contiguous(modulation));
        let out = empty_like(&x, dims(&x));
        let info = ln_info(&x, &modulation, eps, offsets);
        launch(KernelSpec::of(Variant::LnModulatePlain), spread(info[0]), &[&x, &modulation], &out, &info, &[]);
        out
    }

    fn fused_sde_step(
        x: FloatTensor<Self>,
        velocity: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        scalars: [f32; 3],
    ) -> FloatTensor<Self> {
        let (x, velocity, noise) = (into_contiguous(x), into_contiguous(velocity), into_contiguous(noise));
        let count: usize = dims(&x).iter().product();
        let guided = dims(&velocity)[0] == 2 * dims(&x)[0];
        let out = empty_like(&x, dims(&x));
        let [t, dt, cfg] = scalars.map(f32::to_bits);
        let info = [count as u32, guided as u32, t, dt, cfg];
        launch(KernelSpec::of(Variant::SdeStep), spread((count as u32).div_ceil(WORKGROUP)), &[&x, &velocity, &noise], &out, &info, &[]);
        out
    }
}
