//! Runs a table of cases for one irreversible call: for each case a migration row is put in the
//! call's state (with or without the intent the step records before calling), fresh fakes are
//! put in the upstream state of the case with the call scripted, and the real worker runs until
//! the migration settles (parked, terminal, or nothing left to run). Then the exact calls and
//! applied calls of the endpoint and the settled state are compared with the case, and the
//! invariants are checked. Every case runs; the test fails at the end listing each mismatch.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use waba_migrator::core::OtpPolicy;
use waba_migrator::crypto::{Cipher, aad};
use waba_migrator::db::{migrations as store, partners};
use waba_migrator::domain::RetryPolicy;
use waba_migrator::domain::memo::MemoKey;
use waba_migrator::worker::{Deps, FailPoints, Worker, WorkerConfig};

use crate::fakes::{FakeChannel, FakeD360, FakeMeta, FakePhone, Kind};

const SOURCE_WABA: &str = "200000000000001";
const DEST_WABA: &str = "300000000000001";
const BUSINESS: &str = "100000000000000";
/// The key an earlier `api_keys` call generated (case state `Applied` / `Stored`).
const EARLIER_KEY: &str = "key-earlier";

/// The irreversible calls, each with the state whose step makes it and the intent it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    RequestCode,
    VerifyCode,
    Register,
    ApiKeys,
}

impl Endpoint {
    /// The fake's endpoint name (the sandbox's counter name).
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::RequestCode => "request_code",
            Endpoint::VerifyCode => "verify_code",
            Endpoint::Register => "register",
            Endpoint::ApiKeys => "api_keys",
        }
    }

    fn state(self) -> &'static str {
        match self {
            Endpoint::RequestCode => "requesting_otp",
            Endpoint::VerifyCode => "verifying_otp",
            Endpoint::Register => "registering",
            Endpoint::ApiKeys => "generating_api_key",
        }
    }

    fn intent(self) -> MemoKey {
        match self {
            Endpoint::RequestCode => MemoKey::RequestCode,
            Endpoint::VerifyCode => MemoKey::VerifyCode,
            Endpoint::Register => MemoKey::Register,
            Endpoint::ApiKeys => MemoKey::ApiKeys,
        }
    }

    /// What "already applied" means upstream for this call.
    fn applied_means(self, upstream: Upstream) -> &'static str {
        match (self, upstream) {
            (_, Upstream::Fresh) => "not applied",
            (Endpoint::RequestCode, _) => "code sent",
            (Endpoint::VerifyCode, _) => "VERIFIED",
            (Endpoint::Register, _) => "CONNECTED",
            (Endpoint::ApiKeys, Upstream::Applied) => "key made, lost",
            (Endpoint::ApiKeys, Upstream::Stored) => "key stored",
        }
    }
}

/// Whether the step's intent (`step_memo` key) is there when the step starts: present means an
/// earlier attempt got as far as recording it and then crashed or lost the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Absent,
    Present,
}

/// How a present intent is written: recorded by a step (a timestamp), or armed by an earlier
/// claim's transition into the step (its value names that claim's lease). Both must read as
/// "the call may have been sent" to the claim that runs the step; every `Present` line runs
/// in both forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Recorded,
    ArmedByEarlierClaim,
}

/// Upstream before the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The call was not applied yet.
    Fresh,
    /// It was applied already (`request_code`: a code was sent; `verify_code`: the number is
    /// `VERIFIED`; `register`: `CONNECTED`; `api_keys`: the channel has a key we never received).
    Applied,
    /// `api_keys` only: applied, and the key is stored in the migration.
    Stored,
}

/// One line of a table: the situation, and the exact calls, applied calls and settled state
/// expected. `settles` is a state, or `failed/<error code>`.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub intent: Intent,
    pub upstream: Upstream,
    pub kind: Kind,
    pub calls: u64,
    pub applied: u64,
    pub settles: &'static str,
}

/// A table line.
pub const fn case(
    intent: Intent,
    upstream: Upstream,
    kind: Kind,
    calls: u64,
    applied: u64,
    settles: &'static str,
) -> Case {
    Case {
        intent,
        upstream,
        kind,
        calls,
        applied,
        settles,
    }
}

/// What a case did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    calls: u64,
    applied: u64,
    settled: String,
    /// `get_phone_number` reads (how ambiguous outcomes were resolved).
    reads: u64,
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "calls {} applied {} -> {:<33} (phone reads {})",
            self.calls, self.applied, self.settled, self.reads
        )
    }
}

struct Table {
    pool: PgPool,
    cipher: Cipher,
    partner_id: Uuid,
    endpoint: Endpoint,
}

/// Runs every case of `cases` for `endpoint` against `pool`, prints one line per case and a
/// summary, and panics listing the cases that did not behave as their line says.
pub async fn run_table(pool: PgPool, endpoint: Endpoint, cases: &[Case]) {
    let cipher = Cipher::from_base64(&Cipher::generate_key()).expect("cipher");
    let partner_id = Uuid::now_v7();
    partners::insert(
        &pool,
        &partners::PartnerRow {
            id: partner_id,
            name: "Steps table".into(),
            d360_partner_id: "fakePA".into(),
            d360_api_key_enc: cipher.seal("partner-key", &aad::partner_key(partner_id)),
            callback_url: None,
            webhook_secret_enc: cipher.seal("whsec", &aad::webhook_secret(partner_id)),
            signup_url: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        },
    )
    .await
    .expect("partner");
    assert_covers_every_combination(endpoint, cases);
    let table = Table {
        pool,
        cipher,
        partner_id,
        endpoint,
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    println!(
        "{} table: intent x upstream state x response kind",
        endpoint.name()
    );
    let mut runs = 0;
    for case in cases {
        let forms: &[Written] = match case.intent {
            Intent::Present => &[Written::Recorded, Written::ArmedByEarlierClaim],
            Intent::Absent => &[Written::Recorded],
        };
        for &written in forms {
            let (observed, problems) = table.run(runs, case, written).await;
            runs += 1;
            let verdict = if problems.is_empty() { "ok  " } else { "FAIL" };
            let intent = match (case.intent, written) {
                (Intent::Absent, _) => "absent",
                (Intent::Present, Written::Recorded) => "present",
                (Intent::Present, Written::ArmedByEarlierClaim) => "armed",
            };
            let line = format!(
                "{verdict} {runs:>3} {} intent {intent:<7} upstream {:<14} {:<21} | {observed}",
                endpoint.name(),
                endpoint.applied_means(case.upstream),
                case.kind,
            );
            println!("{line}");
            for p in &problems {
                println!("       {p}");
            }
            if !problems.is_empty() {
                failures.push(format!("{line}\n    {}", problems.join("\n    ")));
            }
        }
    }
    println!(
        "{}: {} cases run, {} passed, {} failed ({:.1} s)",
        endpoint.name(),
        runs,
        runs - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} {} cases failed:\n{}",
        failures.len(),
        runs,
        endpoint.name(),
        failures.join("\n")
    );
}

/// The table has exactly one line per intent × upstream state × response kind.
fn assert_covers_every_combination(endpoint: Endpoint, cases: &[Case]) {
    let states: &[Upstream] = match endpoint {
        Endpoint::ApiKeys => &[Upstream::Fresh, Upstream::Applied, Upstream::Stored],
        _ => &[Upstream::Fresh, Upstream::Applied],
    };
    for intent in [Intent::Absent, Intent::Present] {
        for &upstream in states {
            for kind in Kind::ALL {
                let lines = cases
                    .iter()
                    .filter(|c| (c.intent, c.upstream, c.kind) == (intent, upstream, kind))
                    .count();
                assert_eq!(
                    lines,
                    1,
                    "{}: {lines} lines for intent {intent:?}, upstream {upstream:?}, {kind:?}",
                    endpoint.name()
                );
            }
        }
    }
    assert_eq!(cases.len(), 2 * states.len() * Kind::ALL.len());
}

impl Table {
    async fn run(&self, i: usize, case: &Case, written: Written) -> (Observed, Vec<String>) {
        let e = self.endpoint;
        let phone = format!("+4915110{i:05}");
        let pnid = format!("10{i:013}");
        let channel_id = format!("ch{i}CH");
        let meta = Arc::new(FakeMeta::new());
        let d360 = Arc::new(FakeD360::new());

        // Upstream before the step.
        let mut number = FakePhone::new(&pnid, &phone, DEST_WABA);
        let client_id = format!("cl{i}");
        let mut channel = FakeChannel::running(&channel_id, &client_id, &phone);
        let applied = case.upstream != Upstream::Fresh;
        match e {
            Endpoint::RequestCode => number.code_sent = applied,
            Endpoint::VerifyCode => {
                number.code_sent = true;
                number.verified = applied;
            }
            Endpoint::Register => {
                number.code_sent = true;
                number.verified = true;
                number.connected = applied;
            }
            Endpoint::ApiKeys => {
                number.code_sent = true;
                number.verified = true;
                number.connected = true;
                if applied {
                    channel.current_key = Some(EARLIER_KEY.into());
                    channel.generated = 1;
                }
            }
        }
        meta.put_phone(number);
        d360.put_channel(channel);
        match e {
            Endpoint::ApiKeys => d360.script(e.name(), &[case.kind]),
            _ => meta.script(e.name(), &[case.kind]),
        }

        let id = self
            .insert(case, written, &phone, &pnid, (&channel_id, &client_id))
            .await;
        let worker = Worker::new(Deps {
            pool: self.pool.clone(),
            meta: meta.clone(),
            d360: d360.clone(),
            cipher: self.cipher.clone(),
            config: worker_config(),
            // The fakes answer at once; a retry after a call without a settling answer
            // waits this long (as long as a call may take), so keep it short.
            call_time: Duration::from_millis(50),
            fail_points: FailPoints::default(),
            sandbox_seeder: None,
        });
        let settled = self.drive(&worker, id).await;

        let counts = match e {
            Endpoint::ApiKeys => d360.counts(e.name()),
            _ => meta.counts(e.name()),
        };
        let observed = Observed {
            calls: counts.calls,
            applied: counts.applied,
            settled,
            reads: meta.counts("get_phone_number").calls,
        };

        let mut problems = Vec::new();
        if (observed.calls, observed.applied) != (case.calls, case.applied) {
            problems.push(format!(
                "expected {} calls and {} applied, got {} calls and {} applied",
                case.calls, case.applied, observed.calls, observed.applied
            ));
        }
        if observed.settled != case.settles {
            problems.push(format!(
                "expected to settle in {}, settled in {}",
                case.settles, observed.settled
            ));
        }
        problems.extend(
            self.invariants(case, &meta, &d360, &pnid, &channel_id, id)
                .await,
        );
        (observed, problems)
    }

    /// A migration in the endpoint's state, as earlier steps leave it, with the intent if the
    /// case has one.
    async fn insert(
        &self,
        case: &Case,
        written: Written,
        phone: &str,
        pnid: &str,
        (channel_id, client_id): (&str, &str),
    ) -> Uuid {
        let id = Uuid::now_v7();
        let mut conn = self.pool.acquire().await.expect("connection");
        store::insert(
            &mut conn,
            &store::NewMigration {
                id,
                partner_id: self.partner_id,
                flow: "otp".into(),
                phone_number: phone.into(),
                source_waba_id: SOURCE_WABA.into(),
                destination_waba_id: DEST_WABA.into(),
                meta_business_id: BUSINESS.into(),
                channel_id: None,
                otp_method: "sms".into(),
                otp_language: "en_US".into(),
                otp_attempts_left: 3,
                pin_enc: self.cipher.seal("246810", &aad::pin(id)),
                metadata: json!({}),
                callback_url: None,
            },
        )
        .await
        .expect("insert migration");
        let e = self.endpoint;
        let memo = match case.intent {
            Intent::Present => json!({ e.intent().as_str(): match written {
                Written::Recorded => MemoKey::recorded(Utc::now()),
                Written::ArmedByEarlierClaim => MemoKey::armed(Utc::now(), Uuid::new_v4()),
            } }),
            Intent::Absent => json!({}),
        };
        let code = (e == Endpoint::VerifyCode)
            .then(|| self.cipher.seal(FakeMeta::CODE, &aad::otp_code(id)));
        let stored_key = (e == Endpoint::ApiKeys && case.upstream == Upstream::Stored)
            .then(|| self.cipher.seal(EARLIER_KEY, &aad::api_key(id)));
        // `awaiting_channel` found the channel before `generating_api_key`.
        let (channel, client) = if e == Endpoint::ApiKeys {
            (Some(channel_id), Some(client_id))
        } else {
            (None, None)
        };
        let otp_requested = e != Endpoint::RequestCode;
        sqlx::query(
            "UPDATE migrations SET state = $2, phone_number_id = $3, channel_id = $4,
                 d360_client_id = $5, otp_code_enc = $6,
                 otp_requested_at = CASE WHEN $7 THEN now() END,
                 otp_expires_at = CASE WHEN $7 THEN now() + interval '10 minutes' END,
                 api_key_enc = $8,
                 api_key_generated_at = CASE WHEN $8 IS NULL THEN NULL ELSE now() END,
                 step_memo = $9, run_at = now(), attempt = 0, state_entered_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(e.state())
        .bind(pnid)
        .bind(channel)
        .bind(client)
        .bind(code)
        .bind(otp_requested)
        .bind(stored_key)
        .bind(memo)
        .execute(&self.pool)
        .await
        .expect("put the migration in its state");
        id
    }

    /// Runs the worker until the migration is parked or terminal; retries scheduled in the
    /// (short) future are waited for. A migration still runnable after the deadline is stuck:
    /// reported, and cancelled so that it does not run in later cases.
    async fn drive(&self, worker: &Worker, id: Uuid) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            worker.run_until_idle().await.expect("worker");
            let (state, code): (String, Option<String>) =
                sqlx::query_as("SELECT state, error->>'code' FROM migrations WHERE id = $1")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .expect("read the migration");
            match state.as_str() {
                "awaiting_otp" | "completed" | "cancelled" => return state,
                "failed" => return format!("failed/{}", code.unwrap_or_default()),
                _ if Instant::now() > deadline => {
                    sqlx::query("UPDATE migrations SET state = 'cancelled' WHERE id = $1")
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .expect("cancel a stuck migration");
                    return format!("stuck in {state}");
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// The rules every case must keep, whatever its line says.
    async fn invariants(
        &self,
        case: &Case,
        meta: &FakeMeta,
        d360: &FakeD360,
        pnid: &str,
        channel_id: &str,
        id: Uuid,
    ) -> Vec<String> {
        let e = self.endpoint;
        let mut problems = Vec::new();
        let log: Vec<_> = match e {
            Endpoint::ApiKeys => d360.log(),
            _ => meta.log(),
        };

        // Meta's irreversible calls are applied at most once per number, counting an earlier
        // application. A code sent earlier whose intent is gone was followed by a resend (the
        // partner asked for a new code), so it does not count.
        for name in ["request_code", "verify_code", "register"] {
            let earlier = u64::from(
                name == e.name()
                    && case.upstream != Upstream::Fresh
                    && !(e == Endpoint::RequestCode && case.intent == Intent::Absent),
            );
            let applied = meta.counts(name).applied;
            if earlier + applied > 1 {
                problems.push(format!(
                    "invariant: {name} applied {applied} time(s) to a number it was already \
                     applied to"
                ));
            }
        }

        // A maybe-applied outcome is resolved by reading upstream state, never by calling
        // again blind; request_code is treated as sent (never called again at all).
        if e != Endpoint::ApiKeys {
            let mut unresolved = false;
            for call in &log {
                if call.endpoint == e.name() {
                    if unresolved {
                        problems.push(format!(
                            "invariant: {} called again after a maybe-applied outcome{}",
                            e.name(),
                            if e == Endpoint::RequestCode {
                                ""
                            } else {
                                " without reading the number first"
                            }
                        ));
                    }
                    unresolved = call.ambiguous;
                } else if call.endpoint == "get_phone_number" && e != Endpoint::RequestCode {
                    unresolved = false;
                }
            }
        }

        // 360dialog keys: never generated once one is stored; the key the migration holds is
        // the channel's only valid key.
        let (stored, state): (Option<Vec<u8>>, String) =
            sqlx::query_as("SELECT api_key_enc, state FROM migrations WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .expect("read the migration");
        if e == Endpoint::ApiKeys && case.upstream == Upstream::Stored {
            let calls = d360.counts("api_keys").calls;
            if calls > 0 {
                problems.push(format!(
                    "invariant: api_keys called {calls} time(s) although a key was stored"
                ));
            }
        }
        if let Some(sealed) = stored {
            let key = self
                .cipher
                .open(&sealed, &aad::api_key(id))
                .map(|k| k.expose_secret().to_owned());
            let current = d360.channel(channel_id).and_then(|c| c.current_key);
            if key.as_ref().ok() != current.as_ref() {
                problems.push(format!(
                    "invariant: the stored key is not the channel's current key ({current:?})"
                ));
            }
        } else if state == "completed" {
            problems.push("invariant: completed without a stored key".into());
        }

        // What was verified or registered is what Meta shows.
        if state == "completed" {
            let number = meta.phone(pnid).expect("the number");
            if !(number.verified && number.connected) {
                problems.push(format!(
                    "invariant: completed, but the number is verified={} connected={}",
                    number.verified, number.connected
                ));
            }
        }
        problems
    }
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 1,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(10),
        shutdown_grace: Duration::from_secs(1),
        channel_poll: Duration::from_millis(1),
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
            max_retry_after: Duration::from_millis(5),
            max_attempts: 4,
            channel_timeout: Duration::from_secs(5),
            signup_timeout: Duration::from_secs(5),
            try_later_base: Duration::from_millis(1),
            try_later_cap: Duration::from_millis(5),
            try_later_total: Duration::from_millis(50),
        },
        otp: OtpPolicy {
            ttl: Duration::from_secs(600),
            resend_cooldown: Duration::from_secs(60),
            max_attempts: 3,
            voice_fallback: None,
        },
        ..WorkerConfig::default()
    }
}
