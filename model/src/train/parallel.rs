//! Data-parallel tuning over several devices through burn's own distributed path: one copy of
//! the model per device (forked from the first, so every parameter keeps its id), the trainable
//! parameters marked with [`Tensor::set_distributed`], and a [`DistributedContext`] over the
//! devices. Each device computes its share of a step's micro-batches; burn's autodiff then
//! all-reduces (mean) every marked gradient during the backward pass (NCCL on CUDA), so every
//! copy takes the same optimiser step.
//!
//! Only CUDA implements the collective operations in burn 0.22 (flex and wgpu do not), so the
//! callers offer more than one device on CUDA only.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
use burn::tensor::{Device, Tensor};

/// Marks every trainable parameter for gradient synchronisation.
struct MarkDistributed;

impl ModuleMapper for MarkDistributed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_distributed(id), mapper)
    }
}

/// `module` with its trainable parameters marked for gradient synchronisation (again after each
/// optimiser step: an updated parameter is a new tensor).
pub fn mark_distributed<M: Module>(module: M) -> M {
    module.map(&mut MarkDistributed)
}

/// The micro-batches of a step that device `rank` of `devices` computes: `m ≡ rank (mod devices)`.
/// Every device gets as many (the caller checks that `grad_accum` is a multiple of `devices`),
/// since each backward pass is one collective operation all devices take part in.
pub fn shard(grad_accum: usize, rank: usize, devices: usize) -> Vec<usize> {
    (rank..grad_accum).step_by(devices.max(1)).collect()
}

/// Starts burn's communication server for `devices` (autodiff devices) with a mean reduction;
/// it stops when the context is dropped.
pub fn context(devices: Vec<Device>) -> DistributedContext {
    DistributedContext::init(devices, DistributedConfig { all_reduce_op: ReduceOperation::Mean })
}

#[cfg(test)]
mod tests {
    #[test]
    fn shards_split_the_micro_batches_evenly() {
        assert_eq!(super::shard(4, 0, 1), vec![0, 1, 2, 3]);
        assert_eq!(super::shard(4, 0, 2), vec![0, 2]);
        assert_eq!(super::shard(4, 1, 2), vec![1, 3]);
        assert_eq!(super::shard(6, 2, 3), vec![2, 5]);
    }
}
