//! f32, f16 and bf16 storage in `.pth` and `.safetensors`, strided views, and the round trip
//! through `st::save` (the storage `vgt convert --dtype` writes).

use std::path::PathBuf;

use vgt_model::weights::pth::{self, DictChoice};
use vgt_model::weights::{DType, RawTensor, TensorMap, st};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// `tests/data/dtypes.pth` is written by `make_dtype_pth.py` (see its docstring for the values).
#[test]
fn pth_bf16_strided_and_f16_tensors() {
    let map = pth::load(&data().join("dtypes.pth"), DictChoice::PreferEma).unwrap();
    assert_eq!(map["w"].dtype, DType::BF16);
    assert_eq!(map["w"].shape, vec![2, 3]);
    assert_eq!(map["w"].to_f32(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    assert_eq!(map["h"].dtype, DType::F16);
    assert_eq!(map["h"].to_f32(), vec![0.5, -1.25, 2.0, 65504.0]);
}

#[test]
fn safetensors_round_trip_in_every_float_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let values = [1.0f32, -2.5, 0.1, 3.0e4, 1.0e-3, 7.0];
    let mut map = TensorMap::new();
    map.insert("a.weight".into(), RawTensor::from_f32(vec![2, 3], &values));
    for (dtype, tol) in [(DType::F32, 0.0f32), (DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        let path = tmp.path().join(format!("{}.safetensors", dtype.name()));
        st::save(&path, &map, dtype, &Default::default()).unwrap();
        let back = st::load(&path).unwrap();
        assert_eq!(back["a.weight"].dtype, dtype);
        assert_eq!(back["a.weight"].shape, vec![2, 3]);
        for (g, w) in back["a.weight"].to_f32().iter().zip(values) {
            assert!((g - w).abs() <= tol * w.abs(), "{dtype:?}: {g} vs {w}");
        }
    }
}

#[test]
fn a_safetensors_header_that_lies_about_sizes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let header = br#"{"x":{"dtype":"F32","shape":[4,4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    let path = tmp.path().join("lie.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = st::load(&path).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("64 bytes") && err.contains("lie.safetensors"), "{err}");
}
