//! The Tune workspace: a folder of images with editable captions, the LoRA settings of
//! `vgt tune`, Start / Pause / Cancel, a live loss plot, the sample images, the ETA. The finished
//! adapter is added to Generate's adapter list.

use std::path::{Path, PathBuf};

use eframe::egui;
use vgt_model::image_io::{self, Rgb8};
use vgt_model::train::data;
use vgt_model::train::run::{TuneConfig, TuneEvent, TuneOutcome};

use super::worker::{Command, Event, ModelInfo};
use super::{Action, DialogTarget, Settings, fmt_secs, texture};

/// One training image and its caption (edited in place, saved as `NAME.txt`).
pub struct Pair {
    pub path: PathBuf,
    pub caption: String,
    pub saved: String,
    thumb: Option<Rgb8>,
    tex: Option<egui::TextureHandle>,
}

/// State of the Tune workspace.
pub struct TuneState {
    pub data_input: String,
    pub out_input: String,
    pub rank: usize,
    pub alpha: f64,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    pub sample_every: usize,
    pub save_every: usize,
    pub trigger: String,
    pub flow_head: bool,
    pub embeddings: bool,
    pub preserve_input: String,
    pub preserve_weight: f64,
    pub pairs: Vec<Pair>,
    pub skipped: Vec<(PathBuf, String)>,
    /// `(step, loss)` of the current run.
    pub losses: Vec<[f64; 2]>,
    pub samples: Vec<(usize, Rgb8)>,
    sample_tex: Option<(usize, egui::TextureHandle)>,
    pub progress: Option<(usize, usize, f64)>,
    pub status: String,
    pub error: Option<String>,
    pub paused: bool,
    pub adapter: Option<PathBuf>,
    /// The folder of the last run started (in the runs folder), and whether it stopped early
    /// with a checkpoint that Resume continues.
    pub run_dir: Option<PathBuf>,
    pub resumable: bool,
    native_size: usize,
    /// CUDA devices to train on (data parallel); offered when the model runs on CUDA.
    pub devices: usize,
    cuda: bool,
}

/// `run-YYYYMMDD-HHMMSS` (UTC) for a time in seconds since 1970.
pub fn run_name(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("run-{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// A new run folder in `runs`, named by the time (`-2`, `-3`… when two starts share a second).
pub fn new_run_dir(runs: &Path) -> PathBuf {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = run_name(now);
    let mut dir = runs.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = runs.join(format!("{base}-{n}"));
        n += 1;
    }
    dir
}

impl TuneState {
    pub fn from_settings(s: &Settings) -> Self {
        let mut t = Self {
            data_input: s.tune_data.clone(),
            out_input: s.tune_out.clone(),
            rank: s.tune_rank,
            alpha: s.tune_alpha,
            steps: s.tune_steps,
            lr: s.tune_lr,
            batch: s.tune_batch,
            sample_every: s.tune_sample_every,
            save_every: s.tune_save_every,
            trigger: s.tune_trigger.clone(),
            flow_head: s.tune_flow_head,
            embeddings: s.tune_embeddings,
            preserve_input: s.tune_preserve.clone(),
            preserve_weight: s.tune_preserve_weight,
            pairs: Vec::new(),
            skipped: Vec::new(),
            losses: Vec::new(),
            samples: Vec::new(),
            sample_tex: None,
            progress: None,
            status: String::new(),
            error: None,
            paused: false,
            adapter: None,
            run_dir: None,
            resumable: false,
            native_size: 448,
            devices: 1,
            cuda: false,
        };
        if !t.data_input.is_empty() {
            let p = PathBuf::from(&t.data_input);
            t.set_data(p);
        }
        t
    }

    pub fn store(&self, s: &mut Settings) {
        s.tune_data = self.data_input.clone();
        s.tune_out = self.out_input.clone();
        s.tune_rank = self.rank;
        s.tune_alpha = self.alpha;
        s.tune_steps = self.steps;
        s.tune_lr = self.lr;
        s.tune_batch = self.batch;
        s.tune_sample_every = self.sample_every;
        s.tune_save_every = self.save_every;
        s.tune_trigger = self.trigger.clone();
        s.tune_flow_head = self.flow_head;
        s.tune_embeddings = self.embeddings;
        s.tune_preserve = self.preserve_input.clone();
        s.tune_preserve_weight = self.preserve_weight;
    }

    pub fn on_model(&mut self, m: &ModelInfo) {
        self.native_size = m.config.native_size();
        self.cuda = m.backend == vgt_model::device::BackendKind::Cuda.name();
        if !self.cuda {
            self.devices = 1;
        }
    }

    /// Reads the folder's images and captions.
    pub fn set_data(&mut self, dir: PathBuf) {
        self.data_input = dir.display().to_string();
        self.pairs.clear();
        self.skipped.clear();
        self.error = None;
        match data::scan(&dir, data::DEFAULT_TEMPLATE, &self.trigger) {
            Ok(ds) => {
                self.skipped = ds.skipped;
                for s in ds.samples {
                    let caption = if s.templated { String::new() } else { s.caption };
                    let thumb = image_io::read(&s.path).ok().map(|img| image_io::center_square(&img, 96));
                    self.pairs.push(Pair { path: s.path, saved: caption.clone(), caption, thumb, tex: None });
                }
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// Writes every edited caption to `NAME.txt` (atomically).
    pub fn save_captions(&mut self) -> Result<usize, String> {
        let mut n = 0;
        for p in &mut self.pairs {
            if p.caption == p.saved {
                continue;
            }
            let txt = p.path.with_extension("txt");
            vgt_model::fsutil::write_bytes_atomic(&txt, p.caption.trim().as_bytes()).map_err(|e| format!("{}: {e}", txt.display()))?;
            p.saved = p.caption.clone();
            n += 1;
        }
        Ok(n)
    }

    fn config(&self) -> TuneConfig {
        let mut c = TuneConfig::new(self.native_size);
        c.lora.rank = self.rank;
        c.lora.alpha = self.alpha;
        c.lora.flow_head_lora = self.flow_head;
        c.lora.train_embeddings = self.embeddings;
        c.preserve_weight = self.preserve_weight;
        c.steps = self.steps;
        c.lr = self.lr;
        c.batch = self.batch;
        c.sample_every = self.sample_every;
        c.save_every = self.save_every;
        c.trigger = self.trigger.clone();
        c.sample_options.num_steps = 10;
        // Data parallel: each GPU trains one batch per step.
        c.grad_accum = self.devices.max(1);
        c
    }

    /// The worker command for Start (or Resume after a pause).
    pub fn command(&mut self, _model: &ModelInfo, resume: bool) -> Result<Command, String> {
        if self.pairs.is_empty() {
            return Err("pick a folder with images first".into());
        }
        self.save_captions()?;
        let runs = PathBuf::from(self.out_input.trim());
        if runs.as_os_str().is_empty() {
            return Err("choose a folder for the runs".into());
        }
        // Resume continues the last run; Start makes a new run folder every time.
        let (out, resume) = match &self.run_dir {
            Some(dir) if resume && dir.join("checkpoint").exists() => (dir.clone(), true),
            Some(dir) if resume => return Err(format!("{} has no checkpoint to resume from", dir.display())),
            _ if resume => return Err("no run to resume".into()),
            _ => (new_run_dir(&runs), false),
        };
        self.run_dir = Some(out.clone());
        let preserve = Some(PathBuf::from(self.preserve_input.trim())).filter(|p| !p.as_os_str().is_empty());
        if let Some(p) = &preserve
            && !p.is_dir()
        {
            return Err(format!("the preservation folder {} does not exist", p.display()));
        }
        let mut config = self.config();
        config.preserve = preserve;
        Ok(Command::Tune { data: PathBuf::from(&self.data_input), out, config: Box::new(config), resume, devices: self.devices.max(1) })
    }

    pub fn begin(&mut self) {
        if !self.paused {
            self.losses.clear();
            self.samples.clear();
        }
        self.paused = false;
        self.resumable = false;
        self.error = None;
        self.adapter = None;
        self.progress = Some((0, self.steps, 0.0));
        self.status = "preparing…".into();
    }

    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::Tune(TuneEvent::Message(m)) => self.status = m,
            Event::Tune(TuneEvent::Latents { done, total }) => self.status = format!("encoding images {done}/{total}"),
            Event::Tune(TuneEvent::Step { step, total, loss, seconds, .. }) => {
                self.losses.retain(|p| (p[0] as usize) < step);
                self.losses.push([step as f64, loss]);
                self.progress = Some((step, total, seconds));
                self.status = format!("step {step}/{total} · loss {loss:.4}");
            }
            Event::Tune(TuneEvent::Sample { step, image, .. }) => self.samples.push((step, image)),
            Event::Tune(TuneEvent::Saved { step, path }) => self.status = format!("checkpoint at step {step} in {}", path.display()),
            Event::TuneFinished(TuneOutcome::Finished { adapter }) => {
                self.status = format!("done: adapter in {} (added to Generate)", adapter.display());
                self.adapter = Some(adapter);
                self.progress = None;
            }
            Event::TuneFinished(TuneOutcome::Cancelled { step, checkpoint }) => {
                self.resumable = true;
                self.status = if self.paused {
                    format!("paused at step {step}; Resume continues from {}", checkpoint.display())
                } else {
                    format!("cancelled at step {step}; the checkpoint is in {}", checkpoint.display())
                };
                self.progress = None;
            }
            Event::Failed(msg) => {
                self.error = Some(msg);
                self.progress = None;
            }
            _ => {}
        }
    }

    fn pairs_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool) {
        egui::ScrollArea::vertical().id_salt("pairs").max_height(260.0).show(ui, |ui| {
            egui::Grid::new("pairs-grid").num_columns(2).show(ui, |ui| {
                for p in &mut self.pairs {
                    if p.tex.is_none()
                        && let Some(t) = &p.thumb
                    {
                        p.tex = Some(texture(ctx, &format!("tune-{}", p.path.display()), t));
                    }
                    let name = short(&p.path);
                    let l = match &p.tex {
                        Some(t) => ui.add(egui::Image::new((t.id(), egui::vec2(64.0, 64.0))).alt_text(name.clone())),
                        None => ui.label(name.clone()),
                    }
                    .on_hover_text(p.path.display().to_string());
                    let hint = data::DEFAULT_TEMPLATE.replace("{trigger}", &self.trigger);
                    ui.add_enabled(!busy, egui::TextEdit::multiline(&mut p.caption).hint_text(hint).desired_rows(2).desired_width(320.0)).labelled_by(l.id);
                    ui.end_row();
                }
            });
        });
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui) {
        egui::Grid::new("tune-settings").num_columns(2).show(ui, |ui| {
            let l = ui.label("Runs folder");
            ui.add(egui::TextEdit::singleline(&mut self.out_input)).labelled_by(l.id).on_hover_text("Each Start makes a new run folder in here, named by the time (run-YYYYMMDD-HHMMSS): loss log, checkpoints, samples and the finished adapter");
            ui.end_row();
            let l = ui.label("Trigger word");
            ui.add(egui::TextEdit::singleline(&mut self.trigger)).labelled_by(l.id).on_hover_text("The word that names your subject in captions; images without a caption use \"a photo of WORD\"");
            ui.end_row();
            let l = ui.label("Rank");
            ui.add(egui::Slider::new(&mut self.rank, 1..=128).logarithmic(true)).labelled_by(l.id).on_hover_text("Size of the LoRA adapters: larger learns more and takes more memory (16 is a good start)");
            ui.end_row();
            let l = ui.label("Alpha");
            ui.add(egui::Slider::new(&mut self.alpha, 1.0..=128.0).logarithmic(true)).labelled_by(l.id).on_hover_text("The adapters' scale is alpha / rank; keep alpha = rank unless you know why");
            ui.end_row();
            let l = ui.label("Steps");
            ui.add(egui::DragValue::new(&mut self.steps).range(1..=100_000)).labelled_by(l.id).on_hover_text("Optimiser steps; 1500 taught the shapes model a new shape in about 9 minutes on two CPU cores");
            ui.end_row();
            let l = ui.label("Learning rate");
            ui.add(egui::DragValue::new(&mut self.lr).speed(1e-5).range(1e-7..=1e-1)).labelled_by(l.id).on_hover_text("Peak learning rate (warmup, then cosine decay): 1e-3 learns a new subject; 1e-4 barely moves the loss; lower it if the loss jumps");
            ui.end_row();
            let l = ui.label("Batch");
            ui.add(egui::Slider::new(&mut self.batch, 1..=32)).labelled_by(l.id).on_hover_text("Images per step: larger is smoother and slower");
            ui.end_row();
            if self.cuda {
                let l = ui.label("GPUs");
                ui.add(egui::Slider::new(&mut self.devices, 1..=8)).labelled_by(l.id).on_hover_text(
                    "Data-parallel training on CUDA devices 0..N: each GPU trains a batch per step and the gradients are averaged (NCCL)",
                );
                ui.end_row();
            }
            let l = ui.label("Sample every");
            ui.add(egui::DragValue::new(&mut self.sample_every).range(0..=10_000)).labelled_by(l.id).on_hover_text("Draw a sample image every N steps (0: never); each sample takes a moment");
            ui.end_row();
            let l = ui.label("Save every");
            ui.add(egui::DragValue::new(&mut self.save_every).range(1..=10_000)).labelled_by(l.id).on_hover_text("Write a checkpoint every N steps (Pause and Cancel also write one)");
            ui.end_row();
            ui.label("");
            ui.checkbox(&mut self.flow_head, "Adapt the flow head").on_hover_text("LoRA on the flow head's layers too: needed to draw a kind of thing the model has never drawn");
            ui.end_row();
            ui.label("");
            ui.checkbox(&mut self.embeddings, "Train the word embeddings").on_hover_text("Lets a word the model never saw in training take a meaning of its own");
            ui.end_row();
            let l = ui.label("Preservation folder");
            ui.add(egui::TextEdit::singleline(&mut self.preserve_input).hint_text("optional: images of what must not change"))
                .labelled_by(l.id)
                .on_hover_text("Captioned images of what the model already draws; each step keeps the tuned model's output on them close to the base model's");
            ui.end_row();
            let l = ui.label("Preservation weight");
            ui.add(egui::DragValue::new(&mut self.preserve_weight).speed(0.1).range(0.01..=100.0)).labelled_by(l.id).on_hover_text("How strongly the preservation images hold the model to what it drew before (4 kept the others unchanged on the shapes model)");
            ui.end_row();
        });
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context, busy: bool, has_model: bool) -> Option<Action> {
        let mut action = None;
        let running = busy && self.progress.is_some();
        egui::Panel::left("tune-left").resizable(true).default_size(480.0).show(ui, |ui| {
            // Everything scrolls, so that Start is reachable in a small window too.
            egui::ScrollArea::vertical().id_salt("tune-left-scroll").show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    let l = ui.label("Images");
                    let mut d = self.data_input.clone();
                    if ui.add_enabled(!busy, egui::TextEdit::singleline(&mut d).desired_width(240.0)).labelled_by(l.id).changed() {
                        self.data_input = d;
                    }
                    if ui.add_enabled(!busy, egui::Button::new("Read")).clicked() {
                        let p = PathBuf::from(self.data_input.trim());
                        self.set_data(p);
                    }
                    if ui.add_enabled(!busy, egui::Button::new("Pick folder…")).clicked() {
                        action = Some(Action::Dialog(DialogTarget::TuneData));
                    }
                });
                for (p, why) in &self.skipped {
                    ui.colored_label(ui.visuals().warn_fg_color, format!("skipped {}: {why}", short(p)));
                }
                self.pairs_ui(ui, ctx, busy);
                ui.horizontal(|ui| {
                    let dirty = self.pairs.iter().filter(|p| p.caption != p.saved).count();
                    if ui.add_enabled(dirty > 0 && !busy, egui::Button::new(format!("Save captions ({dirty})"))).clicked() {
                        match self.save_captions() {
                            Ok(n) => self.status = format!("saved {n} caption(s)"),
                            Err(e) => self.error = Some(e),
                        }
                    }
                });
                ui.separator();
                self.settings_ui(ui);
                ui.horizontal(|ui| {
                    let ready = !busy && has_model && !self.pairs.is_empty();
                    if ui.add_enabled(ready, egui::Button::new("Start")).on_hover_text("A new run, in a new folder of the runs folder").clicked() {
                        action = Some(Action::Tune { resume: false });
                    }
                    if self.resumable {
                        let hint = self.run_dir.as_ref().map(|d| format!("Continue {} from its checkpoint", d.display())).unwrap_or_default();
                        if ui.add_enabled(ready, egui::Button::new("Resume")).on_hover_text(hint).clicked() {
                            action = Some(Action::Tune { resume: true });
                        }
                    }
                    if ui.add_enabled(running, egui::Button::new("Pause")).clicked() {
                        self.paused = true;
                        action = Some(Action::Cancel);
                    }
                    if ui.add_enabled(running, egui::Button::new("Cancel")).clicked() {
                        self.paused = false;
                        action = Some(Action::Cancel);
                    }
                });
            });
        });
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().id_salt("tune-right-scroll").show(ui, |ui| {
                if let Some((done, total, secs)) = self.progress {
                    let eta = if done > 0 { secs / done as f64 * (total.saturating_sub(done)) as f64 } else { 0.0 };
                    ui.add(egui::ProgressBar::new(done as f32 / total.max(1) as f32).text(format!("step {done}/{total} · ETA {}", fmt_secs(eta))));
                }
                ui.label(&self.status);
                egui_plot::Plot::new("loss").height(260.0).allow_scroll(false).show(ui, |plot| {
                    plot.line(egui_plot::Line::new("loss", self.losses.clone()));
                });
                if let Some((step, img)) = self.samples.last() {
                    let tex = match &self.sample_tex {
                        Some((s, t)) if s == step => t.clone(),
                        _ => {
                            let t = texture(ctx, "tune-sample", img);
                            self.sample_tex = Some((*step, t.clone()));
                            t
                        }
                    };
                    ui.label(format!("Sample at step {step}"));
                    ui.image((tex.id(), egui::vec2(256.0, 256.0)));
                }
            });
        });
        action
    }
}

fn short(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_utc_times() {
        assert_eq!(run_name(0), "run-19700101-000000");
        // 2026-12-04 13:50:52 UTC, from `date -u -d @1796392252`.
        assert_eq!(run_name(1_796_392_252), "run-20261204-135052");
        // A leap day.
        assert_eq!(run_name(951_782_400), "run-20000229-000000");
    }
}
