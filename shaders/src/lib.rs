//! VGT Studio's own WGSL kernels, as data plus the code that launches them.
//!
//! Empty until a profile shows a fused kernel beating composed tensor ops (issue 8); every
//! `.wgsl` file added here gets a naga validation test.
