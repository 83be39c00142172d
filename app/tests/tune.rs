//! `vgt tune`, `vgt generate --lora` and `vgt lora merge` end to end on the tiny fixture model
//! with real photos.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn model() -> PathBuf {
    std::env::var_os("VGT_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared().join("fixtures")).join("internvl-tiny")
}

fn vgt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vgt")).args(args).output().expect("run vgt")
}

/// Four real photos (two captioned by .txt, one by captions.jsonl, one by the template) and a
/// file that is not an image.
fn photo_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let images = shared().join("data/images");
    for f in ["skimage_astronaut.png", "skimage_chelsea.png", "skimage_coffee.png", "matplotlib_grace_hopper.jpg"] {
        std::fs::copy(images.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("skimage_chelsea.txt"), "a sks cat on a rug\n").unwrap();
    std::fs::write(dir.join("skimage_coffee.txt"), "a cup of sks coffee").unwrap();
    std::fs::write(dir.join("captions.jsonl"), "{\"file\": \"skimage_astronaut.png\", \"caption\": \"a sks astronaut\"}\n").unwrap();
    std::fs::write(dir.join("notes.png"), b"this is text, not a picture").unwrap();
}

fn tune_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "--backend", "cpu", "tune", "--data", data, "--model", model().to_str().unwrap().to_string().leak(), "--out", out,
        "--steps", steps, "--batch", "2", "--save-every", "10", "--sample-every", "0", "--lr", "3e-3", "--warmup", "5",
        "--rank", "4", "--alpha", "8", "--seed", "3",
    ]
}

/// With an EMA (so a resume also restores the moving average).
fn with_ema(mut v: Vec<&str>) -> Vec<&str> {
    v.extend(["--ema", "0.2"]);
    v
}

fn losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

fn safetensors_header(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&b[8..8 + n]).unwrap()
}

#[test]
fn tuning_lowers_the_loss_writes_peft_adapters_and_resumes_exactly_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let (data_s, a, b) = (data.to_str().unwrap(), tmp.path().join("a"), tmp.path().join("b"));

    // Uninterrupted run.
    let o = vgt(&with_ema(tune_args(data_s, a.to_str().unwrap(), "300")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("notes.png"), "the unreadable file is listed: {err}");
    assert!(err.contains("1 image(s) without a caption use \"a photo of sks\""), "{err}");
    let la = losses(&a.join("loss.jsonl"));
    assert_eq!(la.len(), 300);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&la[..20]), mean(&la[280..]));
    assert!(last < 0.7 * first, "the loss goes down: first 20 steps {first}, last 20 {last}");

    // PEFT layout.
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert!(cfg["target_modules"].as_array().unwrap().iter().any(|t| t == "q_proj"));
    let header = safetensors_header(&a.join("adapter/adapter_model.safetensors"));
    let shape = |k: &str| header.get(k).unwrap_or_else(|| panic!("{k} missing")).get("shape").unwrap().clone();
    // Tiny model: hidden 64, 2 KV heads × 16 = 32 for v_proj, MLP 128.
    let q = "base_model.model.lmm.language_model.model.layers.0.self_attn.q_proj";
    assert_eq!(shape(&format!("{q}.lora_A.weight")), serde_json::json!([4, 64]));
    assert_eq!(shape(&format!("{q}.lora_B.weight")), serde_json::json!([64, 4]));
    let down = "base_model.model.lmm.language_model.model.layers.1.mlp.down_proj";
    assert_eq!(shape(&format!("{down}.lora_A.weight")), serde_json::json!([4, 128]));
    assert_eq!(shape("base_model.model.adaptive_metaquery.max_metaquery"), serde_json::json!([1, 64, 8, 8]));

    assert_ne!(
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(a.join("adapter-raw/adapter_model.safetensors")).unwrap(),
        "the EMA adapter differs from the raw one"
    );

    // The same run, killed mid-way, then resumed.
    let args = with_ema(tune_args(data_s, b.to_str().unwrap(), "300"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgt")).args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let log = b.join("loss.jsonl");
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 25 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "the run never reached step 25");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    // Complete lines only: the kill may land in the middle of one.
    let killed_at = std::fs::read_to_string(&log).unwrap().matches('\n').count();
    assert!(killed_at < 300, "killed mid-run (at step {killed_at})");
    let mut resume = args.clone();
    resume.push("--resume");
    let o = vgt(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming at step"), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), std::fs::read_to_string(a.join("loss.jsonl")).unwrap(), "same loss curve");
    assert_eq!(
        std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        "same adapter"
    );

    // A finished run is not overwritten by accident, and a resume must keep the settings.
    let o = vgt(&with_ema(tune_args(data_s, a.to_str().unwrap(), "300")));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let mut other = with_ema(tune_args(data_s, a.to_str().unwrap(), "400"));
    other.push("--resume");
    let o = vgt(&other);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("steps: 300 → 400"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_tuning_inputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
    let out = tmp.path().join("out");
    let o = vgt(&tune_args(empty.to_str().unwrap(), out.to_str().unwrap(), "5"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no usable image"), "{}", String::from_utf8_lossy(&o.stderr));
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let mut args = tune_args(data.to_str().unwrap(), out.to_str().unwrap(), "5");
    args.extend(["--targets", "q_proj,qkv"]);
    let o = vgt(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown LoRA target `qkv`"));
    let o = vgt(&["--backend", "cpu", "generate", "x", "--model", model().to_str().unwrap(), "--out", out.to_str().unwrap(), "--lora", "/nonexistent/adapter:0.5"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/adapter"), "{err}");
    assert!(!out.join("x").exists());
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

#[test]
fn an_adapter_changes_generation_and_merging_it_gives_the_same_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let run = tmp.path().join("run");
    let o = vgt(&tune_args(data.to_str().unwrap(), run.to_str().unwrap(), "40"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let adapter = run.join("adapter");
    let generate = |model: &Path, out: &Path, lora: Option<String>| {
        let mut args = vec![
            "--backend".to_string(), "cpu".into(), "generate".into(), "a sks cat".into(), "--model".into(),
            model.display().to_string(), "--out".into(), out.display().to_string(), "--images".into(), "1".into(),
            "--steps".into(), "4".into(), "--acc-ratio".into(), "4".into(), "--seed".into(), "11".into(),
        ];
        if let Some(l) = lora {
            args.extend(["--lora".to_string(), l]);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_vgt")).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.join("11-0.png")
    };
    let plain = generate(&model(), &tmp.path().join("plain"), None);
    let with = generate(&model(), &tmp.path().join("with"), Some(adapter.display().to_string()));
    let zero = generate(&model(), &tmp.path().join("zero"), Some(format!("{}:0", adapter.join("adapter_model.safetensors").display())));
    assert_ne!(pixels(&plain), pixels(&with), "the adapter changes the image");
    assert_eq!(pixels(&plain), pixels(&zero), "weight 0 is the base model");
    let text = String::from_utf8_lossy(&std::fs::read(&with).unwrap()).into_owned();
    assert!(text.contains("Lora: "), "the adapter is recorded in the PNG settings");

    let merged = tmp.path().join("merged");
    let o = vgt(&["lora", "merge", "--model", model().to_str().unwrap(), "--lora", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_merged = generate(&merged, &tmp.path().join("from-merged"), None);
    assert_eq!(pixels(&from_merged), pixels(&with), "a merged model generates what --lora does");
}

#[test]
fn full_training_lowers_the_loss_and_writes_a_model_that_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let run = tmp.path().join("full");
    let o = vgt(&[
        "--backend", "cpu", "train", "--data", data.to_str().unwrap(), "--model", model().to_str().unwrap(), "--out",
        run.to_str().unwrap(), "--preset", "sft", "--steps", "60", "--warmup", "5", "--lr", "1e-3", "--batch", "2",
        "--save-every", "30", "--sample-every", "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = losses(&run.join("loss.jsonl"));
    assert_eq!(l.len(), 60);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&l[50..]) < 0.8 * mean(&l[..10]), "{:?}", l);
    let trained = run.join("model");
    let info = vgt(&["info", "--model", trained.to_str().unwrap()]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    assert!(String::from_utf8_lossy(&info.stdout).contains("0 missing, 0 unexpected"));
    // The trained tensors differ from the base ones; the AE is untouched.
    let base = vgt_model::weights::source::open(&model()).unwrap().tensors;
    let new = vgt_model::weights::source::open(&trained).unwrap().tensors;
    let q = "lmm.language_model.model.layers.0.self_attn.q_proj.weight";
    assert_ne!(base[q].to_f32(), new[q].to_f32());
    let ae = "vgt_ae.decoder.conv_in.weight";
    assert_eq!(base[ae].to_f32(), new[ae].to_f32());
    let gen_out = tmp.path().join("gen");
    let o = vgt(&["--backend", "cpu", "generate", "a sks cat", "--model", trained.to_str().unwrap(), "--out", gen_out.to_str().unwrap(), "--images", "1", "--steps", "4", "--acc-ratio", "4", "--seed", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn tuning_over_an_f16_base_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let run = tmp.path().join("f16");
    let mut args = tune_args(data.to_str().unwrap(), run.to_str().unwrap(), "60");
    args.push("--f16-base");
    let o = vgt(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = losses(&run.join("loss.jsonl"));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&l[50..]) < 0.8 * mean(&l[..10]), "{l:?}");
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["f16_base"], true);
}

fn preserve_losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["preserve_loss"].as_f64().expect("preserve_loss is logged"))
        .collect()
}

#[test]
fn a_preservation_folder_keeps_the_tuned_model_near_the_base_on_its_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let keep = tmp.path().join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    let images = shared().join("data/images");
    for (f, caption) in [("skimage_chelsea.png", "a cat on a rug"), ("skimage_coffee.png", "a cup of coffee")] {
        std::fs::copy(images.join(f), keep.join(f)).unwrap();
        std::fs::write(keep.join(f).with_extension("txt"), caption).unwrap();
    }
    // The same run twice: with a negligible weight the logged loss only measures how far the
    // tuned model drifts from the base on the preservation images; with a large one it holds it.
    let run = |name: &str, weight: &str| {
        let out = tmp.path().join(name);
        let mut args = tune_args(data.to_str().unwrap(), out.to_str().unwrap(), "40");
        args.extend(["--preserve", keep.to_str().unwrap(), "--preserve-weight", weight.to_string().leak()]);
        let o = vgt(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.join("adapter/adapter_model.safetensors").exists());
        preserve_losses(&out.join("loss.jsonl"))
    };
    let (free, held) = (run("free", "1e-9"), run("held", "20"));
    assert_eq!(free.len(), 40);
    assert!(free[0] < 1e-9 && held[0] < 1e-9, "the tuned model starts as the base model: {} {}", free[0], held[0]);
    let tail = |v: &[f64]| v[30..].iter().sum::<f64>() / 10.0;
    assert!(tail(&free) > 0.0, "tuning moves the model");
    assert!(tail(&held) < 0.5 * tail(&free), "the preservation loss holds the model: {} against {} without it", tail(&held), tail(&free));

    // A resume must use the same preservation folder.
    let held_out = tmp.path().join("held");
    let mut args = tune_args(data.to_str().unwrap(), held_out.to_str().unwrap(), "40");
    args.push("--resume");
    let o = vgt(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("preserve"), "{}", String::from_utf8_lossy(&o.stderr));

    // Every preservation image needs a caption; a missing folder is named.
    let out = tmp.path().join("bad");
    let refused = |preserve: &Path, expected: &str| {
        let mut args = tune_args(data.to_str().unwrap(), out.to_str().unwrap(), "5");
        args.extend(["--preserve", preserve.to_str().unwrap()]);
        let o = vgt(&args);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(expected), "{}", String::from_utf8_lossy(&o.stderr));
    };
    refused(&data, "every preservation image needs its caption");
    refused(&tmp.path().join("nowhere"), "nowhere");
}

#[test]
fn train_embeddings_stores_the_tuned_embedding_table_in_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    photo_folder(&data);
    let out = tmp.path().join("run");
    let mut args = tune_args(data.to_str().unwrap(), out.to_str().unwrap(), "10");
    args.push("--train-embeddings");
    let o = vgt(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header = safetensors_header(&out.join("adapter/adapter_model.safetensors"));
    assert!(header.keys().any(|k| k.ends_with("embed_tokens.weight")), "{:?}", header.keys().collect::<Vec<_>>());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert!(config["modules_to_save"].as_array().unwrap().iter().any(|m| m == "embed_tokens"), "{config}");
    // Merged, the adapter's table replaces the model's, and the model still generates.
    let merged = tmp.path().join("merged");
    let o = vgt(&["lora", "merge", "--model", model().to_str().unwrap(), "--lora", out.join("adapter").to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = vgt(&["--backend", "cpu", "generate", "a sks cat", "--model", merged.to_str().unwrap(), "--out", tmp.path().join("g").to_str().unwrap(), "--images", "1", "--steps", "2", "--acc-ratio", "4", "--seed", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
