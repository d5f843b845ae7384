use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Behave like other command-line tools when the reader of our output goes away
    // (`wgcnn eval ... | head`): end quietly instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Interrupted (Ctrl-C, SIGTERM): leave no half-written temporary file behind. Outputs are
    // written through temporary files and renamed, so the destinations themselves stay whole.
    let _ = ctrlc::set_handler(|| {
        wgcnn::checkpoint::remove_temporary_files();
        eprintln!("interrupted");
        std::process::exit(130);
    });
    let cli = wgcnn::cli::Cli::parse();
    // This thread is one of rayon's workers (the pool's first; RAYON_NUM_THREADS still counts
    // them all): the fast CPU executor's steps, and every parallel loop in them, start here
    // instead of being handed to a pool thread that must be woken while this one waits.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match wgcnn::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
