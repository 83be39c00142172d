//! Our WGSL kernels (`vgt-shaders`) against the same computation written with ordinary burn
//! tensor ops, on wgpu (lavapipe in CI), at odd sizes: one row, rows and columns that are not
//! multiples of the workgroup or row tile, long rows; both weight layouts for the linear kernel.
//! The kernels are inference-only: with gradients on, the composed path runs (tested below).

use vgt_model::burn::tensor::activation::silu;
use vgt_model::burn::tensor::{Device, Tensor, TensorData};
use vgt_model::config::FlowHeadConfig;
use vgt_model::flow_head::FlowHead;
use vgt_model::rng::Seeded;
use vgt_model::sampler::{SampleOptions, sample};
use vgt_shaders::{Modulation, SdeStep};
use vgt_tests::{compare, test_devices, values};

fn wgpu() -> Option<Device> {
    test_devices().into_iter().find(|d| d.kind == vgt_model::device::BackendKind::Wgpu).map(|d| d.device)
}

/// Deterministic values in [-scale, scale) (a small LCG: independent of the code under test).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(random(n, seed, 1.0), shape), device)
}

fn check<const D: usize>(name: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    if let Some(msg) = compare(name, &values(got), &values(want), tol, tol) {
        panic!("{msg}");
    }
}

/// A weight `[k, n]`: contiguous, or the transposed view of a contiguous `[n, k]`.
fn weight(k: usize, n: usize, transposed: bool, seed: u64, device: &Device) -> Tensor<2> {
    if transposed { tensor([n, k], seed, device).transpose() } else { tensor([k, n], seed, device) }
}

// K and N multiples of 4 (the kernel reads four at a time); M and N not multiples of the row
// tile (4) or of a workgroup's 256 columns.
const LINEAR_SIZES: [[usize; 3]; 6] = [[1, 4, 4], [1, 36, 68], [13, 96, 132], [4, 64, 256], [33, 300, 260], [2, 1536, 1540]];

#[test]
fn linear_matches_matmul_plus_bias_and_silu() {
    let Some(device) = wgpu() else { return };
    for [m, k, n] in LINEAR_SIZES {
        // A transposed weight (a loaded checkpoint's view) is copied contiguous first.
        for transposed in [false, true] {
            let x = tensor([m, k], 1, &device);
            let w = weight(k, n, transposed, 2, &device);
            let b = tensor([n], 3, &device);
            let reference = x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>();
            let name = format!("linear m{m} k{k} n{n} transposed {transposed}");
            // Sums of k products of values in [-1, 1): the tolerance grows with sqrt(k).
            let tol = 2e-6 * (k as f32).sqrt() + 1e-6;
            check(&name, vgt_shaders::linear(x.clone(), w.clone(), b.clone(), false), reference.clone(), tol);
            check(&format!("{name} silu"), vgt_shaders::linear(x.clone(), w.clone(), b, true), silu(reference), tol);
            check(&format!("{name} no bias"), vgt_shaders::linear_opt_bias(x.clone(), w.clone(), None), x.matmul(w), tol);
        }
    }
}

#[test]
fn gated_linear_matches_the_adaln_residual() {
    let Some(device) = wgpu() else { return };
    for [m, k, n] in LINEAR_SIZES {
        let x = tensor([m, k], 4, &device);
        let w = weight(k, n, true, 5, &device);
        let b = tensor([n], 6, &device);
        let modulation = tensor([m, 3 * n], 7, &device);
        let residual = tensor([m, n], 8, &device);
        let gate = modulation.clone().narrow(1, 2 * n, n);
        let reference = residual.clone() + gate * (x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>());
        let got = vgt_shaders::linear_gated(x, w, b, modulation, 2 * n, residual);
        check(&format!("gated m{m} k{k} n{n}"), got, reference, 2e-6 * (k as f32).sqrt() + 1e-6);
    }
}

/// LayerNorm (biased variance) then `·(1 + scale) + shift`, written with tensor ops.
fn ln_modulate_reference(x: Tensor<2>, modulation: Tensor<2>, affine: Option<(Tensor<1>, Tensor<1>)>, m: Modulation) -> Tensor<2> {
    let [_, d] = x.dims();
    let (var, mean) = x.clone().var_mean_bias(1);
    let mut normed = (x - mean) / (var + m.eps as f64).sqrt();
    if let Some((w, b)) = affine {
        normed = normed * w.unsqueeze::<2>() + b.unsqueeze::<2>();
    }
    let shift = modulation.clone().narrow(1, m.shift, d);
    let scale = modulation.narrow(1, m.scale, d);
    normed * (scale + 1.0) + shift
}

#[test]
fn ln_modulate_matches_layer_norm_and_modulation() {
    let Some(device) = wgpu() else { return };
    for [rows, d] in [[1, 2], [3, 5], [17, 63], [2, 64], [5, 65], [2, 4099]] {
        for affine in [false, true] {
            let x = tensor([rows, d], 9, &device) * 3.0 + 0.5;
            let modulation = tensor([rows, 3 * d], 10, &device);
            let params = affine.then(|| (tensor([d], 11, &device), tensor([d], 12, &device)));
            // The block layout (shift at 0, scale at d) and the final layer's (gate absent).
            let m = Modulation { eps: 1e-6, shift: 0, scale: d };
            let reference = ln_modulate_reference(x.clone(), modulation.clone(), params.clone(), m);
            let got = vgt_shaders::ln_modulate(x, modulation, params, m);
            check(&format!("ln_modulate rows {rows} d {d} affine {affine}"), got, reference, 2e-5);
        }
    }
}

#[test]
fn sde_step_matches_the_composed_update() {
    let Some(device) = wgpu() else { return };
    for [m, d] in [[1, 32], [5, 33], [70, 32], [1100, 64]] {
        for guided in [false, true] {
            let rows = if guided { 2 * m } else { m };
            let x = tensor([m, d], 13, &device);
            let v = tensor([rows, d], 14, &device);
            let noise = tensor([m, d], 15, &device);
            let step = SdeStep { t: 0.3310345, dt: 0.0331034, cfg: 4.5 };
            let vg = if guided {
                let vc = v.clone().narrow(0, 0, m);
                let vu = v.clone().narrow(0, m, m);
                vu.clone() + (vc - vu) * step.cfg
            } else {
                v.clone()
            };
            let one_t = 1.0 - step.t;
            let var = one_t * one_t - step.t * -1.0 * one_t;
            let s = (vg.clone() * step.t - x.clone()) / var;
            let f = vg + s * one_t;
            let reference = x.clone() + f * step.dt + noise.clone() * step.dt.sqrt() * (2.0 * one_t).sqrt();
            let got = vgt_shaders::sde_step(x, v, noise, step);
            check(&format!("sde m {m} d {d} guided {guided}"), got, reference, 1e-5);
        }
    }
}

fn head_config() -> FlowHeadConfig {
    // Widths that are not multiples of the workgroup (64) or of its 256 linear columns.
    FlowHeadConfig { input_dim: 32, cond_dim: 24, dim: 72, layers: 3, frequency_embedding_size: 16 }
}

/// The flow head and the whole sampler through the kernels equal the composed path; the switch
/// and autodiff turn the kernels off; the CPU backend never takes them.
#[test]
fn flow_head_and_sampler_fused_equal_composed() {
    let Some(device) = wgpu() else { return };
    let head = FlowHead::new(&head_config(), &device);
    let net = &head.net;
    for rows in [1, 7, 32] {
        let x = tensor([rows, 32], 16, &device);
        let y = tensor([rows, 72], 17, &device);
        assert!(net.fusable(&[&x, &y]), "f32 inputs on wgpu take the fused path");
        let fused = net.forward_with_condition(x.clone(), y.clone());
        vgt_shaders::set_enabled(false);
        let composed = net.forward_composed(x, y);
        vgt_shaders::set_enabled(true);
        check(&format!("flow head rows {rows}"), fused, composed, 1e-4);
    }
    let c = tensor([2 * 5, 24], 18, &device);
    let opts = SampleOptions { cfg: 4.5, num_steps: 6, t_bf16: false };
    let fused = sample(net, c.clone(), opts, &mut Seeded::new(7), false).x;
    vgt_shaders::set_enabled(false);
    let off = net.fusable(&[&c]);
    let composed = sample(net, c.clone(), opts, &mut Seeded::new(7), false).x;
    vgt_shaders::set_enabled(true);
    assert!(!off, "--no-custom-kernels turns the fused path off");
    check("sampler, 6 steps, CFG 4.5", fused, composed, 1e-4);

    let grad = tensor([2, 24], 18, &device.clone().autodiff()).require_grad();
    assert!(!net.fusable(&[&grad]), "tensors tracking gradients take the composed path");
    let cpu = Device::flex();
    assert!(!FlowHead::new(&head_config(), &cpu).net.fusable(&[&Tensor::<2>::zeros([2, 24], &cpu)]));
}
