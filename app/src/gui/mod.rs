//! VGT Studio, the desktop app: three workspaces (Generate, Reconstruct, Tune) over one model
//! that a worker thread owns. The UI drains the worker's events in `logic` and draws in `ui`;
//! it never blocks.

mod generate;
mod reconstruct;
pub mod settings;
mod tune;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui;
use vgt_model::image_io::Rgb8;

pub use generate::{GenerateState, adapter_name};
pub use reconstruct::ReconstructState;
pub use settings::Settings;
pub use tune::TuneState;
use worker::{Command, Event, ModelInfo, Worker};

/// The three workspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub enum Workspace {
    #[default]
    Generate,
    Reconstruct,
    Tune,
}

/// Which job the worker is running, so events go to the right workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Load,
    Generate,
    Reconstruct,
    Tune,
}

/// The whole app state (egui-independent enough to drive from tests).
pub struct App {
    pub settings: Settings,
    pub worker: Worker,
    pub model: Option<ModelInfo>,
    pub model_error: Option<String>,
    pub model_path_input: String,
    pub workspace: Workspace,
    pub generate: GenerateState,
    pub reconstruct: ReconstructState,
    pub tune: TuneState,
    job: Option<Job>,
    /// A one-shot folder dialog in flight.
    dialog: Option<(DialogTarget, poll_promise::Promise<Option<PathBuf>>)>,
    /// Why the last dialog could not open (shown in the window).
    pub dialog_note: Option<String>,
    /// What of the saved settings was reset at start (shown until dismissed).
    pub settings_note: Option<String>,
    saved_settings: String,
    settings_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogTarget {
    Model,
    ReconstructFolder,
    ReconstructFiles,
    TuneData,
    SaveImageAs,
    AddAdapter,
    OutputFolder,
    ExportCsv,
    SaveReconstruction,
}

/// Why no file dialog can open here, if that is known before trying: on Linux the dialogs go
/// through the desktop portal, which needs a session bus. `None`: try.
pub fn dialog_unavailable() -> Option<String> {
    if cfg!(target_os = "linux") && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() && std::env::var_os("VGT_FORCE_DIALOGS").is_none() {
        return Some("no file dialog is available (no desktop session bus for the file-chooser portal): type the path into the field instead".into());
    }
    None
}

/// An RGB picture as an egui texture.
pub fn texture(ctx: &egui::Context, name: &str, img: &Rgb8) -> egui::TextureHandle {
    let color = egui::ColorImage::from_rgb([img.width as usize, img.height as usize], &img.pixels);
    ctx.load_texture(name, color, egui::TextureOptions::NEAREST)
}

impl App {
    /// Builds the app; `settings_path` is where settings persist (`None`: not persisted).
    /// `wake` requests a repaint from the worker thread.
    pub fn new(settings: Settings, settings_path: Option<PathBuf>, wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let worker = Worker::spawn(wake);
        if !settings.custom_kernels {
            vgt_model::kernels::set_enabled(false);
        }
        let saved_settings = serde_json::to_string(&settings).unwrap_or_default();
        let mut app = Self {
            model_path_input: settings.model.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            generate: GenerateState::from_settings(&settings),
            reconstruct: ReconstructState::default(),
            tune: TuneState::from_settings(&settings),
            workspace: settings.workspace,
            settings,
            worker,
            model: None,
            model_error: None,
            job: None,
            dialog: None,
            dialog_note: None,
            settings_note: None,
            saved_settings,
            settings_path,
        };
        // The last model used, else the embedded one.
        match app.settings.model.clone().filter(|m| m.as_os_str() != settings::EMBEDDED).map(Ok).unwrap_or_else(crate::embedded::path) {
            Ok(path) => app.load_model(path),
            Err(e) => app.model_error = Some(crate::errors::report(&e)),
        }
        app.generate.refresh_gallery();
        app
    }

    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    pub fn load_model(&mut self, path: PathBuf) {
        if self.busy() {
            return;
        }
        self.model_error = None;
        self.model_path_input = path.display().to_string();
        self.job = Some(Job::Load);
        self.worker.send(Command::Load { path, backend: self.settings.backend.clone() });
    }

    /// The current workspace's last error, if any.
    pub fn workspace_error(&self) -> Option<&String> {
        match self.workspace {
            Workspace::Generate => self.generate.error.as_ref(),
            Workspace::Reconstruct => self.reconstruct.error.as_ref(),
            Workspace::Tune => self.tune.error.as_ref(),
        }
    }

    /// Loads the embedded shapes model.
    pub fn load_embedded(&mut self) {
        match crate::embedded::path() {
            Ok(p) => self.load_model(p),
            Err(e) => self.model_error = Some(crate::errors::report(&e)),
        }
    }

    /// Switches the backend and reloads the current model on it (a choice that does not work
    /// leaves the model running where it was).
    pub fn set_backend(&mut self, backend: &str) {
        if self.busy() || backend == self.settings.backend {
            return;
        }
        self.settings.backend = backend.to_string();
        if let Some(m) = &self.model {
            let path = m.path.clone();
            self.load_model(path);
        }
    }

    fn start(&mut self, job: Job, cmd: Command) {
        self.job = Some(job);
        self.worker.send(cmd);
    }

    /// Starts a generation with the Generate workspace's settings.
    pub fn start_generate(&mut self) {
        if self.busy() || self.model.is_none() {
            self.generate.one_image = None;
            return;
        }
        let job = self.generate.job(&self.settings);
        self.generate.begin();
        self.start(Job::Generate, Command::Generate(job));
    }

    pub fn start_reconstruct(&mut self, paths: Vec<PathBuf>) {
        if self.busy() || self.model.is_none() || paths.is_empty() {
            return;
        }
        self.reconstruct.begin(paths.len());
        self.start(Job::Reconstruct, Command::Reconstruct { paths });
    }

    pub fn start_tune(&mut self, resume: bool) {
        if self.busy() || self.model.is_none() {
            return;
        }
        let Some(model) = &self.model else { return };
        match self.tune.command(model, resume) {
            Ok(cmd) => {
                self.tune.begin();
                self.start(Job::Tune, cmd);
            }
            Err(e) => self.tune.error = Some(e),
        }
    }

    pub fn cancel(&self) {
        self.worker.cancel();
    }

    /// Applies the worker's events; call once per frame (and in tests, until idle).
    pub fn drain_events(&mut self) {
        while let Ok(e) = self.worker.rx.try_recv() {
            match e {
                Event::Loaded(info) => {
                    let stored = stored_model(&info.path);
                    // Settings made with no model known (a first start) are kept as they are.
                    let new_model = self.settings.model.as_ref().is_some_and(|m| *m != stored);
                    self.settings.model = Some(stored);
                    self.generate.on_model(&info, new_model);
                    self.tune.on_model(&info);
                    self.model_path_input = info.path.display().to_string();
                    self.model = Some(info);
                }
                Event::LoadFailed(msg) => {
                    // The model that worked stays loaded (the worker kept it).
                    self.model_error = Some(match &self.model {
                        Some(m) => format!("{msg}; still using {}", m.path.display()),
                        None => msg,
                    });
                    if let Some(m) = &self.model {
                        self.model_path_input = m.path.display().to_string();
                    }
                }
                Event::Idle => {
                    self.job = None;
                    self.worker.busy = false;
                }
                other => match self.job {
                    Some(Job::Generate) => self.generate.on_event(other),
                    Some(Job::Reconstruct) => self.reconstruct.on_event(other),
                    Some(Job::Tune) => {
                        if let Event::TuneFinished(vgt_model::train::run::TuneOutcome::Finished { adapter }) = &other {
                            self.generate.add_adapter(adapter.clone());
                        }
                        self.tune.on_event(other);
                    }
                    _ => {
                        if let Event::Failed(msg) = other {
                            self.model_error = Some(msg);
                        }
                    }
                },
            }
        }
    }

    /// Runs until the worker is idle (tests and scripts).
    pub fn wait_idle(&mut self, timeout: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            self.drain_events();
            if !self.busy() {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn open_dialog(&mut self, target: DialogTarget) {
        if self.dialog.is_some() {
            return;
        }
        if let Some(why) = dialog_unavailable() {
            // Said in the window, where the user looks, not on a terminal they may not have.
            self.dialog_note = Some(why);
            return;
        }
        self.dialog_note = None;
        let start = match target {
            DialogTarget::TuneData => PathBuf::from(&self.tune.data_input),
            _ => self.settings.output_dir.clone(),
        };
        let name = self.suggested_name(target);
        let promise = poll_promise::Promise::spawn_thread("dialog", move || {
            let d = rfd::FileDialog::new().set_directory(start);
            let d = match name {
                Some(n) => d.set_file_name(n),
                None => d,
            };
            match target {
                DialogTarget::ReconstructFiles => d.add_filter("images", &["png", "jpg", "jpeg", "webp"]).pick_file(),
                DialogTarget::SaveImageAs | DialogTarget::SaveReconstruction => d.add_filter("PNG", &["png"]).save_file(),
                DialogTarget::ExportCsv => d.add_filter("CSV", &["csv"]).save_file(),
                _ => d.pick_folder(),
            }
        });
        self.dialog = Some((target, promise));
    }

    /// The file name a save dialog suggests (always with its extension).
    pub fn suggested_name(&self, target: DialogTarget) -> Option<String> {
        match target {
            DialogTarget::SaveImageAs => {
                let p = self.generate.selected.and_then(|i| self.generate.gallery.get(i)).map(|g| g.path.clone())?;
                Some(p.file_name()?.to_string_lossy().into_owned())
            }
            DialogTarget::SaveReconstruction => self.reconstruct.current_stem().map(|s| format!("{s}.recon.png")),
            DialogTarget::ExportCsv => Some("reconstruction-metrics.csv".into()),
            _ => None,
        }
    }

    fn poll_dialog(&mut self) {
        let ready = self.dialog.as_ref().is_some_and(|(_, p)| p.ready().is_some());
        if !ready {
            return;
        }
        let Some((target, promise)) = self.dialog.take() else { return };
        let Ok(Some(path)) = promise.try_take() else { return };
        match target {
            DialogTarget::Model => self.load_model(path),
            DialogTarget::ReconstructFolder => {
                let paths = reconstruct::images_in(&path);
                self.start_reconstruct(paths);
            }
            DialogTarget::ReconstructFiles => self.start_reconstruct(vec![path]),
            DialogTarget::TuneData => self.tune.set_data(path),
            DialogTarget::SaveImageAs => self.generate.save_selected_as(&path),
            DialogTarget::AddAdapter => self.generate.add_adapter_checked(path),
            DialogTarget::OutputFolder => {
                self.generate.output_dir = path;
                self.generate.refresh_gallery();
            }
            DialogTarget::ExportCsv => self.reconstruct.export_csv(&path),
            DialogTarget::SaveReconstruction => self.reconstruct.save_current(&path),
        }
    }

    /// Files dropped on the window: PNGs made by the app restore their settings (Generate);
    /// images are reconstructed (Reconstruct); a folder becomes the tuning data (Tune).
    pub fn on_dropped(&mut self, paths: Vec<PathBuf>) {
        match self.workspace {
            Workspace::Generate => {
                for p in paths {
                    if let Err(e) = self.generate.restore_from(&p) {
                        self.generate.error = Some(e);
                    }
                }
            }
            Workspace::Reconstruct => {
                let mut all = Vec::new();
                for p in paths {
                    if p.is_dir() { all.extend(reconstruct::images_in(&p)) } else { all.push(p) }
                }
                self.start_reconstruct(all);
            }
            Workspace::Tune => {
                if let Some(dir) = paths.into_iter().find(|p| p.is_dir()) {
                    self.tune.set_data(dir);
                }
            }
        }
    }

    fn persist(&mut self) {
        self.settings.workspace = self.workspace;
        self.generate.store(&mut self.settings);
        self.tune.store(&mut self.settings);
        let now = serde_json::to_string(&self.settings).unwrap_or_default();
        if now != self.saved_settings {
            if let Some(path) = &self.settings_path
                && let Err(e) = self.settings.save(path)
            {
                log::warn!("could not save the settings to {}: {e}", path.display());
            }
            self.saved_settings = now;
        }
    }

    fn model_ui(&mut self, ui: &mut egui::Ui) {
        // Wraps instead of running off a narrow window.
        ui.horizontal_wrapped(|ui| {
            let l = ui.label("Model");
            let width = (ui.available_width() * 0.4).clamp(160.0, 360.0);
            let edit = ui.add(egui::TextEdit::singleline(&mut self.model_path_input).desired_width(width).hint_text("model folder")).labelled_by(l.id);
            if edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                let p = PathBuf::from(self.model_path_input.trim());
                self.load_model(p);
            }
            if ui.add_enabled(!self.busy(), egui::Button::new("Load")).clicked() {
                let p = PathBuf::from(self.model_path_input.trim());
                self.load_model(p);
            }
            if ui.add_enabled(!self.busy(), egui::Button::new("Open model…")).clicked() {
                self.open_dialog(DialogTarget::Model);
            }
            if ui.add_enabled(!self.busy(), egui::Button::new("Embedded model")).on_hover_text("The small shapes model built into VGT Studio").clicked() {
                self.load_embedded();
            }
            let mut backend = self.settings.backend.clone();
            egui::ComboBox::from_label("Backend").selected_text(backend.clone()).show_ui(ui, |ui| {
                for b in ["auto", "wgpu", "cpu"] {
                    ui.selectable_value(&mut backend, b.to_string(), b);
                }
            });
            if backend != self.settings.backend {
                self.set_backend(&backend);
            }
            let kernels = ui.checkbox(&mut self.settings.custom_kernels, "Fused kernels");
            if kernels.on_hover_text("Our WGSL kernels on wgpu (few-row linear layers, the flow head's norms and sampler step); off runs composed tensor ops only").changed() {
                vgt_model::kernels::set_enabled(self.settings.custom_kernels);
            }
            if self.job == Some(Job::Load) {
                ui.spinner();
                ui.label("loading…");
            }
        });
        if let Some(e) = &self.model_error {
            ui.colored_label(ui.visuals().error_fg_color, format!("Model error: {e}"));
        }
        if let Some(w) = self.model.as_ref().and_then(|m| m.warning.as_ref()) {
            ui.colored_label(ui.visuals().warn_fg_color, format!("Warning: {w}"));
        }
        if let Some(n) = &self.dialog_note {
            ui.colored_label(ui.visuals().warn_fg_color, format!("Note: {n}"));
        }
        if let Some(n) = self.settings_note.clone() {
            ui.horizontal_wrapped(|ui| {
                ui.colored_label(ui.visuals().warn_fg_color, n);
                if ui.small_button("Dismiss").clicked() {
                    self.settings_note = None;
                }
            });
        }
        // Every workspace's error is said here, in the same colour as the model's.
        if let Some(e) = self.workspace_error() {
            ui.colored_label(ui.visuals().error_fg_color, format!("Error: {e}"));
        }
        if let Some(m) = &self.model {
            let c = &m.config;
            let bytes = m.parameters as f64 * 4.0;
            ui.label(format!(
                "{} · {} · LLM {} layers × {} · {} parameters · needs about {} in f32 ({} with f16 weights) · {} on {}",
                m.path.display(),
                c.family().name(),
                c.llm.num_hidden_layers,
                c.llm.hidden_size,
                fmt_count(m.parameters),
                fmt_bytes(bytes * 1.2),
                fmt_bytes(bytes * 0.6),
                m.backend,
                m.adapter
            ));
        }
    }

    /// Draws the whole window.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        egui::Panel::top("top").show(ui, |ui| {
            self.model_ui(ui);
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.workspace, Workspace::Generate, "Generate");
                ui.selectable_value(&mut self.workspace, Workspace::Reconstruct, "Reconstruct");
                ui.selectable_value(&mut self.workspace, Workspace::Tune, "Tune");
            });
        });
        let busy = self.busy();
        let has_model = self.model.is_some();
        let mut action = None;
        egui::CentralPanel::default().show(ui, |ui| match self.workspace {
            Workspace::Generate => action = self.generate.ui(ui, &ctx, busy, has_model),
            Workspace::Reconstruct => action = self.reconstruct.ui(ui, &ctx, busy, has_model),
            Workspace::Tune => action = self.tune.ui(ui, &ctx, busy, has_model),
        });
        match action {
            Some(Action::Generate) => self.start_generate(),
            Some(Action::Cancel) => self.cancel(),
            Some(Action::Dialog(t)) => self.open_dialog(t),
            Some(Action::Reconstruct(paths)) => self.start_reconstruct(paths),
            Some(Action::Tune { resume }) => self.start_tune(resume),
            None => {}
        }
    }

    /// Per-frame logic before drawing: events, dialogs, dropped files, persistence.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.drain_events();
        self.poll_dialog();
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).filter(|p| !p.as_os_str().is_empty()).collect());
        if !dropped.is_empty() {
            self.on_dropped(dropped);
        }
        self.persist();
        if self.busy() || self.dialog.is_some() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }
}

/// What a workspace's UI asks the app to do.
pub enum Action {
    Generate,
    Cancel,
    Dialog(DialogTarget),
    Reconstruct(Vec<PathBuf>),
    Tune { resume: bool },
}

struct EframeApp(App);

impl eframe::App for EframeApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.0.logic(ctx);
    }
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.0.ui(ui);
    }
}

/// Opens the app window (blocking until it closes). `model` overrides the last model used.
pub fn run(model: Option<PathBuf>, backend: Option<String>) -> anyhow::Result<()> {
    let path = settings::default_path();
    let loaded = path.as_deref().map(Settings::load);
    let note = loaded.as_ref().and_then(|l| l.note.clone());
    let s = launch_settings(loaded.map(|l| l.settings).unwrap_or_default(), model, backend);
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: egui::ViewportBuilder::default().with_title("VGT Studio").with_inner_size([1280.0, 860.0]).with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "VGT Studio",
        options,
        Box::new(move |cc| {
            style(&cc.egui_ctx);
            let ctx = cc.egui_ctx.clone();
            let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
            let mut app = App::new(s, path, wake);
            app.settings_note = note;
            Ok(Box::new(EframeApp(app)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not open: {e}"))
}

/// The app's look: the widget with keyboard focus (Tab) gets a 2 px outline in the selection
/// colour, where egui's default is a thin white line that is easy to miss.
pub fn style(ctx: &egui::Context) {
    ctx.all_styles_mut(|s| {
        s.visuals.widgets.active.bg_stroke = egui::Stroke::new(2.0, s.visuals.selection.stroke.color);
    });
}

/// The settings the app starts with: the stored ones, with the command line's `--model` and
/// `--backend` (when given) taking precedence.
pub fn launch_settings(mut stored: Settings, model: Option<PathBuf>, backend: Option<String>) -> Settings {
    if let Some(m) = model {
        stored.model = Some(m);
    }
    if let Some(b) = backend {
        stored.backend = b;
    }
    stored
}

/// How a loaded model's folder is remembered: the embedded model by name, not by its cache path.
fn stored_model(path: &Path) -> PathBuf {
    if path == crate::embedded::dir() { PathBuf::from(settings::EMBEDDED) } else { path.to_path_buf() }
}

/// `1.23 M`, `1.6 G`, … parameters.
pub fn fmt_count(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 { format!("{:.2} G", n / 1e9) } else if n >= 1e6 { format!("{:.1} M", n / 1e6) } else { format!("{:.1} k", n / 1e3) }
}

/// Bytes in MiB or GiB.
pub fn fmt_bytes(b: f64) -> String {
    let mib = b / (1u64 << 20) as f64;
    if mib >= 1024.0 { format!("{:.1} GiB", mib / 1024.0) } else { format!("{mib:.0} MiB") }
}

/// A short human duration.
pub fn fmt_secs(s: f64) -> String {
    if s < 60.0 { format!("{s:.0} s") } else if s < 3600.0 { format!("{}m{:02.0}s", (s / 60.0) as u64, s % 60.0) } else { format!("{:.1} h", s / 3600.0) }
}

/// Images of a folder (non-recursive), sorted.
pub fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp")));
    v.sort();
    v
}
