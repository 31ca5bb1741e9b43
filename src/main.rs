use clap::Parser;
use waba_migrator::{cli, config::Cli, telemetry};

/// mimalloc instead of glibc's malloc: the request and step paths allocate many small,
/// short-lived buffers (JSON, rows, headers), and glibc's `malloc`/`free`/`malloc_consolidate`
/// were the service's top symbols under load (BENCHMARKS.md, issue 18).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    telemetry::init();
    match cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.message = %e, error.cause_chain = ?e, "fatal");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
