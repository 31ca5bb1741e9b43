//! Background workers: claim due migrations with a lease, run their step with no transaction
//! or connection held, record the outcome only while the lease is still ours.
//!
//! * Claiming: `db::migrations::claim` (one statement, `FOR UPDATE SKIP LOCKED`, fresh lease
//!   token). An expired lease is claimable again, so a crashed worker's migration resumes on any
//!   replica once its lease runs out.
//! * Wake-ups: LISTEN on [`db::JOBS_CHANNEL`] (NOTIFY is sent in the transactions that make a
//!   row due now) as a hint only, with a polling fallback.
//! * Heartbeats extend the lease while a step runs (a task owned by the step, aborted with it);
//!   a lost lease stops the step before its next intent write or irreversible call and discards
//!   its writes (see [`lease`]).
//! * Bounded concurrency with a semaphore; graceful shutdown stops claiming, lets in-flight steps
//!   finish within the grace period (no step starts a new irreversible call once stopping),
//!   then releases their leases so another replica resumes them at once. Never while an
//!   irreversible call (`request_code`, `verify_code`, `register`, `api_keys`) is in flight or
//!   ended without a settling answer: the upstream may still apply it, so that lease is left to
//!   expire and nobody reads the number before then. `SHUTDOWN_GRACE_SECONDS` is validated at
//!   startup to exceed `UPSTREAM_TIMEOUT_SECONDS`, so calls in flight at SIGTERM end within it.
//! * Batch pacing: a batch's migrations wait (held) for one of the batch's `max_in_flight` slots
//!   in the paced states (`domain::pacing`). An admission step (`db::batches::admit`) releases
//!   held ones while slots are free and the batch is not paused by Meta's throttling; it runs
//!   every `poll_interval`, right after one of this worker's batch migrations gives a slot back,
//!   and in [`Worker::run_next`] when nothing is due. Throttling (Graph 80008, HTTP 429, …) of a
//!   batch's migration pauses that batch's admissions only.
//! * Parked migrations (`awaiting_otp`) are due only at their OTP deadline: no worker, no poll.
//!   Migrations waiting on a channel (`awaiting_signup`, `awaiting_channel`) are polled with a
//!   growing delay, each poll a short claim, until their deadline.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::clients::{D360Api, MetaApi};
use crate::core::OtpPolicy;
use crate::crypto::Cipher;
use crate::db::{self, events::NewEvent, migrations as store};
use crate::domain::machine::{StepContext, decide, taken_over_too_often};
use crate::domain::memo::{Intent, MemoKey};
use crate::domain::pacing;
use crate::domain::{Decision, EventType, MigrationState, RetryPolicy, StepOutcome, WaitingFor};

pub mod errors;
pub mod lease;
pub mod steps;

use lease::StepLease;

/// Most rows one claim statement takes.
const CLAIM_BATCH: usize = 32;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Identifies this worker in `lease_owner` (host:pid:random).
    pub owner: String,
    pub concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    /// First delay between two looks at the 360dialog channel; doubles up to a minute
    /// (`awaiting_channel`) or up to `signup_poll_max` (`awaiting_signup`).
    pub channel_poll: Duration,
    /// Longest delay between two looks for the channel while the client's Embedded Signup is
    /// awaited.
    pub signup_poll_max: Duration,
    /// Delay between two looks at a WABA the client's Embedded Signup made while 360dialog
    /// sets it up (each look is the precheck's Graph reads); ± 10 % jitter.
    pub setup_poll: Duration,
    pub retry: RetryPolicy,
    pub otp: OtpPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            owner: default_owner(),
            concurrency: 8,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(35),
            channel_poll: Duration::from_secs(2),
            signup_poll_max: Duration::from_secs(60),
            setup_poll: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            otp: OtpPolicy::default(),
        }
    }
}

/// `hostname:pid:random`, unique per process.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Named points where tests make a worker "crash": the step stops right there, records
/// nothing and keeps its lease until it expires, exactly like a killed process.
#[derive(Debug, Clone, Default)]
pub struct FailPoints(Arc<Mutex<HashMap<String, u32>>>);

impl FailPoints {
    /// Arms `name` to fire the next `times` times it is reached.
    pub fn arm(&self, name: &str, times: u32) {
        self.0
            .lock()
            .expect("fail points lock")
            .insert(name.to_owned(), times);
    }

    /// Whether a crash should happen here now.
    pub fn hit(&self, name: &str) -> bool {
        let mut map = self.0.lock().expect("fail points lock");
        match map.get_mut(name) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// What a worker needs.
pub struct Deps {
    pub pool: PgPool,
    pub meta: Arc<dyn MetaApi>,
    pub d360: Arc<dyn D360Api>,
    pub cipher: Cipher,
    pub config: WorkerConfig,
    /// The longest an upstream call may take (`UPSTREAM_TIMEOUT_SECONDS`, the clients'
    /// timeout): the lease an irreversible call needs left when it starts.
    pub call_time: Duration,
    pub fail_points: FailPoints,
    /// Sandbox mode only: tells the simulator about a number before its precheck reads it.
    pub sandbox_seeder: Option<crate::core::SandboxSeeder>,
}

/// Result of [`Worker::run_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Ran(Uuid),
    Empty,
}

#[derive(Clone)]
pub struct Worker {
    deps: Arc<Deps>,
    /// Leases held by this worker's running steps.
    in_flight: Arc<Mutex<HashMap<Uuid, Arc<StepLease>>>>,
    /// Pokes the admission loop: a batch's migration gave its slot back (or became held).
    admission: Arc<Notify>,
}

impl Worker {
    pub fn new(deps: Deps) -> Self {
        Self {
            deps: Arc::new(deps),
            in_flight: Arc::default(),
            admission: Arc::default(),
        }
    }

    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Claims one due migration and advances it as far as it can go now. When none is due,
    /// admits held batch migrations first ([`Worker::admit`]), so `Empty` means nothing is due
    /// and no batch can start one now.
    pub async fn run_next(&self) -> anyhow::Result<RunOutcome> {
        let cfg = &self.deps.config;
        let mut claimed_at = Instant::now();
        let mut rows = store::claim(&self.deps.pool, &cfg.owner, cfg.lease, 1).await?;
        if rows.is_empty() && self.admit().await? > 0 {
            claimed_at = Instant::now();
            rows = store::claim(&self.deps.pool, &cfg.owner, cfg.lease, 1).await?;
        }
        let Some(row) = rows.pop() else {
            return Ok(RunOutcome::Empty);
        };
        let id = row.id;
        self.process(row, claimed_at, CancellationToken::new())
            .await;
        Ok(RunOutcome::Ran(id))
    }

    /// One admission round over every batch with held migrations (see `db::batches::admit`):
    /// how many it released.
    pub async fn admit(&self) -> anyhow::Result<u64> {
        let mut tx = self.deps.pool.begin().await?;
        let released = db::batches::admit(&mut tx, None).await?;
        tx.commit().await?;
        if released > 0 {
            crate::metrics::batch_admitted(released);
            debug!(released, "batch migrations admitted");
        }
        Ok(released)
    }

    /// The admission loop of [`Worker::run`]: a round every `poll_interval`, and at once when
    /// poked (a batch's migration gave its slot back).
    async fn admit_loop(self, shutdown: CancellationToken) {
        let every = self.deps.config.poll_interval;
        let mut backoff = every;
        loop {
            match self.admit().await {
                Ok(_) => backoff = every,
                Err(e) => {
                    warn!(error = %e, "batch admission failed");
                    backoff = (backoff * 2).min(Duration::from_secs(2)).max(every);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.admission.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Runs due migrations until none is due (tests and one-shot tools).
    pub async fn run_until_idle(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        while let RunOutcome::Ran(_) = self.run_next().await? {
            n += 1;
        }
        Ok(n)
    }

    /// The claim loop, until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = self.deps.config.clone();
        info!(
            owner = %cfg.owner,
            concurrency = cfg.concurrency,
            lease_s = cfg.lease.as_secs_f64(),
            "worker started"
        );
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(db::listen(
            self.deps.pool.clone(),
            db::JOBS_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let admission = tokio::spawn(self.clone().admit_loop(shutdown.clone()));
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut db_backoff = cfg.poll_interval;

        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    error!(error = %e, "worker task failed");
                }
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p?,
            };
            // One claim for as many rows as there are free slots (up to CLAIM_BATCH): a burst
            // of due rows costs one statement per batch, not one per row.
            let mut held = vec![first];
            while held.len() < CLAIM_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            let asked = held.len();
            let claimed_at = Instant::now();
            match store::claim(&self.deps.pool, &cfg.owner, cfg.lease, asked as i64).await {
                Ok(rows) => {
                    db_backoff = cfg.poll_interval;
                    let got = rows.len();
                    for row in rows {
                        let permit = held.pop().expect("one permit per claimed row");
                        let this = self.clone();
                        let stop = shutdown.clone();
                        tasks.spawn(async move {
                            this.process(row, claimed_at, stop).await;
                            drop(permit);
                        });
                    }
                    drop(held);
                    if got == asked {
                        // Maybe more are due: claim again as soon as a slot is free.
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(cfg.poll_interval) => {}
                    }
                }
                Err(e) => {
                    drop(held);
                    warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "claim failed");
                    // The listener wakes us as soon as it reconnects after a database restart.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(db_backoff) => {}
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(2));
                }
            }
        }

        info!(
            in_flight = tasks.len(),
            "worker stopping: no new claims, finishing in-flight steps"
        );
        let drained = tokio::time::timeout(cfg.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        // Steps still running past the grace period are aborted. One whose irreversible call is
        // in flight, or ended without a settling answer, keeps its lease: the upstream may apply
        // the call after we hang up, and no other replica may read the number before it could
        // have. Its lease expires on its own (LEASE_SECONDS after the last heartbeat). Sealing
        // first means none starts one now.
        let mut calls_in_flight = HashSet::new();
        if drained.is_err() {
            for (id, lease) in self.in_flight.lock().expect("in-flight lock").iter() {
                if lease.seal() {
                    calls_in_flight.insert(*id);
                }
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Whatever else is still leased by us (aborted steps) goes back to the queue now.
        let leftovers: Vec<Arc<StepLease>> = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .drain()
            .map(|(_, lease)| lease)
            .collect();
        for lease in leftovers {
            let id = lease.id();
            if calls_in_flight.contains(&id) {
                warn!(
                    migration.id = %id,
                    lease_s = cfg.lease.as_secs_f64(),
                    "an irreversible upstream call was in flight or unsettled after the grace period: lease left to expire"
                );
                continue;
            }
            self.hand_back(&lease).await;
        }
        listener.abort();
        admission.abort();
        info!("worker stopped");
        Ok(())
    }

    /// Advances one claimed migration step by step while it stays runnable and ours.
    /// `claimed_at`: when the claim statement that took its lease was sent.
    async fn process(
        &self,
        mut row: store::MigrationRow,
        claimed_at: Instant,
        shutdown: CancellationToken,
    ) {
        let Some(token) = row.lease_token else {
            return;
        };
        let id = row.id;
        let cfg = &self.deps.config;
        let lease = StepLease::new(
            id,
            token,
            cfg.lease,
            self.deps.call_time,
            claimed_at,
            shutdown.clone(),
        );
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(id, lease.clone());
        // Lives exactly as long as this step: dropped (and aborted) when it returns or when its
        // task is aborted at the end of the grace period, never left running detached.
        let _heartbeat = lease::spawn_heartbeat(self.deps.pool.clone(), lease.clone());
        let mut keep_lease = false;
        let mut hand_over = false;
        crate::metrics::claimed((Utc::now() - row.run_at).to_std().unwrap_or_default());
        // A step that keeps dying (or whose result can never be written) is failed here, not
        // run again (see `taken_over_too_often`).
        let mut given_up = taken_over_too_often(row.state(), row.rescues, &cfg.retry);

        loop {
            let state = row.state();
            let span = info_span!("step", migration.id = %id, step = %state, attempt = row.attempt);
            let started = std::time::Instant::now();
            let result = match given_up.take() {
                Some(error) => {
                    span.in_scope(|| {
                        error!(
                            rescues = row.rescues,
                            "step taken over too often; failing the migration"
                        )
                    });
                    Ok(Ok(steps::StepResult::new(StepOutcome::Failed(error))))
                }
                None => {
                    AssertUnwindSafe(steps::execute(&self.deps, &row, &lease))
                        .catch_unwind()
                        .instrument(span.clone())
                        .await
                }
            };
            crate::metrics::step_ran(state, started.elapsed());
            let step = match result {
                Ok(Ok(step)) => step,
                Ok(Err(errors::StepError::Abandon)) => {
                    // Crash simulation or lost lease: leave the row exactly as it is.
                    keep_lease = true;
                    span.in_scope(|| warn!("step abandoned; lease left to expire"));
                    break;
                }
                Ok(Err(errors::StepError::LeaseTooShort)) => {
                    // Nothing was sent; the lease may not outlast the call. Handed over (if
                    // the database answers) with the armed intent forgotten.
                    hand_over = true;
                    break;
                }
                Ok(Err(errors::StepError::Stopping)) => {
                    // Stopping before an irreversible call: nothing was sent, nothing written.
                    hand_over = true;
                    span.in_scope(|| {
                        info!("worker stopping: step handed over before its irreversible call")
                    });
                    break;
                }
                Ok(Err(errors::StepError::Corrupt(what))) => {
                    span.in_scope(|| {
                        error!(
                            problem = what,
                            "unusable stored data; failing the migration"
                        )
                    });
                    steps::StepResult::corrupt(state, what)
                }
                Ok(Err(errors::StepError::Db(e))) => {
                    span.in_scope(|| warn!(error = %e, "database error during step; will retry after lease expiry"));
                    keep_lease = true;
                    break;
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    span.in_scope(|| error!(panic = %msg, "step panicked"));
                    steps::StepResult::internal_error(state)
                }
            };
            if lease.token_lost() {
                span.in_scope(|| warn!("lease lost during step; result discarded"));
                keep_lease = true;
                break;
            }
            let recorded = self
                .record(&row, &lease, step, shutdown.is_cancelled())
                .await;
            // Only now: aborted while recording, the step still counts as having called.
            lease.next_step();
            match recorded {
                Ok(Some((next, true))) => {
                    row = next;
                }
                Ok(Some(_)) => break,
                Ok(None) => {
                    span.in_scope(|| warn!("lease lost before recording; result discarded"));
                    keep_lease = true;
                    break;
                }
                Err(e) => {
                    span.in_scope(
                        || warn!(error = %e, "could not record step result; lease will expire"),
                    );
                    keep_lease = true;
                    break;
                }
            }
        }
        if hand_over {
            self.hand_back(&lease).await;
        }
        // Finished normally (lease released, handed on, or kept to expire after an unresolved
        // irreversible call), handed over, or abandoned with the lease left to expire (a
        // simulated crash, a lost lease, a database error mid-step): either way this worker
        // must not release it at shutdown.
        self.in_flight.lock().expect("in-flight lock").remove(&id);
        if keep_lease {
            debug!(migration.id = %id, "lease left to expire");
        }
    }

    /// Releases the lease of a stopping worker (or of a step whose lease was too short for its
    /// call) so another replica resumes the migration at once. A step that never started its
    /// call forgets the intent armed for it with the lease.
    async fn hand_back(&self, lease: &StepLease) {
        let id = lease.id();
        match store::release(&self.deps.pool, id, lease.token(), !lease.called()).await {
            Ok(_) => info!(migration.id = %id, "lease released: migration handed over"),
            Err(e) => warn!(migration.id = %id, error = %e, "could not release lease"),
        }
    }

    /// Persists a step's result. Returns the new row and whether to continue with it.
    ///
    /// `stopping`: the worker is shutting down (nothing continues; the lease is released).
    /// The lease tells whether the step started an irreversible call, and whether one ended
    /// without an answer that settles it. Stopping with such a call to retry, the lease is kept
    /// to expire instead of released, so no replica reads the number before the upstream could
    /// have applied the call.
    ///
    /// Entering a step with an irreversible call that this worker runs at once, the same
    /// statement arms the step's intent (see [`crate::domain::memo`]): no intent write of its
    /// own before the call. The intent this claim armed for the step that just ran is settled
    /// here: forgotten if the step never called, recorded if it did (and the step left it).
    async fn record(
        &self,
        row: &store::MigrationRow,
        lease: &StepLease,
        mut step: steps::StepResult,
        stopping: bool,
    ) -> Result<Option<(store::MigrationRow, bool)>, db::Error> {
        // Tests: a step result slow to record (a database under load) when the grace ends.
        if self.deps.fail_points.hit("record_slowly") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let calls = lease.step_calls();
        let unresolved = calls.unresolved;
        let saved = step.row.take();
        let row = saved.as_deref().unwrap_or(row);
        let cfg = &self.deps.config;
        let state = row.state();
        let flow = row.flow();
        let waited = (Utc::now() - row.state_entered_at)
            .to_std()
            .unwrap_or_default();
        let stored_waiting = row.stored_waiting_for();
        let ctx = StepContext {
            state,
            flow,
            attempt: row.attempt.max(1),
            otp_attempts_left: row.otp_attempts_left,
            waited,
            waiting_for: stored_waiting.as_ref().map(|w| w.reason(state)),
        };
        // What a poll of a parked migration found missing (its `waiting_for` if it keeps waiting).
        let reason = match &step.outcome {
            StepOutcome::NotYet {
                waiting_for: Some(reason),
                ..
            } => Some(reason.clone()),
            _ => None,
        };
        // Meta throttled a batch's migration: its batch admits nothing more for a while (the
        // delay Meta asked for, if any, until the retry's delay is known).
        let mut throttled = match &step.outcome {
            StepOutcome::Transient { error, retry_after }
                if row.batch_id.is_some() && pacing::is_throttling(error) =>
            {
                Some(*retry_after)
            }
            _ => None,
        };
        let decision = decide(ctx, step.outcome, &cfg.retry, rand::random::<f64>());
        let retrying = matches!(decision, Decision::Retry { .. });
        let otp_exhausted = matches!(decision, Decision::OtpExhausted(_));
        let mut patch = step.patch;
        if let Some(key) = MemoKey::intent_of(state)
            && key.intent(&row.step_memo, lease.token()) == Intent::Armed
            && !patch.memo.touches(key)
        {
            let memo = std::mem::take(&mut patch.memo);
            patch.memo = if calls.called {
                memo.set(key, MemoKey::recorded(Utc::now()))
            } else {
                memo.remove(key)
            };
        }
        let guard = store::Guard {
            lease_token: Some(lease.token()),
            ..Default::default()
        };
        let mut event_data = step.event_data;
        let (lease_write, event, cont) = match decision {
            Decision::Advance { to } => {
                // A batch's migration entering a paced state from outside (the voice fallback
                // requests a new code) waits for a slot like the others.
                let held = row.batch_id.is_some() && pacing::held_on_entry(state, to);
                let cont = !to.is_terminal() && !to.is_parked() && !stopping && !held;
                if cont
                    && let Some(key) = MemoKey::intent_of(to)
                    && !patch.memo.leaves_set(key, &row.step_memo)
                {
                    // Committed with the transition, before the call; an intent already there
                    // (an earlier call may have been sent) is kept as it is.
                    patch.memo = std::mem::take(&mut patch.memo)
                        .set(key, MemoKey::armed(Utc::now(), lease.token()));
                }
                patch.state = Some(to);
                patch.attempt = Some(i32::from(cont));
                patch.error = Some(None);
                // A key rotation completes a migration again: it keeps its first `completed_at`.
                if to == MigrationState::Completed && row.completed_at.is_none() {
                    patch.completed_now = true;
                }
                // Parking: say on whom and for what, until when (a state change clears it).
                if let Some((timeout, _)) = cfg.retry.wait_limit(to)
                    && let Some(wait) = WaitingFor::polled(to, Utc::now(), timeout)
                {
                    patch.waiting_for = Some(Some(json!(wait)));
                }
                patch.run_at = Some(if to == MigrationState::AwaitingOtp {
                    let expires = patch
                        .otp_expires_at
                        .flatten()
                        .or(row.otp_expires_at)
                        .unwrap_or_else(|| {
                            Utc::now() + chrono::Duration::from_std(cfg.otp.ttl).unwrap_or_default()
                        });
                    patch.otp_expires_at = Some(Some(expires));
                    patch.waiting_for = Some(Some(json!(WaitingFor::otp(Utc::now(), expires))));
                    let method = patch.otp_method.as_deref().unwrap_or(&row.otp_method);
                    let requested = patch.otp_requested_at.or(row.otp_requested_at);
                    let memo = patch.memo.applied_to(&row.step_memo);
                    store::RunAt::At(steps::otp::awaiting_otp_due(
                        &cfg.otp, method, requested, expires, &memo,
                    ))
                } else if held {
                    store::RunAt::Held
                } else {
                    store::RunAt::Now
                });
                let lease_write = if cont {
                    store::Lease::Extend(cfg.lease)
                } else {
                    store::Lease::Release
                };
                (lease_write, transition_event(state, to, event_data), cont)
            }
            Decision::Retry {
                delay,
                error,
                counts_attempt,
            } => {
                if counts_attempt {
                    crate::metrics::step_retried(state);
                }
                // An irreversible call of this step ended without an answer that settles it
                // (a timeout, a reset, a 5xx): the upstream may still be applying it. The retry,
                // which reads the upstream state before calling again, waits as long as a call
                // may take, so that it reads what that call did.
                let delay = if unresolved {
                    delay.max(self.deps.call_time)
                } else {
                    delay
                };
                if let Some(pause) = &mut throttled {
                    // As long as the migration itself waits before trying again.
                    *pause = Some(delay);
                }
                patch.run_at = Some(store::RunAt::After(delay));
                // A poll that got its answer ends a run of failed tries: `max_attempts` counts
                // tries in a row, so blips spread over a wait of days do not fail it.
                if !counts_attempt {
                    patch.attempt = Some(0);
                }
                let waiting =
                    reason
                        .zip(cfg.retry.wait_limit(state))
                        .and_then(|(reason, (timeout, _))| {
                            still_waiting(row, stored_waiting.as_ref(), &reason, timeout)
                        });
                let event = error.map(|e| {
                    if let Some(obj) = event_data.as_object_mut() {
                        obj.insert("error".into(), json!(e));
                        obj.insert("attempt".into(), json!(row.attempt));
                        obj.insert("retry_in_seconds".into(), json!(delay.as_secs_f64()));
                    }
                    NewEvent {
                        kind: EventType::StepRetryScheduled,
                        from_state: Some(state.as_str().into()),
                        to_state: Some(state.as_str().into()),
                        data: event_data.clone(),
                    }
                });
                let event = match waiting {
                    Some((wait, changed)) => {
                        let previous = row.waiting_for.as_ref().map(|w| w["code"].clone());
                        patch.waiting_for = Some(Some(json!(wait)));
                        changed.then(|| NewEvent {
                            kind: EventType::WaitingForChanged,
                            from_state: Some(state.as_str().into()),
                            to_state: Some(state.as_str().into()),
                            data: json!({ "waiting_for": wait, "previous": previous }),
                        })
                    }
                    None => event,
                };
                (store::Lease::Release, event, false)
            }
            Decision::OtpRejected { error } => {
                patch.state = Some(MigrationState::AwaitingOtp);
                patch.attempt = Some(0);
                patch.otp_attempts_left = Some(row.otp_attempts_left - 1);
                patch.run_at = Some(match row.otp_expires_at {
                    Some(t) => store::RunAt::At(steps::otp::awaiting_otp_due(
                        &cfg.otp,
                        &row.otp_method,
                        row.otp_requested_at,
                        t,
                        &row.step_memo,
                    )),
                    None => store::RunAt::After(cfg.otp.ttl),
                });
                patch.error = Some(Some(json!(error)));
                if let Some(expires) = row.otp_expires_at {
                    patch.waiting_for = Some(Some(json!(WaitingFor::otp(Utc::now(), expires))));
                }
                if let Some(obj) = event_data.as_object_mut() {
                    obj.insert("error".into(), json!(error));
                }
                (
                    store::Lease::Release,
                    transition_event(state, MigrationState::AwaitingOtp, event_data),
                    false,
                )
            }
            Decision::Fail(error) | Decision::OtpExhausted(error) => {
                if otp_exhausted {
                    // The rejected code used the last attempt: none is left.
                    patch.otp_attempts_left = Some(0);
                }
                patch.state = Some(MigrationState::Failed);
                patch.attempt = Some(0);
                patch.failed_step = Some(Some(state.as_str().into()));
                patch.error = Some(Some(json!(error)));
                // After a call that ended unsettled the upstream may still apply it: a retry
                // (`RunAt::NotBefore`) waits one call time, as the worker's own retries do.
                patch.run_at = Some(if unresolved {
                    store::RunAt::After(self.deps.call_time)
                } else {
                    store::RunAt::Now
                });
                if let Some(obj) = event_data.as_object_mut() {
                    obj.insert("error".into(), json!(error));
                }
                (
                    store::Lease::Release,
                    transition_event(state, MigrationState::Failed, event_data),
                    false,
                )
            }
        };
        let lease_write = if stopping && retrying && unresolved {
            warn!(
                migration.id = %row.id,
                step = %state,
                "stopping after an irreversible call without a settling answer: lease left to expire"
            );
            store::Lease::Keep
        } else if stopping {
            store::Lease::Release
        } else {
            lease_write
        };
        // One statement: the change, its event, its webhook and the wake-up commit together.
        let sent = Instant::now();
        let mut conn = self.deps.pool.acquire().await?;
        let updated =
            crate::core::transition::apply(&mut conn, row, &guard, &patch, lease_write, event)
                .await?;
        drop(conn);
        if updated.is_some() && matches!(lease_write, store::Lease::Extend(_)) {
            lease.extended(sent);
        }
        if let (Some(r), Some(batch)) = (&updated, row.batch_id) {
            let to = r.state();
            if pacing::frees_slot(state, to) || r.is_held() {
                // A slot is free (or a held migration may take one): admit at once.
                self.admission.notify_one();
            }
            if let Some(pause) = throttled {
                let pause = pause.unwrap_or(cfg.retry.base);
                match db::batches::pause(&self.deps.pool, batch, pause).await {
                    Ok(until) => {
                        crate::metrics::batch_throttled();
                        info!(migration.id = %r.id, batch.id = %batch, paused_until = until.map(tracing::field::display), "Meta throttled a batch migration: batch paused");
                    }
                    Err(e) => warn!(batch.id = %batch, error = %e, "could not pause the batch"),
                }
            }
        }
        if let Some(r) = &updated {
            if r.state != state.as_str() {
                info!(migration.id = %r.id, step = %state, from = %state, to = %r.state, "transition");
            } else {
                debug!(migration.id = %r.id, step = %r.state, run_at = %r.run_at, "step rescheduled");
            }
        }
        Ok(updated.map(|r| (r, cont)))
    }
}

/// A poll of a waiting migration (`awaiting_signup`, `awaiting_channel`) found `reason`
/// missing: the `waiting_for` to write if it differs from the stored one, and whether its code
/// changed.
fn still_waiting(
    row: &store::MigrationRow,
    stored: Option<&WaitingFor>,
    reason: &crate::domain::MigrationError,
    timeout: Duration,
) -> Option<(WaitingFor, bool)> {
    // Nothing stored (resumed by `retry`): the wait began when the state was entered.
    let fresh = WaitingFor::polled(row.state(), row.state_entered_at, timeout)?;
    let (next, changed) = WaitingFor::after_poll(stored, reason, fresh.since, fresh.deadline);
    next.map(|w| (w, changed))
}

fn transition_event(
    from: MigrationState,
    to: MigrationState,
    data: serde_json::Value,
) -> Option<NewEvent> {
    Some(NewEvent::transition(from.as_str(), to, data))
}
