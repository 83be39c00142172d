//! A mutation fuzzer over the checkpoint and configuration readers (issue 22): the pickle
//! machine, the zip/`.pth` reader, safetensors, config inference from tensor shapes, and
//! `config.json` validation followed by building the networks; and (issue 29) PEFT adapters
//! (read, then merged into the fixture model), sharded-checkpoint indexes (no shard may be read
//! from outside the index's folder) and the app's `settings.json`. Every input is a mutant of
//! the fixture models' real files. A panic, a case that runs longer than `HANG` or an allocation that
//! takes the process past 2 GiB fails the run.
//!
//! `VGT_FUZZ_SECONDS` (default 20) sets the length of the run, `VGT_FUZZ_SEED` its first seed;
//! a failing case prints the seed that reproduces it (`VGT_FUZZ_SEED=S VGT_FUZZ_SECONDS=0`
//! runs exactly that case).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vgt_model::config::VgtConfig;
use vgt_model::weights::pth::{self, DictChoice};
use vgt_model::weights::source::{self, Shapes};
use vgt_app::gui::settings::Settings;
use vgt_model::train::lora::Adapter;
use vgt_model::weights::{RawTensor, TensorMap, pickle, st, zip};
use vgt_tests::craft::stored_zip;
use vgt_tests::fixtures_dir;

/// The most the process may hold at once.
const LIMIT: usize = 2 << 30;
const HANG: Duration = Duration::from_secs(20);

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, refusing (null, so the process reports the failed allocation and
/// aborts) anything that would hold more than [`LIMIT`].
struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > LIMIT {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
            if now > LIMIT {
                LIVE.fetch_sub(grow, Ordering::Relaxed);
                return std::ptr::null_mut();
            }
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// splitmix64: every case's mutations follow from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[u64] = &[0, 1, 2, 3, 7, 8, 255, 256, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 62, i64::MAX as u64, u64::MAX, 9_150_747_060_186_627_966];

/// Applies 1–8 random byte-level mutations.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let n = b.len().max(1);
        match rng.below(9) {
            0 => {
                let i = rng.below(n).min(b.len().saturating_sub(1));
                if !b.is_empty() {
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = [0u8, 0xff, 0x7f, 0x80, b'(', b')', b']', b'}', b'h', b'q', b'a', b'R', b'.'][rng.below(13)];
                }
            }
            2 => {
                if b.len() >= 8 {
                    let i = rng.below(b.len() - 7);
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { (v as u32 as u64).to_le_bytes() };
                    let w = [1, 2, 4, 8][rng.below(4)];
                    b[i..i + w].copy_from_slice(&bytes[..w]);
                }
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let k = 1 + rng.below(16);
                let ins: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
                b.splice(i..i, ins);
            }
            4 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    let k = (1 + rng.below(64)).min(b.len() - i);
                    b.drain(i..i + k);
                }
            }
            5 => {
                if !b.is_empty() {
                    // Duplicate a range (repeats opcodes, memo references, records).
                    let i = rng.below(b.len());
                    let k = (1 + rng.below(256)).min(b.len() - i);
                    let piece = b[i..i + k].to_vec();
                    let at = rng.below(b.len() + 1);
                    for _ in 0..1 + rng.below(4) {
                        b.splice(at..at, piece.iter().copied());
                    }
                }
            }
            6 => {
                let keep = rng.below(b.len() + 1);
                b.truncate(keep);
            }
            7 => {
                // Replace a decimal number (JSON headers and configs) with an interesting one.
                let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit())).collect();
                if !digits.is_empty() {
                    let start = digits[rng.below(digits.len())];
                    let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                    let v = INTERESTING[rng.below(INTERESTING.len())].to_string();
                    b.splice(start..end, v.into_bytes());
                }
            }
            _ => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
        }
    }
    b
}

/// What the fuzzer starts from: the fixture models' real files (both families).
struct Corpus {
    pths: Vec<Vec<u8>>,
    pickles: Vec<Vec<u8>>,
    safetensors: Vec<Vec<u8>>,
    config_jsons: Vec<Vec<u8>>,
    shapes: Vec<Shapes>,
    /// Per family: the model's tensors, an adapter's `adapter_config.json` and
    /// `adapter_model.safetensors` for it.
    adapters: Vec<(TensorMap, Vec<u8>, Vec<u8>)>,
    /// A sharded checkpoint's index and its shard (one of `safetensors`).
    index: Vec<u8>,
    /// A safetensors file of one tensor, `decoy.outside`, put where only an escaping shard name
    /// leads.
    decoy: Vec<u8>,
    settings: Vec<u8>,
    /// Where the cases write their files.
    scratch: tempfile::TempDir,
}

/// An adapter of rank 2 on the first layer's `q_proj` and `v_proj` of `tensors`, saved and read
/// back as files.
fn adapter_files(tensors: &TensorMap, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let mut lora = std::collections::BTreeMap::new();
    for name in ["q_proj", "v_proj"] {
        let key = format!("lmm.language_model.model.layers.0.self_attn.{name}.weight");
        let [out, inp] = tensors[&key].shape[..] else { panic!("{key} is a matrix") };
        let a: Vec<f32> = (0..2 * inp).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let b: Vec<f32> = (0..out * 2).map(|i| ((i % 5) as f32 - 2.0) * 0.01).collect();
        lora.insert(key, (RawTensor::from_f32(vec![2, inp], &a), RawTensor::from_f32(vec![out, 2], &b)));
    }
    let adapter = Adapter { rank: 2, alpha: 4.0, lora, full: TensorMap::new(), settings: None };
    adapter.save(dir, "fixture").unwrap();
    (std::fs::read(dir.join("adapter_config.json")).unwrap(), std::fs::read(dir.join("adapter_model.safetensors")).unwrap())
}

fn data_pkl(archive: &[u8]) -> Vec<u8> {
    let entries = zip::read_entries(archive).expect("fixture zip");
    let e = entries.iter().find(|e| e.name.ends_with("data.pkl")).expect("data.pkl");
    archive[e.offset..e.offset + e.len].to_vec()
}

fn corpus() -> Corpus {
    let tmp = tempfile::tempdir().unwrap();
    let saved = Settings { loras: vec![("runs/a/adapter".into(), 0.7, true)], prompt: "a red circle".into(), ..Settings::default() };
    let settings = serde_json::to_vec_pretty(&saved).unwrap();
    let mut c = Corpus {
        pths: Vec::new(),
        pickles: Vec::new(),
        safetensors: Vec::new(),
        config_jsons: Vec::new(),
        shapes: Vec::new(),
        adapters: Vec::new(),
        index: Vec::new(),
        decoy: Vec::new(),
        settings,
        scratch: tempfile::tempdir().unwrap(),
    };
    for model in ["internvl-tiny", "qwen25vl-tiny"] {
        let tiny = fixtures_dir().join(model);
        let pths: Vec<Vec<u8>> = ["vgt_ae.pth", "ar.pth"].iter().map(|f| std::fs::read(tiny.join(f)).unwrap()).collect();
        c.pickles.extend(pths.iter().map(|p| data_pkl(p)));
        c.pths.extend(pths);
        let loaded = source::open(&tiny).unwrap();
        let conv = tmp.path().join(model);
        source::save_converted(&conv, &loaded.config, &TensorMap::new(), &tiny.join("vlm/tokenizer.json"), vgt_model::weights::DType::F32).unwrap();
        c.config_jsons.push(std::fs::read(conv.join("config.json")).unwrap());
        // A small safetensors file of the real layout (the VLM's is large; its header is what matters).
        let few: TensorMap = loaded.tensors.iter().filter(|(k, _)| k.contains("layers.0.") || k.contains("blocks.0.") || k.contains("max_metaquery")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let st_path = tmp.path().join(format!("{model}.safetensors"));
        st::save(&st_path, &few, vgt_model::weights::DType::F16, &Default::default()).unwrap();
        c.safetensors.push(std::fs::read(&st_path).unwrap());
        c.shapes.push(source::shapes_of(&loaded.tensors));
        let (cfg, st_bytes) = adapter_files(&loaded.tensors, &tmp.path().join(format!("{model}-adapter")));
        c.adapters.push((loaded.tensors, cfg, st_bytes));
        if c.index.is_empty() {
            let few = st::from_bytes(c.safetensors[0].clone()).unwrap();
            let map: serde_json::Map<String, serde_json::Value> = few.keys().map(|k| (k.clone(), "model-00001-of-00001.safetensors".into())).collect();
            c.index = serde_json::to_vec_pretty(&serde_json::json!({"metadata": {"total_size": 1}, "weight_map": map})).unwrap();
            let decoy: TensorMap = [("decoy.outside".to_string(), RawTensor::from_f32(vec![2], &[1.0, 2.0]))].into_iter().collect();
            let path = tmp.path().join("decoy.safetensors");
            st::save(&path, &decoy, vgt_model::weights::DType::F32, &Default::default()).unwrap();
            c.decoy = std::fs::read(&path).unwrap();
        }
    }
    c
}

/// Reads every tensor's values (where broadcast views and bad offsets would bite).
fn touch(map: &TensorMap) {
    for t in map.values() {
        let v = t.to_f32();
        assert_eq!(v.len(), t.numel());
    }
}

/// Builds the networks for a configuration that validated (lazily: no weights are allocated).
fn build(c: &VgtConfig) {
    let dev = vgt_model::device::cpu_device().device;
    let net = vgt_model::ar::Vgt::new(c, &dev);
    let params = vgt_model::weights::apply::expected_params(&net);
    assert!(!params.is_empty());
}

/// Text mutations that aim at paths: separators, parent folders, absolute paths, drives.
const PATHS: &[&str] = &["../", "/", "\\", "..", "/etc/passwd", "C:", "./", "\u{0}", "~/", "%2e%2e/"];

/// [`mutate`], sometimes with a path fragment spliced into the text as well.
fn mutate_text(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = mutate(rng, input);
    if rng.below(2) == 0 {
        let quotes: Vec<usize> = (0..b.len()).filter(|&i| b[i] == b'"').collect();
        if !quotes.is_empty() {
            let at = quotes[rng.below(quotes.len())] + 1;
            let piece = PATHS[rng.below(PATHS.len())].as_bytes().to_vec();
            b.splice(at.min(b.len())..at.min(b.len()), piece);
        }
    }
    b
}

/// The second family of targets (issue 29), run beside [`run_case`]'s for a third of the seeds
/// from a generator of their own, so that every seed of the first family still replays the
/// same case.
fn run_case_files(seed: u64, c: &Corpus) {
    let mut rng = Rng(seed ^ 0x5eed_f11e_5000_0000);
    if rng.below(3) != 0 {
        return;
    }
    let dir = c.scratch.path().join(format!("case-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    match rng.below(3) {
        0 => {
            let (tensors, cfg, weights) = &c.adapters[rng.below(c.adapters.len())];
            let (cfg, weights) = match rng.below(3) {
                0 => (mutate_text(&mut rng, cfg), weights.clone()),
                1 => (cfg.clone(), mutate(&mut rng, weights)),
                _ => (mutate_text(&mut rng, cfg), mutate(&mut rng, weights)),
            };
            std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
            if let Ok(adapter) = Adapter::load(&dir) {
                let mut merged = tensors.clone();
                let weight = [1.0, 0.5, -1.0, 10.0][rng.below(4)];
                if adapter.merge_into(&mut merged, weight).is_ok() {
                    // What a merge accepts is finite: a black image cannot come from it.
                    for key in adapter.lora.keys() {
                        assert!(merged[key].to_f32().iter().all(|v| v.is_finite()), "merging made {key} non-finite");
                    }
                }
            }
        }
        1 => {
            let inner = dir.join("model");
            std::fs::create_dir_all(&inner).unwrap();
            std::fs::write(inner.join("model-00001-of-00001.safetensors"), &c.safetensors[0]).unwrap();
            // A shard outside the folder, which no index may reach.
            std::fs::write(dir.join("model-00001-of-00001.safetensors"), &c.decoy).unwrap();
            let index = inner.join("model.safetensors.index.json");
            std::fs::write(&index, mutate_text(&mut rng, &c.index)).unwrap();
            if let Ok(map) = st::load_sharded(&index) {
                assert!(!map.contains_key("decoy.outside"), "a shard outside the model folder was read");
                touch(&map);
            }
        }
        _ => {
            let path = dir.join("settings.json");
            std::fs::write(&path, mutate_text(&mut rng, &c.settings)).unwrap();
            let loaded = Settings::load(&path);
            assert!(serde_json::to_vec(&loaded.settings).is_ok());
            if loaded.note.is_some() {
                assert!(!path.exists() && vgt_app::gui::settings::bad_path(&path).exists(), "a reset keeps the old file aside");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One case: which target, on which mutant, follows from `seed`.
fn run_case(seed: u64, c: &Corpus) {
    let mut rng = Rng(seed);
    match rng.below(6) {
        0 => {
            let p = &c.pickles[rng.below(c.pickles.len())];
            let _ = pickle::load(&mutate(&mut rng, p));
        }
        1 => {
            let p = &c.pths[rng.below(c.pths.len())];
            if let Ok(map) = pth::from_bytes(mutate(&mut rng, p), DictChoice::PreferEma) {
                touch(&map);
            }
        }
        2 => {
            // A valid zip around a mutated pickle: reaches the tensor checks.
            let i = rng.below(c.pths.len());
            let pkl = mutate(&mut rng, &c.pickles[i]);
            let archive = &c.pths[i];
            let entries = zip::read_entries(archive).unwrap();
            let mut files: Vec<(String, Vec<u8>)> = entries.iter().map(|e| (e.name.clone(), archive[e.offset..e.offset + e.len].to_vec())).collect();
            for f in files.iter_mut().filter(|f| f.0.ends_with("data.pkl")) {
                f.1 = pkl.clone();
            }
            let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            if let Ok(map) = pth::from_bytes(stored_zip(&refs), DictChoice::PreferEma) {
                touch(&map);
            }
        }
        3 => {
            let s = &c.safetensors[rng.below(c.safetensors.len())];
            if let Ok(map) = st::from_bytes(mutate(&mut rng, s)) {
                touch(&map);
            }
        }
        4 => {
            let json = &c.config_jsons[rng.below(c.config_jsons.len())];
            let text = mutate(&mut rng, json);
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text) else { return };
            let Ok(config) = serde_json::from_value::<VgtConfig>(json["config"].clone()) else { return };
            if config.validate().is_ok() {
                build(&config);
            }
        }
        _ => {
            // Shapes as a checkpoint might give them: dimensions changed, ranks changed, keys gone.
            let mut shapes = c.shapes[rng.below(c.shapes.len())].clone();
            let keys: Vec<String> = shapes.keys().cloned().collect();
            for _ in 0..1 + rng.below(4) {
                let k = &keys[rng.below(keys.len())];
                match rng.below(4) {
                    0 => {
                        shapes.remove(k);
                    }
                    1 => {
                        let s = shapes.entry(k.clone()).or_default();
                        if !s.is_empty() {
                            let i = rng.below(s.len());
                            s[i] = INTERESTING[rng.below(INTERESTING.len())] as usize;
                        }
                    }
                    2 => {
                        shapes.entry(k.clone()).or_default().pop();
                    }
                    _ => {
                        shapes.entry(k.clone()).or_default().push(rng.below(3));
                    }
                }
            }
            if let Ok(config) = source::infer_config(None, &shapes) {
                build(&config);
            }
        }
    }
}

/// Issue 36: the case that found `infer_config` multiplying a Qwen window size past `usize`.
#[test]
fn the_qwen_window_size_overflow_stays_fixed() {
    let c = corpus();
    run_case(7_435_899, &c);
}

#[test]
fn fuzz_the_loaders() {
    let seconds: u64 = std::env::var("VGT_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let first: u64 = std::env::var("VGT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    eprintln!("fuzz: starting from VGT_FUZZ_SEED={first} for {seconds} s");
    let c = corpus();
    // Panics are failures; keep their messages off the log while cases are being tried.
    let current = std::sync::Arc::new(AtomicU64::new(first));
    let started_at = std::sync::Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    {
        let (current, started_at) = (current.clone(), started_at.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let since = clock.elapsed().as_millis() as u64 - started_at.load(Ordering::Relaxed);
                if since > HANG.as_millis() as u64 {
                    eprintln!("fuzz: case VGT_FUZZ_SEED={} ran for more than {} s: a hang", current.load(Ordering::Relaxed), HANG.as_secs());
                    std::process::abort();
                }
            }
        });
    }
    let end = clock + Duration::from_secs(seconds);
    let mut seed = first;
    let mut cases = 0u64;
    loop {
        current.store(seed, Ordering::Relaxed);
        started_at.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| {
            run_case(seed, &c);
            run_case_files(seed, &c);
        }))
        .is_err()
        {
            panic!("fuzz: case VGT_FUZZ_SEED={seed} panicked (rerun with VGT_FUZZ_SECONDS=0 to see it alone)");
        }
        cases += 1;
        seed += 1;
        if Instant::now() >= end {
            break;
        }
    }
    eprintln!(
        "fuzz: {cases} cases in {:.1} s from seed {first}, no panic, hang or allocation past {} GiB (peak {} MiB)",
        clock.elapsed().as_secs_f64(),
        LIMIT >> 30,
        PEAK.load(Ordering::Relaxed) >> 20
    );
}
