//! Issue 22 from the command line: careless use never loses a user's files, and every error is
//! said once.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn model() -> PathBuf {
    std::env::var_os("VGT_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared().join("fixtures")).join("internvl-tiny")
}

fn vgt(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vgt")).args(args).output().expect("run vgt");
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
    let o = Command::new(env!("CARGO_BIN_EXE_vgt"))
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
    let o = Command::new(env!("CARGO_BIN_EXE_vgt")).args(["--backend", "auto", "devices"]).env_remove("XDG_RUNTIME_DIR").env_remove("NODEVICE_SELECT").output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR") && !err.contains("EGL"), "{err}");
}
