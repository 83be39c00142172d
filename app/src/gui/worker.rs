//! The worker thread: it owns the loaded model and the device; the UI sends [`Command`]s and
//! drains [`Event`]s. Cancellation is one shared flag, checked after every token group and
//! every training step.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use vgt_model::burn::tensor::{Tensor, TensorData};
use vgt_model::config::VgtConfig;
use vgt_model::device::ComputeDevice;
use vgt_model::generate::{GenerateError, GroupDone};
use vgt_model::image_io::{self, Rgb8};
use vgt_model::reconstruct::{Metrics, Reconstructor};
use vgt_model::text2image::{Request, TextToImage, TextToImageError, latent_grid_picture, pictures};
use vgt_model::train::lora::Adapter;
use vgt_model::train::run::{TuneConfig, TuneEvent, TuneJob, TuneOutcome, tune};
use vgt_model::weights::source::{self, LoadedModel};

use crate::meta;

/// What the UI asks for.
pub enum Command {
    Load { path: PathBuf, backend: String },
    Generate(GenerateJob),
    Reconstruct { paths: Vec<PathBuf> },
    /// `devices` > 1: data parallel on CUDA devices 0..devices.
    Tune { data: PathBuf, out: PathBuf, config: Box<TuneConfig>, resume: bool, devices: usize },
}

/// One generation: the request, the adapters, and where the PNGs go.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    pub request: Request,
    pub loras: Vec<(PathBuf, f64)>,
    pub out_dir: PathBuf,
    /// Decode the partial image every this many groups (0: never).
    pub decode_every: usize,
}

/// What the loaded model is.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub config: VgtConfig,
    pub parameters: usize,
    pub backend: String,
    pub adapter: String,
    /// A reason to worry about the device (wgpu on a CPU adapter), shown with the model.
    pub warning: Option<String>,
}

/// One reconstructed image.
#[derive(Clone)]
pub struct ReconItem {
    pub path: PathBuf,
    pub input: Rgb8,
    pub output: Rgb8,
    pub heatmap: Rgb8,
    /// The latent's first three principal components as RGB (one pixel per cell).
    pub latent_pca: Rgb8,
    pub latent_shape: [usize; 4],
    pub metrics: Metrics,
}

/// What the worker reports.
pub enum Event {
    Loaded(ModelInfo),
    LoadFailed(String),
    Progress { done: usize, total: usize, elapsed: f64 },
    Preview { grid: Rgb8, partial: Option<Rgb8> },
    Generated { images: Vec<(PathBuf, Rgb8)> },
    Reconstructed(Box<ReconItem>),
    ReconstructSkipped { path: PathBuf, reason: String },
    Tune(TuneEvent),
    TuneFinished(TuneOutcome),
    /// A job ended without a result (the message says why).
    Failed(String),
    Cancelled,
    /// The current job is over (after its last other event).
    Idle,
}

/// The UI's handle on the worker thread.
pub struct Worker {
    tx: Sender<Command>,
    pub rx: Receiver<Event>,
    pub cancel: Arc<AtomicBool>,
    pub busy: bool,
}

impl Worker {
    /// Starts the thread; `wake` is called after every event (to request a repaint).
    pub fn spawn(wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, cmd_rx) = channel::<Command>();
        let (ev_tx, rx) = channel::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("vgt-worker".into())
            .spawn(move || {
                let mut state = State { loaded: None, flag, events: ev_tx, wake };
                while let Ok(cmd) = cmd_rx.recv() {
                    state.flag.store(false, Ordering::SeqCst);
                    state.run(cmd);
                    state.send(Event::Idle);
                }
            })
            .expect("spawning the worker thread"); // invariant: thread creation only fails when the OS is out of resources
        Self { tx, rx, cancel, busy: false }
    }

    pub fn send(&mut self, cmd: Command) {
        self.busy = true;
        self.cancel.store(false, Ordering::SeqCst);
        let _ = self.tx.send(cmd);
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

struct Loaded {
    path: PathBuf,
    model: LoadedModel,
    device: ComputeDevice,
    t2i: Option<(Vec<(PathBuf, f64)>, TextToImage)>,
    recon: Option<Reconstructor>,
}

struct State {
    loaded: Option<Loaded>,
    flag: Arc<AtomicBool>,
    events: Sender<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl State {
    fn send(&self, e: Event) {
        let _ = self.events.send(e);
        (self.wake)();
    }

    fn run(&mut self, cmd: Command) {
        match cmd {
            Command::Load { path, backend } => self.load(path, &backend),
            Command::Generate(job) => {
                if let Err(e) = self.generate(job) {
                    self.send(e);
                }
            }
            Command::Reconstruct { paths } => {
                if let Err(e) = self.reconstruct(paths) {
                    self.send(e);
                }
            }
            Command::Tune { data, out, config, resume, devices } => self.tune(data, out, *config, resume, devices),
        }
    }

    fn load(&mut self, path: PathBuf, backend: &str) {
        let result = (|| -> anyhow::Result<Loaded> {
            let device = vgt_model::device::select(backend.parse()?)?;
            let model = source::open(&path)?;
            Ok(Loaded { path: path.clone(), model, device, t2i: None, recon: None })
        })();
        match result {
            Ok(l) => {
                let parameters = l.model.tensors.values().map(|t| t.numel()).sum();
                let info = ModelInfo {
                    path: l.path.clone(),
                    config: l.model.config.clone(),
                    parameters,
                    backend: l.device.kind.name().to_string(),
                    adapter: l.device.name.clone(),
                    warning: l.device.cpu_adapter.then(|| {
                        format!("wgpu runs on a CPU adapter ({}): the cpu backend is much faster on this machine", l.device.name)
                    }),
                };
                self.loaded = Some(l);
                self.send(Event::Loaded(info));
            }
            Err(e) => {
                // The model loaded before (if any) stays: a typo in a path must not cost it.
                self.send(Event::LoadFailed(crate::errors::report(&e)));
            }
        }
    }

    fn model(&mut self) -> Result<&mut Loaded, Event> {
        self.loaded.as_mut().ok_or_else(|| Event::Failed("no model is loaded: open a model folder first".into()))
    }

    fn generate(&mut self, job: GenerateJob) -> Result<(), Event> {
        let (events, wake, flag) = (self.events.clone(), self.wake.clone(), self.flag.clone());
        let (preview_events, preview_wake) = (self.events.clone(), self.wake.clone());
        let l = self.model()?;
        // Rebuild the generator when the adapters change (they are merged into the weights).
        if l.t2i.as_ref().is_none_or(|(loras, _)| *loras != job.loras) {
            l.t2i = None;
            let mut model = LoadedModel { config: l.model.config.clone(), tensors: l.model.tensors.clone(), tokenizer: l.model.tokenizer.clone() };
            for (path, w) in &job.loras {
                Adapter::load(path)
                    .and_then(|a| a.merge_into(&mut model.tensors, *w))
                    .map_err(|e| Event::Failed(format!("LoRA {}: {e}", path.display())))?;
            }
            let t2i = TextToImage::new(&model, &l.device.device).map_err(|e| Event::Failed(format!("{e}")))?;
            l.t2i = Some((job.loras.clone(), t2i));
        }
        let (backend, adapter, model_path) = (l.device.kind.name().to_string(), l.device.name.clone(), l.path.clone());
        let Some((_, t2i)) = l.t2i.as_ref() else { return Err(Event::Failed("internal: no generator".into())) };
        let start = Instant::now();
        let mut progress = |done: usize, total: usize| {
            let _ = events.send(Event::Progress { done, total, elapsed: start.elapsed().as_secs_f64() });
            wake();
            !flag.load(Ordering::SeqCst)
        };
        let mut cells: Vec<Option<Vec<f32>>> = Vec::new();
        let decode_every = job.decode_every;
        let model = &t2i.model;
        let mut on_group = |g: GroupDone<'_>| {
            let (h, w) = g.grid;
            if cells.len() != h * w {
                cells = vec![None; h * w];
            }
            let [_, k, c] = g.latents.dims();
            let v: Vec<f32> = g.latents.clone().narrow(0, 0, 1).into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            for (j, &cell) in g.cells.iter().enumerate().take(k) {
                cells[cell] = Some(v[j * c..(j + 1) * c].to_vec());
            }
            let grid = latent_grid_picture(&cells, h, w, 2.5);
            let last = g.group + 1 == g.groups;
            let partial = (decode_every > 0 && !last && (g.group + 1) % decode_every == 0).then(|| {
                let mut flat = vec![0f32; c * h * w];
                for (i, z) in cells.iter().enumerate() {
                    if let Some(z) = z {
                        for ch in 0..c {
                            flat[ch * h * w + i] = z[ch];
                        }
                    }
                }
                let device = model.image_in_projector.weight.val().device();
                let z = Tensor::<4>::from_data(TensorData::new(flat, [1, c, h, w]), &device);
                let mut img = pictures(model.vgt_ae.decode(z)).remove(0);
                neutral_cells(&mut img, &cells, h, w);
                img
            });
            let _ = preview_events.send(Event::Preview { grid, partial });
            preview_wake();
        };
        let result = t2i.generate_with_preview(&job.request, &mut progress, Some(&mut on_group));
        let images = match result {
            Err(TextToImageError::Generate(GenerateError::Cancelled)) => return Err(Event::Cancelled),
            Err(e) => return Err(Event::Failed(format!("{e}"))),
            Ok(images) => images,
        };
        std::fs::create_dir_all(&job.out_dir).map_err(|e| Event::Failed(format!("creating {}: {e}", job.out_dir.display())))?;
        vgt_model::fsutil::remove_stale_partials(&job.out_dir, &[".png"]);
        let info = meta::RunInfo { model: model_path.display().to_string(), backend, adapter, loras: job.loras.clone(), f16_weights: false };
        let mut saved = Vec::new();
        for (i, img) in images.into_iter().enumerate() {
            let index = job.request.first_image + i;
            let (parameters, settings) = meta::png_text(&job.request, &info, index);
            let path = meta::free_name(&job.out_dir, job.request.seed, index);
            img.save_png_with_text(&path, &[("parameters", &parameters), ("vgt", &settings)]).map_err(|e| Event::Failed(e.to_string()))?;
            saved.push((path, img));
        }
        let _ = events.send(Event::Generated { images: saved });
        Ok(())
    }

    fn reconstruct(&mut self, paths: Vec<PathBuf>) -> Result<(), Event> {
        let (events, wake, flag) = (self.events.clone(), self.wake.clone(), self.flag.clone());
        let l = self.model()?;
        if l.recon.is_none() {
            l.recon = Some(Reconstructor::new(&l.model, &l.device.device).map_err(|e| Event::Failed(format!("{e}")))?);
        }
        let Some(recon) = l.recon.as_ref() else { return Err(Event::Failed("internal: no autoencoder".into())) };
        let size = recon.native_size();
        let stride = l.model.config.stride();
        let size = size / stride * stride;
        let start = Instant::now();
        let total = paths.len();
        for (i, path) in paths.into_iter().enumerate() {
            if flag.load(Ordering::SeqCst) {
                return Err(Event::Cancelled);
            }
            match image_io::read(&path) {
                Err(e) => {
                    let _ = events.send(Event::ReconstructSkipped { path, reason: e.to_string() });
                }
                Ok(img) => {
                    let input = image_io::center_square(&img, size as u32);
                    let r = recon.reconstruct(&input, false);
                    let heatmap = image_io::error_heatmap(&r.input, &r.output, 0.25);
                    let latent_pca = meta::latent_pca(&r.latent, r.latent_shape);
                    let item = ReconItem { path, input: r.input, output: r.output, heatmap, latent_pca, latent_shape: r.latent_shape, metrics: r.metrics };
                    let _ = events.send(Event::Reconstructed(Box::new(item)));
                }
            }
            let _ = events.send(Event::Progress { done: i + 1, total, elapsed: start.elapsed().as_secs_f64() });
            wake();
        }
        Ok(())
    }

    fn tune(&mut self, data: PathBuf, out: PathBuf, config: TuneConfig, resume: bool, devices: usize) {
        let Some(l) = self.loaded.as_ref() else {
            self.send(Event::Failed("no model is loaded: open a model folder first".into()));
            return;
        };
        let peers: Vec<vgt_model::burn::tensor::Device> = if devices > 1 {
            match vgt_model::device::cuda_devices(devices) {
                Ok(d) => d[1..].iter().map(|d| d.device.clone()).collect(),
                Err(e) => {
                    self.send(Event::Failed(format!("starting {devices} CUDA devices: {e}")));
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let events = self.events.clone();
        let wake = self.wake.clone();
        let mut on_event = |e: TuneEvent| {
            let _ = events.send(Event::Tune(e));
            wake();
        };
        let flag = self.flag.clone();
        let cancel = move || flag.load(Ordering::SeqCst);
        let base = l.path.display().to_string();
        let job = TuneJob { model: &l.model, base_name: &base, data: &data, out: &out, config: &config, resume, peers: &peers };
        let result = tune(&job, &l.device.device, &mut on_event, &cancel);
        match result {
            Ok(outcome) => self.send(Event::TuneFinished(outcome)),
            Err(e) => self.send(Event::Failed(e.to_string())),
        }
    }
}

/// Paints the cells not generated yet mid-grey: the decoder turns their zero latents into
/// arbitrary colours that look like part of the picture.
pub fn neutral_cells(img: &mut vgt_model::image_io::Rgb8, cells: &[Option<Vec<f32>>], h: usize, w: usize) {
    let (iw, ih) = (img.width as usize, img.height as usize);
    for (i, cell) in cells.iter().enumerate() {
        if cell.is_some() {
            continue;
        }
        let (r, c) = (i / w.max(1), i % w.max(1));
        for y in r * ih / h.max(1)..(r + 1) * ih / h.max(1) {
            for x in c * iw / w.max(1)..(c + 1) * iw / w.max(1) {
                let at = 3 * (y * iw + x);
                img.pixels[at..at + 3].copy_from_slice(&[128, 128, 128]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ungenerated_cells_turn_grey() {
        let mut img = vgt_model::image_io::Rgb8 { width: 4, height: 4, pixels: vec![7; 48] };
        // A 2×2 grid: only the top-left cell is drawn.
        neutral_cells(&mut img, &[Some(vec![0.0]), None, None, None], 2, 2);
        let px = |x: usize, y: usize| &img.pixels[3 * (y * 4 + x)..3 * (y * 4 + x) + 3];
        assert_eq!(px(1, 1), &[7, 7, 7]);
        assert_eq!(px(2, 0), &[128, 128, 128]);
        assert_eq!(px(0, 3), &[128, 128, 128]);
        assert_eq!(px(3, 3), &[128, 128, 128]);
    }
}
