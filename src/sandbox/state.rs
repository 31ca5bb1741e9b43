//! The simulated world (WABAs, phone numbers, templates, 360dialog channels and keys) and the
//! per-number call counters. Everything here is synchronous and runs under the sandbox lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::scenarios::{self, Scenario};
use super::{SANDBOX_BUSINESS_ID, SandboxConfig};

/// Prefix of every phone-number id the sandbox mints (16 digits in all).
pub(crate) const PHONE_ID_PREFIX: &str = "1090";
const TEMPLATE_ID_PREFIX: &str = "1091";
/// Owner reported by a WABA in the `business_mismatch` scenario.
pub(crate) const FOREIGN_BUSINESS_ID: &str = "999000111";

/// Body of `POST /_sandbox/numbers` / argument of [`super::Sandbox::add_number`].
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberSeed {
    /// E.164, with or without `+`.
    pub phone_number: String,
    /// WABA the number is registered on (created if unknown).
    pub source_waba_id: String,
    /// WABA the number will migrate into; marks that WABA for destination-level scenarios and,
    /// for scenario 0004, lists the number there already.
    #[serde(default)]
    pub destination_waba_id: Option<String>,
    /// Owner of both WABAs when they are created by this call (default [`SANDBOX_BUSINESS_ID`]).
    #[serde(default)]
    pub business_id: Option<String>,
}

/// Most templates `POST /_sandbox/wabas/{waba_id}/templates` generates.
pub(crate) const MAX_GENERATED_TEMPLATES: usize = 10_000;
/// Every eligible generated template whose index is a multiple of this is refused by
/// `migrate_message_templates`.
const GENERATED_REFUSAL_EVERY: usize = 97;
const GENERATED_REFUSAL_REASON: &str = "Incorrect category";

/// `(status, quality)` of generated template `index`, by `index % 10`: 0–5 APPROVED+GREEN,
/// 6 APPROVED+UNKNOWN, 7 APPROVED+YELLOW, 8 PENDING, 9 REJECTED (both UNKNOWN).
fn generated_status(index: usize) -> (&'static str, &'static str) {
    match index % 10 {
        0..=5 => ("APPROVED", "GREEN"),
        6 => ("APPROVED", "UNKNOWN"),
        7 => ("APPROVED", "YELLOW"),
        8 => ("PENDING", "UNKNOWN"),
        _ => ("REJECTED", "UNKNOWN"),
    }
}

/// Whether a phone record is the number's original registration or a migration target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Role {
    Source,
    Destination,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WabaRec {
    pub id: String,
    pub owner_business_id: String,
    pub funding_id: String,
    pub namespace: String,
    /// Phone-number ids in listing order.
    pub phone_ids: Vec<String>,
    pub templates: Vec<TemplateRec>,
    pub templates_seeded: bool,
    /// Numbers registered here before migration (added with `POST /_sandbox/numbers`).
    pub source_numbers: BTreeSet<String>,
    /// Numbers migrating into this WABA.
    pub dest_numbers: BTreeSet<String>,
    /// The number most recently added to this WABA as a source: a WABA-level failure carried
    /// by a scenario number (0005–0007, 0021) shows on the WABA only while that number is the
    /// current one, so one scenario number never breaks the WABA for the numbers after it.
    #[serde(default)]
    pub current_source: Option<String>,
    /// The number most recently added, migrated or registered into this WABA as a destination
    /// (destination-level scenarios 0008–0010, 0018, 0021; same rule as `current_source`).
    #[serde(default)]
    pub current_dest: Option<String>,
    /// Made by an Embedded Signup that 360dialog has not finished setting up: no payment
    /// method and no subscribed app until `POST /_sandbox/wabas/{waba_id}/set_up`.
    #[serde(default)]
    pub setting_up: bool,
    /// Made by an Embedded Signup and not yet shared with the partner's app: Graph answers
    /// calls on it and its numbers 100/33 ("does not exist, cannot be loaded due to missing
    /// permissions") until `POST /_sandbox/wabas/{waba_id}/share`.
    #[serde(default)]
    pub unshared: bool,
}

/// How a WABA an Embedded Signup creates starts out (`complete_signup`).
#[derive(Debug, Clone, Copy)]
pub struct SignupWaba {
    /// 360dialog set it up (payment method, subscribed app); else until `…/set_up`.
    pub set_up: bool,
    /// Shared with the partner's app (Graph reads it); else until `…/share`.
    pub shared: bool,
}

impl Default for SignupWaba {
    fn default() -> Self {
        Self {
            set_up: true,
            shared: true,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PhoneRec {
    pub id: String,
    pub e164: String,
    pub waba_id: String,
    pub role: Role,
    /// Scenario of the number as the caller gave it (differs from `e164` only for 0012).
    pub scenario: Option<Scenario>,
    pub verified_name: String,
    pub verified: bool,
    pub status: String,
    pub code_requested: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct TemplateRec {
    pub id: String,
    pub name: String,
    pub language: String,
    pub status: String,
    pub category: String,
    pub quality: String,
    pub quality_date: i64,
    /// Reason `migrate_message_templates` refuses this template on every attempt (set on some
    /// generated templates, see [`World::set_templates`]).
    pub refusal: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ChannelRec {
    pub id: String,
    pub client_id: String,
    /// E.164 with `+`.
    pub e164: String,
    pub phone_name: String,
    pub phone_number_id: String,
    pub waba_external_id: Option<String>,
    pub waba_account_id: String,
    pub created_at: DateTime<Utc>,
    /// `ready` until then, `running` from then on.
    pub running_at: DateTime<Utc>,
    /// False in scenario 0020: the partner may not generate keys.
    pub permission: bool,
    pub keys_issued: u64,
    pub current_key: Option<KeyRec>,
    pub last_key_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyRec {
    pub id: String,
    pub api_key: String,
}

/// All simulated upstream state. Serialisable: `serve`'s in-process sandbox keeps it in the
/// service's database (see [`super::Sandbox::persist_to`]), so a restart is invisible.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct World {
    pub wabas: HashMap<String, WabaRec>,
    pub phones: HashMap<String, PhoneRec>,
    pub channels: BTreeMap<String, ChannelRec>,
    /// Channel id of each number (E.164).
    pub channel_of_number: HashMap<String, String>,
    /// Every API key ever issued → its channel id (only the channel's current key is valid).
    pub key_owner: HashMap<String, String>,
    /// 360dialog client id per destination WABA.
    pub clients: HashMap<String, String>,
    /// `register` calls per number (E.164).
    pub register_calls: HashMap<String, u32>,
    /// Verification code per number (E.164) set by [`super::Sandbox::set_otp_code`].
    pub otp_codes: HashMap<String, String>,
    /// Numbers whose scenario was resolved with `POST /_sandbox/numbers/{e164}/resolve`: they
    /// behave as happy-path numbers from then on.
    pub resolved: BTreeSet<String>,
    /// Monotonic, survives [`World::reset`] so ids never repeat within a process.
    pub seq: u64,
}

impl World {
    /// Forget everything except the id sequence.
    pub(crate) fn reset(&mut self) {
        let seq = self.seq;
        *self = World {
            seq,
            ..World::default()
        };
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn mint_phone_id(&mut self) -> String {
        let n = self.next_seq();
        format!("{PHONE_ID_PREFIX}{n:012}")
    }

    pub(crate) fn mint_template_id(&mut self) -> String {
        let n = self.next_seq();
        format!("{TEMPLATE_ID_PREFIX}{n:012}")
    }

    /// The WABA, created (approved, verified, funded, one app) if unknown.
    pub(crate) fn ensure_waba(&mut self, id: &str, owner: Option<&str>) -> &mut WabaRec {
        self.wabas.entry(id.to_owned()).or_insert_with(|| WabaRec {
            id: id.to_owned(),
            owner_business_id: owner.unwrap_or(SANDBOX_BUSINESS_ID).to_owned(),
            funding_id: format!("88{}", digits_of(id)),
            namespace: format!("sandbox_{}", random_token(12).to_lowercase()),
            phone_ids: Vec::new(),
            templates: Vec::new(),
            templates_seeded: false,
            source_numbers: BTreeSet::new(),
            dest_numbers: BTreeSet::new(),
            current_source: None,
            current_dest: None,
            setting_up: false,
            unshared: false,
        })
    }

    /// Gives a source WABA its default templates, once.
    pub(crate) fn seed_templates(&mut self, waba_id: &str) {
        let seeded = self.wabas.get(waba_id).is_none_or(|w| w.templates_seeded);
        if seeded {
            return;
        }
        let defaults: [(&str, &str, &str, &str, &str); 5] = [
            ("order_update", "en_US", "APPROVED", "UTILITY", "GREEN"),
            ("shipping_notice", "en_US", "APPROVED", "UTILITY", "GREEN"),
            ("welcome_offer", "es_ES", "APPROVED", "MARKETING", "GREEN"),
            (
                "appointment_reminder",
                "en_US",
                "APPROVED",
                "UTILITY",
                "UNKNOWN",
            ),
            ("flash_sale", "en_US", "APPROVED", "MARKETING", "RED"),
        ];
        let mut templates = Vec::with_capacity(defaults.len());
        for (name, language, status, category, quality) in defaults {
            templates.push(TemplateRec {
                id: self.mint_template_id(),
                name: name.to_owned(),
                language: language.to_owned(),
                status: status.to_owned(),
                category: category.to_owned(),
                quality: quality.to_owned(),
                quality_date: 1_700_000_000,
                refusal: None,
            });
        }
        if let Some(waba) = self.wabas.get_mut(waba_id) {
            waba.templates.extend(templates);
            waba.templates_seeded = true;
        }
    }

    /// `POST /_sandbox/wabas/{waba_id}/templates`: replaces the WABA's templates (creating the
    /// WABA if unknown) with `count` generated ones (see [`super::Sandbox::set_templates`]);
    /// returns how many are eligible for migration.
    pub(crate) fn set_templates(&mut self, waba_id: &str, count: usize) -> Result<usize, String> {
        check_id("waba_id", waba_id)?;
        if !(1..=MAX_GENERATED_TEMPLATES).contains(&count) {
            return Err(format!(
                "count must be between 1 and {MAX_GENERATED_TEMPLATES}, got {count}"
            ));
        }
        self.ensure_waba(waba_id, None);
        let mut templates = Vec::with_capacity(count);
        let mut eligible = 0;
        for index in 0..count {
            let (status, quality) = generated_status(index);
            let is_eligible = status == "APPROVED" && (quality == "GREEN" || quality == "UNKNOWN");
            eligible += usize::from(is_eligible);
            templates.push(TemplateRec {
                id: self.mint_template_id(),
                name: format!("tpl_{index:05}"),
                language: if index % 2 == 0 { "en_US" } else { "pt_BR" }.to_owned(),
                status: status.to_owned(),
                category: if (index / 2) % 2 == 0 {
                    "UTILITY"
                } else {
                    "MARKETING"
                }
                .to_owned(),
                quality: quality.to_owned(),
                quality_date: 1_700_000_000,
                refusal: (is_eligible && index % GENERATED_REFUSAL_EVERY == 0)
                    .then(|| GENERATED_REFUSAL_REASON.to_owned()),
            });
        }
        if let Some(waba) = self.wabas.get_mut(waba_id) {
            waba.templates = templates;
            waba.templates_seeded = true;
        }
        Ok(eligible)
    }

    /// `POST /_sandbox/channels/{channel_id}/permission`: whether the partner may generate API
    /// keys for the channel.
    pub(crate) fn set_permission(&mut self, channel_id: &str, granted: bool) -> Result<(), String> {
        let channel = self
            .channels
            .get_mut(channel_id)
            .ok_or_else(|| format!("no channel {channel_id:?}"))?;
        channel.permission = granted;
        Ok(())
    }

    /// The scenario a number triggers: by its last four digits, unless it was resolved.
    pub(crate) fn scenario_of(&self, e164: &str) -> Option<Scenario> {
        if self.resolved.contains(e164) {
            return None;
        }
        Scenario::of(e164)
    }

    /// Whether the WABA shows `scenario`: by its id suffix, or through the number currently
    /// added to it as a source (source-level scenarios) or migrating into it
    /// (destination-level scenarios). Only the current number counts, so a scenario number
    /// marks a WABA until another number is added there, never for good.
    /// Meta's template limit of `waba`: 250 when its portfolio is unverified (scenario 0006).
    pub(crate) fn template_limit(&self, waba: &WabaRec) -> usize {
        crate::domain::upstream::template_limit(!self.waba_has(waba, Scenario::BusinessNotVerified))
    }

    pub(crate) fn waba_has(&self, waba: &WabaRec, scenario: Scenario) -> bool {
        if Scenario::of(&waba.id) == Some(scenario) {
            return true;
        }
        let carries = |number: &Option<String>| {
            number
                .as_deref()
                .is_some_and(|n| self.scenario_of(n) == Some(scenario))
        };
        (scenario.marks_source_waba() && carries(&waba.current_source))
            || (scenario.marks_destination_waba() && carries(&waba.current_dest))
    }

    /// Whether Graph calls about the WABA are refused with an expired token (scenario 0021).
    pub(crate) fn denies_waba(&self, waba_id: &str) -> bool {
        if Scenario::of(waba_id) == Some(Scenario::UpstreamAuth) {
            return true;
        }
        self.wabas
            .get(waba_id)
            .is_some_and(|w| self.waba_has(w, Scenario::UpstreamAuth))
    }

    /// Whether Graph calls about the number are refused with an expired token (scenario 0021).
    pub(crate) fn denies_number(&self, e164: &str) -> bool {
        self.scenario_of(e164) == Some(Scenario::UpstreamAuth)
    }

    /// `POST /_sandbox/numbers/{e164}/resolve`: whoever had to act did it (two-step verification
    /// turned off, display name approved, permission granted, …): the number behaves as a
    /// happy-path number from now on, so `retry` of its migration can succeed. Its channel gets
    /// API-key permission, and a registered number whose channel never appeared (0019) gets one.
    pub(crate) fn resolve(&mut self, e164: &str, config: &SandboxConfig) -> Value {
        let scenario = Scenario::of(e164);
        self.resolved.insert(e164.to_owned());
        let other = scenarios::brazil_other_form(e164);
        let same = |n: &str| n == e164 || other.as_deref() == Some(n);
        let mut registered = None;
        for phone in self.phones.values_mut() {
            if same(&phone.e164) {
                phone.scenario = None;
                if phone.role == Role::Destination && phone.status == "CONNECTED" {
                    registered = Some((phone.id.clone(), phone.waba_id.clone()));
                }
            }
        }
        if let Some((phone_id, waba_id)) = registered {
            self.ensure_channel(e164, &phone_id, Some(&waba_id), None, config);
        }
        for channel in self.channels.values_mut().filter(|c| c.e164 == e164) {
            channel.permission = true;
        }
        self.register_calls.remove(e164);
        json!({
            "phone_number": e164,
            "resolved": true,
            "scenario": scenario.map(|s| s.code()),
        })
    }

    /// `POST /_sandbox/numbers/{e164}/complete_signup`: the client finished 360dialog's
    /// Embedded Signup. The number is in its destination WABA (`destination`, else the one the
    /// number was seeded or migrated into), verified and registered (`CONNECTED`, its source
    /// records `MIGRATED`), and a `running` 360dialog channel with API-key permission exists
    /// for it there (the one it had on that WABA, made running and permitted, or a new one,
    /// `channel_id` if given). Returns the channel's id; `Err` when the destination WABA is
    /// unknown or the number is scenario 0019 (its channel never appears).
    pub(crate) fn complete_signup(
        &mut self,
        e164: &str,
        destination: Option<&str>,
        channel_id: Option<&str>,
        business_id: Option<&str>,
        new_waba: SignupWaba,
        config: &SandboxConfig,
    ) -> Result<String, String> {
        if let Some(dest) = destination {
            check_id("destination_waba_id", dest)?;
        }
        if let Some(business) = business_id {
            check_id("business_id", business)?;
        }
        if let Some(id) = channel_id {
            check_id("channel_id", id)?;
        }
        let dest = destination
            .map(str::to_owned)
            .or_else(|| {
                self.phones
                    .values()
                    .find(|p| p.e164 == e164 && p.role == Role::Destination)
                    .map(|p| p.waba_id.clone())
            })
            .or_else(|| {
                self.wabas
                    .values()
                    .find(|w| w.dest_numbers.contains(e164))
                    .map(|w| w.id.clone())
            })
            .ok_or_else(|| {
                format!(
                    "the sandbox does not know the destination WABA of {e164} (the service tells it when the migration prechecks): send {{\"destination_waba_id\": \"...\"}}"
                )
            })?;
        if self.scenario_of(e164) == Some(Scenario::ChannelTimeout) {
            return Err(format!(
                "{e164} is scenario 0019 (channel_timeout): its channel never appears; POST /_sandbox/numbers/{e164}/resolve first"
            ));
        }
        if let Some(c) = channel_id.and_then(|id| self.channels.get(id)) {
            if c.e164 != e164 {
                return Err(format!("the channel {} is another number's", c.id));
            }
            if !c.on_waba(Some(&dest)) {
                return Err(format!(
                    "the channel {} is this number's channel on another WABA",
                    c.id
                ));
            }
        }
        // A WABA the signup creates belongs to the client's business.
        let owner = business_id.map(str::to_owned).or_else(|| {
            self.phones
                .values()
                .find(|p| p.e164 == e164 && p.role == Role::Source)
                .and_then(|p| self.wabas.get(&p.waba_id))
                .map(|w| w.owner_business_id.clone())
        });
        let new = !self.wabas.contains_key(&dest);
        let waba = self.ensure_waba(&dest, owner.as_deref());
        // Only a WABA the signup creates can still be being set up.
        if new {
            waba.setting_up = !new_waba.set_up;
            waba.unshared = !new_waba.shared;
        }
        waba.dest_numbers.insert(e164.to_owned());
        waba.current_dest = Some(e164.to_owned());
        let phone_id = match self.phone_in_waba(&dest, e164) {
            Some(id) => id,
            None => self.insert_phone(
                &dest,
                e164,
                Role::Destination,
                self.scenario_of(e164),
                true,
                "CONNECTED",
            ),
        };
        if let Some(phone) = self.phones.get_mut(&phone_id) {
            phone.verified = true;
            phone.status = "CONNECTED".to_owned();
        }
        self.mark_source_copies_migrated(e164, &phone_id);
        let running_now = SandboxConfig {
            channel_running_after: Duration::ZERO,
            ..config.clone()
        };
        let id = self
            .ensure_channel(e164, &phone_id, Some(&dest), channel_id, &running_now)
            .ok_or_else(|| format!("no channel could be made for {e164}"))?;
        if let Some(channel) = self.channels.get_mut(&id) {
            let now = Utc::now();
            channel.running_at = channel.running_at.min(now);
            channel.permission = true;
        }
        Ok(id)
    }

    /// Every number associated with the WABA (counters of WABA-level calls).
    pub(crate) fn waba_numbers(&self, waba_id: &str) -> Vec<String> {
        let Some(waba) = self.wabas.get(waba_id) else {
            return Vec::new();
        };
        let mut numbers: BTreeSet<String> = waba.source_numbers.clone();
        numbers.extend(waba.dest_numbers.iter().cloned());
        for id in &waba.phone_ids {
            if let Some(phone) = self.phones.get(id) {
                numbers.insert(phone.e164.clone());
            }
        }
        numbers.into_iter().collect()
    }

    /// Graph JSON of a WABA.
    pub(crate) fn waba_json(&self, waba: &WabaRec) -> Value {
        let owner = if self.waba_has(waba, Scenario::BusinessMismatch) {
            FOREIGN_BUSINESS_ID
        } else {
            waba.owner_business_id.as_str()
        };
        let review = if self.waba_has(waba, Scenario::SourceWabaNotApproved) {
            "PENDING"
        } else if self.waba_has(waba, Scenario::DestinationWabaNotApproved) {
            "REJECTED"
        } else {
            "APPROVED"
        };
        let verification = if self.waba_has(waba, Scenario::BusinessNotVerified) {
            "not_verified"
        } else {
            "verified"
        };
        let mut body = json!({
            "id": waba.id,
            "name": format!("Sandbox WABA {}", waba.id),
            "account_review_status": review,
            "business_verification_status": verification,
            "owner_business_info": {"id": owner, "name": format!("Sandbox Business {owner}")},
            "message_template_namespace": waba.namespace,
            "currency": "USD",
            "timezone_id": "1",
        });
        if !self.waba_has(waba, Scenario::DestinationNoPaymentMethod) && !waba.setting_up {
            body["primary_funding_id"] = json!(waba.funding_id);
        }
        body
    }

    pub(crate) fn waba_has_app(&self, waba: &WabaRec) -> bool {
        !self.waba_has(waba, Scenario::DestinationNoSubscribedApp) && !waba.setting_up
    }

    /// `POST /_sandbox/wabas/{waba_id}/set_up`: 360dialog finished setting up a WABA the
    /// signup made (its payment method and subscribed app appear). `Err` for an unknown WABA.
    pub(crate) fn finish_setup(&mut self, waba_id: &str) -> Result<(), String> {
        let waba = self
            .wabas
            .get_mut(waba_id)
            .ok_or_else(|| format!("the sandbox does not know the WABA {waba_id}"))?;
        waba.setting_up = false;
        Ok(())
    }

    /// `POST /_sandbox/wabas/{waba_id}/share`: the WABA a signup made is shared with the
    /// partner's app (Graph reads it). `Err` for an unknown WABA.
    pub(crate) fn share(&mut self, waba_id: &str) -> Result<(), String> {
        let waba = self
            .wabas
            .get_mut(waba_id)
            .ok_or_else(|| format!("the sandbox does not know the WABA {waba_id}"))?;
        waba.unshared = false;
        Ok(())
    }

    /// A WABA a signup made that Graph does not show the partner yet.
    pub(crate) fn unshared(&self, waba_id: &str) -> bool {
        self.wabas.get(waba_id).is_some_and(|w| w.unshared)
    }

    /// Graph JSON of a phone number.
    pub(crate) fn phone_json(phone: &PhoneRec) -> Value {
        let scenario = phone.scenario;
        let is = |s: Scenario| scenario == Some(s);
        json!({
            "id": phone.id,
            "display_phone_number": scenarios::display(&phone.e164),
            "verified_name": phone.verified_name,
            "quality_rating": "GREEN",
            "code_verification_status": if phone.verified { "VERIFIED" } else { "NOT_VERIFIED" },
            "name_status": if is(Scenario::DisplayNameNotApproved) { "PENDING_REVIEW" } else { "APPROVED" },
            "new_name_status": if is(Scenario::PendingNameChange) { "PENDING_REVIEW" } else { "NONE" },
            "status": phone.status,
            "platform_type": "CLOUD_API",
            "throughput": {"level": "STANDARD"},
            "messaging_limit_tier": "TIER_1K",
            "is_official_business_account": false,
            "is_on_biz_app": is(Scenario::OnBizApp),
            "account_mode": if is(Scenario::WhatsappIssued) { "SANDBOX" } else { "LIVE" },
        })
    }

    /// A new phone record appended to the WABA's listing; returns its id. `scenario` comes from
    /// [`World::scenario_of`] (resolved numbers have none).
    pub(crate) fn insert_phone(
        &mut self,
        waba_id: &str,
        e164: &str,
        role: Role,
        scenario: Option<Scenario>,
        verified: bool,
        status: &'static str,
    ) -> String {
        let id = self.mint_phone_id();
        let verified_name = self
            .phones
            .values()
            .find(|p| p.e164 == e164)
            .map(|p| p.verified_name.clone())
            .unwrap_or_else(|| default_display_name(e164));
        self.phones.insert(
            id.clone(),
            PhoneRec {
                id: id.clone(),
                e164: e164.to_owned(),
                waba_id: waba_id.to_owned(),
                role,
                scenario,
                verified_name,
                verified,
                status: status.to_owned(),
                code_requested: false,
            },
        );
        self.ensure_waba(waba_id, None).phone_ids.push(id.clone());
        id
    }

    /// Id of the number's record in the WABA, if listed there.
    pub(crate) fn phone_in_waba(&self, waba_id: &str, e164: &str) -> Option<String> {
        let waba = self.wabas.get(waba_id)?;
        waba.phone_ids
            .iter()
            .find(|id| self.phones.get(*id).is_some_and(|p| p.e164 == e164))
            .cloned()
    }

    /// `POST /_sandbox/numbers`.
    pub(crate) fn add_number(
        &mut self,
        seed: &NumberSeed,
        config: &SandboxConfig,
    ) -> Result<Value, String> {
        let e164 = scenarios::normalize_e164(&seed.phone_number)
            .ok_or_else(|| format!("not an E.164 phone number: {:?}", seed.phone_number))?;
        check_id("source_waba_id", &seed.source_waba_id)?;
        if let Some(dest) = &seed.destination_waba_id {
            check_id("destination_waba_id", dest)?;
        }
        let scenario = self.scenario_of(&e164);
        let owner = seed.business_id.as_deref();
        let source = self.ensure_waba(&seed.source_waba_id, owner);
        source.source_numbers.insert(e164.clone());
        source.current_source = Some(e164.clone());
        // Lenient: a WABA belongs to whichever business the latest number added there names,
        // so reusing WABA ids with another business id never breaks them.
        if let Some(owner) = owner {
            source.owner_business_id = owner.to_owned();
        }
        self.seed_templates(&seed.source_waba_id);

        let listed_as = match scenario {
            Some(Scenario::NumberNotFoundOnSource) => None,
            Some(Scenario::BrazilNinthDigit) => {
                Some(scenarios::brazil_other_form(&e164).unwrap_or_else(|| e164.clone()))
            }
            _ => Some(e164.clone()),
        };
        let mut listed = Vec::new();
        if let Some(form) = listed_as {
            let id = match self.phone_in_waba(&seed.source_waba_id, &form) {
                Some(id) => id,
                None => self.insert_phone(
                    &seed.source_waba_id,
                    &form,
                    Role::Source,
                    scenario,
                    true,
                    "CONNECTED",
                ),
            };
            if let Some(phone) = self.phones.get(&id) {
                listed.push(Self::phone_json(phone));
            }
        }

        if let Some(dest) = &seed.destination_waba_id {
            let dest_waba = self.ensure_waba(dest, owner);
            dest_waba.dest_numbers.insert(e164.clone());
            dest_waba.current_dest = Some(e164.clone());
            if let Some(owner) = owner {
                dest_waba.owner_business_id = owner.to_owned();
            }
            if scenario == Some(Scenario::AlreadyInDestination) {
                self.place_already_migrated(dest, &e164, config);
            }
        }
        Ok(json!({
            "phone_number": e164,
            "source_waba_id": seed.source_waba_id,
            "listed_on_source": listed,
        }))
    }

    /// Scenario 0004: the number is registered in `dest` already, with a running channel.
    pub(crate) fn place_already_migrated(
        &mut self,
        dest: &str,
        e164: &str,
        config: &SandboxConfig,
    ) -> String {
        if let Some(id) = self.phone_in_waba(dest, e164) {
            return id;
        }
        let id = self.insert_phone(
            dest,
            e164,
            Role::Destination,
            self.scenario_of(e164),
            true,
            "CONNECTED",
        );
        self.mark_source_copies_migrated(e164, &id);
        let channel_config = SandboxConfig {
            channel_running_after: Duration::ZERO,
            ..config.clone()
        };
        self.ensure_channel(e164, &id, Some(dest), None, &channel_config);
        id
    }

    /// After registration: every other record of the number (or its Brazilian other form) that
    /// is a source registration becomes `MIGRATED`.
    pub(crate) fn mark_source_copies_migrated(&mut self, e164: &str, except_id: &str) {
        let other = scenarios::brazil_other_form(e164);
        for phone in self.phones.values_mut() {
            let same = phone.e164 == e164 || other.as_deref() == Some(phone.e164.as_str());
            if same && phone.id != except_id && phone.role == Role::Source {
                phone.status = "MIGRATED".to_owned();
            }
        }
    }

    /// The number's 360dialog channel on `dest_waba`, created if missing (not for scenario
    /// 0019, whose channel never appears). A number whose latest channel is on another WABA (it
    /// moves between WABAs inside 360dialog, or its client signed up into another one) gets a
    /// second channel; the list shows both. `channel_id` forces the id (embedded signup).
    pub(crate) fn ensure_channel(
        &mut self,
        e164: &str,
        phone_number_id: &str,
        dest_waba: Option<&str>,
        channel_id: Option<&str>,
        config: &SandboxConfig,
    ) -> Option<String> {
        let scenario = self.scenario_of(e164);
        if scenario == Some(Scenario::ChannelTimeout) {
            return None;
        }
        if let Some(id) = self.channel_of_number.get(e164)
            && self.channels.get(id).is_none_or(|c| c.on_waba(dest_waba))
        {
            return Some(id.clone());
        }
        // An earlier channel of the number on that WABA (it moved away and back).
        if let Some(c) = self
            .channels
            .values()
            .filter(|c| c.e164 == e164 && c.on_waba(dest_waba))
            .max_by_key(|c| c.created_at)
        {
            let id = c.id.clone();
            self.channel_of_number.insert(e164.to_owned(), id.clone());
            return Some(id);
        }
        let client_key = dest_waba.unwrap_or("(embedded signup)").to_owned();
        let client_id = self
            .clients
            .entry(client_key)
            .or_insert_with(|| format!("{}CL", random_token(10)))
            .clone();
        let id = channel_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}CH", random_token(10)));
        let now = Utc::now();
        let delay = config.channel_running_after;
        let phone_name = self
            .phones
            .get(phone_number_id)
            .map(|p| p.verified_name.clone())
            .unwrap_or_else(|| default_display_name(e164));
        let channel = ChannelRec {
            id: id.clone(),
            client_id,
            e164: e164.to_owned(),
            phone_name,
            phone_number_id: phone_number_id.to_owned(),
            waba_external_id: dest_waba.map(str::to_owned),
            waba_account_id: format!("{}WA", random_token(10)),
            created_at: now,
            running_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
            permission: scenario != Some(Scenario::ApiKeyPermissionMissing),
            keys_issued: 0,
            current_key: None,
            last_key_at: None,
        };
        self.channels.insert(id.clone(), channel);
        self.channel_of_number.insert(e164.to_owned(), id.clone());
        Some(id)
    }
}

impl ChannelRec {
    /// Whether this channel serves the number in `waba` (any channel does when either WABA is
    /// not known).
    pub(crate) fn on_waba(&self, waba: Option<&str>) -> bool {
        match (waba, &self.waba_external_id) {
            (Some(w), Some(mine)) => w == mine,
            _ => true,
        }
    }

    /// `ready` until `running_at`, then `running` (computed lazily).
    pub(crate) fn status(&self) -> &'static str {
        if Utc::now() >= self.running_at {
            "running"
        } else {
            "ready"
        }
    }

    /// 360dialog Partner API JSON of the channel.
    pub(crate) fn json(&self) -> Value {
        let modified = if self.status() == "running" {
            self.running_at.max(self.created_at)
        } else {
            self.created_at
        };
        let mut waba_account = json!({"id": self.waba_account_id});
        if let Some(external) = &self.waba_external_id {
            waba_account["external_id"] = json!(external);
        }
        json!({
            "id": self.id,
            "client_id": self.client_id,
            "status": self.status(),
            "account_mode": "live",
            "setup_info": {
                "phone_number": scenarios::digits(&self.e164),
                "phone_name": self.phone_name,
            },
            "waba_account": waba_account,
            "client": {"id": self.client_id},
            "created_at": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "modified_at": modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}

/// Calls per endpoint per number.
#[derive(Default)]
pub(crate) struct Counters {
    numbers: BTreeMap<String, BTreeMap<&'static str, (u64, u64)>>,
}

impl Counters {
    pub(crate) fn received(&mut self, numbers: &[String], endpoint: &'static str) {
        for number in numbers {
            let entry = self.numbers.entry(number.clone()).or_default();
            entry.entry(endpoint).or_default().0 += 1;
        }
    }

    pub(crate) fn applied(&mut self, numbers: &[String], endpoint: &'static str) {
        for number in numbers {
            let entry = self.numbers.entry(number.clone()).or_default();
            entry.entry(endpoint).or_default().1 += 1;
        }
    }

    pub(crate) fn get(&self, number: &str, endpoint: &str) -> (u64, u64) {
        self.numbers
            .get(number)
            .and_then(|m| m.get(endpoint))
            .copied()
            .unwrap_or((0, 0))
    }

    /// `{"register": {"received": 1, "applied": 1}, …}` of one number.
    pub(crate) fn number_json(&self, number: &str) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(endpoints) = self.numbers.get(number) {
            for (endpoint, (received, applied)) in endpoints {
                out.insert(
                    (*endpoint).to_owned(),
                    json!({"received": received, "applied": applied}),
                );
            }
        }
        Value::Object(out)
    }

    pub(crate) fn to_json(&self) -> Value {
        let numbers: serde_json::Map<String, Value> = self
            .numbers
            .keys()
            .map(|n| (n.clone(), self.number_json(n)))
            .collect();
        json!({ "numbers": numbers })
    }
}

/// Random alphanumeric token (ids, API keys, trace ids).
pub(crate) fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn default_display_name(e164: &str) -> String {
    let d = scenarios::digits(e164);
    format!("Sandbox Shop {}", &d[d.len().saturating_sub(4)..])
}

fn digits_of(id: &str) -> String {
    let d: String = id.chars().filter(char::is_ascii_digit).collect();
    if d.is_empty() { "0".to_owned() } else { d }
}

/// Ids travel in URL paths: keep them to a safe alphabet.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} must be 1-64 characters of [A-Za-z0-9_-], got {id:?}"
        ))
    }
}
