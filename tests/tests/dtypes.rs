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

/// f16 weight storage (`--f16-weights`, `--f16-base`): large matrices are f16 on the device,
/// `Param::val()` hands the networks f32, and the LLM prefill of the fixture stays within f16
/// rounding of the f32 reference, on every backend.
#[test]
fn half_storage_keeps_matrices_in_f16_and_computes_in_f32() {
    use vgt_model::ar::Vgt;
    use vgt_model::burn::tensor::DType as BDType;
    use vgt_model::llm::{KvCache, LlmInput};
    use vgt_model::weights::apply::apply_half;
    use vgt_model::weights::source;
    use vgt_tests::*;
    let dir = fixtures_dir().join("internvl-tiny");
    let loaded = source::open(&dir).unwrap();
    let case = dir.join("cases/llm_prefill");
    let inputs = read_tensors(&case.join("inputs.safetensors"));
    let want = read_tensors(&case.join("outputs.safetensors"))["last_hidden_state"].to_f32();
    let rows = |t: &RawTensor| -> Vec<Vec<i64>> {
        let v = t.to_f32();
        v.chunks(t.shape[1]).map(|r| r.iter().map(|&x| x as i64).collect()).collect()
    };
    for dev in test_devices() {
        let c = &loaded.config;
        let (model, _) = apply_half(Vgt::for_generation(c, &dev.device), &loaded.tensors, c.decoder.block_out_channels.len()).unwrap();
        let q = &model.llm.layers[0].self_attn.q_proj.weight;
        assert_eq!(q.base().dtype(), BDType::F16, "[{}] stored in f16", dev.kind.name());
        assert_eq!(q.val().dtype(), BDType::F32, "[{}] computed in f32", dev.kind.name());
        assert_eq!(model.llm.norm.weight.val().dtype(), BDType::F32, "vectors stay f32");
        let mask: Vec<Vec<u8>> = rows(&inputs["full_attention_mask"]).into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
        let input = LlmInput::new(to_device::<3>(&inputs["inputs_embeds"], &dev.device), rows(&inputs["position_ids"])).mask(mask);
        let got = values(model.llm.forward(input, &mut KvCache::new()));
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(err < 1e-2 * scale, "[{}] f16 weights: max error {err} (scale {scale})", dev.kind.name());
        assert!(err > 1e-7 * scale, "[{}] the weights really are rounded to f16 (error {err})", dev.kind.name());
    }
}
