//! The lease of one claimed migration as its step, its heartbeat and the worker's shutdown see
//! it.
//!
//! * **Held or lost.** The lease is lost when the heartbeat finds another token on the row, or
//!   when its expiry passed locally without a confirmed extension (the database was
//!   unreachable): another replica may claim it from then on. The expiry is tracked from the
//!   moment each extending statement was *sent*, so the local bound is never later than the
//!   database's.
//! * **Before an intent write** a step calls [`StepLease::may_start`]: it fails on a lost lease
//!   ([`StepError::Abandon`]) and once the worker is stopping ([`StepError::Stopping`]): no new
//!   irreversible call starts after SIGTERM, so every call in flight at the signal began before
//!   it and ends within `UPSTREAM_TIMEOUT_SECONDS`, which the grace period exceeds.
//! * **Right before the irreversible call** it takes an [`IrreversibleCall`] with
//!   [`StepLease::irreversible`], which checks the lease again. While one is alive, the shutdown
//!   path never releases the lease: past the grace period such a step is aborted and its lease
//!   left to expire, because the upstream may still apply a call we hung up on, and no other
//!   replica may read the number before it could have.
//! * A call that ended without an answer that settles it (timeout, reset, 5xx, a 2xx we could
//!   not read: [`clients::Error::maybe_applied`]) leaves the lease *unresolved*: a stopping
//!   worker records the retry but keeps the lease instead of handing the migration over at once;
//!   past the grace period such a lease is left to expire too, whether its step recorded yet or
//!   not ([`StepLease::seal`]).
//! * The heartbeat ([`spawn_heartbeat`]) is owned by the step: dropping its handle (the step
//!   ended, or its task was aborted) aborts it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;
use uuid::Uuid;

use super::errors::StepError;
use crate::clients;
use crate::db::migrations as store;

/// One claimed migration's lease (shared by the step, its heartbeat and the shutdown path).
#[derive(Debug)]
pub struct StepLease {
    id: Uuid,
    token: Uuid,
    length: Duration,
    /// The lease an irreversible call needs left when it starts (see [`Self::irreversible`]).
    call_budget: Duration,
    /// The worker is stopping (SIGTERM): no new irreversible call may start.
    stopping: CancellationToken,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Local bound of the lease's expiry: when the last extending statement was sent + length.
    valid_until: Instant,
    /// The row no longer carries our token.
    lost: bool,
    /// Irreversible calls in flight.
    calls: usize,
    /// An irreversible call of the current step ended without an answer that settles it.
    unresolved: bool,
    /// One of this lease's irreversible calls did, whatever was recorded since: handed back
    /// at once (past the grace period), another replica could read the number before the
    /// upstream applied the call late, and call again.
    unsettled: bool,
    /// The current step started an irreversible call.
    called: bool,
    /// Set by the shutdown path past the grace period: no call may start any more.
    sealed: bool,
}

impl StepLease {
    /// The lease a claim statement sent at `claimed_at` took for `length`; `call_time`: the
    /// longest an upstream call may take (`UPSTREAM_TIMEOUT_SECONDS`).
    pub fn new(
        id: Uuid,
        token: Uuid,
        length: Duration,
        call_time: Duration,
        claimed_at: Instant,
        stopping: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            token,
            length,
            // Configuration makes the lease at least twice the call time (`validate_lease`);
            // the half-lease cap only matters for the shorter leases of tests.
            call_budget: call_time.min(length / 2),
            stopping,
            state: Mutex::new(State {
                valid_until: claimed_at + length,
                lost: false,
                calls: 0,
                unresolved: false,
                unsettled: false,
                called: false,
                sealed: false,
            }),
        })
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The token the row's guarded writes need.
    pub fn token(&self) -> Uuid {
        self.token
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters and flags: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A statement sent at `sent` pushed the expiry out by the lease's length.
    pub fn extended(&self, sent: Instant) {
        let mut s = self.state();
        s.valid_until = s.valid_until.max(sent + self.length);
    }

    /// The row no longer carries our token.
    pub fn mark_lost(&self) {
        self.state().lost = true;
    }

    /// Whether the heartbeat found another token on the row.
    pub fn token_lost(&self) -> bool {
        self.state().lost
    }

    /// Whether another replica may hold (or claim) the migration now.
    pub fn is_lost(&self) -> bool {
        let s = self.state();
        s.lost || Instant::now() >= s.valid_until
    }

    /// Whether the worker is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Before an intent write: the lease must be held, long enough for the call (else the
    /// intent would be left behind by a call [`Self::irreversible`] then refuses, and read as
    /// "may have been sent"), and the worker not stopping.
    pub fn may_start(&self) -> Result<(), StepError> {
        if self.is_lost() {
            warn!(migration.id = %self.id, "lease lost: not starting an irreversible call");
            return Err(StepError::Abandon);
        }
        let valid_until = self.state().valid_until;
        if self.too_short(valid_until) {
            return Err(self.too_short_to_call(None));
        }
        if self.stopping() {
            return Err(StepError::Stopping);
        }
        Ok(())
    }

    /// Held until `valid_until`, with less left than a call may take.
    fn too_short(&self, valid_until: Instant) -> bool {
        Instant::now() + self.call_budget >= valid_until
    }

    /// The refusal of a lease [`Self::too_short`] for `call`: the migration is handed over.
    fn too_short_to_call(&self, call: Option<&'static str>) -> StepError {
        warn!(
            migration.id = %self.id,
            call,
            "lease too short to cover the call: handing the migration over"
        );
        StepError::LeaseTooShort
    }

    /// Right before an irreversible upstream call: checks the lease again and marks the call
    /// in flight until the returned guard is finished or dropped. The lease left must cover the
    /// whole call (`UPSTREAM_TIMEOUT_SECONDS`) even if no heartbeat gets through any more: else
    /// another replica could claim the migration, read the number and call again while Meta or
    /// 360dialog is still applying this call. Heartbeats keep at least two-thirds of the lease
    /// left while the database answers, so this only refuses once they have been failing.
    pub fn irreversible(&self, what: &'static str) -> Result<IrreversibleCall<'_>, StepError> {
        let mut s = self.state();
        if s.lost || Instant::now() >= s.valid_until {
            warn!(migration.id = %self.id, call = what, "lease lost: not calling upstream");
            return Err(StepError::Abandon);
        }
        if self.too_short(s.valid_until) {
            return Err(self.too_short_to_call(Some(what)));
        }
        if s.sealed {
            return Err(StepError::Stopping);
        }
        s.calls += 1;
        s.called = true;
        Ok(IrreversibleCall {
            lease: self,
            finished: false,
        })
    }

    /// Irreversible calls in flight now.
    pub fn calls_in_flight(&self) -> usize {
        self.state().calls
    }

    /// Past the grace period: no call may start any more. Returns whether the lease must be
    /// left to expire rather than handed back: a call is in flight, or one ended unsettled
    /// (its step may still be recording the retry, or have just recorded it).
    pub fn seal(&self) -> bool {
        let mut s = self.state();
        s.sealed = true;
        s.calls > 0 || s.unsettled
    }

    /// Whether the current step started an irreversible call.
    pub fn called(&self) -> bool {
        self.state().called
    }

    /// What the current step did with irreversible calls: whether it started one, and whether
    /// one ended without an answer that settles it.
    pub fn step_calls(&self) -> StepCalls {
        let s = self.state();
        StepCalls {
            called: s.called,
            unresolved: s.unresolved,
        }
    }

    /// The current step's result is recorded: the next step starts with no calls. Until then a
    /// release (shutdown) still knows that the step called, so it keeps the intent.
    pub fn next_step(&self) {
        let mut s = self.state();
        s.called = false;
        s.unresolved = false;
    }
}

/// What a step did with irreversible calls (see [`StepLease::step_calls`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepCalls {
    /// It started one.
    pub called: bool,
    /// One ended without an answer that settles it.
    pub unresolved: bool,
}

/// An irreversible upstream call in flight (see [`StepLease::irreversible`]).
#[must_use = "finish the call with its result"]
pub struct IrreversibleCall<'a> {
    lease: &'a StepLease,
    finished: bool,
}

impl IrreversibleCall<'_> {
    /// The call returned: it is settled unless the upstream may still apply it.
    pub fn finish<T>(mut self, result: &Result<T, clients::Error>) {
        let unresolved = result.as_ref().err().is_some_and(|e| e.maybe_applied());
        let mut s = self.lease.state();
        s.calls -= 1;
        s.unresolved |= unresolved;
        s.unsettled |= unresolved;
        self.finished = true;
    }
}

impl Drop for IrreversibleCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped mid-call (the step was aborted): nobody knows what the upstream did.
            let mut s = self.lease.state();
            s.calls -= 1;
            s.unresolved = true;
            s.unsettled = true;
        }
    }
}

/// Extends the lease every third of its length while the returned handle lives; marks it lost
/// when the row no longer carries our token. Dropping the handle aborts the heartbeat.
pub fn spawn_heartbeat(pool: PgPool, lease: Arc<StepLease>) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease.length / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let sent = Instant::now();
            match store::heartbeat(&pool, lease.id, lease.token, lease.length).await {
                Ok(true) => lease.extended(sent),
                Ok(false) => {
                    lease.mark_lost();
                    return;
                }
                // The database is unreachable: keep trying; the local expiry stops new
                // irreversible calls, and the guarded writes fail once another worker claimed.
                Err(e) => warn!(migration.id = %lease.id, error = %e, "heartbeat failed"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_lease(length: Duration) -> (Arc<StepLease>, CancellationToken) {
        let stop = CancellationToken::new();
        (
            StepLease::new(
                Uuid::new_v4(),
                Uuid::new_v4(),
                length,
                Duration::from_secs(30),
                Instant::now(),
                stop.clone(),
            ),
            stop,
        )
    }

    #[test]
    fn no_call_starts_unless_the_lease_left_covers_it() {
        let lease = |claimed_ago: u64| {
            StepLease::new(
                Uuid::new_v4(),
                Uuid::new_v4(),
                Duration::from_secs(60),
                Duration::from_secs(30),
                Instant::now() - Duration::from_secs(claimed_ago),
                CancellationToken::new(),
            )
        };
        // 40 s left (a heartbeat is due every 20 s): the call may start.
        assert!(lease(20).irreversible("register").is_ok());
        // 29 s left, the heartbeats failing: a 30 s call could outlive the lease. No intent
        // is written for it either.
        let short = lease(31);
        assert!(!short.is_lost(), "still held");
        assert!(matches!(short.may_start(), Err(StepError::LeaseTooShort)));
        assert!(matches!(
            short.irreversible("register"),
            Err(StepError::LeaseTooShort)
        ));
        assert_eq!(short.calls_in_flight(), 0);
        // Extended by a heartbeat sent now: it may again.
        short.extended(Instant::now());
        assert!(short.irreversible("register").is_ok());
        // A lease shorter than twice the call time (tests only) needs half of it left.
        let tight = StepLease::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Duration::from_secs(2),
            Duration::from_secs(2),
            Instant::now(),
            CancellationToken::new(),
        );
        assert!(tight.irreversible("register").is_ok());
    }

    fn timeout() -> clients::Error {
        clients::Error::Transport {
            service: clients::Service::Meta,
            message: "timeout".into(),
            maybe_applied: true,
        }
    }

    #[test]
    fn a_call_is_in_flight_until_finished_or_dropped() {
        let (lease, _) = new_lease(Duration::from_secs(60));
        assert!(!lease.called());
        let call = lease.irreversible("register").unwrap();
        assert_eq!(lease.calls_in_flight(), 1);
        call.finish(&Ok::<(), clients::Error>(()));
        assert_eq!(lease.calls_in_flight(), 0);
        let step = lease.step_calls();
        assert!(step.called && !step.unresolved);
        assert!(lease.called(), "until the step is recorded");
        lease.next_step();
        assert!(!lease.called(), "reset for the next step");

        let call = lease.irreversible("register").unwrap();
        drop(call);
        assert_eq!(lease.calls_in_flight(), 0);
        assert!(
            lease.step_calls().unresolved,
            "a call dropped mid-flight is unresolved"
        );
        lease.next_step();
        assert!(!lease.step_calls().unresolved, "reset for the next step");
    }

    #[test]
    fn an_ambiguous_error_leaves_the_call_unresolved() {
        let (lease, _) = new_lease(Duration::from_secs(60));
        lease
            .irreversible("verify_code")
            .unwrap()
            .finish(&Err::<(), _>(timeout()));
        assert!(lease.step_calls().unresolved);
    }

    #[test]
    fn no_new_call_once_stopping_lost_expired_or_sealed() {
        let (lease, stop) = new_lease(Duration::from_secs(60));
        assert!(lease.may_start().is_ok());
        stop.cancel();
        assert!(matches!(lease.may_start(), Err(StepError::Stopping)));
        // A call whose intent is already recorded still goes out while stopping...
        lease
            .irreversible("request_code")
            .unwrap()
            .finish(&Ok::<(), clients::Error>(()));
        // ...but not once the grace period is over.
        assert!(!lease.seal());
        assert!(matches!(
            lease.irreversible("request_code"),
            Err(StepError::Stopping)
        ));

        let (lease, _) = new_lease(Duration::from_secs(60));
        lease.mark_lost();
        assert!(matches!(lease.may_start(), Err(StepError::Abandon)));
        assert!(matches!(
            lease.irreversible("register"),
            Err(StepError::Abandon)
        ));

        let (expired, _) = new_lease(Duration::ZERO);
        assert!(
            expired.is_lost(),
            "an expiry passed without an extension is lost"
        );
        assert!(matches!(expired.may_start(), Err(StepError::Abandon)));
        expired.extended(Instant::now() + Duration::from_secs(5));
        assert!(!expired.is_lost());
    }

    #[test]
    fn seal_reports_calls_in_flight() {
        let (lease, _) = new_lease(Duration::from_secs(60));
        let call = lease.irreversible("register").unwrap();
        assert!(lease.seal());
        call.finish(&Ok::<(), clients::Error>(()));
        assert!(!lease.seal());
    }

    /// A call that ended without a settling answer keeps the lease from being handed back for
    /// the lease's whole life, its step's result recorded or not.
    #[test]
    fn seal_reports_a_call_that_ended_unsettled() {
        let (lease, _) = new_lease(Duration::from_secs(60));
        let call = lease.irreversible("register").unwrap();
        let timed_out: Result<(), clients::Error> = Err(clients::Error::Transport {
            service: crate::domain::upstream::Service::Meta,
            message: "timed out".into(),
            maybe_applied: true,
        });
        call.finish(&timed_out);
        lease.next_step();
        assert!(lease.seal());
        let (lease, _) = new_lease(Duration::from_secs(60));
        drop(lease.irreversible("register").unwrap());
        lease.next_step();
        assert!(lease.seal(), "dropped mid-call");
    }
}
