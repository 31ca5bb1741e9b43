//! The pure transition rules: given where a migration is and how its step went, where it goes
//! next and when. No I/O: the worker executes steps and persists what [`decide`] returns.

use std::time::Duration;

use super::{ErrorCode, Flow, MigrationError, MigrationState};

/// How one execution of a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The step finished. `skip_to` overrides the usual successor when upstream state shows
    /// later steps are already done (e.g. the number is already registered).
    Done { skip_to: Option<MigrationState> },
    /// Nothing to do yet (channel not running, OTP deadline not reached): look again after
    /// `after`. `waiting_for` says what is missing, used if the wait times out.
    NotYet {
        after: Duration,
        waiting_for: Option<MigrationError>,
    },
    /// A transient upstream failure: retry with backoff.
    Transient {
        error: MigrationError,
        retry_after: Option<Duration>,
    },
    /// Meta asked to try again after some time (2388103, "There was an error migrating this
    /// phone number"): retried with the long backoff of [`RetryPolicy::try_later_base`] up to
    /// [`RetryPolicy::try_later_total`] in this state, whatever `is_transient` said.
    TryLater { error: MigrationError },
    /// A permanent failure: the migration fails with this error.
    Failed(MigrationError),
    /// Meta rejected the submitted verification code.
    OtpRejected(MigrationError),
}

/// What to persist.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Transition to `to`, runnable at once.
    Advance { to: MigrationState },
    /// Stay; run the same step again after `delay`. `counts_attempt` is false for polls, whose
    /// answer starts the count of tries again.
    Retry {
        delay: Duration,
        error: Option<MigrationError>,
        counts_attempt: bool,
    },
    /// Back to `awaiting_otp` with one attempt less.
    OtpRejected { error: MigrationError },
    /// Terminal `failed`.
    Fail(MigrationError),
    /// The last attempt's code was rejected too: terminal `failed`, with no attempt left.
    OtpExhausted(MigrationError),
}

/// Retry and timeout knobs, from configuration.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First retry delay; doubles per attempt.
    pub base: Duration,
    /// Longest computed backoff.
    pub cap: Duration,
    /// Longest `Retry-After` we honour.
    pub max_retry_after: Duration,
    /// Attempts of one step in a row (including the first) before a transient error fails the
    /// migration. A poll that got its answer (`NotYet`) starts the count again.
    pub max_attempts: i32,
    /// How long `awaiting_channel` waits for a running channel with API-key permission.
    pub channel_timeout: Duration,
    /// How long `awaiting_signup` waits for the client to finish Embedded Signup (360dialog
    /// to list a channel for the number).
    pub signup_timeout: Duration,
    /// First delay after Meta's "try again after some time" (doubles per try).
    pub try_later_base: Duration,
    /// Longest delay between two such tries.
    pub try_later_cap: Duration,
    /// How long a step keeps trying after "try again after some time" before it fails.
    pub try_later_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(3600),
            max_attempts: 10,
            channel_timeout: Duration::from_secs(3600),
            signup_timeout: Duration::from_secs(7 * 86_400),
            try_later_base: Duration::from_secs(60),
            try_later_cap: Duration::from_secs(900),
            try_later_total: Duration::from_secs(6 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The states that poll for someone else's action until a deadline: how long each waits,
    /// and the code it fails with at the deadline when the poll named no reason.
    pub fn wait_limit(&self, state: MigrationState) -> Option<(Duration, ErrorCode)> {
        match state {
            MigrationState::AwaitingSignup => {
                Some((self.signup_timeout, ErrorCode::SignupNotCompleted))
            }
            MigrationState::AwaitingChannel => {
                Some((self.channel_timeout, ErrorCode::ChannelTimeout))
            }
            _ => None,
        }
    }

    /// Capped exponential backoff with "equal jitter": half fixed, half random, so retries of
    /// many migrations spread out but never retry immediately. `jitter` is in `[0, 1)`.
    pub fn backoff(&self, attempt: i32, jitter: f64) -> Duration {
        equal_jitter(self.base, self.cap, attempt, jitter)
    }

    /// The delay before try `attempt + 1` after "try again after some time": doubling from
    /// `try_later_base` up to `try_later_cap` (equal jitter), never past the end of
    /// `try_later_total` (`waited` is the time spent in the state so far), so the last try
    /// happens at that end.
    pub fn try_later_delay(&self, attempt: i32, waited: Duration, jitter: f64) -> Duration {
        equal_jitter(self.try_later_base, self.try_later_cap, attempt, jitter)
            .min(self.try_later_total.saturating_sub(waited))
    }
}

/// `base` doubled per attempt after the first, at most `cap`; half of it fixed, half scaled
/// by `jitter` in `[0, 1)`.
fn equal_jitter(base: Duration, cap: Duration, attempt: i32, jitter: f64) -> Duration {
    let exp = attempt.clamp(1, 30) - 1;
    let capped = base.saturating_mul(1u32 << exp.min(20)).min(cap);
    let half = capped / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// `7 days`, `1 day 2 h`, `1 h 5 min`, `3 min`, `12 s`: a duration as people read it in an
/// error message.
pub fn spoken(d: Duration) -> String {
    let s = d.as_secs();
    let days = s / 86_400;
    if days > 0 {
        let unit = if days == 1 { "day" } else { "days" };
        return match (s % 86_400) / 3600 {
            0 => format!("{days} {unit}"),
            h => format!("{days} {unit} {h} h"),
        };
    }
    match (s / 3600, (s % 3600) / 60) {
        (0, 0) => format!("{s} s"),
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// What `decide` needs to know about the migration.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub state: MigrationState,
    pub flow: Flow,
    /// Attempts of this step so far, including the one that just ended (>= 1).
    pub attempt: i32,
    pub otp_attempts_left: i32,
    /// Time spent in this state so far.
    pub waited: Duration,
    /// What the migration waits for in a polled state (its stored `waiting_for`), as the
    /// error it fails with at the deadline.
    pub waiting_for: Option<MigrationError>,
}

/// The usual next state after `state` succeeds.
pub fn successor(state: MigrationState, flow: Flow) -> MigrationState {
    use MigrationState::*;
    match (state, flow) {
        (Queued, _) => Prechecking,
        (Prechecking, Flow::Otp) => Initiating,
        (Prechecking, Flow::EmbeddedSignup) => AwaitingSignup,
        (AwaitingSignup, _) => CopyingTemplates,
        (Initiating, _) => RequestingOtp,
        (RequestingOtp, _) => AwaitingOtp,
        (AwaitingOtp, _) => VerifyingOtp,
        (VerifyingOtp, _) => Registering,
        (Registering, _) => CopyingTemplates,
        (CopyingTemplates, _) => AwaitingChannel,
        (AwaitingChannel, _) => GeneratingApiKey,
        (GeneratingApiKey, _) => Completed,
        (s @ (Completed | Failed | Cancelled), _) => s,
    }
}

/// The worker's edges besides [`successor`]: a step may skip ahead when upstream state shows
/// later steps are already done, and the voice fallback goes back to request a new code.
/// Anything else a step asks for is refused by [`decide`].
pub fn skip_allowed(from: MigrationState, to: MigrationState, flow: Flow) -> bool {
    use MigrationState::*;
    matches!(
        (from, to, flow),
        // The precheck found the number already in the destination.
        (Prechecking, RequestingOtp | Registering | CopyingTemplates, Flow::Otp)
            // Embedded Signup with a known channel id (given at create, or set with
            // `PATCH /v1/migrations/{id}` while prechecking): no signup to wait for.
            | (Prechecking, CopyingTemplates, Flow::EmbeddedSignup)
            // Meta says the number is already verified (136024, or `code_verification_status`).
            | (RequestingOtp, Registering, _)
            // No code by SMS in time: call the client instead.
            | (AwaitingOtp, RequestingOtp, _)
    )
}

/// A migration claimed from an expired lease `rescues` times in a row (no claim found it
/// released in between): its worker died in its step, lost its database or could not write,
/// or stopped with a call unanswered. Such a step is not run again once that reaches
/// `max_attempts`: each run may repeat its upstream calls (a new 360dialog key each time), and
/// nothing else would ever stop it.
pub fn taken_over_too_often(
    state: MigrationState,
    rescues: i32,
    policy: &RetryPolicy,
) -> Option<MigrationError> {
    if rescues < policy.max_attempts {
        return None;
    }
    let mut error = MigrationError::new(ErrorCode::InternalError, state).with_message(format!(
        "The migration was taken over {rescues} times in a row from a worker whose lease expired in the {state} step (it died, lost its database connection, or could not write its result): the step is not started again. Retry the migration once the cause is fixed."
    ));
    error.retryable = true;
    Some(error)
}

/// Decide what happens after a step ran. Pure: `jitter` is the only randomness, passed in.
pub fn decide(
    ctx: StepContext,
    outcome: StepOutcome,
    policy: &RetryPolicy,
    jitter: f64,
) -> Decision {
    match outcome {
        StepOutcome::Done { skip_to: None } => Decision::Advance {
            to: successor(ctx.state, ctx.flow),
        },
        StepOutcome::Done { skip_to: Some(to) } => {
            if to == successor(ctx.state, ctx.flow) || skip_allowed(ctx.state, to, ctx.flow) {
                Decision::Advance { to }
            } else {
                let mut error = MigrationError::new(ErrorCode::InternalError, ctx.state);
                error.message = format!(
                    "The {} step asked to go to {to}, which the state machine does not allow.",
                    ctx.state
                );
                Decision::Fail(error)
            }
        }
        StepOutcome::NotYet { after, waiting_for } => {
            let Some((timeout, code)) = policy.wait_limit(ctx.state) else {
                return Decision::Retry {
                    delay: after,
                    error: None,
                    counts_attempt: false,
                };
            };
            // The deadline of `waiting_for`: fail with the reason of the wait (its code, actor
            // and remediation), and never poll past it.
            if ctx.waited >= timeout {
                let mut error = waiting_for.unwrap_or_else(|| MigrationError::new(code, ctx.state));
                error.message = format!("{} Waited {} for it.", error.message, spoken(timeout));
                return Decision::Fail(error);
            }
            Decision::Retry {
                delay: after.min(timeout - ctx.waited),
                error: None,
                counts_attempt: false,
            }
        }
        StepOutcome::Transient { error, retry_after } => {
            // A wait's deadline holds for a look that failed too (a poll that got its answer
            // starts the count of tries again, so the count alone could run on for hours): no
            // retry is scheduled past it, and a look that fails there ends the wait as the
            // wait ends, with what it waited for, the failed look as its upstream detail.
            let wait = policy.wait_limit(ctx.state);
            let left = wait.map(|(timeout, _)| timeout.saturating_sub(ctx.waited));
            if let Some((timeout, code)) = wait
                && left == Some(Duration::ZERO)
            {
                let mut reason = ctx
                    .waiting_for
                    .unwrap_or_else(|| MigrationError::new(code, ctx.state));
                reason.message = format!(
                    "{} Waited {} for it; the last look failed: {}",
                    reason.message,
                    spoken(timeout),
                    error.message
                );
                reason.upstream = error.upstream;
                return Decision::Fail(reason);
            }
            if ctx.attempt >= policy.max_attempts {
                let mut error = error;
                error.retryable = true;
                error.message = format!(
                    "{} It failed on each of {} tries.",
                    error.message, ctx.attempt
                );
                return Decision::Fail(error);
            }
            let backoff = policy.backoff(ctx.attempt, jitter);
            let delay = match retry_after {
                Some(ra) => backoff.max(ra.min(policy.max_retry_after)),
                None => backoff,
            };
            let delay = left.map_or(delay, |left| delay.min(left));
            Decision::Retry {
                delay,
                error: Some(error),
                counts_attempt: true,
            }
        }
        StepOutcome::TryLater { error } => {
            if ctx.waited >= policy.try_later_total {
                let mut error = error;
                error.retryable = true;
                let tries = ctx.attempt;
                error.message = format!(
                    "Meta answered \"There was an error migrating this phone number. Please try again after some time.\" to each of {tries} {} over {}.",
                    if tries == 1 { "try" } else { "tries" },
                    spoken(ctx.waited)
                );
                return Decision::Fail(error);
            }
            Decision::Retry {
                delay: policy.try_later_delay(ctx.attempt, ctx.waited, jitter),
                error: Some(error),
                counts_attempt: true,
            }
        }
        StepOutcome::Failed(error) => Decision::Fail(error),
        StepOutcome::OtpRejected(error) => {
            if ctx.otp_attempts_left <= 1 {
                let mut error = error;
                error.retryable = true;
                Decision::OtpExhausted(error)
            } else {
                Decision::OtpRejected { error }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationState::*;

    fn ctx(state: MigrationState, attempt: i32) -> StepContext {
        StepContext {
            state,
            flow: Flow::Otp,
            attempt,
            otp_attempts_left: 5,
            waited: Duration::ZERO,
            waiting_for: None,
        }
    }

    fn err(code: ErrorCode, step: MigrationState) -> MigrationError {
        MigrationError::new(code, step)
    }

    #[test]
    fn a_step_taken_over_max_attempts_times_in_a_row_is_not_run_again() {
        let p = RetryPolicy::default();
        assert!(taken_over_too_often(Registering, 0, &p).is_none());
        assert!(taken_over_too_often(Registering, p.max_attempts - 1, &p).is_none());
        let e = taken_over_too_often(GeneratingApiKey, p.max_attempts, &p).expect("fails");
        assert_eq!(
            (e.code, e.step, e.retryable),
            (ErrorCode::InternalError, Some(GeneratingApiKey), true)
        );
        assert!(
            e.message.contains("taken over 10 times in a row"),
            "{}",
            e.message
        );
    }

    #[test]
    fn otp_flow_visits_every_state_in_order() {
        let mut s = Queued;
        let mut path = vec![s];
        while s != Completed {
            s = successor(s, Flow::Otp);
            path.push(s);
        }
        assert_eq!(
            path,
            [
                Queued,
                Prechecking,
                Initiating,
                RequestingOtp,
                AwaitingOtp,
                VerifyingOtp,
                Registering,
                CopyingTemplates,
                AwaitingChannel,
                GeneratingApiKey,
                Completed
            ]
        );
    }

    #[test]
    fn embedded_signup_skips_otp_steps() {
        // Without a channel id: the signup is awaited, then the path of a finished signup.
        let mut s = Queued;
        let mut path = vec![s];
        while s != Completed {
            s = successor(s, Flow::EmbeddedSignup);
            path.push(s);
        }
        assert_eq!(
            path,
            [
                Queued,
                Prechecking,
                AwaitingSignup,
                CopyingTemplates,
                AwaitingChannel,
                GeneratingApiKey,
                Completed
            ]
        );
        // With one: straight from the precheck to the templates, as before `awaiting_signup`.
        let es = StepContext {
            flow: Flow::EmbeddedSignup,
            ..ctx(Prechecking, 1)
        };
        assert_eq!(
            decide(
                es,
                StepOutcome::Done {
                    skip_to: Some(CopyingTemplates)
                },
                &RetryPolicy::default(),
                0.5
            ),
            Decision::Advance {
                to: CopyingTemplates
            }
        );
        // Only the Embedded Signup flow waits for a signup.
        assert!(!skip_allowed(Prechecking, AwaitingSignup, Flow::Otp));
        assert_eq!(successor(Failed, Flow::Otp), Failed);
    }

    #[test]
    fn signup_wait_polls_then_times_out_with_signup_not_completed() {
        let p = RetryPolicy {
            signup_timeout: Duration::from_secs(7 * 86_400),
            ..RetryPolicy::default()
        };
        let es = |waited: Duration| StepContext {
            flow: Flow::EmbeddedSignup,
            waited,
            ..ctx(AwaitingSignup, 3)
        };
        let not_yet = |waiting_for| StepOutcome::NotYet {
            after: Duration::from_secs(60),
            waiting_for,
        };
        // Polls well past the channel timeout: the signup has its own, longer one.
        assert_eq!(
            decide(es(p.channel_timeout * 2), not_yet(None), &p, 0.5),
            Decision::Retry {
                delay: Duration::from_secs(60),
                error: None,
                counts_attempt: false
            }
        );
        // The last poll is at the deadline.
        match decide(
            es(p.signup_timeout - Duration::from_secs(10)),
            not_yet(None),
            &p,
            0.5,
        ) {
            Decision::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
        let reason = err(ErrorCode::SignupNotCompleted, AwaitingSignup);
        for waiting_for in [Some(reason.clone()), None] {
            match decide(es(p.signup_timeout), not_yet(waiting_for), &p, 0.5) {
                Decision::Fail(e) => {
                    assert_eq!(e.code, ErrorCode::SignupNotCompleted);
                    assert_eq!(e.actor, crate::domain::Actor::Client);
                    assert_eq!(e.step, Some(AwaitingSignup));
                    assert!(e.retryable);
                    assert_eq!(e.remediation, reason.remediation);
                    assert!(
                        e.message.ends_with("Waited 7 days for it."),
                        "{}",
                        e.message
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(spoken(Duration::from_secs(86_400 + 7200)), "1 day 2 h");
        assert_eq!(spoken(Duration::from_secs(90)), "1 min");
    }

    #[test]
    fn a_failed_look_does_not_outlast_the_wait() {
        let p = RetryPolicy::default();
        let at = |waited: Duration| StepContext {
            waited,
            ..ctx(AwaitingChannel, 1)
        };
        let blip = || StepOutcome::Transient {
            error: err(ErrorCode::UpstreamUnavailable, AwaitingChannel),
            retry_after: Some(Duration::from_secs(3600)),
        };
        // Retry-After is honoured up to the deadline, not past it.
        let left = Duration::from_secs(20);
        match decide(at(p.channel_timeout - left), blip(), &p, 0.5) {
            Decision::Retry {
                delay,
                counts_attempt,
                ..
            } => {
                assert_eq!(delay, left);
                assert!(counts_attempt);
            }
            other => panic!("{other:?}"),
        }
        // At the deadline, a failed look ends the wait, whatever the count of tries, with
        // what it waited for (stored, or the state's code) and the failed look as detail.
        let reason = err(ErrorCode::ApiKeyPermissionMissing, AwaitingChannel)
            .with_message("No permission yet.");
        let mut failed_look = blip();
        if let StepOutcome::Transient { error, .. } = &mut failed_look {
            error.message = "360dialog answered 502.".into();
            error.upstream = Some(crate::domain::upstream::UpstreamError {
                service: crate::domain::upstream::Service::D360Partner,
                http_status: Some(502),
                code: None,
                subcode: None,
                fbtrace_id: None,
                message: "Bad Gateway".into(),
                is_transient: None,
            });
        }
        let waiting = StepContext {
            waiting_for: Some(reason.clone()),
            ..at(p.channel_timeout)
        };
        match decide(waiting, failed_look, &p, 0.5) {
            Decision::Fail(e) => {
                assert_eq!(e.code, ErrorCode::ApiKeyPermissionMissing);
                assert_eq!(e.actor, reason.actor);
                assert_eq!(e.remediation, reason.remediation);
                assert_eq!(
                    e.message,
                    "No permission yet. Waited 1 h for it; the last look failed: 360dialog answered 502."
                );
                assert_eq!(e.upstream.and_then(|u| u.http_status), Some(502));
            }
            other => panic!("{other:?}"),
        }
        match decide(at(p.channel_timeout), blip(), &p, 0.5) {
            Decision::Fail(e) => assert_eq!(e.code, ErrorCode::ChannelTimeout),
            other => panic!("{other:?}"),
        }
        // A step without a wait is not affected by how long it has been in its state.
        let registering = StepContext {
            waited: Duration::from_secs(86_400),
            ..ctx(Registering, 1)
        };
        assert!(matches!(
            decide(registering, blip(), &p, 0.5),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn done_advances_or_skips() {
        let p = RetryPolicy::default();
        assert_eq!(
            decide(
                ctx(Initiating, 1),
                StepOutcome::Done { skip_to: None },
                &p,
                0.5
            ),
            Decision::Advance { to: RequestingOtp }
        );
        assert_eq!(
            decide(
                ctx(Prechecking, 1),
                StepOutcome::Done {
                    skip_to: Some(CopyingTemplates)
                },
                &p,
                0.5
            ),
            Decision::Advance {
                to: CopyingTemplates
            }
        );
    }

    #[test]
    fn transient_retries_with_capped_backoff_then_fails() {
        let p = RetryPolicy::default();
        let e = err(ErrorCode::UpstreamUnavailable, Registering);
        let d = decide(
            ctx(Registering, 1),
            StepOutcome::Transient {
                error: e.clone(),
                retry_after: None,
            },
            &p,
            0.0,
        );
        assert_eq!(
            d,
            Decision::Retry {
                delay: Duration::from_secs(1),
                error: Some(e.clone()),
                counts_attempt: true
            }
        );
        // Retry-After wins when longer than the backoff.
        match decide(
            ctx(Registering, 1),
            StepOutcome::Transient {
                error: e.clone(),
                retry_after: Some(Duration::from_secs(30)),
            },
            &p,
            0.0,
        ) {
            Decision::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        // ... but is capped.
        match decide(
            ctx(Registering, 1),
            StepOutcome::Transient {
                error: e.clone(),
                retry_after: Some(Duration::from_secs(86_400)),
            },
            &p,
            0.0,
        ) {
            Decision::Retry { delay, .. } => assert_eq!(delay, p.max_retry_after),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(
                ctx(Registering, p.max_attempts),
                StepOutcome::Transient {
                    error: e,
                    retry_after: None
                },
                &p,
                0.0
            ),
            Decision::Fail(MigrationError {
                retryable: true,
                ..
            })
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.backoff(3, 0.999).as_secs(), 7);
        assert_eq!(p.backoff(30, 0.0), p.cap / 2);
        assert!(p.backoff(30, 0.99) <= p.cap);
    }

    #[test]
    fn channel_wait_polls_then_times_out_with_the_reason() {
        let p = RetryPolicy::default();
        let waiting = err(ErrorCode::ApiKeyPermissionMissing, AwaitingChannel);
        let d = decide(
            ctx(AwaitingChannel, 3),
            StepOutcome::NotYet {
                after: Duration::from_secs(5),
                waiting_for: Some(waiting.clone()),
            },
            &p,
            0.3,
        );
        assert_eq!(
            d,
            Decision::Retry {
                delay: Duration::from_secs(5),
                error: None,
                counts_attempt: false
            }
        );
        // The last poll is at the deadline, not up to a poll interval after it.
        let mut near = ctx(AwaitingChannel, 3);
        near.waited = p.channel_timeout - Duration::from_secs(2);
        match decide(
            near,
            StepOutcome::NotYet {
                after: Duration::from_secs(5),
                waiting_for: Some(waiting.clone()),
            },
            &p,
            0.3,
        ) {
            Decision::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        let mut late = ctx(AwaitingChannel, 3);
        late.waited = p.channel_timeout;
        match decide(
            late.clone(),
            StepOutcome::NotYet {
                after: Duration::from_secs(5),
                waiting_for: Some(waiting.clone()),
            },
            &p,
            0.3,
        ) {
            // The reason it waited for: same code, actor and remediation.
            Decision::Fail(e) => {
                assert_eq!(
                    (e.code, e.actor, &e.remediation),
                    (waiting.code, waiting.actor, &waiting.remediation)
                );
                assert!(e.message.ends_with("Waited 1 h for it."), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        match decide(
            late,
            StepOutcome::NotYet {
                after: Duration::from_secs(5),
                waiting_for: None,
            },
            &p,
            0.3,
        ) {
            Decision::Fail(e) => assert_eq!(e.code, ErrorCode::ChannelTimeout),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_code_returns_to_awaiting_until_attempts_run_out() {
        let p = RetryPolicy::default();
        let e = err(ErrorCode::OtpInvalid, VerifyingOtp);
        assert_eq!(
            decide(
                ctx(VerifyingOtp, 1),
                StepOutcome::OtpRejected(e.clone()),
                &p,
                0.0
            ),
            Decision::OtpRejected { error: e.clone() }
        );
        let mut last = ctx(VerifyingOtp, 1);
        last.otp_attempts_left = 1;
        assert!(matches!(
            decide(last, StepOutcome::OtpRejected(e), &p, 0.0),
            Decision::OtpExhausted(MigrationError {
                code: ErrorCode::OtpInvalid,
                retryable: true,
                ..
            })
        ));
    }

    #[test]
    fn permanent_failure_fails() {
        let p = RetryPolicy::default();
        let e = err(ErrorCode::TwoFactorEnabled, Initiating);
        assert_eq!(
            decide(ctx(Initiating, 1), StepOutcome::Failed(e.clone()), &p, 0.0),
            Decision::Fail(e)
        );
    }

    #[test]
    fn try_later_retries_with_the_long_backoff_until_the_total_then_counts_the_tries() {
        let policy = RetryPolicy::default();
        let error = || err(ErrorCode::UpstreamUnavailable, Initiating);
        // Well past max_attempts, still within the total: try again, a minute, then doubling.
        let mut c = ctx(Initiating, 1);
        match decide(
            c.clone(),
            StepOutcome::TryLater { error: error() },
            &policy,
            0.0,
        ) {
            Decision::Retry {
                delay,
                counts_attempt,
                ..
            } => {
                assert_eq!(delay, Duration::from_secs(30));
                assert!(counts_attempt);
            }
            other => panic!("{other:?}"),
        }
        c.attempt = 25;
        c.waited = Duration::from_secs(6 * 3600 - 100);
        match decide(
            c.clone(),
            StepOutcome::TryLater { error: error() },
            &policy,
            0.99,
        ) {
            // Capped at 15 min, and never past the end of the total: the last try is at the end.
            Decision::Retry { delay, .. } => assert_eq!(delay, Duration::from_secs(100)),
            other => panic!("{other:?}"),
        }
        c.waited = Duration::from_secs(6 * 3600 + 5 * 60);
        match decide(c, StepOutcome::TryLater { error: error() }, &policy, 0.5) {
            Decision::Fail(e) => {
                assert!(e.retryable);
                assert!(
                    e.message.contains("to each of 25 tries over 6 h 5 min"),
                    "{}",
                    e.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skips_follow_the_table_and_nothing_else() {
        let mut allowed = 0;
        for flow in [Flow::Otp, Flow::EmbeddedSignup] {
            for from in MigrationState::ALL {
                for to in MigrationState::ALL {
                    let d = decide(
                        StepContext {
                            flow,
                            ..ctx(from, 1)
                        },
                        StepOutcome::Done { skip_to: Some(to) },
                        &RetryPolicy::default(),
                        0.5,
                    );
                    let expected = to == successor(from, flow) || skip_allowed(from, to, flow);
                    match d {
                        Decision::Advance { to: got } => {
                            assert!(expected, "{from} -> {to} ({flow:?})");
                            assert_eq!(got, to);
                            allowed += usize::from(to != successor(from, flow));
                        }
                        Decision::Fail(e) => {
                            assert!(!expected, "{from} -> {to} ({flow:?})");
                            assert_eq!(e.code, ErrorCode::InternalError);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        // Prechecking has 3 skips in the OTP flow and 1 in the Embedded Signup flow; the other
        // two hold in both flows.
        assert_eq!(allowed, 3 + 1 + 2 * 2);
        // Never backwards past the code, never out of a terminal state.
        assert!(!skip_allowed(Registering, RequestingOtp, Flow::Otp));
        assert!(!skip_allowed(Failed, Completed, Flow::Otp));
    }
}
