//! `vgt`: VGT Studio's command line. Every job the app does, headless.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Without XDG_RUNTIME_DIR there is no Wayland session, and Mesa's Vulkan device-select layer
    // only prints "XDG_RUNTIME_DIR is invalid or not set" (twice per Vulkan instance) trying to
    // reach one; we choose adapters ourselves. A user's own NODEVICE_SELECT is kept.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", vgt_app::errors::report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
