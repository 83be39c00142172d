//! Training (spec §4.1): the flow-matching loss, the full training forward of VGT-AR, the
//! optimiser and schedule, LoRA adapters, the image/caption data and the tuning loop.

pub mod checkpoint;
pub mod data;
pub mod lora;
pub mod optim;
pub mod parallel;
pub mod run;

use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};

use crate::ar::Vgt;
use crate::flow_head::FlowNet;
use crate::llm::{KvCache, LlmInput};

/// The time shift of the InternVL configs (spec §4.1.1 step 3).
pub const TIME_SHIFT: f64 = 1.4;

/// What the loss computed, for inspection and parity tests.
pub struct FlowLoss {
    /// `[1]` the masked mean loss.
    pub loss: Tensor<1>,
    /// `[M]` t after the time shift.
    pub t: Tensor<1>,
    /// `[M, C]` the noised input.
    pub xt: Tensor<2>,
    /// `[M, C]` the predicted velocity.
    pub v: Tensor<2>,
}

/// Logit-normal t with the time shift: `s = sigmoid(u)`, `t = 1 − shift·s / (1 + (shift−1)·s)`.
///
/// # Shapes
/// - u: `[M]` → `[M]`
pub fn shifted_time(u: Tensor<1>, shift: f64) -> Tensor<1> {
    let s = sigmoid(u);
    let shifted = s.clone().mul_scalar(shift as f32) / s.mul_scalar((shift - 1.0) as f32).add_scalar(1.0);
    shifted.neg().add_scalar(1.0)
}

/// The flow-matching loss of spec §4.1.1 with injected `eps` and `u`.
///
/// # Shapes
/// - target, eps: `[M, C]`; c: `[M, cond]`; u, mask: `[M]`
pub fn flow_matching_loss(net: &FlowNet, target: Tensor<2>, c: Tensor<2>, eps: Tensor<2>, u: Tensor<1>, mask: Tensor<1>, shift: f64) -> FlowLoss {
    let t = shifted_time(u, shift);
    let tc = t.clone().unsqueeze_dim::<2>(1);
    let xt = target.clone() * tc.clone() + eps.clone() * tc.neg().add_scalar(1.0);
    let ut = target - eps;
    let v = net.forward(xt.clone(), t.clone(), c);
    let per_row = (v.clone() - ut).powi_scalar(2).mean_dim(1).squeeze_dim::<1>(1);
    let loss = (per_row * mask.clone()).sum() / mask.sum().add_scalar(1e-8);
    FlowLoss { loss, t, xt, v }
}

/// The randomness of one training step (spec §4.1.2): one permutation for the whole batch, the
/// logit-normal draws `u` (`B·L`) and the noise `eps` (`B·L × C`, row-major). With `k·B·L`
/// draws the flow head is trained on each condition `k` times, with `k` independent (t, ε) pairs
/// (MAR's "diffusion batch multiplier": more head samples for one LLM pass; not in the reference).
pub struct StepNoise {
    pub order: Vec<usize>,
    pub u: Vec<f32>,
    pub eps: Vec<f32>,
}

impl StepNoise {
    /// Draws the step's randomness from `rng` (order first, then u, then eps).
    pub fn draw(rng: &mut crate::rng::Seeded, batch: usize, cells: usize, channels: usize) -> Self {
        Self::draw_repeated(rng, batch, cells, channels, 1)
    }

    /// [`StepNoise::draw`] with `repeats` (t, ε) pairs per token (`repeats = 1`: the same draws).
    pub fn draw_repeated(rng: &mut crate::rng::Seeded, batch: usize, cells: usize, channels: usize, repeats: usize) -> Self {
        use crate::rng::RandomSource;
        let order = rng.order(cells);
        let u = rng.normal(repeats * batch * cells, 1);
        let eps = rng.normal(repeats * batch * cells, channels);
        Self { order, u, eps }
    }

    /// The same draws with the cells in `order`: raster order replaces the drawn permutation
    /// (a model trained in raster order, `VgtConfig::order`), a random order keeps it.
    pub fn in_order(mut self, order: crate::scheduler::Order) -> Self {
        if order == crate::scheduler::Order::Sequential {
            self.order = (0..self.order.len()).collect();
        }
        self
    }
}

/// One training batch: text rows (right-padded, any pad id: the mask decides) and the latents of
/// the frozen AE.
pub struct TrainBatch<'a> {
    pub ids: &'a [Vec<u32>],
    pub mask: &'a [Vec<u8>],
    /// `tokenizer.encode("<img>")` ([`crate::config::TokenIds::img_start`]).
    pub img_start: &'a [u32],
    /// `[B, C, h, w]`
    pub latents: Tensor<4>,
}

/// The outputs of the full training forward.
pub struct TrainOutput {
    pub flow: FlowLoss,
    /// `[B·L, D]` out_proj of the query hidden states, in cell order.
    pub cond: Tensor<2>,
}

impl Vgt {
    /// The training forward of spec §3.7/§4.1.2: `[text | <img> | q_π0, t_π0, q_π1, …]` through the
    /// LLM in one causal pass, conditions from the query positions, then the flow-matching loss
    /// against the latents for all `B·L` tokens.
    pub fn train_forward(&self, batch: &TrainBatch<'_>, noise: &StepNoise, shift: f64) -> TrainOutput {
        let [b, ch, h, w] = batch.latents.dims();
        let l = h * w;
        let device = batch.latents.device();
        let (q, p) = self.adaptive_metaquery.crop(h, w);
        let d = q.dims()[2];
        let z = batch.latents.clone().reshape([b, ch, l]).swap_dims(1, 2);
        let tokens = crate::nn::lin(&self.image_in_projector, z.clone()) + p.clone();
        let queries = (q + p).expand([b, l, d]);
        let order = Tensor::<1, Int>::from_data(TensorData::new(noise.order.iter().map(|&i| i as i64).collect::<Vec<_>>(), [l]), &device);
        let seq = Tensor::stack::<4>(vec![queries.select(1, order.clone()), tokens.select(1, order)], 2).reshape([b, 2 * l, d]);
        let text = self.embed(batch.ids);
        let img = self.embed(&vec![batch.img_start.to_vec(); b]);
        let n_img = batch.img_start.len();
        let t = batch.ids.first().map_or(0, Vec::len);
        let embeds = Tensor::cat(vec![text, img, seq], 1);
        let full: Vec<Vec<u8>> =
            batch.mask.iter().map(|m| m.iter().copied().chain(std::iter::repeat_n(1, n_img + 2 * l)).collect()).collect();
        let positions = crate::ar::prefill_positions(&full);
        let hidden = self.llm.forward(LlmInput::new(embeds, positions).mask(full), &mut KvCache::new());
        let at_queries = hidden.slice([0..b, t + n_img..t + n_img + 2 * l, 0..d]).reshape([b, l, 2, d]).slice([0..b, 0..l, 0..1, 0..d]).reshape([b, l, d]);
        let mut inverse = vec![0i64; l];
        for (i, &cell) in noise.order.iter().enumerate() {
            inverse[cell] = i as i64;
        }
        let inverse = Tensor::<1, Int>::from_data(TensorData::new(inverse, [l]), &device);
        let cond = crate::nn::lin(&self.image_out_projector, at_queries.select(1, inverse)).reshape([b * l, d]);
        let target = z.reshape([b * l, ch]);
        // Head samples per token (1 in the reference).
        let k = (noise.u.len() / (b * l)).max(1);
        let (head_cond, target) = if k > 1 { (Tensor::cat(vec![cond.clone(); k], 0), Tensor::cat(vec![target; k], 0)) } else { (cond.clone(), target) };
        let eps = Tensor::<2>::from_data(TensorData::new(noise.eps.clone(), [k * b * l, ch]), &device);
        let u = Tensor::<1>::from_data(TensorData::new(noise.u.clone(), [k * b * l]), &device);
        let mask = Tensor::<1>::ones([k * b * l], &device);
        let flow = flow_matching_loss(&self.image_head.net, target, head_cond, eps, u, mask, shift);
        TrainOutput { flow, cond }
    }
}
