//! The WGSL sources, their variants, and their launches on burn's cube backend (wgpu).

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous};
use burn::tensor::{DType, Shape};
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim, prelude::KernelId};

use crate::VgtKernels;

const LN_MODULATE: &str = include_str!("kernels/ln_modulate.wgsl");
const SDE_STEP: &str = include_str!("kernels/sde_step.wgsl");

/// Invocations per workgroup of every kernel here.
const WORKGROUP: u32 = 64;
/// The most workgroups one dispatch dimension may have (WebGPU's limit).
const MAX_GROUPS: u32 = 65535;

/// Every kernel text we launch: one per template variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    LnModulateAffine,
    LnModulatePlain,
    SdeStep,
}

/// All variants, for validation.
pub fn all_variants() -> [Variant; 3] {
    use Variant::*;
    [LnModulateAffine, LnModulatePlain, SdeStep]
}

/// A variant's complete WGSL text and its file.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec(pub Variant);

impl KernelSpec {
    /// The `.wgsl` file (under `shaders/src/kernels/`) the variant comes from.
    pub fn file(&self) -> &'static str {
        match self.0 {
            Variant::LnModulateAffine | Variant::LnModulatePlain => "ln_modulate.wgsl",
            Variant::SdeStep => "sde_step.wgsl",
        }
    }

    /// The text handed to the device, every placeholder filled.
    pub fn wgsl(&self) -> String {
        let (template, fills): (&str, Vec<(&str, &str)>) = match self.0 {
            Variant::LnModulateAffine => (LN_MODULATE, vec![("affine_bindings", AFFINE_BINDINGS), ("affine", AFFINE)]),
            Variant::LnModulatePlain => (LN_MODULATE, vec![("affine_bindings", ""), ("affine", NOT_AFFINE)]),
            Variant::SdeStep => (SDE_STEP, vec![]),
        };
        let mut text = template.replace("{{ workgroup_size }}", &WORKGROUP.to_string());
        for (name, value) in fills {
            text = text.replace(&format!("{{{{ {name} }}}}"), value);
        }
        text
    }
}

const AFFINE_BINDINGS: &str = "@group(0) @binding(4) var<storage, read_write> ln_w: array<f32>;\n\
@group(0) @binding(5) var<storage, read_write> ln_b: array<f32>;\n";
const AFFINE: &str = "fn affine(j: u32, v: f32) -> f32 {\n    return v * ln_w[j] + ln_b[j];\n}\n";
const NOT_AFFINE: &str = "fn affine(j: u32, v: f32) -> f32 {\n    return v;\n}\n";

impl KernelSource for KernelSpec {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.wgsl())
    }
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.0)
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

/// Launches `variant` over `count` workgroups with buffers in binding order: `inputs`, `out`,
/// the `info` words, then `extra`.
fn launch(variant: Variant, count: CubeCount, inputs: &[&CubeTensor], out: &CubeTensor, info: &[u32], extra: &[&CubeTensor]) {
    let client = &out.client;
    let info = client.create_from_slice(bytemuck::cast_slice(info));
    let mut buffers: Vec<_> = inputs.iter().map(|t| t.handle.clone().binding()).collect();
    buffers.push(out.handle.clone().binding());
    buffers.push(info.binding());
    buffers.extend(extra.iter().map(|t| t.handle.clone().binding()));
    let kernel = SourceKernel::new(KernelSpec(variant), CubeDim::new_1d(WORKGROUP));
    client.launch(Box::new(kernel), count, KernelArguments::new().with_buffers(buffers));
}

/// `groups` workgroups in x, spilling into y past WebGPU's per-dimension limit (the kernels
/// index `x + y·65535`).
fn spread(groups: u32) -> CubeCount {
    CubeCount::Static(groups.clamp(1, MAX_GROUPS), groups.div_ceil(MAX_GROUPS).max(1), 1)
}

fn ln_info(x: &CubeTensor, modulation: &CubeTensor, eps: f32, offsets: [u32; 2]) -> [u32; 6] {
    let [m, d] = [dims(x)[0], dims(x)[1]];
    let stride = dims(modulation)[1];
    [m as u32, d as u32, stride as u32, offsets[0], offsets[1], eps.to_bits()]
}

impl VgtKernels for CubeBackend {
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
        launch(Variant::LnModulateAffine, spread(info[0]), &[&x, &modulation], &out, &info, &[&weight, &bias]);
        out
    }

    fn fused_ln_modulate_plain(x: FloatTensor<Self>, modulation: FloatTensor<Self>, eps: f32, offsets: [u32; 2]) -> FloatTensor<Self> {
        let (x, modulation) = (into_contiguous(x), into_contiguous(modulation));
        let out = empty_like(&x, dims(&x));
        let info = ln_info(&x, &modulation, eps, offsets);
        launch(Variant::LnModulatePlain, spread(info[0]), &[&x, &modulation], &out, &info, &[]);
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
        launch(Variant::SdeStep, spread((count as u32).div_ceil(WORKGROUP)), &[&x, &velocity, &noise], &out, &info, &[]);
        out
    }
}
