//! SIGINT/SIGTERM → a cancellation token shared by the server and the workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// The process's request to stop: cancelled on the first SIGINT or SIGTERM (or by the process
/// itself when a part of it failed). Which signal it was decides whether the HTTP server drains
/// first: an orchestrator's SIGTERM does (`SHUTDOWN_DRAIN_SECONDS`), Ctrl-C (SIGINT) does not.
#[derive(Clone, Default, Debug)]
pub struct Stop {
    token: CancellationToken,
    terminated: Arc<AtomicBool>,
}

impl Stop {
    /// Cancelled when the process is asked to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Stop without SIGTERM (e.g. a part of the service failed): no drain.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// SIGTERM asked the process to stop (checked once the token is cancelled).
    pub fn by_sigterm(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }

    /// What SIGTERM does: mark, then cancel (so `by_sigterm` is set before anyone wakes).
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// Cancels the returned token on the first SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    on_signals().token().clone()
}

/// A [`Stop`] cancelled on the first SIGINT or SIGTERM, remembering which.
pub fn on_signals() -> Stop {
    let stop = Stop::default();
    let s = stop.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {
                tracing::info!(signal = "SIGINT", "shutdown signal received");
                s.cancel();
            },
            _ = term => {
                tracing::info!(signal = "SIGTERM", "shutdown signal received");
                s.terminate();
            },
        }
    });
    stop
}
