//! Settings that persist between runs (a JSON file in the user's config folder).

use std::path::{Path, PathBuf};

use super::Workspace;

/// Everything the app remembers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: Option<PathBuf>,
    pub backend: String,
    /// Our fused WGSL kernels on wgpu (off = composed tensor ops only).
    pub custom_kernels: bool,
    pub workspace: Workspace,
    pub output_dir: PathBuf,
    pub prompt: String,
    pub negative: String,
    pub seed: u64,
    /// A new seed for every generation.
    pub random_seed: bool,
    pub cfg: f64,
    pub steps: usize,
    pub acc_ratio: usize,
    pub sequential: bool,
    pub constant_cfg: bool,
    pub size: usize,
    pub images: usize,
    /// Adapters known to the Generate workspace: (path, weight, enabled).
    pub loras: Vec<(PathBuf, f64, bool)>,
    pub tune_data: String,
    /// The folder that holds the runs: each Start makes a new run folder in it, named by time.
    pub tune_out: String,
    pub tune_rank: usize,
    pub tune_alpha: f64,
    pub tune_steps: usize,
    pub tune_lr: f64,
    pub tune_batch: usize,
    pub tune_sample_every: usize,
    pub tune_save_every: usize,
    pub tune_trigger: String,
    /// Adapters on the flow head too (needed to draw a new kind of thing).
    pub tune_flow_head: bool,
    pub tune_embeddings: bool,
    /// Preservation folder (empty: none) and the weight of its loss.
    pub tune_preserve: String,
    pub tune_preserve_weight: f64,
}

/// `~/vgt-studio/NAME` (or `./NAME` without a home folder): where images and runs go by default,
/// independent of the folder the app was started from.
fn home_dir(name: &str) -> PathBuf {
    std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).map(|h| PathBuf::from(h).join("vgt-studio").join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// What `Settings::model` holds for the embedded shapes model (its unpacked folder is a cache
/// path that changes with every new build of the model).
pub const EMBEDDED: &str = "embedded:shapes";

impl Default for Settings {
    fn default() -> Self {
        // Generation defaults are the command line's (one source: `GenerateOptions::default`);
        // tuning's are the recipe that learns (`TuneConfig::recommended`).
        let g = vgt_model::generate::GenerateOptions::default();
        let t = vgt_model::train::run::TuneConfig::recommended(0);
        Self {
            model: None,
            backend: "auto".into(),
            custom_kernels: true,
            workspace: Workspace::Generate,
            output_dir: home_dir("images"),
            prompt: "a red circle above a blue square".into(),
            negative: String::new(),
            seed: 0,
            random_seed: false,
            cfg: g.cfg,
            steps: g.num_steps,
            acc_ratio: g.acc_ratio,
            sequential: false,
            constant_cfg: false,
            size: 0,
            images: 1,
            loras: Vec::new(),
            tune_data: String::new(),
            tune_out: home_dir("tune").display().to_string(),
            tune_rank: t.lora.rank,
            tune_alpha: t.lora.alpha,
            tune_steps: t.steps,
            tune_lr: t.lr,
            tune_batch: t.batch,
            tune_sample_every: t.sample_every,
            tune_save_every: t.save_every,
            tune_trigger: t.trigger.clone(),
            tune_flow_head: t.lora.flow_head_lora,
            tune_embeddings: t.lora.train_embeddings,
            tune_preserve: String::new(),
            tune_preserve_weight: 4.0,
        }
    }
}

/// `$XDG_CONFIG_HOME/vgt-studio/settings.json` (or `~/.config/…`); `None` without a home.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))?;
    Some(base.join("vgt-studio").join("settings.json"))
}

impl Settings {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
