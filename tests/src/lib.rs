//! Shared helpers of the integration tests: where the fixtures are, which backends to run on,
//! and element-wise comparison with a case's tolerance.

use std::path::PathBuf;

use vgt_model::burn::tensor::{Tensor, TensorData};
use vgt_model::device::{self, ComputeDevice};
use vgt_model::weights::{RawTensor, TensorMap, st};

/// `../shared` next to the checkout (the repository root's sibling).
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// `$VGT_FIXTURES`, or `../shared/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("VGT_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared_dir().join("fixtures"))
}

pub fn data_dir() -> PathBuf {
    shared_dir().join("data")
}

/// The devices every backend-dependent test runs on: flex always, wgpu when an adapter exists.
/// With `VGT_REQUIRE_WGPU=1` a missing adapter is a failure, not a skip.
/// `VGT_TEST_BACKENDS=cpu` (or `wgpu`) narrows the list while iterating on one backend.
pub fn test_devices() -> Vec<ComputeDevice> {
    let only = std::env::var("VGT_TEST_BACKENDS").unwrap_or_default();
    if only == "cpu" {
        return vec![device::cpu_device()];
    }
    let mut out = if only == "wgpu" { Vec::new() } else { vec![device::cpu_device()] };
    match device::wgpu_device() {
        Ok(d) => out.push(d),
        Err(e) => {
            if std::env::var("VGT_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("VGT_REQUIRE_WGPU=1 but wgpu is unavailable: {e}");
            }
            eprintln!("note: skipping the wgpu backend: {e}");
        }
    }
    out
}

/// Reads a fixture's safetensors file.
pub fn read_tensors(path: &std::path::Path) -> TensorMap {
    st::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The worst violation of `|got − want| ≤ atol + rtol·|want|`, as a message, or `None`.
pub fn compare(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{name}: {} elements, expected {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if (excess > 0.0 || g.is_nan() != w.is_nan()) && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    worst.map(|(i, _)| format!("{name}: worst element {i}: got {}, want {} (atol {atol}, rtol {rtol})", got[i], want[i]))
}

/// A tensor's values as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// A raw fixture tensor on a device.
pub fn to_device<const D: usize>(raw: &RawTensor, device: &vgt_model::burn::tensor::Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(raw.to_f32(), raw.shape.clone()), device)
}
