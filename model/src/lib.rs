//! VGT (Visual Generation Tuning, arXiv 2511.23469) in burn: the networks of the spec, the
//! sampler, checkpoint loading and the tokenizer glue. See `../shared/spec/VGT.md`.

pub mod ae;
pub mod ar;
pub mod bench;
pub mod config;
pub mod decoder;
pub mod device;
pub mod flow_head;
pub mod fsutil;
pub mod generate;
pub mod image_io;
pub mod llm;
pub mod metrics;
pub mod nn;
pub mod prompt;
pub mod reconstruct;
pub mod resize;
pub mod rng;
pub mod sampler;
pub mod text2image;
pub mod train;
pub mod scheduler;
pub mod shapes;
pub mod vit;
pub mod weights;

pub use burn;
/// Our fused WGSL kernels (the `vgt-shaders` crate) and their on/off switch.
pub use vgt_shaders as kernels;
