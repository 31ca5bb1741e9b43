use clap::Parser;
use waba_migrator::{cli, config::Cli, telemetry};

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
