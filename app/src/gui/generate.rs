//! The Generate workspace: prompt and settings, a live preview of the latent grid filling in,
//! and a gallery of this run's and earlier images read back from the output folder.

use std::path::{Path, PathBuf};

use eframe::egui;
use vgt_model::generate::GenerateOptions;
use vgt_model::image_io::Rgb8;
use vgt_model::scheduler::{CfgSchedule, Order};
use vgt_model::text2image::Request;

use super::worker::{Event, GenerateJob, ModelInfo};
use super::{Action, DialogTarget, Settings, fmt_secs, texture};
use crate::meta::{ImageSettings, read_settings};

/// What the latent view shows (its legend).
pub const LATENT_LEGEND: &str = "one square per token: its channels 1, 2, 3 as red, green, blue (-2.5 dark to +2.5 bright); grey: not drawn yet";

/// One picture of the gallery.
pub struct GalleryItem {
    pub path: PathBuf,
    pub settings: Option<ImageSettings>,
    tex: Option<egui::TextureHandle>,
}

/// State of the Generate workspace.
pub struct GenerateState {
    pub prompt: String,
    pub negative: String,
    pub seed: u64,
    /// A new seed for every generation ("-1" in other tools); the seed used is shown and kept.
    pub random_seed: bool,
    /// A one-shot request for one image of an earlier batch (its index), from "Make again".
    pub one_image: Option<usize>,
    pub cfg: f64,
    pub steps: usize,
    pub acc_ratio: usize,
    pub sequential: bool,
    pub constant_cfg: bool,
    /// Image side in pixels (0: the model's default).
    pub size: usize,
    pub images: usize,
    pub loras: Vec<(PathBuf, f64, bool)>,
    pub output_dir: PathBuf,
    /// Model limits: latent stride and the largest grid side.
    stride: usize,
    max_grid: usize,
    pub progress: Option<(usize, usize, f64)>,
    pub preview: Option<Rgb8>,
    pub partial: Option<Rgb8>,
    preview_tex: Option<egui::TextureHandle>,
    partial_tex: Option<egui::TextureHandle>,
    pub gallery: Vec<GalleryItem>,
    pub selected: Option<usize>,
    pub status: String,
    /// What went wrong last (shown by the app with the other errors, in one place).
    pub error: Option<String>,
    /// A dialog the settings asked for, turned into an action by `ui`.
    pending_dialog: Option<DialogTarget>,
}

impl GenerateState {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            prompt: s.prompt.clone(),
            negative: s.negative.clone(),
            seed: s.seed,
            random_seed: s.random_seed,
            one_image: None,
            cfg: s.cfg,
            steps: s.steps,
            acc_ratio: s.acc_ratio,
            sequential: s.sequential,
            constant_cfg: s.constant_cfg,
            size: s.size,
            images: s.images,
            loras: s.loras.clone(),
            output_dir: s.output_dir.clone(),
            stride: 28,
            max_grid: 64,
            progress: None,
            preview: None,
            partial: None,
            preview_tex: None,
            partial_tex: None,
            gallery: Vec::new(),
            selected: None,
            status: String::new(),
            error: None,
            pending_dialog: None,
        }
    }

    pub fn store(&self, s: &mut Settings) {
        s.prompt = self.prompt.clone();
        s.negative = self.negative.clone();
        s.seed = self.seed;
        s.random_seed = self.random_seed;
        s.cfg = self.cfg;
        s.steps = self.steps;
        s.acc_ratio = self.acc_ratio;
        s.sequential = self.sequential;
        s.constant_cfg = self.constant_cfg;
        s.size = self.size;
        s.images = self.images;
        s.loras = self.loras.clone();
        s.output_dir = self.output_dir.clone();
    }

    /// Adapts the settings to a newly loaded model. `new_model`: another model than the one the
    /// settings were made with, whose defaults (the command line's, in the model's own training
    /// order and size) replace the generation settings; reloading the same model keeps them.
    pub fn on_model(&mut self, m: &ModelInfo, new_model: bool) {
        // Each model starts in the order it was trained in.
        self.sequential = m.config.order == Order::Sequential;
        self.stride = m.config.stride();
        self.max_grid = m.config.amq_max_grid;
        if new_model {
            let d = GenerateOptions::default();
            (self.cfg, self.steps, self.acc_ratio, self.constant_cfg) = (d.cfg, d.num_steps, d.acc_ratio, false);
            self.size = 0;
        }
        if self.size == 0 || self.size % self.stride != 0 || self.size / self.stride > self.max_grid {
            self.size = 16.min(self.max_grid) * self.stride;
        }
    }

    /// Square sizes the model allows: multiples of the stride up to its grid limit.
    pub fn size_presets(&self) -> Vec<usize> {
        let mut v: Vec<usize> = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64].iter().copied().filter(|&g| g <= self.max_grid).map(|g| g * self.stride).collect();
        v.dedup();
        v
    }

    /// Adds an adapter the user picked, if it reads as one; says why not otherwise.
    pub fn add_adapter_checked(&mut self, path: PathBuf) {
        match vgt_model::train::lora::Adapter::load(&path) {
            Ok(_) => {
                self.status = format!("added the adapter {}", adapter_name(&path));
                self.add_adapter(path);
            }
            Err(e) => self.error = Some(format!("not a LoRA adapter: {e}")),
        }
    }

    pub fn add_adapter(&mut self, path: PathBuf) {
        if !self.loras.iter().any(|(p, _, _)| *p == path) {
            self.loras.push((path, 1.0, false));
        }
    }

    /// The worker job for the current settings. With "new seed each time" a fresh seed is
    /// drawn first (and shown); a pending "Make again" makes that one image of its batch.
    pub fn job(&mut self, _settings: &Settings) -> GenerateJob {
        if self.random_seed && self.one_image.is_none() {
            self.seed = fresh_seed();
        }
        let one = self.one_image.take();
        let options = GenerateOptions {
            cfg: self.cfg,
            num_steps: self.steps.max(1),
            height: self.size,
            width: self.size,
            acc_ratio: self.acc_ratio.max(1),
            order: if self.sequential { Order::Sequential } else { Order::Random },
            cfg_schedule: if self.constant_cfg { CfgSchedule::Constant } else { CfgSchedule::Linear },
            t_bf16: false,
        };
        let negative = Some(self.negative.trim().to_string()).filter(|n| !n.is_empty());
        let (images, first_image) = match one {
            Some(g) => (1, g),
            None => (self.images.clamp(1, 16), 0),
        };
        let request = Request { prompt: self.prompt.clone(), negative, images, seed: self.seed, options, first_image };
        let loras = self.loras.iter().filter(|(_, _, on)| *on).map(|(p, w, _)| (p.clone(), *w)).collect();
        GenerateJob { request, loras, out_dir: self.output_dir.clone(), decode_every: 4 }
    }

    pub fn begin(&mut self) {
        self.error = None;
        self.progress = Some((0, 0, 0.0));
        self.preview = None;
        self.partial = None;
        self.status = "generating…".into();
    }

    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::Progress { done, total, elapsed } => self.progress = Some((done, total, elapsed)),
            Event::Preview { grid, partial } => {
                self.preview = Some(grid);
                self.preview_tex = None;
                if let Some(p) = partial {
                    self.partial = Some(p);
                    self.partial_tex = None;
                }
            }
            Event::Generated { images } => {
                self.status = written_status(&images.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
                if let Some((_, img)) = images.first() {
                    self.partial = Some(img.clone());
                    self.partial_tex = None;
                }
                self.progress = None;
                self.refresh_gallery();
                self.selected = Some(0);
            }
            Event::Cancelled => {
                self.status = "cancelled; nothing was written".into();
                self.progress = None;
            }
            Event::Failed(msg) => {
                self.status = String::new();
                self.error = Some(msg);
                self.progress = None;
            }
            _ => {}
        }
    }

    /// Reads the output folder: every PNG, newest first.
    pub fn refresh_gallery(&mut self) {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = super::image_files(&self.output_dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.gallery = files.into_iter().take(200).map(|(_, path)| GalleryItem { settings: read_settings(&path), path, tex: None }).collect();
    }

    /// The gallery's batches: runs of neighbouring images made with one prompt and seed.
    pub fn batches(&self) -> Vec<std::ops::Range<usize>> {
        let key = |i: usize| self.gallery[i].settings.as_ref().map(|s| (s.prompt.clone(), s.seed));
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for i in 0..self.gallery.len() {
            match out.last_mut() {
                Some(r) if key(i).is_some() && key(r.start) == key(i) => r.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// Takes the settings of an image made by the app (or `vgt generate`).
    pub fn apply(&mut self, s: &ImageSettings) {
        self.prompt = s.prompt.clone();
        self.negative = s.negative.clone().unwrap_or_default();
        self.seed = s.seed;
        // The image's own seed, not a new one.
        self.random_seed = false;
        self.cfg = s.options.cfg;
        self.steps = s.options.num_steps;
        self.acc_ratio = s.options.acc_ratio;
        self.sequential = s.options.order == Order::Sequential;
        self.constant_cfg = s.options.cfg_schedule == CfgSchedule::Constant;
        self.size = s.options.width;
        self.images = s.images;
        for l in &s.loras {
            let p = PathBuf::from(&l.path);
            match self.loras.iter_mut().find(|(q, _, _)| *q == p) {
                Some(e) => {
                    e.1 = l.weight;
                    e.2 = true;
                }
                None => self.loras.push((p, l.weight, true)),
            }
        }
        let used: Vec<PathBuf> = s.loras.iter().map(|l| PathBuf::from(&l.path)).collect();
        for e in &mut self.loras {
            e.2 = used.contains(&e.0);
        }
    }

    /// A dropped PNG restores its settings.
    pub fn restore_from(&mut self, path: &Path) -> Result<(), String> {
        match read_settings(path) {
            Some(s) => {
                self.apply(&s);
                self.status = format!("settings restored from {}", path.display());
                Ok(())
            }
            None => Err(format!("{} has no VGT Studio settings (only PNGs made by VGT Studio carry them)", path.display())),
        }
    }

    pub fn save_selected_as(&mut self, to: &Path) {
        let Some(item) = self.selected.and_then(|i| self.gallery.get(i)) else { return };
        match std::fs::copy(&item.path, to) {
            Ok(_) => self.status = format!("saved {}", to.display()),
            Err(e) => self.error = Some(format!("could not save {}: {e}", to.display())),
        }
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui, busy: bool) {
        let l = ui.label("Prompt");
        ui.add(egui::TextEdit::multiline(&mut self.prompt).desired_rows(3).desired_width(f32::INFINITY)).labelled_by(l.id);
        let l = ui.label("Negative prompt");
        ui.add(egui::TextEdit::singleline(&mut self.negative).desired_width(f32::INFINITY)).labelled_by(l.id);
        egui::Grid::new("gen-settings").num_columns(2).show(ui, |ui| {
            let l = ui.label("Seed");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut self.seed)).labelled_by(l.id);
                if ui.button("Random").on_hover_text("draw a random seed").clicked() {
                    self.seed = fresh_seed();
                }
                ui.checkbox(&mut self.random_seed, "new each time").on_hover_text("Draw a new seed for every generation (-1 in other tools); each image records the seed it was made with");
            });
            ui.end_row();
            let l = ui.label("CFG");
            ui.add(egui::Slider::new(&mut self.cfg, 1.0..=10.0).step_by(0.5)).labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Sampler steps");
            ui.add(egui::Slider::new(&mut self.steps, 1..=100)).labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Tokens per step");
            ui.add(egui::Slider::new(&mut self.acc_ratio, 1..=64).logarithmic(true)).labelled_by(l.id);
            ui.end_row();
            ui.label("Token order");
            ui.horizontal(|ui| {
                ui.radio_value(&mut self.sequential, false, "random");
                ui.radio_value(&mut self.sequential, true, "sequential");
            });
            ui.end_row();
            ui.label("CFG schedule");
            ui.horizontal(|ui| {
                ui.radio_value(&mut self.constant_cfg, false, "linear");
                ui.radio_value(&mut self.constant_cfg, true, "constant");
            });
            ui.end_row();
            let l = ui.label("Size");
            egui::ComboBox::from_id_salt("size")
                .wrap_mode(egui::TextWrapMode::Extend).selected_text(format!("{0}×{0}", self.size)).show_ui(ui, |ui| {
                for s in self.size_presets() {
                    ui.selectable_value(&mut self.size, s, format!("{s}×{s} ({}×{} tokens)", s / self.stride, s / self.stride));
                }
            })
            .response
            .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Images");
            ui.add(egui::Slider::new(&mut self.images, 1..=16)).labelled_by(l.id);
            ui.end_row();
        });
        ui.horizontal(|ui| {
            ui.label("LoRA adapters");
            if ui.add_enabled(!busy, egui::Button::new("Add adapter…")).on_hover_text("A PEFT adapter folder (adapter_config.json + adapter_model.safetensors)").clicked() {
                self.pending_dialog = Some(DialogTarget::AddAdapter);
            }
        });
        if !self.loras.is_empty() {
            let mut remove = None;
            for (i, (path, w, on)) in self.loras.iter_mut().enumerate() {
                ui.horizontal(|ui| {
                    ui.checkbox(on, adapter_name(path))
                        .on_hover_text(path.display().to_string());
                    ui.add(egui::Slider::new(w, -1.0..=2.0).text("weight"));
                    if ui.small_button("Remove").clicked() {
                        remove = Some(i);
                    }
                });
            }
            if let Some(i) = remove {
                self.loras.remove(i);
            }
        }
        ui.horizontal(|ui| {
            let l = ui.label("Output folder");
            let mut s = self.output_dir.display().to_string();
            if ui.add_enabled(!busy, egui::TextEdit::singleline(&mut s)).labelled_by(l.id).changed() {
                self.output_dir = PathBuf::from(s);
            }
            if ui.add_enabled(!busy, egui::Button::new("Choose…")).clicked() {
                self.pending_dialog = Some(DialogTarget::OutputFolder);
            }
        });
    }

    fn preview_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        // Two views side by side, as large as the width allows (at most 256 px each).
        let side = ((ui.available_width() - 24.0) / 2.0).clamp(96.0, 256.0);
        ui.horizontal_wrapped(|ui| {
            if let Some(g) = &self.preview {
                let tex = self.preview_tex.get_or_insert_with(|| texture(ctx, "preview-grid", g));
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label("Latent tokens (generation order)");
                    ui.image((tex.id(), egui::vec2(side, side)));
                    ui.small(LATENT_LEGEND);
                });
            }
            if let Some(p) = &self.partial {
                let tex = self.partial_tex.get_or_insert_with(|| texture(ctx, "preview-image", p));
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label("Image so far");
                    ui.image((tex.id(), egui::vec2(side, side)));
                    ui.small("grey: cells not drawn yet");
                });
            }
        });
    }

    fn gallery_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool) -> Option<Action> {
        let mut action = None;
        ui.horizontal(|ui| {
            ui.heading("Gallery");
            if ui.button("Refresh").clicked() {
                self.refresh_gallery();
            }
            let sel = self.selected.and_then(|i| self.gallery.get(i)).and_then(|g| g.settings.clone());
            if ui.add_enabled(sel.is_some(), egui::Button::new("Reuse settings")).clicked()
                && let Some(s) = &sel
            {
                self.apply(s);
            }
            let again = sel.as_ref().is_some_and(|_| !busy);
            if ui.add_enabled(again, egui::Button::new("Make again")).on_hover_text("This image alone, from its seed and its place in its batch").clicked()
                && let Some(s) = &sel
            {
                self.apply(s);
                self.one_image = Some(s.image);
                action = Some(Action::Generate);
            }
            if ui.add_enabled(self.selected.is_some(), egui::Button::new("Save as…")).clicked() {
                action = Some(Action::Dialog(DialogTarget::SaveImageAs));
            }
            if ui.add_enabled(self.selected.is_some(), egui::Button::new("Copy")).clicked()
                && let Some(item) = self.selected.and_then(|i| self.gallery.get(i))
                && let Ok(img) = vgt_model::image_io::read(&item.path)
            {
                let rgba: Vec<u8> = img.pixels.chunks(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
                ctx.copy_image(egui::ColorImage::from_rgba_unmultiplied([img.width as usize, img.height as usize], &rgba));
            }
        });
        if let Some(s) = self.selected.and_then(|i| self.gallery.get(i)).and_then(|g| g.settings.as_ref()) {
            ui.label(format!(
                "{} · seed {} · image {} of its batch · CFG {} · {} steps · {} tokens/step · {}×{}",
                s.prompt, s.seed, s.image, s.options.cfg, s.options.num_steps, s.options.acc_ratio, s.options.width, s.options.height
            ));
        }
        {
            for item in &mut self.gallery {
                if item.tex.is_none()
                    && let Ok(img) = vgt_model::image_io::read(&item.path)
                {
                    item.tex = Some(texture(ctx, &item.path.display().to_string(), &img));
                }
            }
            // The selected image, large.
            if let Some(item) = self.selected.and_then(|i| self.gallery.get(i))
                && let Some(tex) = &item.tex
            {
                // Half the width at most, so that the thumbnails stay in view below it.
                let side = (ui.available_width() * 0.5).clamp(64.0, 320.0);
                let name = item.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ui.add(egui::Image::new((tex.id(), egui::vec2(side, side))).alt_text(format!("large: {name}")));
            }
            // Thumbnails grow with the window, one row of them per batch.
            let thumb = (ui.available_width() / 6.0 - 8.0).clamp(64.0, 192.0);
            for range in self.batches() {
                if let Some(s) = &self.gallery[range.start].settings {
                    ui.small(format!("{} · seed {}", s.prompt, s.seed));
                }
                ui.horizontal_wrapped(|ui| {
                    for i in range {
                        let item = &self.gallery[i];
                        let Some(tex) = &item.tex else { continue };
                        let name = item.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        let img = egui::Image::new((tex.id(), egui::vec2(thumb, thumb))).alt_text(name).sense(egui::Sense::click());
                        let resp = ui.add(img);
                        if self.selected == Some(i) {
                            ui.painter().rect_stroke(resp.rect, 2.0, egui::Stroke::new(2.0, ui.visuals().selection.stroke.color), egui::StrokeKind::Outside);
                        }
                        let resp = match &item.settings {
                            Some(s) => resp.on_hover_text(format!("{}\nseed {}", s.prompt, s.seed)),
                            None => resp,
                        };
                        if resp.clicked() {
                            self.selected = Some(i);
                        }
                    }
                });
                ui.separator();
            }
        }
        action
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool, has_model: bool) -> Option<Action> {
        let mut action = None;
        // Ctrl+Enter (Cmd+Enter on macOS) generates from anywhere in the workspace, the prompt
        // box included; taken before the prompt box would read it as a new line.
        if ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter)) && !busy && has_model {
            action = Some(Action::Generate);
        }
        egui::Panel::left("gen-left").resizable(true).default_size(360.0).show(ui, |ui| {
            egui::ScrollArea::vertical().id_salt("gen-settings-scroll").show(ui, |ui| {
                self.settings_ui(ui, busy);
                if let Some(t) = self.pending_dialog.take() {
                    action = Some(Action::Dialog(t));
                }
                ui.horizontal(|ui| {
                    let button = ui.add_enabled(!busy && has_model, egui::Button::new("Generate")).on_hover_text("Ctrl+Enter");
                    if button.clicked() {
                        action = Some(Action::Generate);
                    }
                    if ui.add_enabled(busy && self.progress.is_some(), egui::Button::new("Cancel")).clicked() {
                        action = Some(Action::Cancel);
                    }
                });
                if !has_model {
                    ui.label("Load a model to generate");
                }
            });
        });
        egui::CentralPanel::default().show(ui, |ui| {
            // One scroll area for the whole side (preview and gallery), so a small window works.
            egui::ScrollArea::vertical().id_salt("gen-right-scroll").show(ui, |ui| {
                if let Some((0, 0, _)) = self.progress {
                    // Before the first token group: the prompt is read and the model's cache filled.
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("preparing: reading the prompt…");
                    });
                } else if let Some((done, total, elapsed)) = self.progress {
                    let f = if total > 0 { done as f32 / total as f32 } else { 0.0 };
                    let eta = if done > 0 { elapsed / done as f64 * (total - done) as f64 } else { 0.0 };
                    ui.add(egui::ProgressBar::new(f).text(format!("{done}/{total} token groups · {} elapsed · ETA {}", fmt_secs(elapsed), fmt_secs(eta))));
                }
                if !self.status.is_empty() {
                    ui.label(&self.status);
                }
                self.preview_ui(ui, ctx);
                ui.separator();
                if let Some(a) = self.gallery_ui(ui, ctx, busy) {
                    action = Some(a);
                }
            });
        });
        action
    }
}

/// A seed from the clock.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000_007).unwrap_or(0)
}

/// "wrote PATH" for one image, "wrote N images to FOLDER" for a batch (never a list of paths).
pub fn written_status(paths: &[PathBuf]) -> String {
    match paths {
        [one] => format!("wrote {}", one.display()),
        _ => {
            let folder = paths.first().and_then(|p| p.parent()).map(|d| d.display().to_string()).unwrap_or_default();
            format!("wrote {} images to {folder}", paths.len())
        }
    }
}

/// `run/adapter` for `/…/run/adapter` (the folder name alone is often just "adapter").
pub fn adapter_name(path: &Path) -> String {
    let name = |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    match (name(path.parent()), name(Some(path))) {
        (Some(parent), Some(file)) => format!("{parent}/{file}"),
        (None, Some(file)) => file,
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_summed_up_in_the_status_line() {
        let paths: Vec<PathBuf> = (0..16).map(|i| PathBuf::from(format!("/out/7-{i}.png"))).collect();
        assert_eq!(written_status(&paths), "wrote 16 images to /out");
        assert_eq!(written_status(&paths[..1]), "wrote /out/7-0.png");
    }
}
