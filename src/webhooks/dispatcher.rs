//! Delivers the outbox: claims due deliveries with a lease, signs and POSTs them, and records
//! every attempt with the next one's time (or gives up after the last).

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::signing::{self, SigningKey};
use crate::core::ssrf::{self, PublicResolver};
use crate::core::{Clock, WebhookConfig};
use crate::crypto::Cipher;
use crate::db::{self, webhooks as store};

/// Leases outlive an attempt by this much, so a live dispatcher never loses its lease mid-send.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Most bytes of a consumer's answer read (and thrown away) after a delivery.
const DRAIN_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    cipher: Cipher,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    config: WebhookConfig,
}

/// What one attempt came to.
struct Outcome {
    status_code: Option<i32>,
    error: Option<String>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        cipher: Cipher,
        config: WebhookConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!(
                "waba-migrator-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(config.attempt_timeout.min(Duration::from_secs(10)))
            .timeout(config.attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(4);
        if !config.allow_private {
            // Every resolved address is checked at connect time; a proxy from `HTTPS_PROXY` /
            // `ALL_PROXY` would resolve and dial the callback host itself, past that check, so
            // deliveries never go through one.
            http = http.dns_resolver(Arc::new(PublicResolver)).no_proxy();
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                cipher,
                http: http.build()?,
                clock,
                config,
            }),
        })
    }

    /// Delivers until `shutdown`; in-flight attempts get the grace period, then their leases
    /// simply expire (an unfinished attempt is not recorded and will be made again).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.inner.config;
        info!(concurrency = cfg.concurrency, "webhook dispatcher started");
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(db::listen(
            self.inner.pool.clone(),
            store::WEBHOOKS_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let available = permits.available_permits();
            let claimed = if available == 0 {
                Ok(Vec::new())
            } else {
                self.claim(available as i64).await
            };
            match claimed {
                Ok(rows) if !rows.is_empty() => {
                    for row in rows {
                        let permit = permits.clone().acquire_owned().await?;
                        let this = self.clone();
                        tasks.spawn(async move {
                            this.deliver(row).await;
                            drop(permit);
                        });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "webhook claim failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                // A permit coming back may let a due delivery go.
                _ = permits.clone().acquire_owned(), if available == 0 => {}
                _ = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
        let _ = tokio::time::timeout(cfg.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        listener.abort();
        info!("webhook dispatcher stopped");
        Ok(())
    }

    /// Delivers everything due now, including what becomes due as earlier events of the same
    /// migration (or batch) go out; returns the number of attempts made (tests and one-shot tools).
    pub async fn run_until_idle(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let rows = self
                .claim(self.inner.config.concurrency.max(1) as i64)
                .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            total += rows.len();
            futures::future::join_all(rows.into_iter().map(|r| self.deliver(r))).await;
        }
    }

    async fn claim(&self, limit: i64) -> Result<Vec<store::DeliveryRow>, db::Error> {
        let lease = self.inner.config.attempt_timeout + LEASE_MARGIN;
        store::claim(&self.inner.pool, self.inner.clock.now(), lease, limit).await
    }

    /// One attempt of one claimed delivery, recorded.
    async fn deliver(&self, row: store::DeliveryRow) {
        let span = info_span!(
            "webhook",
            delivery.id = %row.id,
            migration.id = tracing::field::Empty,
            batch.id = tracing::field::Empty,
            event = %row.event_type,
            attempt = row.attempts,
        );
        if let Some(id) = row.migration_id {
            span.record("migration.id", tracing::field::display(id));
        }
        if let Some(id) = row.batch_id {
            span.record("batch.id", tracing::field::display(id));
        }
        async {
            let Some(token) = row.lease_token else {
                return;
            };
            let started_at = self.inner.clock.now();
            let started = Instant::now();
            let outcome = self.attempt(&row).await;
            let took = started.elapsed();
            let latency_ms = i32::try_from(took.as_millis()).unwrap_or(i32::MAX);
            let schedule = &self.inner.config.schedule;
            let next = if outcome.succeeded() {
                None
            } else {
                usize::try_from(row.schedule_step)
                    .ok()
                    .and_then(|step| schedule.get(step))
                    .map(|d| started_at + chrono::Duration::from_std(*d).unwrap_or_default())
            };
            crate::metrics::webhook_attempt(
                match (outcome.succeeded(), next) {
                    (true, _) => "succeeded",
                    (false, Some(_)) => "failed",
                    (false, None) => "gave_up",
                },
                took,
            );
            match &outcome.error {
                // Absent fields when there is no status (no answer) or no next attempt (given up).
                None => info!(
                    status = outcome.status_code,
                    latency_ms, "webhook delivered"
                ),
                Some(e) => warn!(
                    status = outcome.status_code,
                    latency_ms,
                    error = %e,
                    next_attempt_at = next.map(tracing::field::display),
                    "webhook attempt failed"
                ),
            }
            let result = store::AttemptResult {
                started_at,
                status_code: outcome.status_code,
                latency_ms,
                succeeded: outcome.succeeded(),
                error: outcome.error.as_deref(),
                next_attempt_at: next,
            };
            let mut conn = match self.inner.pool.acquire().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "could not record the webhook attempt; it will be retried");
                    return;
                }
            };
            match store::record_attempt(&mut conn, &row, token, &result).await {
                Ok(true) => {
                    // The next event of this migration (or batch) may go now.
                    if outcome.succeeded() || next.is_none() {
                        let _ = sqlx::query("SELECT pg_notify($1, '')")
                            .bind(store::WEBHOOKS_CHANNEL)
                            .execute(&mut *conn)
                            .await;
                    }
                }
                Ok(false) => debug!("lease lost before the attempt was recorded"),
                Err(e) => warn!(error = %e, "could not record the webhook attempt"),
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, row: &store::DeliveryRow) -> Outcome {
        let fail = |e: String| Outcome {
            status_code: None,
            error: Some(e),
        };
        let url = match ssrf::check_url(&row.url, self.inner.config.allow_private) {
            Ok(u) => u,
            Err(e) => return fail(format!("callback URL refused: {e}")),
        };
        let keys = match self.signing_keys(row.partner_id).await {
            Ok(k) => k,
            Err(e) => return fail(e),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let msg_id = row.id.to_string();
        let signature = signing::signature_header(&keys, &msg_id, timestamp, &row.payload);
        let sent = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signing::HEADER_ID, &msg_id)
            .header(signing::HEADER_TIMESTAMP, timestamp.to_string())
            .header(signing::HEADER_SIGNATURE, signature)
            .body(row.payload.clone())
            .send()
            .await;
        match sent {
            Ok(mut resp) => {
                let status = resp.status();
                // Drain a small body so the connection can be reused; ignore its content. A
                // larger one is dropped unread (and its connection with it): chunk by chunk,
                // never buffered whole.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut left = DRAIN_LIMIT;
                    while let Ok(Some(chunk)) = resp.chunk().await {
                        let Some(rest) = left.checked_sub(chunk.len()) else {
                            break;
                        };
                        left = rest;
                    }
                })
                .await;
                Outcome {
                    status_code: Some(i32::from(status.as_u16())),
                    error: (!status.is_success()).then(|| format!("consumer answered {status}")),
                }
            }
            Err(e) => fail(describe(&e)),
        }
    }

    /// The partner's current key and, during a rotation's overlap, the earlier ones.
    async fn signing_keys(&self, partner_id: uuid::Uuid) -> Result<Vec<SigningKey>, String> {
        let row = store::secrets(&self.inner.pool, partner_id)
            .await
            .map_err(|e| format!("could not read the signing secret: {e}"))?;
        let aad = crate::crypto::aad::webhook_secret(partner_id);
        let open = |enc: &[u8]| -> Result<SigningKey, String> {
            let secret: SecretString = self
                .inner
                .cipher
                .open(enc, &aad)
                .map_err(|e| e.to_string())?;
            SigningKey::from_secret(&secret).ok_or_else(|| "the signing secret is malformed".into())
        };
        let mut keys = vec![open(&row.webhook_secret_enc)?];
        let now = self.inner.clock.now();
        for (earlier, until) in [
            (
                row.webhook_secret_previous_enc.as_deref(),
                row.webhook_secret_previous_expires_at,
            ),
            (
                row.webhook_secret_older_enc.as_deref(),
                row.webhook_secret_older_expires_at,
            ),
        ] {
            if let (Some(earlier), Some(until)) = (earlier, until)
                && until > now
            {
                keys.push(open(earlier)?);
            }
        }
        Ok(keys)
    }
}

/// A transport error in words, without the URL (it may carry the partner's token).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
