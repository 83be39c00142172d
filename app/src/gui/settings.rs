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

/// Settings read from disk, and what could not be kept.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// What was reset and why (for the window); `None` when the file was read whole.
    pub note: Option<String>,
}

impl Settings {
    /// Reads the settings, keeping every field that parses: a wrong or missing field falls back
    /// to its default alone, and a file that cannot be read at all (not JSON, not an object, a
    /// FIFO, too large) gives the defaults. Whenever something was reset, the file is first
    /// kept as `settings.json.bad` (so the next save cannot lose it) and the note says what.
    pub fn load(path: &Path) -> Loaded {
        match vgt_model::fsutil::exists(path) {
            Ok(false) => return Loaded { settings: Settings::default(), note: None },
            Ok(true) => {}
            Err(e) => return Self::recovered(path, Settings::default(), vec![format!("cannot read it ({})", vgt_model::fsutil::describe_io(&e))]),
        }
        let value = vgt_model::fsutil::read_regular_string(path)
            .map_err(|e| vgt_model::fsutil::describe_io(&e))
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("not valid JSON: {e}")));
        let fields = match value {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(other) => return Self::recovered(path, Settings::default(), vec![format!("expected an object of settings, found {}", kind(&other))]),
            Err(why) => return Self::recovered(path, Settings::default(), vec![format!("cannot read it ({why})")]),
        };
        let (settings, reset) = Self::field_by_field(fields);
        if reset.is_empty() { Loaded { settings, note: None } } else { Self::recovered(path, settings, reset) }
    }

    /// The defaults with every field of `fields` that parses on its own; the fields that did
    /// not, with why.
    fn field_by_field(fields: serde_json::Map<String, serde_json::Value>) -> (Settings, Vec<String>) {
        let serde_json::Value::Object(mut kept) = serde_json::to_value(Settings::default()).unwrap_or_default() else {
            return (Settings::default(), vec!["the defaults could not be encoded".into()]);
        };
        let mut reset = Vec::new();
        for (name, value) in fields {
            if !kept.contains_key(&name) {
                continue;
            }
            let mut trial = kept.clone();
            trial.insert(name.clone(), value.clone());
            match serde_json::from_value::<Settings>(serde_json::Value::Object(trial)) {
                Ok(_) => {
                    kept.insert(name, value);
                }
                Err(e) => reset.push(format!("`{name}` ({value} is not a valid value: {e})")),
            }
        }
        let settings = serde_json::from_value(serde_json::Value::Object(kept)).unwrap_or_default();
        (settings, reset)
    }

    /// Moves the unreadable file aside as `settings.json.bad` and says what was reset.
    fn recovered(path: &Path, settings: Settings, reset: Vec<String>) -> Loaded {
        let bad = bad_path(path);
        let kept = match std::fs::rename(path, &bad) {
            Ok(()) => format!("the old file is kept as {}", bad.display()),
            Err(e) => format!("the old file could not be kept as {} ({e})", bad.display()),
        };
        let note = format!("Settings in {}: reset to defaults: {}; {kept}", path.display(), reset.join("; "));
        log::warn!("{note}");
        Loaded { settings, note: Some(note) }
    }

    /// Writes atomically (temporary file, synced, then renamed).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        vgt_model::fsutil::write_bytes_atomic(path, &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// `settings.json.bad` beside `settings.json`.
pub fn bad_path(path: &Path) -> PathBuf {
    vgt_model::fsutil::with_suffix(path, ".bad")
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 29 item 8: one wrong field (`"images": "four"`) resets that field alone, says so,
    /// and the file is kept as `settings.json.bad` before anything overwrites it.
    #[test]
    fn one_bad_field_resets_only_itself_and_the_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let text = r#"{"prompt": "my own prompt", "images": "four", "cfg": 7.5, "steps": -3, "future_field": 1}"#;
        std::fs::write(&path, text).unwrap();
        let loaded = Settings::load(&path);
        assert_eq!(loaded.settings.prompt, "my own prompt");
        assert_eq!(loaded.settings.cfg, 7.5);
        let defaults = Settings::default();
        assert_eq!((loaded.settings.images, loaded.settings.steps), (defaults.images, defaults.steps));
        let note = loaded.note.expect("a note");
        assert!(note.contains("`images`") && note.contains("`steps`") && !note.contains("`prompt`"), "{note}");
        assert!(note.contains("settings.json.bad"), "{note}");
        assert_eq!(std::fs::read_to_string(bad_path(&path)).unwrap(), text);
        assert!(!path.exists());
        // A file that reads whole gives no note and stays where it is.
        loaded.settings.save(&path).unwrap();
        let again = Settings::load(&path);
        assert!(again.note.is_none() && path.exists());
        assert_eq!(again.settings, loaded.settings);
    }

    /// Empty, not JSON, not an object, a FIFO: defaults, a note, the file kept, no blocking.
    #[test]
    fn an_unreadable_settings_file_gives_defaults_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        for text in ["", "{\"prompt\": ", "[1, 2]", "null"] {
            std::fs::write(&path, text).unwrap();
            let loaded = Settings::load(&path);
            assert_eq!(loaded.settings, Settings::default(), "{text:?}");
            assert!(loaded.note.is_some(), "{text:?}");
            assert_eq!(std::fs::read_to_string(bad_path(&path)).unwrap(), text);
        }
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let loaded = Settings::load(&path);
        assert!(loaded.note.as_deref().is_some_and(|n| n.contains("a FIFO")), "{:?}", loaded.note);
        assert!(Settings::load(&dir.path().join("absent.json")).note.is_none());
    }
}
