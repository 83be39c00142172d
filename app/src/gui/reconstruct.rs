//! The Reconstruct workspace: original and reconstruction side by side with synchronised zoom
//! and pan, an A/B wipe, the error heat map, PSNR/SSIM, the latent and its first principal
//! components; a folder gives a sortable table with CSV export.

use std::path::{Path, PathBuf};

use eframe::egui;

use super::worker::{Event, ReconItem};
use super::{Action, DialogTarget, fmt_secs, texture};

/// The images of a folder that the app reads.
pub fn images_in(dir: &Path) -> Vec<PathBuf> {
    super::image_files(dir)
}

struct Shown {
    item: ReconItem,
    tex: Option<[egui::TextureHandle; 4]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Name,
    Psnr,
    Ssim,
}

/// State of the Reconstruct workspace.
pub struct ReconstructState {
    items: Vec<Shown>,
    pub skipped: Vec<(PathBuf, String)>,
    /// What went wrong last (shown by the app with the other errors, in one place).
    pub error: Option<String>,
    pub selected: usize,
    pub zoom: f32,
    pub center: egui::Vec2,
    /// Fraction of the width where the A/B wipe shows the original (left) over the reconstruction.
    pub wipe: f32,
    pub heatmap: bool,
    pub sort: SortBy,
    pub descending: bool,
    pub progress: Option<(usize, usize, f64)>,
    pub status: String,
}

impl Default for ReconstructState {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            skipped: Vec::new(),
            error: None,
            selected: 0,
            zoom: 1.0,
            center: egui::vec2(0.5, 0.5),
            wipe: 0.5,
            heatmap: false,
            sort: SortBy::Name,
            descending: false,
            progress: None,
            status: String::new(),
        }
    }
}

impl ReconstructState {
    pub fn items(&self) -> impl Iterator<Item = &ReconItem> {
        self.items.iter().map(|s| &s.item)
    }

    pub fn begin(&mut self, n: usize) {
        self.error = None;
        self.items.clear();
        self.skipped.clear();
        self.selected = 0;
        self.progress = Some((0, n, 0.0));
        self.status = format!("reconstructing {n} image(s)…");
    }

    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::Reconstructed(item) => self.items.push(Shown { item: *item, tex: None }),
            Event::ReconstructSkipped { path, reason } => self.skipped.push((path, reason)),
            Event::Progress { done, total, elapsed } => self.progress = Some((done, total, elapsed)),
            Event::Cancelled => {
                self.status = "cancelled".into();
                self.progress = None;
            }
            Event::Failed(msg) => {
                self.status = String::new();
                self.error = Some(msg);
                self.progress = None;
            }
            _ => {}
        }
        if matches!(self.progress, Some((d, t, _)) if d == t) {
            self.progress = None;
            self.status = format!("{} reconstructed, {} skipped", self.items.len(), self.skipped.len());
        }
    }

    /// The metrics table as CSV (`file,psnr_db,ssim,latent`).
    /// The selected image's file stem, for a suggested output name.
    pub fn current_stem(&self) -> Option<String> {
        let s = self.items.get(self.selected)?;
        Some(s.item.path.file_stem()?.to_string_lossy().into_owned())
    }

    /// Writes the metrics table to `path` (atomically).
    pub fn export_csv(&mut self, path: &Path) {
        match vgt_model::fsutil::write_bytes_atomic(path, self.csv().as_bytes()) {
            Ok(()) => self.status = format!("wrote {}", path.display()),
            Err(e) => self.error = Some(format!("cannot write {}: {e}", path.display())),
        }
    }

    /// Saves the selected reconstruction as a PNG.
    pub fn save_current(&mut self, path: &Path) {
        let Some(s) = self.items.get(self.selected) else { return };
        match s.item.output.save_png(path) {
            Ok(()) => self.status = format!("wrote {}", path.display()),
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    pub fn csv(&self) -> String {
        let mut s = String::from("file,psnr_db,ssim,latent\n");
        for it in self.items() {
            let [b, c, h, w] = it.latent_shape;
            s += &format!("{},{:.4},{:.6},{b}x{c}x{h}x{w}\n", it.path.display(), it.metrics.psnr, it.metrics.ssim);
        }
        s
    }

    fn sort_items(&mut self) {
        let key = self.sort;
        self.items.sort_by(|a, b| {
            let o = match key {
                SortBy::Name => a.item.path.cmp(&b.item.path),
                SortBy::Psnr => a.item.metrics.psnr.total_cmp(&b.item.metrics.psnr),
                SortBy::Ssim => a.item.metrics.ssim.total_cmp(&b.item.metrics.ssim),
            };
            if self.descending { o.reverse() } else { o }
        });
    }

    fn uv(&self) -> egui::Rect {
        let half = 0.5 / self.zoom;
        let c = egui::vec2(self.center.x.clamp(half, 1.0 - half), self.center.y.clamp(half, 1.0 - half));
        egui::Rect::from_min_max(egui::pos2(c.x - half, c.y - half), egui::pos2(c.x + half, c.y + half))
    }

    /// One image view that shares zoom and pan with the others.
    fn view(&mut self, ui: &mut egui::Ui, name: &str, tex: &egui::TextureHandle, over: Option<&egui::TextureHandle>, side: f32) {
        let (rect, resp) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::click_and_drag());
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, name));
        let uv = self.uv();
        let painter = ui.painter_at(rect);
        painter.image(tex.id(), rect, uv, egui::Color32::WHITE);
        if let Some(top) = over {
            let x = rect.left() + self.wipe * rect.width();
            let left = egui::Rect::from_min_max(rect.min, egui::pos2(x, rect.bottom()));
            ui.painter_at(left).image(top.id(), rect, uv, egui::Color32::WHITE);
            painter.line_segment([egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())], egui::Stroke::new(2.0, egui::Color32::YELLOW));
        }
        if resp.dragged() {
            let d = resp.drag_delta() / side / self.zoom;
            self.center -= d;
        }
        if resp.hovered() {
            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
            if scroll != 0.0 {
                self.zoom = (self.zoom * (1.0 + scroll / 400.0)).clamp(1.0, 32.0);
            }
        }
        if resp.double_clicked() {
            self.zoom = 1.0;
            self.center = egui::vec2(0.5, 0.5);
        }
    }

    /// The workspace, in a scroll area so that it works down to small windows.
    pub fn ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool, has_model: bool) -> Option<Action> {
        egui::ScrollArea::vertical().id_salt("recon-scroll").show(ui, |ui| self.content_ui(ui, ctx, busy, has_model)).inner
    }

    fn content_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool, has_model: bool) -> Option<Action> {
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            if ui.add_enabled(!busy && has_model, egui::Button::new("Open image…")).clicked() {
                action = Some(Action::Dialog(DialogTarget::ReconstructFiles));
            }
            if ui.add_enabled(!busy && has_model, egui::Button::new("Open folder…")).clicked() {
                action = Some(Action::Dialog(DialogTarget::ReconstructFolder));
            }
            if ui.add_enabled(busy && self.progress.is_some(), egui::Button::new("Cancel")).clicked() {
                action = Some(Action::Cancel);
            }
            ui.label("or drop images or a folder on the window");
        });
        if let Some((done, total, elapsed)) = self.progress {
            let eta = if done > 0 { elapsed / done as f64 * (total - done) as f64 } else { 0.0 };
            ui.add(egui::ProgressBar::new(done as f32 / total.max(1) as f32).text(format!("{done}/{total} · ETA {}", fmt_secs(eta))));
        }
        if !self.status.is_empty() {
            ui.label(&self.status);
        }
        for (p, why) in &self.skipped {
            ui.colored_label(ui.visuals().warn_fg_color, format!("skipped {}: {why}", p.display()));
        }
        if self.items.is_empty() {
            return action;
        }
        self.selected = self.selected.min(self.items.len() - 1);
        for s in &mut self.items {
            if s.tex.is_none() {
                let name = s.item.path.display().to_string();
                s.tex = Some([
                    texture(ctx, &format!("{name}-in"), &s.item.input),
                    texture(ctx, &format!("{name}-out"), &s.item.output),
                    texture(ctx, &format!("{name}-err"), &s.item.heatmap),
                    texture(ctx, &format!("{name}-pca"), &s.item.latent_pca),
                ]);
            }
        }
        let item = self.items[self.selected].item.clone();
        let Some([tin, tout, terr, tpca]) = self.items[self.selected].tex.clone() else { return action };
        let [_, c, h, w] = item.latent_shape;
        let (iw, ih) = (item.input.width as usize, item.input.height as usize);
        ui.label(format!(
            "{} · resized to {iw}×{ih} · PSNR {:.2} dB · SSIM {:.4} · latent {c}×{h}×{w} · compression {:.1}× ({}×{}×3 values to {})",
            item.path.display(),
            item.metrics.psnr,
            item.metrics.ssim,
            (iw * ih * 3) as f64 / (c * h * w).max(1) as f64,
            iw,
            ih,
            c * h * w
        ));
        ui.horizontal_wrapped(|ui| {
            ui.add(egui::Slider::new(&mut self.zoom, 1.0..=32.0).logarithmic(true).text("zoom"));
            ui.add(egui::Slider::new(&mut self.wipe, 0.0..=1.0).text("A/B wipe: original up to here"))
                .on_hover_text("0: all reconstruction; 1: all original; drag to compare");
            ui.checkbox(&mut self.heatmap, "error heat map");
            if ui.button("Save reconstruction…").clicked() {
                action = Some(Action::Dialog(DialogTarget::SaveReconstruction));
            }
        });
        if self.heatmap {
            heat_legend_ui(ui);
        }
        let side = ((ui.available_width() - 40.0) / 3.0).clamp(96.0, 448.0);
        ui.horizontal_wrapped(|ui| {
            ui.vertical(|ui| {
                ui.label("Original");
                self.view(ui, "original", &tin, None, side);
            });
            ui.vertical(|ui| {
                ui.label(if self.heatmap { "Error (mean absolute, of the pixel range)" } else { "Reconstruction (original left of the wipe)" });
                if self.heatmap { self.view(ui, "error heat map", &terr, None, side) } else { self.view(ui, "reconstruction", &tout, Some(&tin), side) }
            });
            ui.vertical(|ui| {
                ui.label("Latent: first 3 principal components");
                self.view(ui, "latent principal components", &tpca, None, side);
            });
        });
        if self.items.len() > 1 {
            ui.separator();
            ui.horizontal_wrapped(|ui| {
                ui.label("Sort by");
                let before = (self.sort, self.descending);
                ui.selectable_value(&mut self.sort, SortBy::Name, "name");
                ui.selectable_value(&mut self.sort, SortBy::Psnr, "PSNR");
                ui.selectable_value(&mut self.sort, SortBy::Ssim, "SSIM");
                ui.checkbox(&mut self.descending, "descending");
                if before != (self.sort, self.descending) {
                    self.sort_items();
                }
                if ui.button("Export CSV…").clicked() {
                    action = Some(Action::Dialog(DialogTarget::ExportCsv));
                }
            });
            // The table takes its full height; the workspace's scroll area scrolls it (a nested
            // scroll area shrank to nothing in a small window).
            egui::Grid::new("recon-grid").striped(true).num_columns(3).show(ui, |ui| {
                ui.strong("file");
                ui.strong("PSNR (dB)");
                ui.strong("SSIM");
                ui.end_row();
                for (i, s) in self.items.iter().enumerate() {
                    let name = s.item.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if ui.selectable_label(i == self.selected, name).clicked() {
                        self.selected = i;
                    }
                    ui.label(format!("{:.2}", s.item.metrics.psnr));
                    ui.label(format!("{:.4}", s.item.metrics.ssim));
                    ui.end_row();
                }
            });
        }
        action
    }
}

/// The heat map's scale: black for no error, red for 0.125, yellow for 0.25 or more of the pixel
/// range (mean absolute error over the three channels), as `image_io::error_heatmap` paints it.
fn heat_legend_ui(ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.small("error 0");
        let (rect, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
        let steps = 32;
        for k in 0..steps {
            let t = k as f32 / (steps - 1) as f32;
            let [r, g, b] = vgt_model::image_io::heat_color(t);
            let x0 = rect.left() + rect.width() * k as f32 / steps as f32;
            let x1 = rect.left() + rect.width() * (k + 1) as f32 / steps as f32;
            ui.painter().rect_filled(egui::Rect::from_x_y_ranges(x0..=x1, rect.y_range()), 0.0, egui::Color32::from_rgb(r, g, b));
        }
        ui.small("0.25 or more");
    });
}
