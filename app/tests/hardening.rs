//! Issues 22 and 29 from the command line: careless or hostile use never loses a user's files,
//! never reads outside a model, and every error is said once.
//!
//! `VGT_TEST_BIN` runs these tests against another `vgt` binary (how the issue-29 tests were
//! seen failing on the code before their fixes).

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn model() -> PathBuf {
    std::env::var_os("VGT_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared().join("fixtures")).join("internvl-tiny")
}

fn bin() -> PathBuf {
    std::env::var_os("VGT_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vgt")))
}

fn vgt(args: &[&str]) -> (bool, String) {
    let o = Command::new(bin()).args(args).output().expect("run vgt");
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn photos(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["skimage_coffee.png", "skimage_chelsea.png"] {
        std::fs::copy(shared().join("data/images").join(f), dir.join(f)).unwrap();
    }
}

fn tune(data: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let m = model();
    let mut args = vec![
        "--backend", "cpu", "tune", "--data", data.to_str().unwrap(), "--model", m.to_str().unwrap(), "--out",
        out.to_str().unwrap(), "--steps", "2", "--batch", "1", "--sample-every", "0", "--save-every", "1",
    ];
    args.extend_from_slice(extra);
    vgt(&args)
}

/// Item 11: an existing folder that is not a run is refused, and nothing in it changes.
#[test]
fn tune_refuses_a_folder_that_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let out = tmp.path().join("mine");
    std::fs::create_dir_all(out.join("adapter")).unwrap();
    std::fs::write(out.join("adapter/adapter_config.json"), "{}").unwrap();
    std::fs::write(out.join("run.json.bak"), "mine").unwrap();
    let (ok, err) = tune(&data, &out, &[]);
    assert!(!ok && err.contains("holds no tuning run"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(), "{}");
    assert!(!out.join("run.json").exists() && !out.join("latents.safetensors").exists());
}

/// Items 15 and 16: unusable data leaves no run folder; a resume without run.json, or with
/// another rank, is refused.
#[test]
fn tune_validates_before_writing_and_checks_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("a.png"), b"not a picture").unwrap();
    let out = tmp.path().join("run");
    let (ok, err) = tune(&junk, &out, &[]);
    assert!(!ok && err.contains("no usable image"), "{err}");
    assert!(!out.exists(), "a run that could not start leaves no folder");

    let data = tmp.path().join("data");
    photos(&data);
    let (ok, err) = tune(&data, &out, &["--rank", "4"]);
    assert!(ok, "{err}");
    let (ok, err) = tune(&data, &out, &["--rank", "8", "--resume"]);
    assert!(!ok && err.contains("settings differ") && err.contains("rank"), "{err}");
    let state = out.join("checkpoint/state.json");
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, "{\"step\": 18446744073709551615, \"optimizer_steps\": 18446744073709551615}").unwrap();
    let (ok, err) = tune(&data, &out, &["--rank", "4", "--resume"]);
    assert!(!ok && err.contains("past the run's 2 steps"), "{err}");
    std::fs::write(&state, saved).unwrap();
    std::fs::remove_file(out.join("run.json")).unwrap();
    let (ok, err) = tune(&data, &out, &["--rank", "8", "--resume"]);
    assert!(!ok && err.contains("no run.json"), "{err}");
    assert!(!out.join("run.json").exists(), "the refused resume wrote nothing");
}

/// Item 16: `generate --steps 0` fails before loading anything and creates no folder.
#[test]
fn generate_checks_its_settings_before_touching_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let m = model();
    for bad in [["--steps", "0"], ["--acc-ratio", "0"]] {
        let mut args = vec!["--backend", "cpu", "generate", "a cat", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(&bad);
        let (ok, err) = vgt(&args);
        assert!(!ok && err.contains(bad[0]), "{err}");
        assert!(!out.exists(), "{bad:?} created {}", out.display());
    }
}

/// Item 12: `photo.png` and `photo.jpg` in one folder get outputs of their own.
#[test]
fn reconstruct_names_each_output_after_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(shared().join("data/images/skimage_coffee.png"), images.join("photo.png")).unwrap();
    std::fs::copy(shared().join("data/images/matplotlib_grace_hopper.jpg"), images.join("photo.jpg")).unwrap();
    let out = tmp.path().join("out");
    let m = model();
    let o = Command::new(bin())
        .args(["--backend", "cpu", "reconstruct", images.to_str().unwrap(), "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let recon: Vec<&str> = rows.iter().map(|r| r["reconstruction"].as_str().unwrap()).collect();
    assert_ne!(recon[0], recon[1]);
    for r in &rows {
        let input = Path::new(r["input"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        let rec = r["reconstruction"].as_str().unwrap();
        assert!(rec.ends_with(&format!("{input}.recon.png")), "{input} -> {rec}");
        assert!(Path::new(rec).exists());
    }
}

/// Also: an error's cause is said once ("(os error 2): No such file … (os error 2)" before).
#[test]
fn errors_say_their_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("model");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("config.json"), "{\"format\": \"vgt-studio\", \"config\": {}}").unwrap();
    let (ok, err) = vgt(&["info", "--model", m.to_str().unwrap()]);
    assert!(!ok);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_string();
    assert!(line.contains("config.json"), "{err}");
    assert_eq!(line.matches("config.json").count(), 1, "{line}");
    let (ok, err) = vgt(&["--backend", "cpu", "reconstruct", "/nonexistent/a.png", "--model", model().to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// Also: `--backend auto` on a headless machine prints no EGL or Wayland noise.
#[test]
fn device_listing_is_quiet_without_a_desktop_session() {
    let o = Command::new(bin()).args(["--backend", "auto", "devices"]).env_remove("XDG_RUNTIME_DIR").env_remove("NODEVICE_SELECT").output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR") && !err.contains("EGL"), "{err}");
}

// ---- Issue 29 -------------------------------------------------------------------------------

/// `vgt ARGS` under `sh`, after `prelude` (e.g. `ulimit -f 0`); SIGXFSZ is ignored so that a
/// write past the file-size limit fails as on a full disk instead of killing the process.
fn vgt_limited(prelude: &str, args: &[&str], envs: &[(&str, &Path)]) -> (bool, String) {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    let script = format!("trap '' XFSZ; {prelude}; exec '{}' {}", bin().display(), quoted.join(" "));
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run sh");
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Every file name under `dir`, recursively, relative to it.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// A copy of the tiny fixture model (files copied, writable) to edit.
fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(m.join("vlm")).unwrap();
    for f in ["ar.pth", "vgt_ae.pth", "vlm/config.json", "vlm/model.safetensors", "vlm/tokenizer.json"] {
        std::fs::write(m.join(f), std::fs::read(model().join(f)).unwrap()).unwrap();
    }
    m
}

/// A safetensors file of f32 tensors `(name, shape, values)`.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut head = serde_json::to_vec(&header).unwrap();
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// A PEFT adapter of rank 1 on the tiny model's first `q_proj` (64 × 64), every factor value
/// `value`, with `lora_alpha` written as given.
fn adapter(dir: &Path, value: f32, alpha: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let q = "base_model.model.lmm.language_model.model.layers.0.self_attn.q_proj";
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &[(format!("{q}.lora_A.weight"), vec![1, 64], vec![value; 64]), (format!("{q}.lora_B.weight"), vec![64, 1], vec![value; 64])],
    );
    std::fs::write(dir.join("adapter_config.json"), format!("{{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": {alpha}, \"target_modules\": [\"q_proj\"]}}")).unwrap();
    dir.to_path_buf()
}

/// Sets the first value of the f32 tensor `key` of a safetensors file to NaN.
fn poison(path: &Path, key: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[key]["dtype"], "F32");
    let start = 8 + n + header[key]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn generate_with(out: &Path, extra: &[&str]) -> (bool, String) {
    let m = model();
    let mut args = vec!["--backend", "cpu", "generate", "a cat", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "2", "--seed", "3"];
    args.extend_from_slice(extra);
    vgt(&args)
}

/// Item 1: a folder whose `run.json` is not a run of ours is never written to (before: a fresh
/// run overwrote its run.json and deleted its `adapter/`); nor is one of our finished runs
/// without `--resume`.
#[test]
fn tune_never_replaces_a_folder_it_did_not_make() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let cases = [
        ("notes", "{\"name\": \"my notes\"}"),
        ("other-tool", "{\"format\": \"someone-else\", \"version\": 1}"),
        ("not-json", "run: yes"),
    ];
    for (name, text) in cases {
        let out = tmp.path().join(name);
        std::fs::create_dir_all(out.join("adapter")).unwrap();
        std::fs::write(out.join("adapter/mine.txt"), "precious").unwrap();
        std::fs::write(out.join("run.json"), text).unwrap();
        for extra in [&[][..], &["--resume"][..]] {
            let (ok, err) = tune(&data, &out, extra);
            assert!(!ok && err.contains("not a VGT Studio tuning run"), "{name} {extra:?}: {err}");
            assert_eq!(std::fs::read_to_string(out.join("adapter/mine.txt")).unwrap(), "precious", "{name}");
            assert_eq!(std::fs::read_to_string(out.join("run.json")).unwrap(), text, "{name}");
            assert_eq!(listing(&out), ["adapter", "adapter/mine.txt", "run.json"], "{name} {extra:?}");
        }
    }
    // One of our runs, finished: a fresh run there is refused and changes nothing.
    let out = tmp.path().join("ours");
    let (ok, err) = tune(&data, &out, &[]);
    assert!(ok, "{err}");
    let run_json = std::fs::read(out.join("run.json")).unwrap();
    assert!(String::from_utf8_lossy(&run_json).contains("vgt-studio-tune-run"));
    std::fs::write(out.join("adapter/mine.txt"), "precious").unwrap();
    let (ok, err) = tune(&data, &out, &["--rank", "8"]);
    assert!(!ok && err.contains("already holds a tuning run"), "{err}");
    assert_eq!(std::fs::read(out.join("run.json")).unwrap(), run_json);
    assert_eq!(std::fs::read_to_string(out.join("adapter/mine.txt")).unwrap(), "precious");
}

/// Item 2: an index's shard names are plain file names in its folder; `..`, absolute paths and
/// backslashes are refused, naming the entry, and nothing outside is read or quoted.
#[test]
fn shard_names_in_an_index_cannot_leave_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_copy(tmp.path());
    let shard = std::fs::read(m.join("vlm/model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("outside.safetensors"), &shard).unwrap();
    std::fs::remove_file(m.join("vlm/model.safetensors")).unwrap();
    let outside = tmp.path().join("outside.safetensors");
    for target in ["../../outside.safetensors", outside.to_str().unwrap(), "/etc/passwd", "..\\..\\outside.safetensors", "sub/../../../outside.safetensors"] {
        let index = serde_json::json!({"metadata": {}, "weight_map": {"language_model.model.norm.weight": target}});
        std::fs::write(m.join("vlm/model.safetensors.index.json"), index.to_string()).unwrap();
        for cmd in [&["info", "--model", m.to_str().unwrap()][..], &["convert", "--vlm", m.join("vlm").to_str().unwrap(), "--ae", m.join("vgt_ae.pth").to_str().unwrap(), "--ar", m.join("ar.pth").to_str().unwrap(), "--out", tmp.path().join("conv").to_str().unwrap()][..]] {
            let (ok, err) = vgt(cmd);
            assert!(!ok, "{target}: {cmd:?} read a shard outside the folder");
            assert!(err.contains("language_model.model.norm.weight") && err.contains("not a plain file name"), "{target}: {err}");
            assert!(!err.contains("root:") && !tmp.path().join("conv").exists(), "{target}: {err}");
        }
    }
}

/// Item 3: on a full disk (here a file-size limit of 0) `reconstruct` fails naming the file, and
/// leaves no empty PNG, no `.partial` file and no `summary.csv.partial`.
#[test]
fn reconstruct_on_a_full_disk_leaves_nothing_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    photos(&images);
    std::fs::copy(shared().join("data/images/matplotlib_grace_hopper.jpg"), images.join("hopper.jpg")).unwrap();
    let m = model();
    for input in [images.join("skimage_coffee.png"), images.clone()] {
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let (ok, err) = vgt_limited("ulimit -f 0", &["--backend", "cpu", "reconstruct", input.to_str().unwrap(), "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()], &[]);
        assert!(!ok, "a failed write must fail the command: {err}");
        assert!(err.contains(".recon.png") || err.contains(".compare.png"), "the error names the file: {err}");
        assert_eq!(listing(&out), Vec::<String>::new(), "{err}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Item 4: while a run works, a second `vgt tune` on its folder is refused naming the process;
/// a killed run releases the folder.
#[test]
fn a_run_folder_is_locked_while_a_process_works_in_it() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let out = tmp.path().join("run");
    let m = model();
    let args = |resume: bool| {
        let mut a: Vec<String> = ["--backend", "cpu", "tune", "--data", data.to_str().unwrap(), "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "100000", "--batch", "1", "--sample-every", "0", "--save-every", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    // Waits until the child has written a loss line (or said `needle`), then returns.
    let start = |resume: bool, needle: &str| {
        let mut child = Command::new(bin()).args(args(resume)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let needle = needle.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&needle) {
                    let _ = tx.send(());
                }
            }
        });
        (child, rx)
    };
    let (mut first, _) = start(false, "\u{0}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(out.join("loss.jsonl")).map_or(0, |t| t.lines().count()) < 6 {
        assert!(std::time::Instant::now() < deadline, "the first run wrote no loss line in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = Command::new(bin()).args(args(true)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("in use by process {}", first.id())), "{err}");
    let lines = std::fs::read_to_string(out.join("loss.jsonl")).unwrap().lines().count();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(lines >= 6);
    // The lock died with the process: a resume starts.
    let (mut second, said) = start(true, "resuming at step");
    let resumed = said.recv_timeout(std::time::Duration::from_secs(120)).is_ok();
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(resumed, "a resume after the kill did not start");
}

/// Item 5: a huge caption is cut to 64 KiB with a warning naming its file, and training runs.
#[test]
fn a_huge_caption_is_cut_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let words = "a cat sitting on a mat ".repeat(3 << 20 >> 5);
    std::fs::write(data.join("skimage_coffee.txt"), &words).unwrap();
    let (ok, err) = tune(&data, &tmp.path().join("run"), &[]);
    assert!(ok, "{err}");
    assert!(err.contains("skimage_coffee.txt") && err.contains("only its first 64 KiB are used"), "{err}");
}

/// Item 6: files named like an adapter's settings that are FIFOs or devices are refused at
/// once (they hung `generate --lora` and `lora merge`, or grew without bound).
#[test]
fn adapter_files_must_be_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo_dir = adapter(&tmp.path().join("fifo"), 0.01, "1");
    std::fs::remove_file(fifo_dir.join("adapter_config.json")).unwrap();
    assert!(Command::new("mkfifo").arg(fifo_dir.join("adapter_config.json")).status().unwrap().success());
    let zero_dir = adapter(&tmp.path().join("zero"), 0.01, "1");
    std::fs::remove_file(zero_dir.join("adapter_config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_dir.join("adapter_config.json")).unwrap();
    for (dir, what) in [(&fifo_dir, "a FIFO"), (&zero_dir, "a device")] {
        let lora = dir.to_str().unwrap();
        let out = tmp.path().join("out");
        let m = model();
        for args in [
            vec!["--backend", "cpu", "generate", "a cat", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--lora", lora],
            vec!["lora", "merge", "--model", m.to_str().unwrap(), "--lora", lora, "--out", out.to_str().unwrap()],
        ] {
            let mut child = Command::new(bin()).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{args:?} hangs on {what}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(what) && err.contains("adapter_config.json"), "{args:?}: {err}");
            assert!(!out.exists());
        }
    }
}

/// Item 7: non-finite or extreme adapters, weights and configurations are refused with a clear
/// error, and a generation whose numbers still overflow says so: never a black PNG.
#[test]
fn non_finite_adapters_and_configurations_never_make_a_black_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let good = adapter(&tmp.path().join("good"), 0.01, "1");
    let cases = [
        (adapter(&tmp.path().join("nan"), f32::NAN, "1").display().to_string(), "holds the value NaN"),
        (adapter(&tmp.path().join("inf"), f32::INFINITY, "1").display().to_string(), "holds the value inf"),
        (adapter(&tmp.path().join("big"), 1e30, "1").display().to_string(), "holds the value 1e30"),
        (adapter(&tmp.path().join("alpha"), 0.01, "1e308").display().to_string(), "`lora_alpha` is 1e308"),
        (format!("{}:1e30", good.display()), "out of range"),
        (format!("{}:nan", good.display()), "out of range"),
    ];
    for (lora, why) in &cases {
        let (ok, err) = generate_with(&out, &["--lora", lora]);
        assert!(!ok && err.contains(why), "{lora}: {err}");
        assert!(!out.exists(), "{lora}: an image was written");
    }
    // A model whose weights hold a NaN (a corrupt download): the generated latents say it.
    let conv = tmp.path().join("converted");
    let m = model();
    let (ok, err) = vgt(&["convert", "--vlm", m.join("vlm").to_str().unwrap(), "--ae", m.join("vgt_ae.pth").to_str().unwrap(), "--ar", m.join("ar.pth").to_str().unwrap(), "--out", conv.to_str().unwrap()]);
    assert!(ok, "{err}");
    poison(&conv.join("model.safetensors"), "lmm.language_model.model.norm.weight");
    let (ok, err) = vgt(&["--backend", "cpu", "generate", "a cat", "--model", conv.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "2"]);
    assert!(!ok && err.contains("not finite numbers"), "{err}");
    assert!(!out.exists());
    // `lora merge` never writes a NaN model.
    let m = model();
    let merged = tmp.path().join("merged");
    let nan = tmp.path().join("nan");
    let (ok, err) = vgt(&["lora", "merge", "--model", m.to_str().unwrap(), "--lora", nan.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(!ok && err.contains("NaN"), "{err}");
    assert!(!merged.exists());
    // Broken epsilons and rotary bases in a Hugging Face config.
    for (field, value) in [("rms_norm_eps", "-5"), ("rope_theta", "-1"), ("rms_norm_eps", "0")] {
        let dir = tempfile::tempdir().unwrap();
        let m = model_copy(dir.path());
        let cfg_path = m.join("vlm/config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["llm_config"][field] = serde_json::from_str(value).unwrap();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let (ok, err) = vgt(&["info", "--model", m.to_str().unwrap()]);
        assert!(!ok && err.contains(&format!("llm.{field} is {}", value.trim_start_matches('+'))), "{field} {value}: {err}");
        let out = dir.path().join("out");
        let (ok, _) = vgt(&["--backend", "cpu", "generate", "x", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(!ok && !out.exists());
    }
}

/// Item 9: an image of more pixels than the decoder's bound is refused from its header, with
/// its size, in `reconstruct` and as tuning data (a 16384² grey PNG took 2.3 GB before).
#[test]
fn images_beyond_the_pixel_bound_are_refused_with_their_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let huge = data.join("huge.png");
    image::GrayImage::new(16384, 16384).save(&huge).unwrap();
    let out = tmp.path().join("out");
    let m = model();
    let (ok, err) = vgt(&["--backend", "cpu", "reconstruct", huge.to_str().unwrap(), "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("16384×16384 pixels (268 megapixels)") && err.contains("huge.png"), "{err}");
    let (ok, err) = tune(&data, &tmp.path().join("run"), &[]);
    assert!(ok, "{err}");
    assert!(err.contains("huge.png") && err.contains("megapixels"), "the huge image is skipped with its size: {err}");
}

/// Item 10: a BOM before `captions.jsonl`'s first line is accepted.
#[test]
fn a_captions_file_may_start_with_a_byte_order_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    std::fs::write(data.join("captions.jsonl"), "\u{feff}{\"file\": \"skimage_coffee.png\", \"caption\": \"a cup\"}\n{\"file\": \"skimage_chelsea.png\", \"caption\": \"a cat\"}\n").unwrap();
    let (ok, err) = tune(&data, &tmp.path().join("run"), &[]);
    assert!(ok, "{err}");
    assert!(!err.contains("without a caption"), "{err}");
}

/// Item 10: a symbolic link that leads nowhere is named as such, as a model folder part and
/// as an input image (before: "entity not found", or a self-referencing `vlm` link taken for
/// absent, which ended in "vit.num_attention_heads is 0").
#[test]
fn symlink_loops_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_copy(tmp.path());
    std::fs::remove_dir_all(m.join("vlm")).unwrap();
    std::os::unix::fs::symlink(m.join("vlm"), m.join("vlm")).unwrap();
    let (ok, err) = vgt(&["info", "--model", m.to_str().unwrap()]);
    assert!(!ok && err.contains("symbolic link that leads nowhere") && err.contains("vlm"), "{err}");
    let looped = tmp.path().join("loop.png");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let (ok, err) = vgt(&["--backend", "cpu", "reconstruct", looped.to_str().unwrap(), "--model", model().to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap()]);
    assert!(!ok && err.contains("symbolic link that leads nowhere") && err.contains("loop.png"), "{err}");
    let (ok, err) = vgt(&["convert", "--vlm", model().join("vlm").to_str().unwrap(), "--ae", looped.to_str().unwrap(), "--ar", model().join("ar.pth").to_str().unwrap(), "--out", tmp.path().join("c").to_str().unwrap()]);
    assert!(!ok && err.contains("symbolic link that leads nowhere"), "{err}");
}

/// `touch -d '2 hours ago' PATH`: an mtime old enough to mark a leftover as stale.
fn age(path: &Path) {
    assert!(Command::new("touch").args(["-d", "2 hours ago"]).arg(path).status().unwrap().success());
}

/// Item 10: a failed unpack of the embedded model (a full disk) leaves no `.partial-PID`
/// folder, and the leftovers of killed unpacks and killed PNG writes are cleared by the next run.
#[test]
fn leftovers_of_failed_or_killed_writes_are_cleared() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let args = ["--backend", "cpu", "generate", "a red circle", "--out", out.to_str().unwrap(), "--steps", "2", "--seed", "7"];
    for _ in 0..2 {
        let (ok, err) = vgt_limited("ulimit -f 1000", &args, &[("XDG_CACHE_HOME", &cache)]);
        assert!(!ok && err.contains("embedded model"), "{err}");
        assert_eq!(listing(&cache.join("vgt-studio")), Vec::<String>::new(), "{err}");
    }
    // A killed unpack's folder and a killed write's PNG, both old; and a fresh partial PNG that
    // another process may still be writing.
    let stale_unpack = cache.join("vgt-studio/shapes-0123456789abcdef.partial-999999");
    std::fs::create_dir_all(&stale_unpack).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let (stale_png, fresh_png) = (out.join("7-0.png.partial"), out.join("8-0.png.partial"));
    std::fs::write(&stale_png, b"half a png").unwrap();
    std::fs::write(&fresh_png, b"being written").unwrap();
    age(&stale_png);
    age(&stale_unpack);
    let o = Command::new(bin()).args(args).env("XDG_CACHE_HOME", &cache).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stale_png.exists() && fresh_png.exists() && out.join("7-0.png").exists());
    let names = listing(&cache.join("vgt-studio"));
    assert!(names.iter().all(|n| !n.contains(".partial")), "{names:?}");
}

/// Item 10: a resume whose `run.json` no longer targets what the checkpoint trained is refused
/// (before: the trained adapters were silently dropped).
#[test]
fn a_resume_never_drops_trained_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    photos(&data);
    let out = tmp.path().join("run");
    let (ok, err) = tune(&data, &out, &[]);
    assert!(ok, "{err}");
    let path = out.join("run.json");
    let mut run: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    run["lora"]["targets"] = serde_json::json!(["q_proj"]);
    std::fs::write(&path, run.to_string()).unwrap();
    let (ok, err) = tune(&data, &out, &["--targets", "q_proj", "--resume"]);
    assert!(!ok && err.contains("would drop") && err.contains("k_proj"), "{err}");
}
