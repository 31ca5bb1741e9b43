//! `awaiting_channel`: polls 360dialog until the channel runs and a key may be made for it.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Result, StepResult, channel_named, channel_of, foreign_channel, foreign_waba,
    partner_credentials,
};
use crate::db::migrations as store;
use crate::domain::memo::MemoKey;
use crate::domain::upstream::KeyPermission;
use crate::domain::{ErrorCode, MigrationError, MigrationState, StepOutcome};
use crate::worker::Deps;
use crate::worker::errors::outcome;

pub(super) async fn awaiting_channel(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::AwaitingChannel;
    let creds = partner_credentials(deps, row.partner_id).await?;
    let polls = MemoKey::ChannelPolls
        .read(&row.step_memo)
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let after = deps
        .config
        .channel_poll
        .saturating_mul(1u32 << polls.min(5))
        .min(Duration::from_secs(60));
    let found = channel_of(deps, &creds, row).await;
    let channel = match found {
        Ok(c) => c,
        Err(e) => {
            return Ok(StepResult::new(outcome(&e, state)));
        }
    };
    let not_yet = |why: MigrationError| {
        StepResult::new(StepOutcome::NotYet {
            after,
            waiting_for: Some(why),
        })
        .remember(MemoKey::ChannelPolls, json!(polls + 1))
    };
    let Some(channel) = channel else {
        return Ok(not_yet(
            MigrationError::new(ErrorCode::ChannelTimeout, state)
                .with_message("360dialog does not list a channel for this number yet."),
        ));
    };
    if let Some(waba) = foreign_waba(row, &channel) {
        let reason = foreign_channel(row, &channel, waba, state, ErrorCode::ChannelTimeout);
        // A channel the migration names stays on its WABA: no wait can help (and `PATCH` is
        // refused past `awaiting_signup`).
        return Ok(if channel_named(row) {
            StepResult::new(StepOutcome::Failed(reason))
        } else {
            not_yet(reason)
        });
    }
    let status = channel.status.clone().unwrap_or_default();
    let channel_id = channel.id.clone();
    let client_id = channel.client_id.clone();
    if !status.eq_ignore_ascii_case("running") {
        return Ok(not_yet(
            MigrationError::new(ErrorCode::ChannelNotRunning, state).with_message(format!(
                "The 360dialog channel {channel_id} is `{status}`, not `running`."
            )),
        )
        .channel(row, &channel));
    }
    if let Some(client) = &client_id {
        match deps
            .d360
            .api_key_permission(&creds, client, &channel_id, Some(&row.phone_number))
            .await
        {
            Ok(KeyPermission::Granted) => {}
            // Not readable: generating the key is the check. Without permission its 403 fails
            // the migration with `api_key_permission_missing` (retryable) at once; a readable
            // denial waits here instead, and the migration goes on by itself once granted.
            Ok(KeyPermission::Unknown) => {
                tracing::info!(
                    channel_id = %channel_id,
                    "shared_client_numbers does not say whether keys may be generated; generating the key decides"
                );
            }
            Ok(KeyPermission::Denied) => {
                return Ok(not_yet(MigrationError::new(
                    ErrorCode::ApiKeyPermissionMissing,
                    state,
                ))
                .channel(row, &channel));
            }
            Err(e) => return Ok(StepResult::new(outcome(&e, state))),
        }
    }
    Ok(StepResult::done()
        .channel(row, &channel)
        .forget(MemoKey::ChannelPolls)
        .data(json!({ "channel_id": channel_id })))
}
