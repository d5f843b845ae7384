use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = wgcnn::cli::Cli::parse();
    match wgcnn::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
