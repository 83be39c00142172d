//! Loading a [`TensorMap`] into burn modules, with a report of applied, missing and unexpected
//! keys. Parameters are matched by module path (see [`keymap::module_path`]); PyTorch Linear
//! weights (`[out, in]`) are transposed to burn's `[in, out]`.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use super::{TensorMap, WeightError, keymap};

/// One parameter a module expects, in checkpoint orientation.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedParam {
    /// The module path, e.g. `llm.layers.0.self_attn.q_proj.weight`.
    pub path: String,
    /// The shape as stored in a PyTorch checkpoint (Linear weights as `[out, in]`).
    pub shape: Vec<usize>,
    /// Whether the parameter is a Linear weight (stored transposed).
    pub linear_weight: bool,
}

/// Tracks the module path during a walk, skipping enum variant names.
#[derive(Default)]
pub(crate) struct PathStack {
    names: Vec<String>,
    pushed: Vec<bool>,
    containers: Vec<String>,
}

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        let push = !container.starts_with("Enum:");
        if push {
            self.names.push(name.to_string());
        }
        self.pushed.push(push);
        self.containers.push(container.to_string());
    }
    pub(crate) fn exit(&mut self) {
        if self.pushed.pop() == Some(true) {
            self.names.pop();
        }
        self.containers.pop();
    }
    /// The checkpoint-style path: burn's LayerNorm `gamma`/`beta` are PyTorch's `weight`/`bias`.
    pub(crate) fn path(&self) -> String {
        let in_layer_norm = self.containers.last().is_some_and(|c| c == "Struct:LayerNorm");
        match self.names.split_last() {
            Some((last, rest)) if in_layer_norm && (last == "gamma" || last == "beta") => {
                let name = if last == "gamma" { "weight" } else { "bias" };
                rest.iter().map(String::as_str).chain([name]).collect::<Vec<_>>().join(".")
            }
            _ => self.names.join("."),
        }
    }
    /// A `weight` directly inside a `Linear`.
    pub(crate) fn is_linear_weight(&self) -> bool {
        self.names.last().map(String::as_str) == Some("weight")
            && self.containers.last().is_some_and(|c| c == "Struct:Linear")
    }
}

struct ShapeVisitor {
    stack: PathStack,
    out: Vec<ExpectedParam>,
}

impl ModuleVisitor for ShapeVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut shape = param.lazy_shape().to_vec();
        let linear_weight = self.stack.is_linear_weight();
        if linear_weight {
            shape.reverse();
        }
        self.out.push(ExpectedParam { path: self.stack.path(), shape, linear_weight });
    }
}

/// Lists every float parameter of `module` without allocating it (parameters stay lazy).
pub fn expected_params<M: Module>(module: &M) -> Vec<ExpectedParam> {
    let mut v = ShapeVisitor { stack: PathStack::default(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// What a load did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Canonical keys loaded into a parameter.
    pub applied: Vec<String>,
    /// Module paths no tensor was found for (they keep their initial values).
    pub missing: Vec<String>,
    /// Canonical keys that matched no parameter and are not on the ignore list.
    pub unexpected: Vec<String>,
    /// Keys skipped on purpose (teacher, REPA, DINOv3, lm_head).
    pub ignored: usize,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} applied, {} missing, {} unexpected, {} ignored",
            self.applied.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.ignored
        )
    }
}

struct Loader<'a> {
    stack: PathStack,
    /// module path → canonical key
    by_path: HashMap<String, &'a str>,
    map: &'a TensorMap,
    report: LoadReport,
    errors: Vec<String>,
    storage: Storage,
}

/// How loaded float tensors are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrices with at least [`HALF_MIN_ELEMENTS`] elements in f16 (half the memory), computed
    /// in f32: see [`crate::nn::upcast_half`]. Vectors (norms, biases) stay f32.
    HalfMatrices,
}

/// The smallest matrix [`Storage::HalfMatrices`] stores in f16.
pub const HALF_MIN_ELEMENTS: usize = 4096;

/// Parts kept in f32 under [`Storage::HalfMatrices`]: the flow head runs its blocks for every
/// sampler step of every token group, so upcasting its weights each time costs more than its
/// 4 % of the memory saves (measured: 1.6B image 366 s with it in f16, see the notes).
pub fn keeps_f32(path: &str) -> bool {
    path.starts_with("image_head.")
}

impl Loader<'_> {
    fn load<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let Some(&key) = self.by_path.get(&path) else {
            self.report.missing.push(path);
            return param;
        };
        let raw = &self.map[key];
        let mut want = param.lazy_shape().to_vec();
        let linear = self.stack.is_linear_weight();
        if linear {
            want.reverse();
        }
        if raw.shape != want {
            self.errors.push(format!("tensor `{key}` has shape {:?}, expected {want:?}", raw.shape));
            return param;
        }
        let half = self.storage == Storage::HalfMatrices && D >= 2 && raw.numel() >= HALF_MIN_ELEMENTS && !keeps_f32(&path);
        // The parameter's own device: a table kept in host memory stays there (`device::table_device`).
        let device = param.lazy_device();
        let mut tensor = if half {
            let values: Vec<half::f16> = raw.to_f32().into_iter().map(half::f16::from_f32).collect();
            Tensor::<D>::from_data(TensorData::new(values, raw.shape.clone()), (&device, burn::tensor::DType::F16))
        } else {
            Tensor::<D>::from_data(TensorData::new(raw.to_f32(), raw.shape.clone()), &device)
        };
        if linear {
            tensor = tensor.transpose();
        }
        self.report.applied.push(key.to_string());
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.load(param)
    }
}

/// Loads `map` into `module`, each tensor onto the device its parameter was built on. Shape
/// mismatches are an error naming every offending tensor; missing parameters are reported (and
/// are an error in [`LoadReport::require_complete`]).
pub fn apply<M: Module>(
    module: M,
    map: &TensorMap,
    decoder_stages: usize,
) -> Result<(M, LoadReport), WeightError> {
    apply_component(module, map, decoder_stages, "")
}

/// [`apply`] with large matrices stored in f16 ([`Storage::HalfMatrices`]); the result computes
/// in f32 through [`crate::nn::upcast_half`].
pub fn apply_half<M: Module>(
    module: M,
    map: &TensorMap,
    decoder_stages: usize,
) -> Result<(M, LoadReport), WeightError> {
    let (m, report) = apply_with_storage(module, map, decoder_stages, Storage::HalfMatrices)?;
    Ok((crate::nn::upcast_half(m), report))
}

/// [`apply`] with a choice of storage. With [`Storage::HalfMatrices`] the caller attaches
/// [`crate::nn::upcast_half`] itself, after any LoRA adapters (which upcast their base).
pub fn apply_with_storage<M: Module>(
    module: M,
    map: &TensorMap,
    decoder_stages: usize,
    storage: Storage,
) -> Result<(M, LoadReport), WeightError> {
    load(module, map, decoder_stages, "", storage)
}

/// [`apply`] for a component of the whole model whose canonical keys start with `prefix`
/// (e.g. `vgt_ae.` to load only the autoencoder); other keys are left alone.
pub fn apply_component<M: Module>(
    module: M,
    map: &TensorMap,
    decoder_stages: usize,
    prefix: &str,
) -> Result<(M, LoadReport), WeightError> {
    load(module, map, decoder_stages, prefix, Storage::F32)
}

fn load<M: Module>(
    module: M,
    map: &TensorMap,
    decoder_stages: usize,
    prefix: &str,
    storage: Storage,
) -> Result<(M, LoadReport), WeightError> {
    let mut by_path = HashMap::new();
    let mut report = LoadReport::default();
    let expected: BTreeMap<String, ()> =
        expected_params(&module).into_iter().map(|p| (format!("{prefix}{}", p.path), ())).collect();
    for key in map.keys() {
        if keymap::is_ignored(key) {
            report.ignored += 1;
            continue;
        }
        if !key.starts_with(prefix) {
            continue;
        }
        let path = keymap::module_path(key, decoder_stages);
        if expected.contains_key(&path) {
            by_path.insert(path, key.as_str());
        } else {
            report.unexpected.push(key.clone());
        }
    }
    let mut stack = PathStack::default();
    if let Some(p) = prefix.strip_suffix('.').filter(|p| !p.is_empty()) {
        stack.names.push(p.to_string());
    }
    let mut loader = Loader { stack, by_path, map, report, errors: Vec::new(), storage };
    let module = module.map(&mut loader);
    if !loader.errors.is_empty() {
        return Err(WeightError::Mismatch(loader.errors));
    }
    Ok((module, loader.report))
}

impl LoadReport {
    /// An error naming every missing parameter, if any.
    pub fn require_complete(&self) -> Result<(), WeightError> {
        if self.missing.is_empty() { Ok(()) } else { Err(WeightError::Missing(self.missing.clone())) }
    }
}

/// Checks, without allocating anything, that `map` fills every parameter of `module` with a
/// tensor of the right shape. Returns the report; shape mismatches are an error.
pub fn check_coverage<M: Module>(module: &M, map: &super::source::Shapes, decoder_stages: usize) -> Result<LoadReport, WeightError> {
    let fields: BTreeMap<String, ExpectedParam> = expected_params(module).into_iter().map(|p| (p.path.clone(), p)).collect();
    let mut report = LoadReport::default();
    let mut errors = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for (key, shape) in map {
        if keymap::is_ignored(key) {
            report.ignored += 1;
            continue;
        }
        let path = keymap::module_path(key, decoder_stages);
        match fields.get(&path) {
            Some(p) if &p.shape == shape => {
                covered.insert(path);
                report.applied.push(key.clone());
            }
            Some(p) => errors.push(format!("tensor `{key}` has shape {shape:?}, expected {:?}", p.shape)),
            None => report.unexpected.push(key.clone()),
        }
    }
    if !errors.is_empty() {
        return Err(WeightError::Mismatch(errors));
    }
    report.missing = fields.into_keys().filter(|f| !covered.contains(f)).collect();
    Ok(report)
}

struct Extractor {
    stack: PathStack,
    decoder_stages: usize,
    out: TensorMap,
}

impl ModuleVisitor for Extractor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let key = keymap::canonical_of(&self.stack.path(), self.decoder_stages);
        let t = param.val().inner();
        let t = if self.stack.is_linear_weight() && D == 2 {
            let [a, b] = [t.dims()[0], t.dims()[1]];
            t.reshape([a, b]).transpose().reshape(burn::tensor::Shape::from(vec![b, a]))
        } else {
            t
        };
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        self.out.insert(key, super::RawTensor::from_f32(shape, &values));
    }
}

/// Every parameter of `module` as a tensor under its canonical key, in checkpoint orientation
/// (the inverse of [`apply`]).
pub fn module_tensors<M: Module>(module: &M, decoder_stages: usize) -> TensorMap {
    let mut e = Extractor { stack: PathStack::default(), decoder_stages, out: TensorMap::new() };
    module.visit(&mut e);
    e.out
}
