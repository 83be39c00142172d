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
/// `VGT_TEST_BACKENDS=cpu` (or `wgpu`) narrows the list while iterating on one backend;
/// `VGT_TEST_BACKENDS=cuda` runs on CUDA device 0 alone (a build with `--features vgt-app/cuda`;
/// `scripts/gpu-check.sh`), and fails when it cannot start.
pub fn test_devices() -> Vec<ComputeDevice> {
    let only = std::env::var("VGT_TEST_BACKENDS").unwrap_or_default();
    if only == "cpu" {
        return vec![device::cpu_device()];
    }
    if only == "cuda" {
        return vec![device::select(device::BackendChoice::Cuda).unwrap_or_else(|e| panic!("VGT_TEST_BACKENDS=cuda: {e}"))];
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

/// Hand-made checkpoint files for the hardening and fuzz tests: a `torch.save`-style zip with a
/// protocol-2 pickle, written byte by byte so that any shape, stride or offset can be stored.
pub mod craft {
    /// One tensor of a crafted `.pth`: its own storage of `data` (little-endian f32), viewed with
    /// `shape`, `stride` and `offset` (elements).
    pub struct PthTensor<'a> {
        pub key: &'a str,
        pub shape: Vec<u64>,
        pub stride: Vec<u64>,
        pub offset: u64,
        pub data: Vec<f32>,
    }

    impl<'a> PthTensor<'a> {
        /// A contiguous tensor of `shape` holding `data`.
        pub fn contiguous(key: &'a str, shape: &[u64], data: Vec<f32>) -> Self {
            let mut stride = vec![1u64; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                stride[i] = stride[i + 1].wrapping_mul(shape[i + 1]);
            }
            Self { key, shape: shape.to_vec(), stride, offset: 0, data }
        }
    }

    fn int(out: &mut Vec<u8>, v: u64) {
        if v < 256 {
            out.extend_from_slice(&[b'K', v as u8]);
        } else if v < 1 << 63 {
            // LONG1, 8 bytes of two's complement, as Python writes a positive int below 2^63.
            out.push(0x8a);
            out.push(8);
            out.extend_from_slice(&v.to_le_bytes());
        } else {
            out.extend_from_slice(&[0x8a, 9]);
            out.extend_from_slice(&v.to_le_bytes());
            out.push(0);
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn tuple(out: &mut Vec<u8>, items: &[u64]) {
        out.push(b'(');
        for &i in items {
            int(out, i);
        }
        out.push(b't');
    }

    /// The `data.pkl` of a state dict `{key: tensor}` as `torch.save` writes it (protocol 2).
    pub fn state_dict_pickle(tensors: &[PthTensor<'_>]) -> Vec<u8> {
        let mut p = b"\x80\x02}(".to_vec();
        for (i, t) in tensors.iter().enumerate() {
            string(&mut p, t.key);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            // Persistent id ('storage', torch.FloatStorage, key, 'cpu', numel).
            p.push(b'(');
            string(&mut p, "storage");
            p.extend_from_slice(b"ctorch\nFloatStorage\n");
            string(&mut p, &i.to_string());
            string(&mut p, "cpu");
            int(&mut p, t.data.len() as u64);
            p.extend_from_slice(b"tQ");
            int(&mut p, t.offset);
            tuple(&mut p, &t.shape);
            tuple(&mut p, &t.stride);
            p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        }
        p.extend_from_slice(b"u.");
        p
    }

    /// A complete `.pth` (zip of `archive/data.pkl`, `archive/data/N`, `archive/version`).
    pub fn pth_bytes(tensors: &[PthTensor<'_>]) -> Vec<u8> {
        let pkl = state_dict_pickle(tensors);
        let storages: Vec<(String, Vec<u8>)> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("archive/data/{i}"), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let mut files: Vec<(&str, &[u8])> = vec![("archive/data.pkl", &pkl), ("archive/version", b"3\n")];
        files.extend(storages.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        stored_zip(&files)
    }

    /// A zip archive of stored (uncompressed) entries, as `torch.save` writes.
    pub fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in files {
            let offset = out.len() as u32;
            let header = |sig: u32, central: bool| {
                let mut h = Vec::new();
                h.extend_from_slice(&sig.to_le_bytes());
                if central {
                    h.extend_from_slice(&20u16.to_le_bytes());
                }
                h.extend_from_slice(&20u16.to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes());
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(name.len() as u16).to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes());
                if central {
                    h.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
                    h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
                    h.extend_from_slice(&offset.to_le_bytes());
                }
                h.extend_from_slice(name.as_bytes());
                h
            };
            out.extend(header(0x0403_4b50, false));
            out.extend_from_slice(data);
            central.extend(header(0x0201_4b50, true));
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }
}
