//! The generation loop of VGT-AR (spec §3.8): prefill, then one LLM call and one head sampling
//! per group, with parallel decoding, CFG schedules and each family's position rule.

use burn::tensor::{Int, Tensor, TensorData};

use crate::ae::channel_layer_norm;
use crate::ar::Vgt;
use crate::config::PositionRule;
use crate::llm::{KvCache, LlmInput};
use crate::resize::{Filter, resize};
use crate::rng::RandomSource;
use crate::sampler::{SampleOptions, sample_until};
use crate::scheduler::{CfgSchedule, Order, cfg_weight, group_count, group_sizes, split_groups};

/// Settings of one generation (defaults of the reference's `generate`, with 448 px).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateOptions {
    pub cfg: f64,
    pub num_steps: usize,
    pub height: usize,
    pub width: usize,
    pub acc_ratio: usize,
    pub order: Order,
    pub cfg_schedule: CfgSchedule,
    /// Round the sampler's t to bf16 as the bf16 reference does.
    pub t_bf16: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            cfg: 4.5,
            num_steps: 30,
            height: 448,
            width: 448,
            acc_ratio: 1,
            order: Order::Random,
            cfg_schedule: CfgSchedule::Linear,
            t_bf16: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    #[error("an image of {width}×{height} needs a {lw}×{lh} latent grid; the model allows 1×1 to {max}×{max} (sizes from {stride} to {} px)", max * stride)]
    Size { width: usize, height: usize, lw: usize, lh: usize, max: usize, stride: usize },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("cancelled")]
    Cancelled,
    #[error(
        "the generated {0} are not finite numbers (NaN or infinity), so no image was made: the model or an adapter holds non-finite or extreme weights (a LoRA weight or alpha far too large?), or its configuration is broken"
    )]
    NonFinite(&'static str),
}

/// Fails with [`GenerateError::NonFinite`] when `t` holds a NaN or an infinity (either makes the
/// sum of magnitudes non-finite; latents and pixels are far too small for a finite sum to
/// overflow).
fn require_finite<const D: usize>(t: &Tensor<D>, what: &'static str) -> Result<(), GenerateError> {
    let total = t.clone().abs().sum().into_scalar::<f32>();
    if total.is_finite() { Ok(()) } else { Err(GenerateError::NonFinite(what)) }
}

/// The prompt rows: conditional rows first, then (with CFG) as many unconditional rows.
pub struct Rows<'a> {
    pub ids: &'a [Vec<u32>],
    pub mask: &'a [Vec<u8>],
    /// `tokenizer.encode("<img>")`: one row of the prefill per id.
    pub img_start: &'a [u32],
}

/// Receives named intermediate values (for parity tests and inspection).
pub type Observer<'a> = &'a mut dyn FnMut(&str, Vec<f32>);

/// Where the time of one generation went (filled when profiling; each part ends with a device
/// sync, so profiling itself costs a little).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Profile {
    pub llm_s: f64,
    pub head_s: f64,
    pub decoder_s: f64,
    /// Tokens the LLM processed (prefill plus every later chunk, all rows).
    pub llm_tokens: usize,
    pub llm_calls: usize,
}

/// One finished token group, for live previews.
pub struct GroupDone<'a> {
    /// Group index and count.
    pub group: usize,
    pub groups: usize,
    /// The grid cells (row-major indices) this group generated, in generation order.
    pub cells: &'a [usize],
    /// `[bsz, |cells|, C]` the latents of those cells (after the channel norm).
    pub latents: &'a Tensor<3>,
    /// The latent grid size `(h, w)`.
    pub grid: (usize, usize),
}

/// Callbacks of one generation.
pub struct Hooks<'a> {
    /// `progress(done, total)` after every group, and with the groups done so far before every
    /// sampler step; returning `false` cancels.
    pub progress: &'a mut dyn FnMut(usize, usize) -> bool,
    pub observe: Option<Observer<'a>>,
    pub profile: Option<&'a mut Profile>,
    /// Called after every group with its cells and latents (before `progress`).
    pub on_group: Option<&'a mut dyn FnMut(GroupDone<'_>)>,
}

impl<'a> Hooks<'a> {
    pub fn progress(progress: &'a mut dyn FnMut(usize, usize) -> bool) -> Self {
        Self { progress, observe: None, profile: None, on_group: None }
    }
}

/// Runs `f`, adding its time (after a device sync) to `slot` when profiling.
fn timed<T>(profiling: bool, device: &burn::tensor::Device, slot: &mut f64, f: impl FnOnce() -> T) -> T {
    if !profiling {
        return f();
    }
    let start = std::time::Instant::now();
    let out = f();
    let _ = device.sync();
    *slot += start.elapsed().as_secs_f64();
    out
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

/// `[q₀, t₀, q₁, t₁, …]` over the group's tokens.
fn interleave(q: Tensor<3>, t: Tensor<3>) -> Tensor<3> {
    let [r, n, d] = q.dims();
    Tensor::stack::<4>(vec![q, t], 2).reshape([r, 2 * n, d])
}

fn select_cells(x: Tensor<3>, cells: &[usize]) -> Tensor<3> {
    let idx: Vec<i64> = cells.iter().map(|&c| c as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [cells.len()]), &x.device());
    x.select(1, idx)
}

/// Generates images for the conditional rows; returns `[bsz, 3, height, width]` in ≈[-1, 1].
pub fn generate(
    model: &Vgt,
    rows: Rows<'_>,
    opts: &GenerateOptions,
    rng: &mut dyn RandomSource,
    hooks: Hooks<'_>,
) -> Result<Tensor<4>, GenerateError> {
    let Hooks { progress, mut observe, profile, mut on_group } = hooks;
    let profiling = profile.is_some();
    let mut prof = Profile::default();
    let stride = model.vgt_ae.stride;
    let max = model.adaptive_metaquery.max_metaquery.val().dims()[2];
    let (lh, lw) = (opts.height / stride, opts.width / stride);
    if opts.num_steps == 0 {
        return Err(GenerateError::Zero("the number of steps"));
    }
    if opts.acc_ratio == 0 {
        return Err(GenerateError::Zero("the acceleration ratio"));
    }
    if lh == 0 || lw == 0 || lh > max || lw > max {
        return Err(GenerateError::Size { width: opts.width, height: opts.height, lw, lh, max, stride });
    }
    let tracing = observe.is_some();
    let mut record = |name: &str, v: Vec<f32>| {
        if let Some(o) = observe.as_mut() {
            o(name, v)
        }
    };
    let n = lh * lw;
    let g_count = group_count(n, opts.acc_ratio);
    let order = match opts.order {
        Order::Sequential => (0..n).collect(),
        Order::Random => rng.order(n),
    };
    let groups = split_groups(&order, &group_sizes(n, g_count));
    let r = rows.ids.len();
    let bsz = if opts.cfg > 1.0 { r / 2 } else { r };
    let (q, p) = model.adaptive_metaquery.crop(lh, lw);
    let qp = q + p.clone();
    let (embeds, full_mask, positions) = model.prefill_input(rows.ids, rows.mask, rows.img_start, qp.clone(), &groups[0]);
    let mut last: Vec<i64> = positions.iter().map(|p| *p.last().unwrap_or(&0)).collect();
    let padded_text = rows.ids.first().map_or(0, Vec::len) as i64;
    let rule = model.family.position_rule();
    if tracing {
        record("call0_inputs_embeds", values(&embeds));
        record("call0_position_ids", positions.iter().flatten().map(|&x| x as f32).collect());
    }
    let device = embeds.device();
    let mut cache = KvCache::new();
    prof.llm_tokens += r * embeds.dims()[1];
    prof.llm_calls += 1;
    let mut hidden = timed(profiling, &device, &mut prof.llm_s, || {
        model.llm.forward(LlmInput::new(embeds, positions).mask(full_mask), &mut cache)
    });
    let mut stored = Vec::with_capacity(g_count);
    let mut cfgs = Vec::with_capacity(g_count);
    let [_, _, d] = hidden.dims();
    for (g, cells) in groups.iter().enumerate() {
        if tracing {
            record(&format!("call{g}_last_hidden_state"), values(&hidden));
        }
        let k = cells.len();
        let [_, s, _] = hidden.dims();
        let h = hidden.clone().narrow(1, s - k, k);
        let c = crate::nn::lin(&model.image_out_projector, h).reshape([r * k, d]);
        let cfg_g = cfg_weight(opts.cfg_schedule, opts.cfg, g, g_count);
        cfgs.push(cfg_g as f32);
        let sopts = SampleOptions { cfg: cfg_g, num_steps: opts.num_steps, t_bf16: opts.t_bf16 };
        // The sampler asks before each of its steps whether to go on (the group is not done).
        let mut keep_going = || progress(g, g_count);
        let z = timed(profiling, &device, &mut prof.head_s, || sample_until(&model.image_head.net, c.clone(), sopts, rng, false, &mut keep_going));
        let Some(z) = z else { return Err(GenerateError::Cancelled) };
        let z = z.x;
        let latent_dim = z.dims()[1];
        let zn = channel_layer_norm(z.clone().reshape([bsz * k, latent_dim, 1, 1]), 1e-6).reshape([bsz, k, latent_dim]);
        if tracing {
            record(&format!("cond_g{g}"), values(&c));
            record(&format!("sample_g{g}"), values(&z));
            record(&format!("latents_g{g}"), values(&zn));
        }
        if let Some(f) = on_group.as_mut() {
            f(GroupDone { group: g, groups: g_count, cells, latents: &zn, grid: (lh, lw) });
        }
        stored.push(zn.clone());
        if !progress(g + 1, g_count) {
            return Err(GenerateError::Cancelled);
        }
        if g + 1 == g_count {
            break;
        }
        // The guided latent feeds the conditional and the unconditional rows alike.
        let t = crate::nn::lin(&model.image_in_projector, zn);
        let t = if r > bsz { Tensor::cat(vec![t; r / bsz], 0) } else { t };
        let t = t + select_cells(p.clone(), cells).expand([r, k, d]);
        let carry = if opts.acc_ratio > 1 { interleave(select_cells(qp.clone(), cells).expand([r, k, d]), t) } else { t };
        let next = &groups[g + 1];
        let chunk = Tensor::cat(vec![carry, select_cells(qp.clone(), next).expand([r, next.len(), d])], 1);
        let len = chunk.dims()[1] as i64;
        let positions: Vec<Vec<i64>> = match rule {
            PositionRule::PerRowContinuation => {
                let p = last.iter().map(|&l| (1..=len).map(|i| l + i).collect()).collect();
                last.iter_mut().for_each(|l| *l += len);
                p
            }
            PositionRule::QwenGroupStride => {
                let start = padded_text + (g as i64 + 1) * len;
                vec![(start..start + len).collect(); r]
            }
        };
        if tracing {
            record(&format!("call{}_inputs_embeds", g + 1), values(&chunk));
            record(&format!("call{}_position_ids", g + 1), positions.iter().flatten().map(|&x| x as f32).collect());
        }
        prof.llm_tokens += r * chunk.dims()[1];
        prof.llm_calls += 1;
        hidden = timed(profiling, &device, &mut prof.llm_s, || model.llm.forward(LlmInput::new(chunk, positions), &mut cache));
    }
    record("group_cfg", cfgs);
    // Undo the schedule: the token at schedule position k belongs to cell order[k].
    let all = Tensor::cat(stored, 1);
    let mut inverse = vec![0i64; n];
    for (k, &cell) in order.iter().enumerate() {
        inverse[cell] = k as i64;
    }
    let inverse = Tensor::<1, Int>::from_data(TensorData::new(inverse, [n]), &all.device());
    let cdim = all.dims()[2];
    let grid = all.select(1, inverse).swap_dims(1, 2).reshape([bsz, cdim, lh, lw]);
    if tracing {
        record("latent_grid", values(&grid));
    }
    require_finite(&grid, "latents")?;
    let decoded = timed(profiling, &device, &mut prof.decoder_s, || model.vgt_ae.decode(grid));
    if tracing {
        record("decoded", values(&decoded));
    }
    let image = resize(decoded, opts.height, opts.width, Filter::Bilinear);
    require_finite(&image, "pixels")?;
    if tracing {
        record("image", values(&image));
    }
    if let Some(p) = profile {
        *p = prof;
    }
    Ok(image)
}
