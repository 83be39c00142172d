//! `vgt`: VGT Studio's command line. Every job the app does, headless.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
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
