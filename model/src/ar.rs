//! VGT-AR (spec §3): the LLM, position queries, projectors, flow head and the AE it decodes with.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::ae::VgtAe;
use crate::config::{Family, VgtConfig};
use crate::flow_head::FlowHead;
use crate::llm::Qwen2;
use crate::nn::{linear, param};

/// The learned 2-D position grid.
#[derive(Module, Debug)]
pub struct PosEncoding {
    pub grid_embed: Param<Tensor<4>>,
}

/// AdaptiveMetaQuery (spec §3.5): two `[1, D, G, G]` grids, centre-cropped per image size.
#[derive(Module, Debug)]
pub struct AdaptiveMetaQuery {
    pub max_metaquery: Param<Tensor<4>>,
    pub pos_encoding: PosEncoding,
}

/// The whole VGT-InternVL3 model.
#[derive(Module, Debug)]
pub struct Vgt {
    pub llm: Qwen2,
    pub adaptive_metaquery: AdaptiveMetaQuery,
    pub image_in_projector: Linear,
    pub image_out_projector: Linear,
    pub image_head: FlowHead,
    pub vgt_ae: VgtAe,
    /// Fixes the generation position rule (spec §3.8 step 6).
    #[module(skip)]
    pub family: Family,
}

impl Vgt {
    /// Builds the model with lazily initialised parameters: nothing is allocated until a
    /// parameter is loaded or used.
    pub fn new(c: &VgtConfig, device: &Device) -> Self {
        let mut m = Self::for_generation(c, device);
        m.vgt_ae = VgtAe::new(c, device);
        m
    }

    /// Only what generation uses: no AE encoder (and never an lm_head).
    pub fn for_generation(c: &VgtConfig, device: &Device) -> Self {
        let d = c.llm.hidden_size;
        let g = c.amq_max_grid;
        Self {
            llm: Qwen2::new(&c.llm, device),
            adaptive_metaquery: AdaptiveMetaQuery {
                max_metaquery: param([1, d, g, g], device),
                pos_encoding: PosEncoding { grid_embed: param([1, d, g, g], device) },
            },
            image_in_projector: linear(c.flow_head.input_dim, d, true, device),
            image_out_projector: linear(d, d, true, device),
            image_head: FlowHead::new(&c.flow_head, device),
            vgt_ae: VgtAe::decoder_only(c, device),
            family: c.family(),
        }
    }
}

impl AdaptiveMetaQuery {
    /// Centre crops of both grids for an `h × w` latent (spec §3.5), each flattened row-major.
    ///
    /// # Shapes
    /// - returns `(Q, P)`, each `[1, h·w, D]`
    pub fn crop(&self, h: usize, w: usize) -> (Tensor<3>, Tensor<3>) {
        let crop = |grid: Tensor<4>| {
            let [_, d, gh, gw] = grid.dims();
            let (sh, sw) = ((gh - h) / 2, (gw - w) / 2);
            grid.slice([0..1, 0..d, sh..sh + h, sw..sw + w]).reshape([1, d, h * w]).swap_dims(1, 2)
        };
        (crop(self.max_metaquery.val()), crop(self.pos_encoding.grid_embed.val()))
    }
}

/// Position ids of the prefill: `cumsum(mask) − 1`, clamped at 0 (spec §3.8).
pub fn prefill_positions(mask: &[Vec<u8>]) -> Vec<Vec<i64>> {
    mask.iter()
        .map(|row| {
            let mut sum = 0i64;
            row.iter()
                .map(|&m| {
                    sum += m as i64;
                    (sum - 1).max(0)
                })
                .collect()
        })
        .collect()
}

impl Vgt {
    /// Token embeddings of `ids` (`[batch][tokens]`).
    ///
    /// # Shapes
    /// - returns `[batch, tokens, D]`
    pub fn embed(&self, ids: &[Vec<u32>]) -> Tensor<3> {
        let param = &self.llm.embed_tokens.weight;
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
        // f16 storage: gather the rows in f16, then upcast them (never the whole table).
        let half = param.reparameterization::<crate::nn::Upcast>().is_some();
        let table = if half { param.base() } else { param.val() };
        let device = table.device();
        let ids = Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(flat, [b, t]), &device);
        let rows = burn::tensor::module::embedding(table, ids);
        let rows = if half { rows.cast(burn::tensor::FloatDType::F32) } else { rows };
        // A table kept in host memory (`device::table_device`): only these rows go to the device.
        rows.to_device(&self.llm.norm.weight.lazy_device())
    }

    /// The prefill input (`prepare_forward_input`): `[text | <img> | (Q+P)[cells]]`, its full
    /// mask (`[mask | ones]`) and positions; `<img>` is one row per id of `img_start`.
    ///
    /// # Shapes
    /// - qp: `[1, h·w, D]` (the query tokens `Q + P` of the whole grid); returns `[batch, T+|img_start|+|cells|, D]`
    pub fn prefill_input(
        &self,
        ids: &[Vec<u32>],
        mask: &[Vec<u8>],
        img_start: &[u32],
        qp: Tensor<3>,
        cells: &[usize],
    ) -> (Tensor<3>, Vec<Vec<u8>>, Vec<Vec<i64>>) {
        let b = ids.len();
        let text = self.embed(ids);
        let img = self.embed(&vec![img_start.to_vec(); b]);
        let device = text.device();
        let idx: Vec<i64> = cells.iter().map(|&c| c as i64).collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(idx, [cells.len()]), &device);
        let [_, _, d] = qp.dims();
        let queries = qp.select(1, idx).expand([b, cells.len(), d]);
        let embeds = Tensor::cat(vec![text, img, queries], 1);
        let full: Vec<Vec<u8>> =
            mask.iter().map(|m| m.iter().copied().chain(std::iter::repeat_n(1, img_start.len() + cells.len())).collect()).collect();
        let positions = prefill_positions(&full);
        (embeds, full, positions)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefill_positions_continue_through_padding_as_cumsum_minus_one() {
        let p = super::prefill_positions(&[vec![1, 1, 1, 1], vec![1, 1, 0, 1]]);
        assert_eq!(p, vec![vec![0, 1, 2, 3], vec![0, 1, 1, 2]]);
    }
}
