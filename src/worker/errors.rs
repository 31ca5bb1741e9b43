//! Maps upstream failures to our error codes and to retry-or-fail outcomes.

use crate::clients::{self, Service, UpstreamError};
use crate::db;
use crate::domain::machine::spoken;
use crate::domain::upstream::{DELETION_PENDING_WAIT, PIN_TOO_FAST_WAIT};
use crate::domain::{ErrorCode, MigrationError, MigrationState, StepOutcome};

/// The longest wait after Meta's 133008 (too many PIN guesses) a step sits out by itself;
/// past it the migration fails saying how long (the default `RetryPolicy::max_retry_after`).
const PIN_GUESSES_WAITED_OUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why a step stopped without an outcome.
#[derive(Debug)]
pub enum StepError {
    /// Lease lost or a fail point fired: write nothing more.
    Abandon,
    /// The worker is stopping and the step reached an irreversible call it has not started:
    /// nothing was sent; the migration is handed over as it is (lease released at once).
    Stopping,
    /// The lease is held but too short to cover an irreversible call (its heartbeats have
    /// been failing): nothing was sent; the migration is handed over like [`Self::Stopping`],
    /// its armed intent forgotten, so the next worker makes the call instead of taking it for
    /// sent.
    LeaseTooShort,
    Db(db::Error),
    /// Our own data is unusable (a secret that does not decrypt): retrying cannot help, so the
    /// migration fails with `internal_error` instead of being retried forever.
    Corrupt(&'static str),
}

impl From<db::Error> for StepError {
    fn from(e: db::Error) -> Self {
        StepError::Db(e)
    }
}

/// Our code for a permanent upstream error, from Meta's code/subcode and, for the 2388103
/// family, its text (Meta distinguishes the variants only by message).
pub fn code_for(upstream: &UpstreamError, step: MigrationState) -> Option<ErrorCode> {
    let text = upstream.message.to_ascii_lowercase();
    match upstream.service {
        Service::Meta => {
            if upstream.refuses_our_token() || cannot_load_object(upstream, step) {
                return Some(ErrorCode::UpstreamAuth);
            }
            if upstream.has_code(2388012) {
                return Some(ErrorCode::AlreadyInDestination);
            }
            // 2388091 also comes as "... Please wait 1 hour" after repeated code requests (seen
            // in third-party code, meta-graph-api.md): a throttle, not an ineligible number.
            if upstream.has_code(2388091)
                && ["please wait", "wait 1 hour", "wait an hour", "too many"]
                    .iter()
                    .any(|w| text.contains(w))
            {
                return Some(ErrorCode::OtpRateLimited);
            }
            if upstream.has_code(2388091) || upstream.has_code(2388093) {
                return Some(ErrorCode::OtpNotEligible);
            }
            if [2494158, 3441033, 3441046, 1675004, 1390006, 1390008]
                .iter()
                .any(|c| upstream.has_code(*c))
            {
                return Some(ErrorCode::OtpRateLimited);
            }
            if upstream.has_code(136025) {
                return Some(ErrorCode::OtpInvalid);
            }
            if upstream.has_code(133016) {
                return Some(ErrorCode::RegisterLimitReached);
            }
            // 133008: too many wrong PINs; the number's PIN is not the one sent (two-step
            // verification is on), whatever the wait ([`outcome`] waits out a short one).
            if upstream.has_code(133005) || upstream.has_code(133008) {
                return Some(ErrorCode::PinMismatch);
            }
            // "Phone number re-verification needed": the verification no longer holds; a
            // retry requests a new code (`domain::commands::retry_target`).
            if upstream.has_code(133006) {
                return Some(ErrorCode::OtpExpired);
            }
            if upstream.has_code(2388019) {
                return Some(ErrorCode::TemplateLimitReached);
            }
            if upstream.has_code(2388103) {
                let unapproved =
                    text.contains("not approved") || text.contains("not been approved");
                let code = if text.contains("error migrating") {
                    ErrorCode::UpstreamUnavailable
                } else if upstream.says_already_in_destination() {
                    ErrorCode::AlreadyInDestination
                } else if upstream.mentions_two_factor() {
                    ErrorCode::TwoFactorEnabled
                } else if text.contains("added directly") {
                    ErrorCode::AddDirectlyNotMigration
                } else if text.contains("different business") || text.contains("same business") {
                    ErrorCode::BusinessMismatch
                } else if text.contains("payment") {
                    ErrorCode::DestinationNoPaymentMethod
                } else if text.contains("webhook") || text.contains("subscribed") {
                    ErrorCode::DestinationNoSubscribedApp
                } else if text.contains("display name")
                    || text.contains("register name")
                    || text.contains("verified name")
                    || text.contains("name change")
                    || text.contains("name status")
                {
                    ErrorCode::DisplayNameNotApproved
                } else if (text.contains("destination") && unapproved)
                    || text.contains("messaging for")
                {
                    // The "Messaging For" request is the destination's (the client accepts the
                    // partner's on-behalf-of request there, `meta-graph-api.md` §1.2); the
                    // source's is "messaging on behalf of".
                    ErrorCode::DestinationWabaNotApproved
                } else if text.contains("not set up") || unapproved || text.contains("on behalf") {
                    ErrorCode::SourceWabaNotApproved
                } else if upstream.is_try_again_later() {
                    // 360dialog's "Something went wrong … Please try again after some time.",
                    // after every permanent variant: their words may end the same way.
                    ErrorCode::UpstreamUnavailable
                } else {
                    ErrorCode::UpstreamRejected
                };
                return Some(code);
            }
            // Account locked (policy, or a data mismatch such as a wrong two-step PIN): its text
            // may mention the PIN, but turning two-step verification off does not unlock it.
            if upstream.has_code(131031) {
                return Some(ErrorCode::UpstreamRejected);
            }
            // A documented transient code is retried, whatever its text: 133009's title is
            // "Two step verification PIN was entered too quickly".
            if upstream.has_transient_code() {
                return None;
            }
            // 360dialog's troubleshooting messages, under whatever code they come.
            if step == MigrationState::Initiating && upstream.says_already_in_destination() {
                return Some(ErrorCode::AlreadyInDestination);
            }
            if upstream.mentions_two_factor() {
                return Some(ErrorCode::TwoFactorEnabled);
            }
            troubleshooting_message(&text)
        }
        Service::D360Partner => match upstream.http_status {
            Some(403) if step == MigrationState::GeneratingApiKey => {
                Some(ErrorCode::ApiKeyPermissionMissing)
            }
            Some(401 | 403) => Some(ErrorCode::UpstreamAuth),
            _ => None,
        },
        // The key's own answers: 401 is the key refused; 403 is "The endpoint is blocked"
        // (360dialog support enables it), not the client's permission nor our credentials.
        Service::D360Messaging => match upstream.http_status {
            Some(401) => Some(ErrorCode::ApiKeyRejected),
            _ => None,
        },
    }
}

/// The permanent ones of the 360dialog page's troubleshooting messages, by words no other
/// answer uses, for when they come without 2388103 (whose branch reads them more loosely).
/// "Something went wrong … try again after some time" is left to the code and status it
/// comes with: it names no cause to fail on.
fn troubleshooting_message(text: &str) -> Option<ErrorCode> {
    if text.contains("eligible to be added directly") {
        Some(ErrorCode::AddDirectlyNotMigration)
    } else if text.contains("register name should be present") {
        Some(ErrorCode::DisplayNameNotApproved)
    } else if text.contains("need to represent the same business") {
        Some(ErrorCode::BusinessMismatch)
    } else {
        None
    }
}

/// [`UpstreamError::cannot_load_object`] on the precheck's reads (a source WABA shared with the
/// old provider only, commonly).
fn cannot_load_object(upstream: &UpstreamError, step: MigrationState) -> bool {
    upstream.cannot_load_object()
        && matches!(
            step,
            MigrationState::Prechecking | MigrationState::AwaitingSignup
        )
}

/// Turns a client error into a step outcome: transient errors are retried with backoff, the
/// rest fail the migration with the most precise code we know.
pub fn outcome(err: &clients::Error, step: MigrationState) -> StepOutcome {
    let upstream = match err {
        clients::Error::Api { upstream, .. } => upstream.clone(),
        clients::Error::Transport { service, .. } | clients::Error::Decode { service, .. } => {
            UpstreamError {
                service: *service,
                http_status: None,
                code: None,
                subcode: None,
                fbtrace_id: None,
                message: err.to_string(),
                is_transient: None,
            }
        }
    };
    let code = match err {
        clients::Error::Api { upstream, .. } => code_for(upstream, step),
        _ => None,
    };
    // Meta's "There was an error migrating this phone number. Please try again after some
    // time.": try again later, with the long backoff, whatever `is_transient` says.
    if let clients::Error::Api { upstream: u, .. } = err
        && u.has_code(2388103)
        && code == Some(ErrorCode::UpstreamUnavailable)
    {
        return StepOutcome::TryLater {
            error: MigrationError::new(ErrorCode::UpstreamUnavailable, step)
                .with_upstream(Some(upstream)),
        };
    }
    // Too many wrong PINs (133008): wait as long as Meta says when that is short, for one
    // more `register` call (each counts in Meta's cap); else fail, saying how long.
    if upstream.has_code(133008) {
        let wait = upstream.pin_guesses_wait();
        if let Some(wait) = wait.filter(|w| *w <= PIN_GUESSES_WAITED_OUT) {
            // Unless two-step verification is off by then, the next try can only meet 133005.
            let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, step);
            error.message = format!(
                "Meta blocks two-step verification PIN attempts on this number for {} after too many wrong PINs (133008); trying again then.",
                spoken(wait)
            );
            error.actor = crate::domain::Actor::Client;
            error.remediation = "Meanwhile have two-step verification disabled in WhatsApp Manager (or give the number's current PIN as `pin`).".into();
            return StepOutcome::Transient {
                error: error.with_upstream(Some(upstream)),
                retry_after: Some(wait),
            };
        }
        let mut error = MigrationError::new(ErrorCode::PinMismatch, step);
        error.message = format!(
            "Meta blocks two-step verification PIN attempts on this number{} after too many wrong PINs (133008).",
            wait.map(|w| format!(" for {}", spoken(w)))
                .unwrap_or_else(|| " for a while (up to about 12 h)".into())
        );
        error.remediation = "Wait that long; meanwhile have two-step verification disabled in WhatsApp Manager (or give the number's current PIN as `pin`), then retry.".into();
        return StepOutcome::Failed(error.with_upstream(Some(upstream)));
    }
    let retryable = err.is_retryable();
    if retryable && code.is_none_or(|c| c == ErrorCode::UpstreamUnavailable) {
        let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, step);
        if upstream.is_throttling() {
            // An expected wait (e.g. 360dialog's one new key per channel every 30 s), not
            // "something went wrong".
            error.message = format!(
                "{} is rate limiting these calls; trying again after the wait it asked for.",
                service_name(upstream.service)
            );
        }
        return StepOutcome::Transient {
            retry_after: err.retry_after().max(least_wait(&upstream)),
            error: error.with_upstream(Some(upstream)),
        };
    }
    let code = code.unwrap_or(if retryable {
        ErrorCode::UpstreamUnavailable
    } else {
        ErrorCode::UpstreamRejected
    });
    let unreadable = cannot_load_object(&upstream, step);
    let mut error = MigrationError::new(code, step).with_upstream(Some(upstream));
    if code == ErrorCode::OtpExpired && error.upstream.as_ref().is_some_and(|u| u.has_code(133006))
    {
        error.message = "Meta asks for the number to be verified again before it is registered (133006): the verification no longer holds.".into();
    }
    if code == ErrorCode::DestinationWabaNotApproved
        && let Some(u) = &error.upstream
        && u.message.to_ascii_lowercase().contains("messaging for")
    {
        error.message =
            "The client has not accepted the \"Messaging For\" request on the destination WhatsApp Business Account.".into();
        error.remediation = "The client accepts the partner's Messaging For request in Meta Business Suite (Business settings → Requests), then retry.".into();
        error.actor = crate::domain::Actor::Client;
    }
    if unreadable && let Some(u) = &error.upstream {
        error.message = format!(
            "The Meta Graph API cannot read an object the precheck needs: it does not exist, or the system user of META_ACCESS_TOKEN has no access to it ({}).",
            u.message
        );
        error.remediation = "Check the WABA ids of the migration; if they are right, have the client share both WhatsApp Business Accounts with the partner's app (or the system user given access to them), then retry.".into();
    }
    if code == ErrorCode::UpstreamRejected
        && let Some(u) = &error.upstream
    {
        error.message = format!(
            "{} rejected the request: {}",
            service_name(u.service),
            u.message
        );
    }
    StepOutcome::Failed(error)
}

/// The least wait before trying again after `upstream`, where Meta's code says the usual
/// seconds of backoff would only spend calls (each `register` counts in Meta's cap): 133015,
/// a deletion still pending, about 5 minutes; 133009, a PIN entered too quickly, a minute.
fn least_wait(upstream: &UpstreamError) -> Option<std::time::Duration> {
    if upstream.service != Service::Meta {
        return None;
    }
    if upstream.has_code(133015) {
        Some(DELETION_PENDING_WAIT)
    } else if upstream.has_code(133009) {
        Some(PIN_TOO_FAST_WAIT)
    } else {
        None
    }
}

fn service_name(s: Service) -> &'static str {
    match s {
        Service::Meta => "Meta",
        Service::D360Partner => "360dialog Partner API",
        Service::D360Messaging => "360dialog Messaging API",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(code: i64, subcode: Option<i64>, message: &str) -> clients::Error {
        clients::Error::Api {
            upstream: UpstreamError {
                service: Service::Meta,
                http_status: Some(400),
                code: Some(code),
                subcode,
                fbtrace_id: Some("Atrace".into()),
                message: message.into(),
                is_transient: None,
            },
            retry_after: None,
        }
    }

    fn failed_code(o: StepOutcome) -> ErrorCode {
        match o {
            StepOutcome::Failed(e) => e.code,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn maps_2388103_variants_by_text() {
        let s = MigrationState::Initiating;
        let cases = [
            (
                "Two-step authentication must be disabled for this phone number",
                ErrorCode::TwoFactorEnabled,
            ),
            (
                "This phone number is eligible to be added directly",
                ErrorCode::AddDirectlyNotMigration,
            ),
            (
                "This phone number belongs to a different Business Manager account",
                ErrorCode::BusinessMismatch,
            ),
            (
                "Display name not approved",
                ErrorCode::DisplayNameNotApproved,
            ),
            (
                "The destination does not have a payment account",
                ErrorCode::DestinationNoPaymentMethod,
            ),
            (
                "Cannot migrate phone number: no app subscribed to webhooks",
                ErrorCode::DestinationNoSubscribedApp,
            ),
            (
                "The destination WhatsApp Business Account has not been approved",
                ErrorCode::DestinationWabaNotApproved,
            ),
            (
                "The source WhatsApp Business Account is not set up: its review is not approved",
                ErrorCode::SourceWabaNotApproved,
            ),
            // 360dialog's troubleshooting page words it so.
            (
                "Register Name should be present and approved",
                ErrorCode::DisplayNameNotApproved,
            ),
            // The destination's on-behalf-of request; the source's stays the source's.
            (
                "The client has not accepted the Messaging For request",
                ErrorCode::DestinationWabaNotApproved,
            ),
            (
                "Messaging on behalf of this business is not approved",
                ErrorCode::SourceWabaNotApproved,
            ),
            // A text that merely has "name" in it is no display-name variant.
            (
                "(#100) Invalid parameter — The account name is not usable",
                ErrorCode::UpstreamRejected,
            ),
            // Meta's words sit in `error_user_msg`; the message read gathers every text.
            (
                "(#100) Invalid parameter — Cannot migrate — The destination WhatsApp Business Account does not have a payment account",
                ErrorCode::DestinationNoPaymentMethod,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(
                failed_code(outcome(&graph(100, Some(2388103), text), s)),
                code,
                "{text}"
            );
        }
        // The "error migrating" variant is tried again later and keeps the trace id, also
        // when Meta marks it `is_transient: false`.
        let mut not_transient = graph(
            100,
            Some(2388103),
            "There was an error migrating this phone number. Please try again after some time.",
        );
        if let clients::Error::Api { upstream, .. } = &mut not_transient {
            upstream.is_transient = Some(false);
        }
        assert!(matches!(
            outcome(&not_transient, s),
            StepOutcome::TryLater { .. }
        ));
        match outcome(
            &graph(
                100,
                Some(2388103),
                "There was an error migrating this phone number",
            ),
            s,
        ) {
            StepOutcome::TryLater { error } => {
                assert_eq!(error.code, ErrorCode::UpstreamUnavailable);
                assert_eq!(
                    error.upstream.unwrap().fbtrace_id.as_deref(),
                    Some("Atrace")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// The 360dialog page's permanent messages as it words them, under a code other than
    /// 2388103 (a plain 100, or a subcode Meta has not documented).
    #[test]
    fn troubleshooting_messages_are_read_under_any_code() {
        let s = MigrationState::Initiating;
        let cases = [
            (
                "This phone number is eligible to be added directly, and does not need to be migrated. Please go to the 360Dialog Client Hub and add it as a new number",
                ErrorCode::AddDirectlyNotMigration,
            ),
            (
                "Register Name should be present and approved",
                ErrorCode::DisplayNameNotApproved,
            ),
            (
                "The source and destination WhatsApp Business Accounts need to represent the same business. Please use the same Business ID as before when submitting the number for migration.",
                ErrorCode::BusinessMismatch,
            ),
            (
                "The phone number you are trying to migrate has already been moved to your destination WhatsApp Account. Please log in to the 360Dialog Client Hub to continue.",
                ErrorCode::AlreadyInDestination,
            ),
            (
                "Two-factor authentication not yet disabled",
                ErrorCode::TwoFactorEnabled,
            ),
        ];
        for subcode in [None, Some(2388999)] {
            for (text, code) in cases {
                assert_eq!(
                    failed_code(outcome(&graph(100, subcode, text), s)),
                    code,
                    "{subcode:?} {text}"
                );
            }
        }
        // Other texts under 100 stay rejected, "same business" alone included.
        assert_eq!(
            failed_code(outcome(
                &graph(100, None, "(#100) Not the same business as the app"),
                s
            )),
            ErrorCode::UpstreamRejected
        );
    }

    #[test]
    fn maps_otp_register_and_token_codes() {
        let s = MigrationState::Registering;
        assert_eq!(
            failed_code(outcome(&graph(133016, None, "limit"), s)),
            ErrorCode::RegisterLimitReached
        );
        assert_eq!(
            failed_code(outcome(&graph(133005, None, "pin"), s)),
            ErrorCode::PinMismatch
        );
        // Re-verification needed: a retry requests a new code.
        match outcome(
            &graph(133006, None, "Phone number re-verification needed"),
            s,
        ) {
            StepOutcome::Failed(e) => {
                assert_eq!(e.code, ErrorCode::OtpExpired);
                assert!(e.message.contains("verified again"), "{}", e.message);
                assert!(e.retryable);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            failed_code(outcome(&graph(2494158, None, "too many"), s)),
            ErrorCode::OtpRateLimited
        );
        assert_eq!(
            failed_code(outcome(&graph(190, None, "token"), s)),
            ErrorCode::UpstreamAuth
        );
        assert_eq!(
            failed_code(outcome(&graph(100, Some(2388093), "x"), s)),
            ErrorCode::OtpNotEligible
        );
        assert_eq!(
            failed_code(outcome(&graph(100, None, "Invalid parameter"), s)),
            ErrorCode::UpstreamRejected
        );
        // Account locked: not a two-step problem, even when the text names the PIN.
        assert_eq!(
            failed_code(outcome(
                &graph(
                    131031,
                    None,
                    "Account has been locked: two-step PIN mismatch"
                ),
                s
            )),
            ErrorCode::UpstreamRejected
        );
        assert_eq!(
            failed_code(outcome(
                &graph(100, None, "Two-step verification is enabled"),
                s
            )),
            ErrorCode::TwoFactorEnabled
        );
    }

    /// Meta's PIN throttles: their titles say "two step verification", yet they are waits,
    /// not two-step verification to turn off.
    #[test]
    fn a_code_request_throttled_under_2388091_is_rate_limited_not_ineligible() {
        let s = MigrationState::RequestingOtp;
        let throttled = graph(
            100,
            Some(2388091),
            "You have requested a code too many times. Please wait 1 hour before trying again.",
        );
        assert_eq!(
            failed_code(outcome(&throttled, s)),
            ErrorCode::OtpRateLimited
        );
        let ineligible = graph(
            100,
            Some(2388091),
            "Phone number is not eligible to receive the verification code because it is not in the process of being migrated.",
        );
        assert_eq!(
            failed_code(outcome(&ineligible, s)),
            ErrorCode::OtpNotEligible
        );
    }

    #[test]
    fn an_object_graph_cannot_load_is_a_permission_problem_only_in_the_precheck() {
        let cannot_load = graph(
            100,
            Some(33),
            "Unsupported get request. Object with ID '1001' does not exist, cannot be loaded due to missing permissions, or does not support this operation",
        );
        for step in [MigrationState::Prechecking, MigrationState::AwaitingSignup] {
            match outcome(&cannot_load, step) {
                StepOutcome::Failed(e) => {
                    assert_eq!(e.code, ErrorCode::UpstreamAuth);
                    assert!(e.message.contains("'1001'"), "{}", e.message);
                    assert!(e.remediation.contains("share"), "{}", e.remediation);
                }
                other => panic!("{other:?}"),
            }
        }
        // On a number's own calls, 33 may mean the number was deleted: not our credentials.
        assert_eq!(
            failed_code(outcome(&cannot_load, MigrationState::Registering)),
            ErrorCode::UpstreamRejected
        );
    }

    #[test]
    fn pin_throttles_are_waits_not_two_step_verification() {
        let s = MigrationState::Registering;
        // 133009, too fast: retried (the register step waits a minute at least).
        let too_fast = graph(
            133009,
            None,
            "(#133009) Two step verification PIN was entered too quickly",
        );
        assert!(
            matches!(outcome(&too_fast, s), StepOutcome::Transient { .. }),
            "{:?}",
            outcome(&too_fast, s)
        );
        // 133008 with a short wait in its details: retried after exactly that wait.
        let short = graph(
            133008,
            None,
            "(#133008) Too many two step verification PIN guesses for this phone number — Please try again in 30 minutes.",
        );
        match outcome(&short, s) {
            StepOutcome::Transient { error, retry_after } => {
                assert_eq!(retry_after, Some(std::time::Duration::from_secs(1800)));
                assert_eq!(error.code, ErrorCode::UpstreamUnavailable);
                assert!(error.message.contains("30 min"), "{}", error.message);
            }
            other => panic!("{other:?}"),
        }
        // A long wait, or none said: fails as the PIN's problem, saying how long, not
        // spending register calls on it.
        for (text, says) in [
            (
                "(#133008) Too many two step verification PIN guesses for this phone number — Wait 12 hours before trying again.",
                " for 12 h ",
            ),
            (
                "(#133008) Too many two step verification PIN guesses for this phone number",
                "up to about 12 h",
            ),
        ] {
            match outcome(&graph(133008, None, text), s) {
                StepOutcome::Failed(e) => {
                    assert_eq!(e.code, ErrorCode::PinMismatch, "{text}");
                    assert!(e.message.contains(says), "{}", e.message);
                    assert!(e.retryable);
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// Where Meta's code says the usual seconds of backoff would only spend register calls,
    /// the retry waits longer: 133015 about 5 minutes, 133009 a minute.
    #[test]
    fn some_transient_codes_wait_longer_than_the_backoff() {
        let s = MigrationState::Registering;
        for (code, wait) in [(133015, 300), (133009, 60)] {
            match outcome(&graph(code, None, "(#x) wait"), s) {
                StepOutcome::Transient { retry_after, .. } => {
                    assert_eq!(retry_after, Some(std::time::Duration::from_secs(wait)));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    /// A permanent 2388103 variant whose words end with "try again after some time" stays
    /// permanent: only the "error migrating" variant, or one naming nothing else, is tried
    /// again later.
    #[test]
    fn a_permanent_variant_asking_to_try_again_later_stays_permanent() {
        let s = MigrationState::Initiating;
        assert_eq!(
            failed_code(outcome(
                &graph(
                    100,
                    Some(2388103),
                    "Cannot migrate: the destination does not have a payment account. Please try again after some time."
                ),
                s
            )),
            ErrorCode::DestinationNoPaymentMethod
        );
        // "already been migrated" (a template's, say) is not the number's.
        let template = graph(100, None, "This template has already been migrated");
        let clients::Error::Api { upstream, .. } = &template else {
            unreachable!()
        };
        assert_eq!(code_for(upstream, MigrationState::CopyingTemplates), None);
    }

    /// 360dialog's troubleshooting messages (its migration page) map to our codes under
    /// whatever code they arrive.
    #[test]
    fn maps_360dialogs_troubleshooting_wording() {
        let s = MigrationState::Initiating;
        match outcome(
            &graph(
                100,
                Some(2388103),
                "Something went wrong when trying to migrate your phone number. Please try again after some time. If that does not work, please contact our support via the 360Dialog Client Hub.",
            ),
            s,
        ) {
            StepOutcome::TryLater { error } => {
                assert_eq!(error.code, ErrorCode::UpstreamUnavailable);
            }
            other => panic!("{other:?}"),
        }
        let moved = "The phone number you are trying to migrate has already been moved to your destination WhatsApp Account. Please log in to the 360Dialog Client Hub to continue.";
        for e in [graph(100, Some(2388103), moved), graph(100, None, moved)] {
            let clients::Error::Api { upstream, .. } = &e else {
                unreachable!()
            };
            assert_eq!(code_for(upstream, s), Some(ErrorCode::AlreadyInDestination));
        }
        for text in [
            "Two-factor authentication not yet disabled",
            "2FA is enabled for this number",
        ] {
            assert_eq!(
                failed_code(outcome(&graph(100, None, text), s)),
                ErrorCode::TwoFactorEnabled,
                "{text}"
            );
        }
        // "2fa" inside a word or an id is not 2FA.
        assert_eq!(
            failed_code(outcome(&graph(100, None, "Invalid id a2fa9"), s)),
            ErrorCode::UpstreamRejected
        );
    }

    #[test]
    fn the_messaging_for_request_is_the_clients_to_accept_on_the_destination() {
        match outcome(
            &graph(
                100,
                Some(2388103),
                "The Messaging For request has not been accepted",
            ),
            MigrationState::Initiating,
        ) {
            StepOutcome::Failed(e) => {
                assert_eq!(e.code, ErrorCode::DestinationWabaNotApproved);
                assert_eq!(e.actor, crate::domain::Actor::Client);
                assert!(e.message.contains("Messaging For"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_and_throttling_are_transient() {
        let s = MigrationState::Registering;
        let t = clients::Error::Transport {
            service: Service::Meta,
            message: "reset".into(),
            maybe_applied: true,
        };
        assert!(matches!(outcome(&t, s), StepOutcome::Transient { .. }));
        assert!(matches!(
            outcome(&graph(80008, None, "throttled"), s),
            StepOutcome::Transient { .. }
        ));
        // Embedded Signup's generic request/verify failures: "retry" (meta-graph-api.md §4.3).
        for code in [2593037, 2593039] {
            assert!(matches!(
                outcome(
                    &graph(code, None, "request failed"),
                    MigrationState::RequestingOtp
                ),
                StepOutcome::Transient { .. }
            ));
        }
    }

    #[test]
    fn d360_throttling_and_proxied_transient_graph_codes_are_retried() {
        let e = |service, status, code, message: &str| clients::Error::Api {
            upstream: UpstreamError {
                service,
                http_status: Some(status),
                code,
                subcode: None,
                fbtrace_id: None,
                message: message.into(),
                is_transient: None,
            },
            retry_after: None,
        };
        let s = MigrationState::GeneratingApiKey;
        let throttled = e(
            Service::D360Messaging,
            400,
            None,
            "You have exceeded the endpoint rate limit",
        );
        match outcome(&throttled, s) {
            StepOutcome::Transient { error, .. } => assert_eq!(
                error.message,
                "360dialog Messaging API is rate limiting these calls; trying again after the wait it asked for."
            ),
            other => panic!("{other:?}"),
        }
        let proxied = e(
            Service::D360Messaging,
            400,
            Some(131000),
            "(#131000) Something went wrong",
        );
        assert!(matches!(
            outcome(&proxied, s),
            StepOutcome::Transient { .. }
        ));
        // The Partner API's own codes are not Graph's: a 400 stays a refusal.
        let partner = e(Service::D360Partner, 400, Some(131000), "Wrong payload");
        assert_eq!(
            failed_code(outcome(&partner, s)),
            ErrorCode::UpstreamRejected
        );
    }

    #[test]
    fn d360_permission_and_revoked_key() {
        let e = |service, status| clients::Error::Api {
            upstream: UpstreamError {
                service,
                http_status: Some(status),
                code: None,
                subcode: None,
                fbtrace_id: None,
                message: "Permission denied for partner x".into(),
                is_transient: None,
            },
            retry_after: None,
        };
        assert_eq!(
            failed_code(outcome(
                &e(Service::D360Partner, 403),
                MigrationState::GeneratingApiKey
            )),
            ErrorCode::ApiKeyPermissionMissing
        );
        assert_eq!(
            failed_code(outcome(
                &e(Service::D360Messaging, 401),
                MigrationState::GeneratingApiKey
            )),
            ErrorCode::ApiKeyRejected
        );
        assert_eq!(
            failed_code(outcome(
                &e(Service::D360Partner, 401),
                MigrationState::AwaitingChannel
            )),
            ErrorCode::UpstreamAuth
        );
        // The key check's 403, "The endpoint is blocked": neither the client's permission
        // nor our credentials.
        assert_eq!(
            failed_code(outcome(
                &e(Service::D360Messaging, 403),
                MigrationState::GeneratingApiKey
            )),
            ErrorCode::UpstreamRejected
        );
    }
}
