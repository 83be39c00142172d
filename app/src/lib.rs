//! VGT Studio's app crate: the desktop GUI (`gui`) and what it shares with the `vgt` command
//! line (`meta`). No tensor code lives here.

pub mod embedded;
pub mod errors;
pub mod gui;
pub mod meta;
