//! The batch ticker: writes the batches' own webhooks (`batch.progress`, `batch.completed`) to
//! the outbox, which the [`super::Dispatcher`] delivers like any other. One per replica, next
//! to the dispatcher; replicas share the open batches through row locks
//! (see [`crate::core::batches::tick`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::problem::ApiError;
use crate::core::AppState;
use crate::core::batches::{self, Ticked};

/// The longest pause between two looks: a batch's end is noticed within this, whatever the
/// progress interval.
const MAX_PERIOD: Duration = Duration::from_secs(5);

/// How often the ticker does the housekeeping that is nobody else's.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct BatchTicker {
    state: AppState,
    interval: Duration,
}

impl BatchTicker {
    /// `interval`: the least time between two `batch.progress` of a batch.
    pub fn new(state: AppState, interval: Duration) -> Self {
        Self { state, interval }
    }

    /// Time between two looks: the progress interval, at most [`MAX_PERIOD`].
    pub fn period(&self) -> Duration {
        self.interval.clamp(Duration::from_millis(10), MAX_PERIOD)
    }

    /// Looks at the open batches every [`Self::period`] until `shutdown`; every
    /// [`HOUSEKEEPING_PERIOD`] also forgets `Idempotency-Key`s past their time.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(interval = ?self.interval, "batch ticker started");
        let mut housekeeping = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.run_once().await {
                warn!(error = %e.detail, code = e.code, "batch tick failed");
            }
            if housekeeping.elapsed() >= HOUSEKEEPING_PERIOD {
                housekeeping = tokio::time::Instant::now();
                match crate::core::migrations::forget_old_idempotency_keys(&self.state).await {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "old idempotency keys deleted"),
                    Err(e) => warn!(error = %e.detail, "deleting old idempotency keys failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.period()) => {}
            }
        }
        info!("batch ticker stopped");
        Ok(())
    }

    /// One look at every open batch, then the cancels cancelled batches left to finish
    /// ([`batches::finish_cancels`]). Tests drive the ticker with this.
    pub async fn run_once(&self) -> Result<Ticked, ApiError> {
        let mut ticked = batches::tick(&self.state.pool, self.interval).await?;
        ticked.cancelled = batches::finish_cancels(&self.state).await?;
        Ok(ticked)
    }
}
