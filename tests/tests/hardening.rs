//! Issue 22: hostile and careless inputs to the loaders. Each input is made here; each must give
//! a clear error (never a panic, hang or absurd allocation) and leave the user's files alone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vgt_model::config::VgtConfig;
use vgt_model::prompt::PromptTokenizer;
use vgt_model::reconstruct::Reconstructor;
use vgt_model::text2image::TextToImage;
use vgt_model::weights::pth::{self, DictChoice};
use vgt_model::weights::source::{self, LoadedModel, OriginalFiles};
use vgt_model::weights::{DType, RawTensor, TensorMap, st};
use vgt_tests::craft::{PthTensor, pth_bytes};
use vgt_tests::fixtures_dir;

fn tiny() -> PathBuf {
    fixtures_dir().join("internvl-tiny")
}

/// The fixture model's canonical tensors and configuration.
fn tiny_model() -> LoadedModel {
    OriginalFiles { vlm: Some(tiny().join("vlm")), ae: Some(tiny().join("vgt_ae.pth")), ar: Some(tiny().join("ar.pth")), dict: DictChoice::PreferEma }
        .load()
        .unwrap()
}

/// Runs `f`, turning a panic into a test failure that says which input it was.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what}: panicked instead of returning an error"))
}

/// Runs `f` on another thread; a hang past `secs` fails the test.
fn within<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("{what}: still running after {secs} s"))
}

/// The fixture's tensors with `key` replaced by `tensor`, as a model whose AR file is a
/// safetensors file in `dir` (AR > AE > VLM, so it covers every tensor), with the VLM's
/// tokenizer; then loaded, built for generation and for reconstruction. Returns the first
/// error, or `None` when everything loaded.
fn load_with(dir: &Path, key: &str, tensor: Option<RawTensor>) -> Option<String> {
    let mut tensors = tiny_model().tensors;
    match tensor {
        Some(t) => tensors.insert(key.to_string(), t),
        None => tensors.remove(key),
    };
    let path = dir.join(format!("{}.safetensors", key.replace('.', "_")));
    st::save(&path, &tensors, DType::F32, &Default::default()).unwrap();
    let files = OriginalFiles { vlm: Some(tiny().join("vlm")), ae: None, ar: Some(path), dict: DictChoice::PreferEma };
    no_panic(key, || {
        let loaded = match files.load() {
            Ok(l) => l,
            Err(e) => return Some(e.to_string()),
        };
        let dev = vgt_model::device::cpu_device().device;
        if let Err(e) = TextToImage::new(&loaded, &dev) {
            return Some(e.to_string());
        }
        Reconstructor::new(&loaded, &dev).err().map(|e| e.to_string())
    })
}

/// Item 3: tensors with an unexpected number of dimensions, or a dimension of size 0.
#[test]
fn tensors_of_the_wrong_rank_or_empty_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let scalar = || Some(RawTensor::from_f32(vec![], &[1.0]));
    let cases: Vec<(&str, Option<RawTensor>, &str)> = vec![
        ("lmm.language_model.model.layers.0.self_attn.q_proj.weight", scalar(), "expected 2 dimensions"),
        ("vgt_ae.encoder.embeddings.position_embedding", Some(RawTensor::from_f32(vec![4], &[0.0; 4])), "expected 3 dimensions"),
        ("adaptive_metaquery.max_metaquery", Some(RawTensor::from_f32(vec![4], &[0.0; 4])), "expected 4 dimensions"),
        ("vgt_ae.encoder.embeddings.patch_embedding.weight", Some(RawTensor::from_f32(vec![32, 3, 0, 0], &[])), "dimension of size 0"),
        ("vgt_ae.decoder.conv_in.weight", Some(RawTensor::from_f32(vec![32, 8, 0, 3], &[])), "dimension of size 0"),
        ("vgt_ae.decoder.up_blocks.0.1.conv2.weight", Some(RawTensor::from_f32(vec![8, 8, 0, 0], &[])), "up_blocks.0.1.conv2.weight"),
        ("image_head.net.input_proj.weight", scalar(), "expected 2 dimensions"),
    ];
    for (key, t, want) in cases {
        let e = load_with(tmp.path(), key, t).unwrap_or_else(|| panic!("{key}: accepted"));
        assert!(e.contains(want), "{key}: {e}");
    }
    // A 0-dim fused DC-AE qkv weight, through the `.pth` reader and the qkv splitter.
    let bytes = pth_bytes(&[PthTensor { key: "decoder.up_blocks.3.1.attn.to_qkv.weight", shape: vec![], stride: vec![], offset: 0, data: vec![1.0] }]);
    let path = tmp.path().join("ae.pth");
    std::fs::write(&path, bytes).unwrap();
    let e = no_panic("0-dim to_qkv", || source::read_checkpoint(&path, vgt_model::weights::keymap::SourceKind::Ae, DictChoice::PreferEma)).unwrap_err();
    assert!(e.to_string().contains("expected [3C, C]"), "{e}");
}

fn pth_error(tensor: PthTensor<'_>) -> String {
    let bytes = pth_bytes(&[tensor]);
    let e = no_panic("crafted pth", || pth::from_bytes(bytes, DictChoice::PreferEma)).expect_err("a crafted tensor was accepted");
    e.to_string()
}

/// Items 4 and 5: shapes, strides and offsets whose arithmetic overflows, and broadcast views.
#[test]
fn overflowing_shapes_strides_and_offsets_are_refused() {
    // The issue's case: the element span fits a usize, its byte size did not (it wrapped).
    let e = pth_error(PthTensor { key: "w", shape: vec![2, 2], stride: vec![9_150_747_060_186_627_966, 2], offset: 0, data: vec![0.0; 4] });
    assert!(e.contains("needs 9150747060186627969 elements"), "{e}");
    let e = pth_error(PthTensor { key: "w", shape: vec![4, 2], stride: vec![9_150_747_060_186_627_966, 2], offset: 0, data: vec![0.0; 4] });
    assert!(e.contains("overflow"), "{e}");
    let e = pth_error(PthTensor::contiguous("w", &[1 << 62, 64], vec![0.0; 4]));
    assert!(e.contains("`w`") && e.contains("4611686018427387904"), "{e}");
    let e = pth_error(PthTensor { key: "w", shape: vec![2], stride: vec![1], offset: 1 << 62, data: vec![0.0; 4] });
    assert!(e.contains("storage offset 4611686018427387904"), "{e}");
    // torch.zeros(1).expand(10**9, 64): 256 GB once materialised.
    let e = pth_error(PthTensor { key: "w", shape: vec![1_000_000_000, 64], stride: vec![0, 0], offset: 0, data: vec![0.0] });
    assert!(e.contains("broadcast view"), "{e}");
    // A small broadcast buffer (position ids and the like) is still fine, and reads right.
    let ok = pth::from_bytes(pth_bytes(&[PthTensor { key: "w", shape: vec![3, 2], stride: vec![0, 1], offset: 0, data: vec![5.0, 6.0] }]), DictChoice::PreferEma).unwrap();
    assert_eq!(ok["w"].to_f32(), vec![5.0, 6.0, 5.0, 6.0, 5.0, 6.0]);
    // The same overflowing shape in a safetensors header.
    let header = br#"{"w":{"dtype":"F32","shape":[4611686018427387904,64],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 16]);
    let e = no_panic("safetensors", || st::from_bytes(bytes)).unwrap_err().to_string();
    assert!(e.contains("more bytes than this machine can address") || e.contains("should take"), "{e}");
}

/// A converted copy of the fixture model in `dir/model`, whose config.json `edit` changes.
fn converted_with(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let loaded = tiny_model();
    let out = dir.join(name);
    source::save_converted(&out, &loaded.config, &loaded.tensors, &tiny().join("vlm/tokenizer.json"), DType::F32).unwrap();
    let cfg_path = out.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    edit(&mut json["config"]);
    std::fs::write(&cfg_path, serde_json::to_string(&json).unwrap()).unwrap();
    out
}

/// Item 6: broken configurations are refused before any network is built.
#[test]
fn broken_configurations_are_refused_before_building() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Value)>, &str)> = vec![
        ("lists", Box::new(|c| c["decoder"]["layers_per_block"] = serde_json::json!([1])), "layers_per_block has 1 entries"),
        ("empty", Box::new(|c| c["decoder"]["block_out_channels"] = serde_json::json!([])), "block_out_channels (stages) is 0"),
        ("patch", Box::new(|c| c["vision"]["patch_size"] = serde_json::json!(0)), "vit.patch_size is 0"),
        ("heads", Box::new(|c| c["vision"]["num_attention_heads"] = serde_json::json!(0)), "vit.num_attention_heads is 0"),
        ("layers", Box::new(|c| c["llm"]["num_hidden_layers"] = serde_json::json!(1_000_000)), "llm.num_hidden_layers is 1000000"),
    ];
    for (name, edit, want) in cases {
        let dir = converted_with(tmp.path(), name, edit);
        let e = no_panic(name, || source::load_converted(&dir)).expect_err(name).to_string();
        assert!(e.contains(want) && e.contains("config.json"), "{name}: {e}");
    }
    // Heads 0 in a Hugging Face folder's vision config.
    let vlm = tmp.path().join("vlm");
    std::fs::create_dir(&vlm).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny().join("vlm").join(f), vlm.join(f)).unwrap();
    }
    let mut hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny().join("vlm/config.json")).unwrap()).unwrap();
    hf["vision_config"]["num_attention_heads"] = serde_json::json!(0);
    std::fs::write(vlm.join("config.json"), hf.to_string()).unwrap();
    let files = OriginalFiles { vlm: Some(vlm), ae: Some(tiny().join("vgt_ae.pth")), ar: Some(tiny().join("ar.pth")), dict: DictChoice::PreferEma };
    let e = no_panic("hf heads 0", || files.load()).unwrap_err().to_string();
    assert!(e.contains("vit.num_attention_heads is 0"), "{e}");
}

/// Item 7: a tokenizer without `<img>` (another model family's) is refused by name.
#[test]
fn a_tokenizer_without_img_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tiny().join("vlm/tokenizer.json")).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    added.retain(|t| t["content"] != "<img>");
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    let mut model = tiny_model();
    model.tokenizer = Some(path);
    let dev = vgt_model::device::cpu_device().device;
    let e = no_panic("no <img>", || TextToImage::new(&model, &dev)).err().expect("accepted").to_string();
    assert!(e.contains("no `<img>` token"), "{e}");
}

/// Item 8: a gzip bomb named tokenizer.json.gz stops at the size bound.
#[test]
fn a_gzip_bomb_tokenizer_stops_at_the_bound() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..(vgt_model::prompt::MAX_TOKENIZER_BYTES >> 20) + 1 {
        gz.write_all(&chunk).unwrap();
    }
    gz.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 2 << 20, "a bomb: small on disk");
    let e = PromptTokenizer::from_file(&path).err().expect("accepted").to_string();
    assert!(e.contains("decompresses to more than 256 MiB"), "{e}");
}

fn mkfifo(path: &Path) {
    assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// Item 9: FIFOs named like a model file, a caption or an image never block.
#[test]
fn fifos_named_like_inputs_do_not_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    mkfifo(&model.join("ar.pth"));
    let m = model.clone();
    let e = within("a FIFO ar.pth", 20, move || source::open(&m).map(|_| ()).unwrap_err().to_string());
    assert!(e.contains("a FIFO") && e.contains("ar.pth"), "{e}");

    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(vgt_tests::data_dir().join("images/skimage_coffee.png"), data.join("cup.png")).unwrap();
    mkfifo(&data.join("cup.txt"));
    mkfifo(&data.join("pipe.png"));
    mkfifo(&data.join("captions.jsonl"));
    let d = data.clone();
    let r = within("FIFOs in a data folder", 20, move || vgt_model::train::data::scan(&d, "a photo of {trigger}", "sks").map(|s| s.samples.len()));
    assert!(r.is_err(), "captions.jsonl is a FIFO: an error, not a hang");
    std::fs::remove_file(data.join("captions.jsonl")).unwrap();
    let d = data.clone();
    let n = within("FIFOs in a data folder", 20, move || vgt_model::train::data::scan(&d, "a photo of {trigger}", "sks").map(|s| s.samples.len()));
    assert_eq!(n.unwrap(), 1, "the FIFO image is not an image; the FIFO caption is no caption");
    let pipe = data.join("pipe.png");
    let e = within("a FIFO image", 20, move || vgt_model::image_io::read(&pipe).map(|_| ()).unwrap_err().to_string());
    assert!(e.contains("a FIFO"), "{e}");
}

/// Item 13 and 16: `vgt convert`'s temporary folder keeps the whole output name, never deletes
/// a folder it did not make, and is gone after a failure.
#[test]
fn converting_never_deletes_a_users_folder_and_cleans_up_after_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = tiny_model();
    let tok = tiny().join("vlm/tokenizer.json");
    let user = tmp.path().join("vgt-1.partial");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "mine").unwrap();
    let out = tmp.path().join("vgt-1.5b");
    source::save_converted(&out, &loaded.config, &loaded.tensors, &tok, DType::F16).unwrap();
    assert_eq!(std::fs::read_to_string(user.join("notes.txt")).unwrap(), "mine");
    assert!(source::load_converted(&out).is_ok());
    assert!(!tmp.path().join("vgt-1.5b.partial").exists());

    // A user's folder with the temporary name itself: refused, untouched.
    let out2 = tmp.path().join("other");
    let theirs = tmp.path().join("other.partial");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("keep.txt"), "mine").unwrap();
    let e = source::save_converted(&out2, &loaded.config, &loaded.tensors, &tok, DType::F32).unwrap_err().to_string();
    assert!(e.contains("was not made by VGT Studio"), "{e}");
    assert!(theirs.join("keep.txt").exists() && !out2.exists());

    // A failure half-way (the tokenizer is missing): no output and no temporary folder.
    let out3 = tmp.path().join("third");
    let e = source::save_converted(&out3, &loaded.config, &loaded.tensors, &tmp.path().join("missing.json"), DType::F32).unwrap_err();
    assert!(e.to_string().contains("missing.json"), "{e}");
    assert!(!out3.exists() && !tmp.path().join("third.partial").exists());

    // A leftover of an interrupted convert (it has our marker) is cleared and replaced.
    let stale = tmp.path().join("fourth.partial");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(source::PARTIAL_MARKER), "").unwrap();
    std::fs::write(stale.join("model.safetensors"), "half").unwrap();
    source::save_converted(&tmp.path().join("fourth"), &loaded.config, &loaded.tensors, &tok, DType::F32).unwrap();
    assert!(!stale.exists());
}

/// Also: a failed write says "cannot write", not "cannot read".
#[test]
fn a_failed_write_says_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TensorMap::new();
    t.insert("w".into(), RawTensor::from_f32(vec![1], &[1.0]));
    let e = st::save(&tmp.path().join("no/such/folder/x.safetensors"), &t, DType::F32, &Default::default()).unwrap_err().to_string();
    assert!(e.starts_with("cannot write"), "{e}");
}

/// The presets and the fixture's inferred configuration pass validation (the validation does
/// not refuse real models).
#[test]
fn real_configurations_are_valid() {
    tiny_model().config.validate().unwrap();
    VgtConfig::internvl3_1_6b().validate().unwrap();
    let shapes = vgt_app_free_shapes_config();
    shapes.validate().unwrap();
}

/// The embedded shapes model's configuration, read from the asset.
fn vgt_app_free_shapes_config() -> VgtConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/shapes");
    source::load_converted(&path).unwrap().config
}

/// Item 10: a cancel is seen between the sampler's steps, not only after a whole token group
/// (a big batch's group at `--acc-ratio 16` took 6 s to notice).
#[test]
fn a_cancel_stops_generation_inside_a_token_group() {
    use vgt_model::generate::{GenerateError, GenerateOptions};
    use vgt_model::text2image::{Request, TextToImageError};
    let model = tiny_model();
    let dev = vgt_model::device::cpu_device().device;
    let t2i = TextToImage::new(&model, &dev).unwrap();
    let stride = model.config.stride();
    // One group holding every token (acc-ratio = the whole grid), 30 sampler steps.
    let options = GenerateOptions { height: 2 * stride, width: 2 * stride, acc_ratio: 4, num_steps: 30, ..Default::default() };
    let req = Request { prompt: "a cat".into(), negative: None, images: 2, seed: 1, options, first_image: 0 };
    let mut calls = Vec::new();
    let r = t2i.generate(&req, &mut |done, total| {
        calls.push((done, total));
        calls.len() < 3
    });
    assert!(matches!(r, Err(TextToImageError::Generate(GenerateError::Cancelled))), "{:?}", r.map(|v| v.len()));
    assert_eq!(calls, vec![(0, 1), (0, 1), (0, 1)], "asked before each sampler step, stopped at the third");
}
