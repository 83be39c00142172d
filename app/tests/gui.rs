//! The desktop app's logic through egui_kittest: each workspace driven by its buttons, with the
//! real tiny fixture model on the CPU backend and real photos.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egui_kittest::Harness;
use egui::Role;
use egui_kittest::kittest::Queryable;
use vgt_app::gui::{App, Settings, Workspace};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn tiny() -> PathBuf {
    std::env::var_os("VGT_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared().join("fixtures")).join("internvl-tiny")
}

/// `DIR/photos` with copies of the named photos of `../shared/data/images`.
fn photo_folder(dir: &std::path::Path, files: &[&str]) -> PathBuf {
    let data = dir.join("photos");
    std::fs::create_dir_all(&data).unwrap();
    for f in files {
        std::fs::copy(shared().join("data/images").join(f), data.join(f)).unwrap();
    }
    data
}

fn app(out: &std::path::Path, model: Option<PathBuf>) -> App {
    let settings = Settings {
        model,
        backend: "cpu".into(),
        output_dir: out.join("images"),
        steps: 4,
        acc_ratio: 4,
        seed: 3,
        prompt: "a sks cat".into(),
        ..Default::default()
    };
    let mut app = App::new(settings, None, Arc::new(|| {}));
    assert!(app.wait_idle(Duration::from_secs(120)), "loading timed out");
    app
}

fn harness(app: App) -> Harness<'static, App> {
    Harness::builder().with_size(egui::vec2(1280.0, 900.0)).build_ui_state(
        |ui, app: &mut App| {
            let ctx = ui.ctx().clone();
            app.logic(&ctx);
            app.ui(ui);
        },
        app,
    )
}

/// The Generate button (the workspace tab has the same name; the button comes after it).
fn generate_button<'a>(h: &'a Harness<'static, App>) -> egui_kittest::Node<'a> {
    h.get_all_by_role_and_label(Role::Button, "Generate").last().expect("a Generate button")
}

/// Steps frames until the worker is idle.
fn settle(h: &mut Harness<'static, App>) {
    h.step();
    assert!(h.state_mut().wait_idle(Duration::from_secs(300)), "the job did not finish");
    h.step();
    h.step();
}

#[test]
fn generate_puts_an_image_with_its_settings_in_the_gallery_and_a_dropped_png_restores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    assert!(h.state().model.is_some(), "{:?}", h.state().model_error);
    h.step();
    generate_button(&h).click();
    settle(&mut h);
    let state = h.state();
    assert!(state.generate.status.starts_with("wrote"), "{}", state.generate.status);
    assert_eq!(state.generate.gallery.len(), 1);
    let s = state.generate.gallery[0].settings.clone().expect("the PNG carries its settings");
    assert_eq!((s.prompt.as_str(), s.seed, s.options.num_steps, s.options.acc_ratio), ("a sks cat", 3, 4, 4));
    assert!(state.generate.preview.is_some(), "the latent grid preview was shown");
    let png = state.generate.gallery[0].path.clone();
    // Change the settings, then drop the PNG: they come back.
    let st = h.state_mut();
    st.generate.prompt = "something else".into();
    st.generate.seed = 99;
    st.generate.steps = 17;
    st.on_dropped(vec![png]);
    assert_eq!((st.generate.prompt.as_str(), st.generate.seed, st.generate.steps), ("a sks cat", 3, 4));
    // A file that is not one of ours says so.
    st.on_dropped(vec![shared().join("data/images/skimage_coffee.png")]);
    let e = st.generate.error.clone().unwrap_or_default();
    assert!(e.contains("no VGT Studio settings"), "{e}");
}

#[test]
fn cancel_stops_a_generation_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = app(tmp.path(), Some(tiny()));
    app.generate.acc_ratio = 1;
    app.generate.steps = 300;
    let mut h = harness(app);
    h.step();
    generate_button(&h).click();
    // Wait for the first progress, then press Cancel.
    for _ in 0..20_000 {
        h.step();
        if h.state().generate.progress.is_some_and(|(d, _, _)| d > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    settle(&mut h);
    assert!(h.state().generate.status.contains("cancelled"), "{}", h.state().generate.status);
    assert!(vgt_app::gui::image_files(&tmp.path().join("images")).is_empty(), "no image written");
}

#[test]
fn reconstruct_shows_metrics_for_a_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = app(tmp.path(), Some(tiny()));
    app.workspace = Workspace::Reconstruct;
    let mut h = harness(app);
    h.step();
    let photos = vec![shared().join("data/images/skimage_astronaut.png"), shared().join("data/images/skimage_chelsea.png")];
    h.state_mut().on_dropped(photos);
    settle(&mut h);
    let items: Vec<_> = h.state().reconstruct.items().cloned().collect();
    assert_eq!(items.len(), 2);
    for it in &items {
        assert!(it.metrics.psnr.is_finite() && it.metrics.psnr > 5.0, "{}", it.metrics.psnr);
        assert_eq!(it.latent_shape[1], 8, "the tiny model's latent has 8 channels");
    }
    assert!(h.query_all_by_label_contains("dB · SSIM").count() >= 1, "the metrics line is shown");
    let csv = h.state().reconstruct.csv();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("skimage_chelsea.png"));
}

#[test]
fn tune_runs_shows_its_loss_and_offers_the_adapter_to_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = photo_folder(tmp.path(), &["skimage_astronaut.png", "skimage_chelsea.png", "skimage_coffee.png"]);
    let mut app = app(tmp.path(), Some(tiny()));
    app.workspace = Workspace::Tune;
    app.tune.set_data(data.clone());
    app.tune.out_input = tmp.path().join("run").display().to_string();
    app.tune.steps = 8;
    app.tune.batch = 2;
    app.tune.sample_every = 4;
    app.tune.save_every = 4;
    app.tune.lr = 3e-3;
    assert_eq!(app.tune.pairs.len(), 3);
    app.tune.pairs[1].caption = "a sks cat".into();
    let mut h = harness(app);
    h.step();
    h.get_by_role_and_label(Role::Button, "Start").click();
    settle(&mut h);
    let st = h.state();
    assert!(st.tune.error.is_none(), "{:?}", st.tune.error);
    assert_eq!(st.tune.losses.len(), 8, "{}", st.tune.status);
    assert_eq!(st.tune.samples.len(), 2);
    let adapter = st.tune.adapter.clone().expect("finished");
    assert!(st.generate.loras.iter().any(|(p, _, _)| *p == adapter), "the adapter is offered to Generate");
    assert_eq!(std::fs::read_to_string(data.join("skimage_chelsea.txt")).unwrap(), "a sks cat", "the edited caption was saved");
}

#[test]
fn a_folder_that_is_not_a_model_shows_an_error_in_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tmp.path().to_path_buf())));
    h.step();
    assert!(h.state().model.is_none());
    h.get_by_label_contains("Model error");
    assert!(h.state().model_error.as_deref().unwrap_or("").contains("no model found"), "{:?}", h.state().model_error);
}

/// Issue 29 item 8: settings that could not be kept are said in the window until dismissed.
#[test]
fn reset_settings_are_said_in_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("settings.json");
    std::fs::write(&path, r#"{"prompt": "kept", "images": "four"}"#).unwrap();
    let loaded = Settings::load(&path);
    let mut a = app(tmp.path(), None);
    a.settings_note = loaded.note;
    let mut h = harness(a);
    h.step();
    h.get_by_label_contains("reset to defaults: `images`");
    h.get_by_label("Dismiss").click();
    h.step();
    h.step();
    assert!(h.state().settings_note.is_none());
    assert!(h.query_by_label_contains("reset to defaults").is_none());
}

/// Each workspace rendered through wgpu (lavapipe in CI) after a real job with the embedded
/// model: the frame is not blank. With `VGT_SCREENSHOTS=DIR` the frames are written there as PNGs.
#[test]
fn every_workspace_renders_through_wgpu() {
    if vgt_model::device::wgpu_adapters().is_empty() {
        assert!(std::env::var("VGT_REQUIRE_WGPU").is_err_and(|_| true) || std::env::var("VGT_REQUIRE_WGPU").as_deref() != Ok("1"), "VGT_REQUIRE_WGPU=1 but no adapter");
        eprintln!("note: no wgpu adapter, skipping the render test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = photo_folder(tmp.path(), &["skimage_astronaut.png", "skimage_chelsea.png"]);
    // The embedded model (what a new user sees).
    let mut app = app(tmp.path(), None);
    app.generate.prompt = "a red circle above a blue square".into();
    app.start_generate();
    assert!(app.wait_idle(Duration::from_secs(300)));
    app.start_reconstruct(vec![data.join("skimage_astronaut.png"), data.join("skimage_chelsea.png")]);
    assert!(app.wait_idle(Duration::from_secs(300)));
    app.tune.set_data(data.clone());
    app.tune.out_input = tmp.path().join("run").display().to_string();
    app.tune.steps = 12;
    app.tune.batch = 2;
    app.tune.sample_every = 6;
    app.tune.lr = 3e-3;
    app.start_tune(false);
    assert!(app.wait_idle(Duration::from_secs(300)));
    // `VGT_SCREENSHOT_SIZE=800x500` renders at another window size.
    let size = std::env::var("VGT_SCREENSHOT_SIZE").ok().and_then(|s| s.split_once('x').and_then(|(w, h)| Some(egui::vec2(w.parse().ok()?, h.parse().ok()?))));
    let mut h = Harness::builder().with_size(size.unwrap_or(egui::vec2(1280.0, 860.0))).wgpu().build_ui_state(
        |ui, app: &mut App| {
            let ctx = ui.ctx().clone();
            app.logic(&ctx);
            app.ui(ui);
        },
        app,
    );
    for (ws, name) in [(Workspace::Generate, "generate"), (Workspace::Reconstruct, "reconstruct"), (Workspace::Tune, "tune")] {
        h.state_mut().workspace = ws;
        for _ in 0..4 {
            h.step();
        }
        let img = h.render().expect("render through wgpu");
        let mut colors = std::collections::HashSet::new();
        for p in img.pixels().step_by(7) {
            colors.insert(p.0);
        }
        assert!(colors.len() > 50, "{name}: the frame looks blank ({} colours)", colors.len());
        if let Some(dir) = std::env::var_os("VGT_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).unwrap();
            img.save(PathBuf::from(dir).join(format!("{name}.png"))).unwrap();
        }
    }
}

#[test]
fn without_a_model_the_app_opens_the_embedded_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = app(tmp.path(), None);
    let model = app.model.clone().unwrap_or_else(|| panic!("{:?}", app.model_error));
    assert!(model.path.to_string_lossy().contains("shapes-"), "{}", model.path.display());
    assert_eq!(app.generate.size, 64, "the shapes model draws 64 px images");
    app.start_generate();
    assert!(app.wait_idle(Duration::from_secs(300)));
    assert_eq!(app.generate.gallery.len(), 1, "{}", app.generate.status);
}

/// The "Fused kernels" box in the model bar is the GUI's `--no-custom-kernels`: unticking it
/// switches our WGSL kernels off for the process and is remembered in the settings; ticking it
/// switches them back on.
#[test]
fn the_fused_kernels_box_switches_the_kernels() {
    if std::env::var_os("VGT_NO_CUSTOM_KERNELS").is_some() {
        return; // the environment switch wins over the box
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    h.step();
    assert!(h.state().settings.custom_kernels && vgt_model::kernels::enabled());
    h.get_by_label("Fused kernels").click();
    h.step();
    assert!(!h.state().settings.custom_kernels, "remembered in the settings");
    assert!(!vgt_model::kernels::enabled(), "switched off for the process");
    h.get_by_label("Fused kernels").click();
    h.step();
    assert!(h.state().settings.custom_kernels && vgt_model::kernels::enabled(), "back on");
}

/// Issue 24 (items 1 and 9): a failed load keeps the model that works; the embedded model is
/// one click away, remembered by name rather than by its cache path, and loading another model
/// than the settings were made with brings that model's defaults (the command line's).
#[test]
fn a_failed_load_keeps_the_working_model_and_the_embedded_one_is_a_click_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    assert_eq!(h.state().model.as_ref().map(|m| m.path.clone()), Some(tiny()));
    h.state_mut().load_model(tmp.path().join("no-such-model"));
    settle(&mut h);
    let st = h.state();
    assert_eq!(st.model.as_ref().map(|m| m.path.clone()), Some(tiny()), "the working model stays");
    let e = st.model_error.clone().unwrap_or_default();
    assert!(e.contains("no-such-model") && e.contains("still using"), "{e}");
    assert_eq!(st.settings.model, Some(tiny()));
    generate_button(&h).click();
    settle(&mut h);
    assert!(h.state().generate.status.starts_with("wrote"), "{}", h.state().generate.status);

    assert_eq!(h.state().generate.acc_ratio, 4, "the test's own setting");
    h.get_by_role_and_label(Role::Button, "Embedded model").click();
    settle(&mut h);
    let st = h.state();
    let m = st.model.clone().unwrap_or_else(|| panic!("{:?}", st.model_error));
    assert!(m.path.to_string_lossy().contains("shapes-"), "{}", m.path.display());
    assert_eq!(st.settings.model.as_deref(), Some(std::path::Path::new("embedded:shapes")));
    let d = vgt_model::generate::GenerateOptions::default();
    assert_eq!((st.generate.acc_ratio, st.generate.steps, st.generate.cfg), (d.acc_ratio, d.num_steps, d.cfg), "another model: its defaults");
    assert_eq!(st.generate.size, 64);
}

/// Issue 24 (item 1): the app's defaults are the command line's.
#[test]
fn the_apps_generation_defaults_are_the_command_lines() {
    let s = Settings::default();
    let d = vgt_model::generate::GenerateOptions::default();
    assert_eq!((s.acc_ratio, s.steps, s.cfg), (d.acc_ratio, d.num_steps, d.cfg));
    assert_eq!(d.acc_ratio, 1, "one token per step, as `vgt generate`");
}

/// Issue 24 (item 4): `vgt --backend X` reaches the app, and the backend menu reloads the
/// model on the new backend at once (or keeps it where it was, with the reason).
#[test]
fn the_backend_flag_and_menu_take_effect() {
    let stored = Settings { backend: "cpu".into(), ..Default::default() };
    assert_eq!(vgt_app::gui::launch_settings(stored.clone(), None, Some("wgpu".into())).backend, "wgpu");
    assert_eq!(vgt_app::gui::launch_settings(stored, None, None).backend, "cpu");
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    assert_eq!(h.state().model.as_ref().map(|m| m.backend.clone()).as_deref(), Some("cpu (flex)"));
    h.state_mut().set_backend("wgpu");
    settle(&mut h);
    let st = h.state();
    let backend = st.model.as_ref().map(|m| m.backend.clone()).unwrap_or_default();
    if vgt_model::device::wgpu_device().is_ok() {
        assert_eq!(backend, "wgpu", "{:?}", st.model_error);
    } else {
        assert_eq!(backend, "cpu (flex)");
        assert!(st.model_error.as_deref().unwrap_or("").contains("still using"), "{:?}", st.model_error);
    }
}

/// Issue 24 (item 8): Ctrl+Enter generates, also while typing the prompt.
#[test]
fn ctrl_enter_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    h.step();
    h.get_by_role_and_label(Role::MultilineTextInput, "Prompt").focus();
    h.step();
    let prompt = h.state().generate.prompt.clone();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    settle(&mut h);
    assert_eq!(h.state().generate.gallery.len(), 1, "{}", h.state().generate.status);
    assert_eq!(h.state().generate.prompt, prompt, "no new line was typed into the prompt");
}

/// Issue 24 (items 3 and 5): tuning defaults are the recipe that learns; every Start makes a
/// run folder of its own (named by time), so a second Start just works and the two adapters
/// have different names; a cancelled run offers Resume, which finishes it in its own folder;
/// an adapter can be added to Generate by hand (and a folder that is not one is refused).
#[test]
fn each_tuning_run_has_its_folder_and_a_cancelled_one_resumes() {
    let d = Settings::default();
    let r = vgt_model::train::run::TuneConfig::recommended(0);
    assert_eq!((d.tune_lr, d.tune_batch, d.tune_steps, d.tune_flow_head, d.tune_embeddings), (r.lr, r.batch, r.steps, true, true));
    assert_eq!((r.lr, r.batch, r.steps), (1e-3, 8, 1500), "the README's star recipe");

    let tmp = tempfile::tempdir().unwrap();
    let data = photo_folder(tmp.path(), &["skimage_astronaut.png", "skimage_chelsea.png"]);
    let runs = tmp.path().join("runs");
    let mut app = app(tmp.path(), Some(tiny()));
    app.workspace = Workspace::Tune;
    app.tune.set_data(data.clone());
    app.tune.out_input = runs.display().to_string();
    (app.tune.steps, app.tune.batch, app.tune.sample_every, app.tune.save_every) = (6, 1, 0, 3);
    let mut h = harness(app);
    h.step();
    let mut adapters = Vec::new();
    for _ in 0..2 {
        h.get_by_role_and_label(Role::Button, "Start").click();
        settle(&mut h);
        let st = h.state();
        assert!(st.tune.error.is_none(), "{:?}", st.tune.error);
        adapters.push(st.tune.adapter.clone().expect("finished"));
    }
    assert_ne!(adapters[0], adapters[1]);
    assert!(adapters.iter().all(|a| a.starts_with(&runs) && a.join("adapter_config.json").exists()));
    let names: Vec<String> = adapters.iter().map(|a| vgt_app::gui::adapter_name(a)).collect();
    assert_ne!(names[0], names[1], "{names:?}");

    // Cancel a longer run after its first step (3000 tiny steps take about 10 s), then Resume it.
    h.state_mut().tune.steps = 3000;
    h.get_by_role_and_label(Role::Button, "Start").click();
    let start = std::time::Instant::now();
    // Until this run (3000 steps) has done a step; the last run's losses are still shown
    // before the click is processed.
    while !h.state().tune.progress.is_some_and(|(done, total, _)| done > 0 && total == 3000) {
        h.step();
        assert!(start.elapsed() < Duration::from_secs(120), "no step came");
    }
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    settle(&mut h);
    let st = h.state();
    assert!(st.tune.resumable, "{}", st.tune.status);
    let run = st.tune.run_dir.clone().unwrap();
    let stopped = st.tune.losses.len();
    assert!(stopped < 3000, "cancelled before the end ({stopped})");
    h.get_by_role_and_label(Role::Button, "Resume").click();
    settle(&mut h);
    let st = h.state();
    assert!(st.tune.error.is_none(), "{:?}", st.tune.error);
    assert_eq!(st.tune.adapter.as_deref(), Some(run.join("adapter").as_path()), "finished in its own folder");
    assert_eq!(std::fs::read_to_string(run.join("loss.jsonl")).unwrap().lines().count(), 3000);

    let st = h.state_mut();
    let before = st.generate.loras.len();
    st.generate.add_adapter_checked(tmp.path().join("photos"));
    assert!(st.generate.error.as_deref().unwrap_or("").contains("not a LoRA adapter"), "{:?}", st.generate.error);
    st.generate.loras.clear();
    st.generate.add_adapter_checked(adapters[0].clone());
    assert_eq!(st.generate.loras.len(), 1, "{} (had {before})", st.generate.status);
}

/// Issue 24 (items 2 and 13): at 800×500 every workspace's main button can be scrolled to and
/// lies inside the window, and the model bar stays inside it; on a CPU adapter, wgpu comes with
/// a warning.
#[test]
fn every_workspace_works_in_a_small_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data = photo_folder(tmp.path(), &["skimage_astronaut.png", "skimage_chelsea.png", "skimage_coffee.png"]);
    let mut app = app(tmp.path(), Some(tiny()));
    app.tune.set_data(data.clone());
    app.start_reconstruct(vec![data.join("skimage_astronaut.png"), data.join("skimage_chelsea.png"), data.join("skimage_coffee.png")]);
    assert!(app.wait_idle(Duration::from_secs(120)));
    let mut h = Harness::builder().with_size(egui::vec2(800.0, 500.0)).build_ui_state(
        |ui, app: &mut App| {
            let ctx = ui.ctx().clone();
            app.logic(&ctx);
            app.ui(ui);
        },
        app,
    );
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(800.0, 500.0));
    for (ws, button) in [(Workspace::Generate, "Generate"), (Workspace::Reconstruct, "Open folder…"), (Workspace::Tune, "Start")] {
        h.state_mut().workspace = ws;
        h.run();
        let node = h.get_all_by_role_and_label(Role::Button, button).last().unwrap_or_else(|| panic!("{button}: not drawn"));
        node.scroll_to_me();
        h.run();
        let node = h.get_all_by_role_and_label(Role::Button, button).last().unwrap();
        assert!(window.contains_rect(node.rect()), "{ws:?}: {button} at {:?}", node.rect());
        let backend = h.get_by_label("Backend");
        assert!(window.contains_rect(backend.rect()), "{ws:?}: the backend menu at {:?}", backend.rect());
    }
    // The reconstruct table keeps rows visible.
    h.state_mut().workspace = Workspace::Reconstruct;
    h.run();
    let row = h.get_by_label("skimage_coffee.png");
    row.scroll_to_me();
    h.run();
    let rect = h.get_by_label("skimage_coffee.png").rect();
    assert!(window.contains_rect(rect), "the table row at {rect:?}");
}

/// Issue 24 (item 13): wgpu on a CPU adapter (lavapipe here) says so next to the model.
#[test]
fn wgpu_on_a_cpu_adapter_is_flagged() {
    let Ok(dev) = vgt_model::device::wgpu_device() else { return };
    if !dev.cpu_adapter {
        return; // a real GPU: nothing to warn about
    }
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings { model: Some(tiny()), backend: "wgpu".into(), output_dir: tmp.path().join("images"), ..Default::default() };
    let mut app = App::new(settings, None, Arc::new(|| {}));
    assert!(app.wait_idle(Duration::from_secs(120)));
    let w = app.model.as_ref().and_then(|m| m.warning.clone()).unwrap_or_default();
    assert!(w.contains("CPU adapter"), "{w:?}");
    let mut h = harness(app);
    h.run();
    h.get_by_label_contains("Warning: wgpu runs on a CPU adapter");
}

/// Issue 24 (item 7): the gallery shows each batch on its own row, and a click on a thumbnail
/// shows that image large.
#[test]
fn the_gallery_separates_batches_and_shows_a_clicked_image_large() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    h.step();
    for seed in [5, 6] {
        let st = h.state_mut();
        (st.generate.seed, st.generate.images) = (seed, 2);
        generate_button(&h).click();
        settle(&mut h);
        assert!(h.state().generate.status.contains("wrote 2 images"), "{}", h.state().generate.status);
    }
    let st = h.state();
    assert_eq!(st.generate.gallery.len(), 4);
    assert_eq!(st.generate.batches(), vec![0..2, 2..4]);
    let name = st.generate.gallery[3].path.file_name().unwrap().to_string_lossy().into_owned();
    h.get_by_label(&name).scroll_to_me();
    h.run();
    h.get_by_label(&name).click();
    h.run();
    assert_eq!(h.state().generate.selected, Some(3));
    h.get_by_label(&format!("large: {name}"));
}

/// Issue 24 (items 11 and 12): save dialogs suggest a name with its extension; without a
/// dialog backend the window says so; the reconstruction and the metrics table are saved where
/// the user says.
#[test]
fn dialogs_suggest_names_and_say_when_they_cannot_open() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = shared().join("data/images");
    let mut app = app(tmp.path(), Some(tiny()));
    app.start_generate();
    assert!(app.wait_idle(Duration::from_secs(120)));
    app.generate.selected = Some(0);
    let png = app.generate.gallery[0].path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(app.suggested_name(vgt_app::gui::DialogTarget::SaveImageAs), Some(png.clone()));
    assert!(png.ends_with(".png"));
    app.start_reconstruct(vec![photos.join("skimage_coffee.png"), photos.join("skimage_chelsea.png")]);
    assert!(app.wait_idle(Duration::from_secs(120)));
    let stem = app.reconstruct.current_stem().unwrap();
    assert_eq!(app.suggested_name(vgt_app::gui::DialogTarget::SaveReconstruction), Some(format!("{stem}.recon.png")));
    assert_eq!(app.suggested_name(vgt_app::gui::DialogTarget::ExportCsv).as_deref(), Some("reconstruction-metrics.csv"));
    let csv = tmp.path().join("metrics.csv");
    app.reconstruct.export_csv(&csv);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3, "a header and two rows");
    let out = tmp.path().join("recon.png");
    app.reconstruct.save_current(&out);
    assert!(vgt_model::image_io::read(&out).is_ok(), "{}", app.reconstruct.status);

    if vgt_app::gui::dialog_unavailable().is_some() {
        let mut h = harness(app);
        h.run();
        h.get_by_role_and_label(Role::Button, "Save as…").click();
        h.run();
        h.get_by_label_contains("Note: no file dialog is available");
    }
}

/// Issue 24 (item 6): "new each time" draws a seed per generation (and records it); "Make
/// again" on one image of a batch makes that image alone, with the same pixels.
#[test]
fn seeds_new_each_time_and_one_image_made_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    h.step();
    {
        let st = h.state_mut();
        (st.generate.images, st.generate.seed) = (3, 11);
    }
    generate_button(&h).click();
    settle(&mut h);
    let st = h.state();
    let second = st.generate.gallery.iter().position(|g| g.settings.as_ref().is_some_and(|s| s.image == 1)).expect("image 1 of the batch");
    let original = vgt_model::image_io::read(&st.generate.gallery[second].path).unwrap();
    h.state_mut().generate.selected = Some(second);
    h.run();
    h.get_by_role_and_label(Role::Button, "Make again").click();
    settle(&mut h);
    let st = h.state();
    assert_eq!(st.generate.gallery.len(), 4, "{}", st.generate.status);
    let again = st.generate.gallery.iter().filter(|g| g.settings.as_ref().is_some_and(|s| s.image == 1 && s.images == 1)).map(|g| g.path.clone()).next().expect("the image made again");
    let again = vgt_model::image_io::read(&again).unwrap().pixels;
    let max = again.iter().zip(&original.pixels).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0);
    assert!(max <= 1, "made again alone: pixels differ by up to {max} (the batch size only moves float sums)");

    h.get_by_label("new each time").click();
    h.run();
    let mut seeds = Vec::new();
    for _ in 0..2 {
        h.state_mut().generate.images = 1;
        generate_button(&h).click();
        settle(&mut h);
        seeds.push(h.state().generate.seed);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_ne!(seeds[0], seeds[1], "a new seed each time");
    let recorded: Vec<u64> = h.state().generate.gallery.iter().filter_map(|g| g.settings.as_ref().map(|s| s.seed)).collect();
    assert!(seeds.iter().all(|s| recorded.contains(s)), "{seeds:?} in {recorded:?}");
}

/// Issue 24 (item 13): every workspace's error is shown in one place and one colour (the top
/// bar, under the model, like the model's own errors).
#[test]
fn errors_are_shown_in_one_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mut app = app(tmp.path(), Some(tiny()));
    app.generate.error = Some("g went wrong".into());
    app.reconstruct.error = Some("r went wrong".into());
    app.tune.error = Some("t went wrong".into());
    let mut h = harness(app);
    let mut tops = Vec::new();
    for (ws, msg) in [(Workspace::Generate, "g"), (Workspace::Reconstruct, "r"), (Workspace::Tune, "t")] {
        h.state_mut().workspace = ws;
        h.run();
        let label = format!("Error: {msg} went wrong");
        tops.push(h.get_by_label(&label).rect().min.y);
        assert!(h.query_by_label_contains("went wrong").is_some());
    }
    assert!(tops.iter().all(|&y| (y - tops[0]).abs() < 0.5), "{tops:?}");
    assert!(tops[0] < 150.0, "in the top bar: {tops:?}");
}

/// Issue 24 (item 8): Tab moves the keyboard focus through the widgets, and the focused one is
/// drawn with a 2 px outline in the selection colour.
#[test]
fn keyboard_focus_moves_with_tab_and_is_outlined() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(app(tmp.path(), Some(tiny())));
    vgt_app::gui::style(&h.ctx);
    h.run();
    let stroke = h.ctx.global_style().visuals.widgets.active.bg_stroke;
    assert_eq!(stroke.width, 2.0);
    assert_eq!(stroke.color, h.ctx.global_style().visuals.selection.stroke.color);
    h.key_press(egui::Key::Tab);
    h.run();
    let first = h.ctx.memory(|m| m.focused());
    assert!(first.is_some(), "Tab focuses a widget");
    h.key_press(egui::Key::Tab);
    h.run();
    let second = h.ctx.memory(|m| m.focused());
    assert!(second.is_some() && second != first, "a second Tab moves on");
}

/// The VGT-Qwen2.5-VL fixture model (Hugging Face Qwen2.5-VL folder + its `.pth` files) in every
/// workspace: it loads and says its family, generates, reconstructs a photo and tunes.
#[test]
fn a_qwen25vl_model_generates_reconstructs_and_tunes() {
    let tmp = tempfile::tempdir().unwrap();
    let qwen = tiny().with_file_name("qwen25vl-tiny");
    let data = photo_folder(tmp.path(), &["skimage_astronaut.png", "skimage_coffee.png"]);
    let mut app = app(tmp.path(), Some(qwen.clone()));
    assert!(app.model.is_some(), "{:?}", app.model_error);
    app.tune.set_data(data.clone());
    app.tune.out_input = tmp.path().join("run").display().to_string();
    app.tune.steps = 2;
    app.tune.batch = 2;
    app.tune.sample_every = 2;
    app.tune.save_every = 2;
    let mut h = harness(app);
    h.step();
    assert!(h.query_all_by_label_contains("VGT-Qwen2.5-VL").count() >= 1, "the model line names the family");
    generate_button(&h).click();
    settle(&mut h);
    assert!(h.state().generate.status.starts_with("wrote"), "{}", h.state().generate.status);
    let img = image::open(&h.state().generate.gallery[0].path).unwrap();
    assert_eq!((img.width(), img.height()), (48, 48), "the Qwen model's native size: 8×8 cells of 6 px");
    h.state_mut().workspace = Workspace::Reconstruct;
    h.step();
    h.state_mut().on_dropped(vec![shared().join("data/images/skimage_chelsea.png")]);
    settle(&mut h);
    let items: Vec<_> = h.state().reconstruct.items().cloned().collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].latent_shape, [1, 8, 8, 8]);
    assert!(items[0].metrics.psnr.is_finite());
    h.state_mut().workspace = Workspace::Tune;
    h.step();
    h.get_by_role_and_label(Role::Button, "Start").click();
    settle(&mut h);
    let st = h.state();
    assert!(st.tune.error.is_none(), "{:?}", st.tune.error);
    assert_eq!(st.tune.losses.len(), 2, "{}", st.tune.status);
    assert!(st.tune.adapter.is_some());
}
