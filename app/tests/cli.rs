//! The `vgt` binary end to end on the fixture models.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    std::env::var_os("VGT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn vgt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vgt")).args(args).output().expect("run vgt")
}

#[test]
fn convert_then_load_the_converted_folder() {
    let tiny = fixtures().join("internvl-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-f16");
    let p = |x: &str| tiny.join(x).to_string_lossy().into_owned();
    let o = vgt(&[
        "convert", "--vlm", &p("vlm"), "--ae", &p("vgt_ae.pth"), "--ar", &p("ar.pth"),
        "--out", out.to_str().unwrap(), "--dtype", "f16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(!tmp.path().join("tiny-f16.partial").exists());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["llm"]["hidden_size"], 64);
    let o = vgt(&["info", "--model", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("0 missing, 0 unexpected"), "{stdout}");
    // The original layout loads the same way.
    let o = vgt(&["info", "--model", tiny.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_inputs_fail_with_a_message_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let junk = tmp.path().join("junk.pth");
    std::fs::write(&junk, b"not a zip").unwrap();
    let tiny = fixtures().join("internvl-tiny");
    let o = vgt(&[
        "convert", "--vlm", tiny.join("vlm").to_str().unwrap(), "--ae", junk.to_str().unwrap(),
        "--ar", tiny.join("ar.pth").to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("junk.pth"), "{err}");
    assert!(!out.exists());
    let o = vgt(&["info", "--model", "/nonexistent/model"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/model"));
    let o = vgt(&["--backend", "tpu", "devices"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown backend `tpu`"));
}

fn photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/images")
}

#[test]
fn reconstruct_a_folder_of_real_photos_with_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    let model = fixtures().join("internvl-tiny");
    let o = vgt(&["--backend", "cpu", "reconstruct", photos().to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--reference-protocol"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9, "{stdout}");
    for l in &lines {
        assert_eq!(l["latent_shape"], serde_json::json!([8, 4, 4]));
        assert_eq!(l["size"], 24);
        // 24·24·3 pixels over 8·4·4 latent values.
        assert!((l["compression_ratio"].as_f64().unwrap() - 13.5).abs() < 1e-9);
        assert!(l["psnr"].as_f64().unwrap().is_finite() && l["reference_ssim"].as_f64().is_some());
        let recon = PathBuf::from(l["reconstruction"].as_str().unwrap());
        let img = image::open(&recon).unwrap();
        assert_eq!((img.width(), img.height()), (24, 24));
    }
    let compare = image::open(out.join("skimage_astronaut.compare.png")).unwrap();
    assert_eq!((compare.width(), compare.height()), (72, 24));
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG that claims `w×h` pixels in its header and holds a few bytes of image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], body: &[u8]| {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(body);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

#[test]
fn bad_images_get_clear_errors_and_no_output_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("internvl-tiny");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("notes.png", b"just some text, not an image".to_vec(), "not an image"),
        ("empty.png", Vec::new(), "not an image"),
        ("huge.png", png_header_only(20000, 20000), "20000×20000"),
        ("tiny.png", {
            let mut buf = std::io::Cursor::new(Vec::new());
            image::RgbImage::new(1, 1).write_to(&mut buf, image::ImageFormat::Png).unwrap();
            buf.into_inner()
        }, "1×1"),
    ];
    for (name, bytes, needle) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let o = vgt(&["--backend", "cpu", "reconstruct", path.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(!o.status.success(), "{name} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle) && err.contains(name), "{name}: {err}");
        let written: Vec<_> = std::fs::read_dir(&out).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(written.is_empty(), "{name}: wrote {written:?}");
    }
    // A size beyond the 64×64-latent limit.
    let o = vgt(&["--backend", "cpu", "reconstruct", photos().join("skimage_camera.png").to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap(), "--size", "390"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("64×64"));
}

#[test]
fn generate_is_reproducible_from_its_seed_and_embeds_the_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("internvl-tiny");
    let run = |out: &std::path::Path| {
        vgt(&["--backend", "cpu", "generate", "a red circle above a blue square", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--images", "2", "--steps", "4", "--acc-ratio", "4", "--seed", "7"])
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let o = run(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run(&b).status.success());
    for i in 0..2 {
        let name = format!("7-{i}.png");
        let (x, y) = (std::fs::read(a.join(&name)).unwrap(), std::fs::read(b.join(&name)).unwrap());
        assert_eq!(x, y, "same seed, same image");
        let img = image::load_from_memory(&x).unwrap();
        assert_eq!((img.width(), img.height()), (48, 48));
        let text = String::from_utf8_lossy(&x);
        assert!(text.contains("parameters") && text.contains("a red circle above a blue square") && text.contains("Seed: 7"));
    }
    let other = tmp.path().join("c");
    let o = vgt(&["--backend", "cpu", "generate", "a red circle above a blue square", "--model", model.to_str().unwrap(), "--out", other.to_str().unwrap(), "--images", "1", "--steps", "4", "--acc-ratio", "4", "--seed", "8"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(other.join("8-0.png")).unwrap(), std::fs::read(a.join("7-0.png")).unwrap());
}

#[test]
fn generate_refuses_bad_prompts_and_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("internvl-tiny");
    let m = model.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        // The tiny model's own grid (8×8 tokens), not the released models' 64×64.
        (vec!["generate", "a cat", "--model", m, "--out", o, "--size", "600"], "8×8-token grid"),
        (vec!["generate", "a cat", "--model", m, "--out", o, "--cfg", "0.5"], "--cfg"),
    ] {
        let r = vgt(&[&["--backend", "cpu"], &args[..]].concat());
        assert!(!r.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!out.exists(), "a refused run creates no output folder");
    }
}

#[test]
fn generate_accepts_an_empty_prompt_and_truncates_a_long_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("internvl-tiny");
    let m = model.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let r = vgt(&["--backend", "cpu", "generate", "", "--model", m, "--out", o, "--images", "1", "--steps", "2", "--acc-ratio", "16", "--seed", "1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("1-0.png").exists());
    let long = "red ".repeat(3000);
    let r = vgt(&["--backend", "cpu", "generate", &long, "--model", m, "--out", o, "--images", "1", "--steps", "2", "--acc-ratio", "16", "--seed", "2"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("only the first 1024 are used"));
    let png = std::fs::read(out.join("2-0.png")).unwrap();
    assert!(String::from_utf8_lossy(&png).contains("\"acc_ratio\":16"), "the JSON settings chunk");
}

#[test]
fn generate_without_a_model_uses_the_embedded_shapes_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = vgt(&["--backend", "cpu", "generate", "a red circle above a blue square", "--out", out.to_str().unwrap(), "--images", "1", "--seed", "7"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(out.join("7-0.png")).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    let text = String::from_utf8_lossy(&std::fs::read(out.join("7-0.png")).unwrap()).into_owned();
    assert!(text.contains("embedded:shapes"), "the PNG names the embedded model");
}

/// A model generates in the order its config says it was trained in (`"order"`, what
/// `vgt train-shapes --ar-order` writes) unless told otherwise; the PNG's parameters record the
/// order used.
#[test]
fn generate_defaults_to_the_models_training_order() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/shapes");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(assets.join(f), model.join(f)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(assets.join("config.json")).unwrap()).unwrap();
    config["config"]["order"] = "random".into();
    std::fs::write(model.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec!["--backend", "cpu", "generate", "a red circle", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--images", "1", "--steps", "4", "--seed", "3"];
        args.extend_from_slice(extra);
        let o = vgt(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&std::fs::read(out.join("3-0.png")).unwrap()).into_owned()
    };
    assert!(run("a", &[]).contains("Order: random"));
    assert!(run("b", &["--order", "sequential"]).contains("Order: sequential"));
    // The embedded model was trained in raster order.
    let o = vgt(&["--backend", "cpu", "generate", "a red circle", "--out", tmp.path().join("c").to_str().unwrap(), "--images", "1", "--steps", "4", "--seed", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&std::fs::read(tmp.path().join("c/3-0.png")).unwrap()).contains("Order: sequential"));
}

/// `render-shapes --featuring` keeps only scenes that hold the shape, and its captions name it;
/// a featured shape outside `--shapes` is refused before anything is written.
#[test]
fn render_shapes_features_the_shape_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stars");
    let o = vgt(&["render-shapes", "--out", out.to_str().unwrap(), "--count", "12", "--shapes", "star,circle,square", "--featuring", "star"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let captions: Vec<String> = (0..12).map(|i| std::fs::read_to_string(out.join(format!("{i:04}.txt"))).unwrap()).collect();
    assert!(captions.iter().all(|c| c.contains("star")), "{captions:?}");
    // Not only stars: the other shapes appear next to them.
    assert!(captions.iter().any(|c| c.contains("circle") || c.contains("square")), "{captions:?}");
    assert!(out.join("0011.png").exists());
    let bad = tmp.path().join("bad");
    let o = vgt(&["render-shapes", "--out", bad.to_str().unwrap(), "--shapes", "circle", "--featuring", "star"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--featuring `star`"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!bad.exists());
}

/// Issue 24 (item 6): each image of a batch records its index, and `--image-index` makes one
/// image of a batch again, alone, with the same pixels (within one level: float sums).
#[test]
fn one_image_of_a_batch_can_be_made_again_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("internvl-tiny");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = |out: &std::path::Path, extra: &[&str]| {
        let mut v = vec!["--backend", "cpu", "generate", "a cat", "--model", model.to_str().unwrap(), "--seed", "4", "--steps", "4"];
        v.extend_from_slice(&["--out", out.to_str().unwrap().to_string().leak()]);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |v: Vec<String>| {
        let o = Command::new(env!("CARGO_BIN_EXE_vgt")).args(&v).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(args(&a, &["--images", "3"]));
    run(args(&b, &["--images", "1", "--image-index", "2"]));
    let batch = vgt_model::image_io::read(&a.join("4-2.png")).unwrap();
    let alone = vgt_model::image_io::read(&b.join("4-2.png")).unwrap();
    let diff: Vec<i32> = batch.pixels.iter().zip(&alone.pixels).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
    let (max, mean) = (diff.iter().max().copied().unwrap_or(0), diff.iter().sum::<i32>() as f64 / diff.len().max(1) as f64);
    // The same noise; the batch size changes the order of float sums, which moves a few pixel
    // values by one level (measured: max 1, mean below 0.001).
    assert!(max <= 1 && mean < 0.01, "the third image of the batch, made alone: max difference {max}, mean {mean:.4}");
    let first = vgt_model::image_io::read(&a.join("4-0.png")).unwrap();
    assert_ne!(first.pixels, batch.pixels, "images of a batch differ");
    let s = vgt_app::meta::read_settings(&b.join("4-2.png")).unwrap();
    assert_eq!((s.seed, s.image), (4, 2));
}

/// VGT-Qwen2.5-VL from the command line: the release layout (Hugging Face Qwen2.5-VL `vlm/`,
/// `vgt_ae.pth`, `ar.pth`) converts, `info` names the family, the converted folder generates
/// (the same pixels as the unconverted one for one seed) and reconstructs a photo.
#[test]
fn a_qwen25vl_model_converts_generates_and_reconstructs() {
    let qwen = fixtures().join("qwen25vl-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let conv = tmp.path().join("qwen");
    let p = |x: &str| qwen.join(x).to_string_lossy().into_owned();
    let o = vgt(&["convert", "--vlm", &p("vlm"), "--ae", &p("vgt_ae.pth"), "--ar", &p("ar.pth"), "--out", conv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = vgt(&["info", "--model", conv.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("family: VGT-Qwen2.5-VL"), "{stdout}");
    assert!(stdout.contains("0 missing, 0 unexpected"), "{stdout}");
    let mut images = Vec::new();
    for (name, model) in [("a", conv.to_str().unwrap()), ("b", qwen.to_str().unwrap())] {
        let out = tmp.path().join(name);
        let o = vgt(&[
            "--backend", "cpu", "generate", "a dog", "--model", model, "--size", "30", "--steps", "5",
            "--acc-ratio", "4", "--seed", "11", "--out", out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let file = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "png")).unwrap();
        let img = image::open(&file).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (30, 30));
        images.push(img.into_raw());
    }
    assert_eq!(images[0], images[1], "the converted folder generates what the release files do");
    let rec = tmp.path().join("rec");
    let photo = photos().join("skimage_coffee.png");
    let o = vgt(&["--backend", "cpu", "reconstruct", "--model", conv.to_str().unwrap(), "--out", rec.to_str().unwrap(), photo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["latent_shape"], serde_json::json!([8, 8, 8]), "48 px (the native size) / stride 6");
    assert!(rec.join("skimage_coffee.recon.png").exists());
}
