//! `generating_api_key`: the 360dialog API key, persisted the moment it arrives.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing::info;

use super::{
    Result, StepResult, crash_point, earlier_call_may_be_sent, partner_credentials, record_intent,
    save_under_lease, summary_with,
};
use crate::core::migrations::{LiveKey, live_key_holder};
use crate::crypto::aad;
use crate::db::{self, migrations as store};
use crate::domain::memo::{MemoEdits, MemoKey};
use crate::domain::{ErrorCode, EventType, MigrationError, MigrationState, StepOutcome};
use crate::worker::Deps;
use crate::worker::errors::{StepError, outcome};
use crate::worker::lease::StepLease;

pub(super) async fn generating_api_key(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::GeneratingApiKey;
    let Some(channel_id) = row.channel_id.clone() else {
        return Ok(StepResult::new(StepOutcome::Failed(
            MigrationError::new(ErrorCode::ChannelTimeout, state)
                .with_message("No 360dialog channel is known for this number."),
        )));
    };
    let mut saved_row = None;
    // A rotation marked the key held superseded: a new one is generated in its place.
    let replaces = row
        .api_key_superseded_at
        .and(row.api_key_id.clone())
        .filter(|_| row.api_key_enc.is_some());
    let key: SecretString = match &row.api_key_enc {
        Some(enc) if row.api_key_superseded_at.is_none() => deps
            .cipher
            .open(enc, &aad::api_key(row.id))
            .map_err(|_| StepError::Corrupt("the stored API key cannot be decrypted"))?,
        _ => {
            // One live key per number: never revoke a key another completed migration of this
            // number holds while 360dialog still accepts it.
            match live_key_holder(
                &deps.pool,
                &deps.cipher,
                deps.d360.as_ref(),
                &row.phone_number,
                Some(&channel_id),
                Some(row.id),
                None,
            )
            .await?
            {
                LiveKey::None => {}
                LiveKey::Live(holder) => {
                    let whose = if holder.partner_id == row.partner_id {
                        format!("migration {}", holder.id)
                    } else {
                        "a migration of another partner".to_owned()
                    };
                    return Ok(StepResult::new(StepOutcome::Failed(
                        MigrationError::new(ErrorCode::NumberAlreadyMigrated, state).with_message(
                            format!(
                                "The number was already migrated: {whose} completed and 360dialog still accepts its API key for channel {channel_id}. No key was generated, so that key keeps working."
                            ),
                        ),
                    )));
                }
                LiveKey::Unknown(_) => {
                    let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, state)
                        .with_message(
                            "Could not confirm with 360dialog that the API key of an earlier migration of this number no longer works; no key was generated.",
                        );
                    error.actor = crate::domain::Actor::None;
                    return Ok(StepResult::new(StepOutcome::Transient {
                        error,
                        retry_after: None,
                    }));
                }
            }
            let creds = partner_credentials(deps, row.partner_id).await?;
            if earlier_call_may_be_sent(row, lease, MemoKey::ApiKeys) {
                info!(
                    "api_keys intent without a stored key: the earlier response was lost; generating again"
                );
            }
            record_intent(deps, row, lease, MemoKey::ApiKeys).await?;
            let call = lease.irreversible("api_keys")?;
            let result = deps.d360.generate_api_key(&creds, &channel_id).await;
            call.finish(&result);
            let generated = match result {
                Ok(k) => k,
                Err(e) => {
                    let result = StepResult::new(outcome(&e, state));
                    // Refused for sure (4xx): no key exists, forget the intent.
                    return Ok(if e.maybe_applied() {
                        result
                    } else {
                        result.forget(MemoKey::ApiKeys)
                    });
                }
            };
            crash_point(deps, "after_api_keys")?;
            // Persist the key before anything else can go wrong.
            let sealed = deps
                .cipher
                .seal(generated.api_key.expose_secret(), &aad::api_key(row.id));
            let patch = store::Patch {
                api_key_enc: Some(sealed),
                api_key_id: Some(generated.id.clone()),
                api_key_address: Some(generated.address.clone()),
                api_key_generated_at: Some(Utc::now()),
                api_key_verified_at: Some(None),
                api_key_superseded_at: Some(None),
                memo: MemoEdits::default().remove(MemoKey::ApiKeys),
                ..Default::default()
            };
            let data = match &replaces {
                Some(old) => json!({ "api_key_id": generated.id, "replaces_api_key_id": old }),
                None => json!({ "api_key_id": generated.id }),
            };
            let event = db::events::NewEvent {
                kind: EventType::ApiKeyGenerated,
                from_state: Some(state.as_str().into()),
                to_state: Some(state.as_str().into()),
                data,
            };
            let saved = save_under_lease(deps, row, lease, &patch, Some(event)).await?;
            saved_row = Some(Box::new(saved));
            generated.api_key
        }
    };
    let mut result = match deps.d360.health_status(&key).await {
        Ok(h) => {
            let summary = summary_with(row, "can_send_message", json!(h.can_send_message));
            StepResult::done()
                .with(|p| {
                    p.api_key_verified_at = Some(Some(Utc::now()));
                    p.summary = Some(summary);
                })
                .data(json!({ "can_send_message": h.can_send_message }))
        }
        Err(e) => StepResult::new(outcome(&e, state)),
    };
    result.row = saved_row;
    Ok(result)
}
