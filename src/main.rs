use waba_migrator::{cli, config::Cli, telemetry};

/// mimalloc instead of glibc's allocator: a fifth less service CPU per transition
/// (`waba-bench ab`, BENCHMARKS.md, issue 18), without transparent huge pages (see
/// [`no_transparent_huge_pages`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    serve()
}

#[tokio::main]
async fn serve() -> std::process::ExitCode {
    // An empty variable (`META_ACCESS_TOKEN=` in an env file) counts as unset.
    let args = Cli::from_env_and_args();
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

/// mimalloc reserves its memory in 2 MiB-aligned regions. Backed by transparent huge pages,
/// every region it touched stayed resident in whole: 10,000 parked migrations added 12 MB of
/// RSS instead of 2.5 (`waba-bench parked`, target < 5 MB). mimalloc is built not to ask for
/// them (`no_thp`); this also stops the kernel from using them unasked (THP `always`). It
/// applies to the whole process, from here on, and to the embedded PostgreSQL it starts.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}
