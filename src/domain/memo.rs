//! The step memo: what a migration's steps remember between attempts. Its intents (written
//! before an irreversible upstream call) are what keeps a crash or a lost answer from repeating
//! that call. Writers change it by key ([`MemoEdits`], applied with jsonb key operations in the
//! same statement as the rest of a write), never by writing back a whole document read earlier,
//! so a key another writer changed meanwhile is not undone.
//!
//! An intent is *recorded* (its value a timestamp) by a step right before its call, or *armed*
//! (its value names the lease of the claim that wrote it) by the statement that hands the step
//! to its worker: the transition that enters the step when the same worker goes on with the
//! migration at once, or the claim of a migration already in the step (`db::migrations::claim`).
//! Either way it is committed before the call. An armed intent costs no statement of its own;
//! until its step has called, only the claim that armed it knows that no call was made, so to
//! every later claim it reads as recorded: the call may have been sent.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::MigrationState;

/// The field of an armed intent's value that names the lease token of the claim that armed it.
pub const ARMED_BY: &str = "armed_by";

/// An intent as the step of a claim reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// No intent: no call of this step can have been sent since it was last settled.
    Absent,
    /// Armed by this claim (or by its transition into the step): committed, and no call made
    /// yet.
    Armed,
    /// Recorded, or armed by another claim: the call may have been sent.
    Recorded,
}

/// Every key of the step memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoKey {
    /// Intent: `POST /{phone-number-id}/request_code` may have been sent.
    RequestCode,
    /// Intent: `POST /{phone-number-id}/verify_code` may have been sent.
    VerifyCode,
    /// Intent: `POST /{phone-number-id}/register` may have been sent.
    Register,
    /// Intent: a 360dialog API key may have been generated.
    ApiKeys,
    /// The template copy ran at least once (later attempts retry only the missing ids).
    TemplatesCopied,
    /// How often 360dialog was asked for the channel while waiting for it (in
    /// `awaiting_signup`, then from 0 again in `awaiting_channel`): the polls' backoff.
    ChannelPolls,
    /// The automatic switch from SMS to a voice call happened.
    VoiceFallback,
    /// The channel id the service stored itself, found by the number (not named by the
    /// partner): if it later shows a WABA that is not the migration's, it is looked for again.
    ChannelFound,
    /// When this migration called `register` (an array of timestamps, those of the last 72 h):
    /// Meta blocks a number registered too often (see [`super::upstream::REGISTER_CALLS_PER_72H`]).
    RegisterCalls,
}

impl MemoKey {
    pub const ALL: [MemoKey; 9] = [
        MemoKey::RequestCode,
        MemoKey::VerifyCode,
        MemoKey::Register,
        MemoKey::ApiKeys,
        MemoKey::TemplatesCopied,
        MemoKey::ChannelPolls,
        MemoKey::VoiceFallback,
        MemoKey::ChannelFound,
        MemoKey::RegisterCalls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemoKey::RequestCode => "request_code",
            MemoKey::VerifyCode => "verify_code",
            MemoKey::Register => "register",
            MemoKey::ApiKeys => "api_keys",
            MemoKey::TemplatesCopied => "templates_copied",
            MemoKey::ChannelPolls => "channel_polls",
            MemoKey::VoiceFallback => "voice_fallback",
            MemoKey::ChannelFound => "channel_found",
            MemoKey::RegisterCalls => "register_calls",
        }
    }

    /// This key's value in `memo` (a migration's `step_memo`), if set.
    pub fn read(self, memo: &Value) -> Option<&Value> {
        memo.get(self.as_str())
    }

    /// The intent the step of `state` records before its irreversible call, if it makes one.
    pub fn intent_of(state: MigrationState) -> Option<MemoKey> {
        match state {
            MigrationState::RequestingOtp => Some(MemoKey::RequestCode),
            MigrationState::VerifyingOtp => Some(MemoKey::VerifyCode),
            MigrationState::Registering => Some(MemoKey::Register),
            MigrationState::GeneratingApiKey => Some(MemoKey::ApiKeys),
            _ => None,
        }
    }

    /// This intent in `memo`, read by the claim holding `lease`.
    pub fn intent(self, memo: &Value, lease: Uuid) -> Intent {
        match self.read(memo) {
            None => Intent::Absent,
            Some(v) if v.get(ARMED_BY).and_then(Value::as_str) == Some(&lease.to_string()) => {
                Intent::Armed
            }
            Some(_) => Intent::Recorded,
        }
    }

    /// When this intent was armed or recorded (both before its call), if it is in `memo`.
    pub fn intent_at(self, memo: &Value) -> Option<DateTime<Utc>> {
        let v = self.read(memo)?;
        let at = v.get("at").unwrap_or(v);
        serde_json::from_value(at.clone()).ok()
    }

    /// The value of an intent armed at `at` by the claim holding `lease`.
    pub fn armed(at: DateTime<Utc>, lease: Uuid) -> Value {
        json!({ "at": at, ARMED_BY: lease })
    }

    /// The value of an intent recorded at `at`.
    pub fn recorded(at: DateTime<Utc>) -> Value {
        json!(at)
    }

    /// The intent a cancel must not cut off while its claim holds the migration: the call
    /// cannot be taken back once sent, and its answer must be recorded (`register` counts
    /// toward Meta's limit and sets the PIN; `api_keys` revokes the channel's earlier keys, so
    /// the new one must be stored). A `request_code` in flight may be cut off: the code is
    /// only an SMS the client can ignore.
    pub fn uncancellable_intent_of(state: MigrationState) -> Option<MemoKey> {
        match state {
            MigrationState::Registering => Some(MemoKey::Register),
            MigrationState::GeneratingApiKey => Some(MemoKey::ApiKeys),
            _ => None,
        }
    }

    /// True for the keys recorded before an irreversible upstream call.
    pub fn is_intent(self) -> bool {
        matches!(
            self,
            MemoKey::RequestCode | MemoKey::VerifyCode | MemoKey::Register | MemoKey::ApiKeys
        )
    }
}

/// Key-wise changes to the step memo: keys removed, then keys set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoEdits {
    remove: Vec<&'static str>,
    set: Map<String, Value>,
}

impl MemoEdits {
    /// Sets `key` to `value`.
    pub fn set(mut self, key: MemoKey, value: Value) -> Self {
        self.remove.retain(|k| *k != key.as_str());
        self.set.insert(key.as_str().to_owned(), value);
        self
    }

    /// Removes `key` (nothing if it is absent).
    pub fn remove(mut self, key: MemoKey) -> Self {
        self.set.remove(key.as_str());
        if !self.remove.contains(&key.as_str()) {
            self.remove.push(key.as_str());
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Whether `key` is set in `memo` once these edits are applied (without applying them).
    pub fn leaves_set(&self, key: MemoKey, memo: &Value) -> bool {
        self.set.contains_key(key.as_str())
            || (!self.remove.contains(&key.as_str()) && key.read(memo).is_some())
    }

    /// Whether these edits set or remove `key`.
    pub fn touches(&self, key: MemoKey) -> bool {
        self.remove.contains(&key.as_str()) || self.set.contains_key(key.as_str())
    }

    /// The keys removed (for SQL `step_memo - $1::text[]`).
    pub fn removed(&self) -> &[&'static str] {
        &self.remove
    }

    /// The keys set, as one object (for SQL `|| $2::jsonb`).
    pub fn set_object(&self) -> Value {
        Value::Object(self.set.clone())
    }

    /// `memo` with these edits (what the SQL computes).
    pub fn applied_to(&self, memo: &Value) -> Value {
        let mut out = match memo {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for k in &self.remove {
            out.remove(*k);
        }
        for (k, v) in &self.set {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn edits_touch_only_their_keys() {
        let edits = MemoEdits::default()
            .remove(MemoKey::RequestCode)
            .set(MemoKey::VoiceFallback, json!("t"));
        // A key another writer added after this writer read the memo survives.
        let now = json!({ "request_code": "x", "register": "y" });
        assert_eq!(
            edits.applied_to(&now),
            json!({ "register": "y", "voice_fallback": "t" })
        );
        assert_eq!(edits.removed(), ["request_code"]);
    }

    #[test]
    fn leaves_set_agrees_with_applying_the_edits() {
        let memo = json!({ "register": "r", "api_keys": "k" });
        let edits = MemoEdits::default()
            .remove(MemoKey::Register)
            .set(MemoKey::RequestCode, json!("t"));
        for key in MemoKey::ALL {
            assert_eq!(
                edits.leaves_set(key, &memo),
                key.read(&edits.applied_to(&memo)).is_some(),
                "{key:?}"
            );
        }
    }

    #[test]
    fn the_last_edit_of_a_key_wins() {
        let e = MemoEdits::default()
            .set(MemoKey::ChannelPolls, json!(1))
            .remove(MemoKey::ChannelPolls);
        assert_eq!(e.applied_to(&json!({ "channel_polls": 3 })), json!({}));
        let e = MemoEdits::default()
            .remove(MemoKey::ChannelPolls)
            .set(MemoKey::ChannelPolls, json!(1));
        assert_eq!(e.applied_to(&json!({})), json!({ "channel_polls": 1 }));
        assert!(e.removed().is_empty());
    }

    #[test]
    fn an_armed_intent_is_armed_only_for_the_claim_that_armed_it() {
        let (ours, theirs) = (Uuid::new_v4(), Uuid::new_v4());
        let memo = json!({ "register": MemoKey::armed(Utc::now(), ours) });
        assert_eq!(MemoKey::Register.intent(&memo, ours), Intent::Armed);
        assert!(MemoKey::Register.intent_at(&memo).is_some());
        assert_eq!(MemoKey::VerifyCode.intent_at(&memo), None);
        assert_eq!(MemoKey::Register.intent(&memo, theirs), Intent::Recorded);
        assert_eq!(MemoKey::RequestCode.intent(&memo, ours), Intent::Absent);
        let memo = json!({ "register": MemoKey::recorded(Utc::now()) });
        assert_eq!(MemoKey::Register.intent(&memo, ours), Intent::Recorded);
    }

    #[test]
    fn every_intent_belongs_to_one_step() {
        let owned: Vec<MemoKey> = MigrationState::ALL
            .iter()
            .filter_map(|s| MemoKey::intent_of(*s))
            .collect();
        let intents: Vec<MemoKey> = MemoKey::ALL.into_iter().filter(|k| k.is_intent()).collect();
        assert_eq!(owned, intents);
    }

    #[test]
    fn keys_are_distinct() {
        let names: std::collections::HashSet<_> = MemoKey::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), MemoKey::ALL.len());
        assert_eq!(MemoKey::ALL.iter().filter(|k| k.is_intent()).count(), 4);
    }
}
