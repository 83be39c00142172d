//! Data-parallel tuning (issue 25): a LoRA run whose step micro-batches are shared between two
//! CUDA devices (gradients all-reduced by burn's collective operations, NCCL) ends where the same
//! run on one device ends. It needs a build with `--features vgt-app/cuda` and two CUDA devices;
//! anywhere else it says why it did not run, and passes.

use vgt_model::burn::tensor::Device;
use vgt_model::train::lora::Adapter;
use vgt_model::train::run::{TuneConfig, TuneJob, tune};
use vgt_model::weights::source;
use vgt_tests::*;

#[test]
fn data_parallel_tuning_matches_one_device() {
    let devices = match vgt_model::device::cuda_devices(2) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("note: data-parallel training not run here (it needs two CUDA devices): {e}");
            return;
        }
    };
    let model = source::open(&fixtures_dir().join("internvl-tiny")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (photo, caption) in [("skimage_astronaut.png", "a sks astronaut"), ("skimage_coffee.png", "a cup of coffee"), ("skimage_chelsea.png", "a sks cat")] {
        std::fs::copy(data_dir().join("images").join(photo), data.join(photo)).unwrap();
        std::fs::write(data.join(photo).with_extension("txt"), caption).unwrap();
    }
    let mut cfg = TuneConfig::new(24);
    (cfg.steps, cfg.grad_accum, cfg.batch, cfg.lr, cfg.warmup) = (3, 2, 2, 1e-3, 1);
    (cfg.sample_every, cfg.save_every) = (0, 100);
    let run = |name: &str, peers: &[Device]| -> Adapter {
        let out = tmp.path().join(name);
        let job = TuneJob { model: &model, base_name: "internvl-tiny", data: &data, out: &out, config: &cfg, resume: false, peers };
        tune(&job, &devices[0].device, &mut |_| {}, &|| false).unwrap();
        Adapter::load(&out.join("adapter")).unwrap()
    };
    let one = run("one", &[]);
    let two = run("two", &[devices[1].device.clone()]);
    assert_eq!(one.lora.keys().collect::<Vec<_>>(), two.lora.keys().collect::<Vec<_>>());
    for (key, (a1, b1)) in &one.lora {
        let (a2, b2) = &two.lora[key];
        for (what, x, y) in [("A", a1, a2), ("B", b1, b2)] {
            let (x, y) = (x.to_f32(), y.to_f32());
            assert_eq!(compare(&format!("{key} {what}"), &y, &x, 1e-5, 1e-3), None, "two devices drift from one");
        }
    }
    assert_eq!(one.full.keys().collect::<Vec<_>>(), two.full.keys().collect::<Vec<_>>());
    for (key, t) in &one.full {
        assert_eq!(compare(key, &two.full[key].to_f32(), &t.to_f32(), 1e-5, 1e-3), None, "two devices drift from one");
    }
}
