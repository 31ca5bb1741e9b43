//! `copying_templates`: the template copy, page by page, then by the ids still missing.

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::{Result, StepResult};
use crate::clients::Template;
use crate::db::migrations as store;
use crate::domain::memo::MemoKey;
use crate::domain::{
    ErrorCode, MigratedTemplate, MigrationError, MigrationState, SkippedTemplate, StepOutcome,
    TemplatesReport,
};
use crate::precheck;
use crate::worker::Deps;
use crate::worker::errors::outcome;

fn key(t: &Template) -> (String, String) {
    (t.name.clone(), t.language.clone())
}

const TEMPLATE_PAGE: usize = 500;

/// Ids per call when a later attempt retries the missing templates: half a page on the first
/// retry, halving again on each one after (down to 31). Meta's advice for a copy that times
/// out after 30 s (our upstream timeout) is a smaller batch.
fn retry_chunk(attempt: i32) -> usize {
    TEMPLATE_PAGE >> attempt.clamp(1, 4)
}

pub(super) async fn copying_templates(
    deps: &Deps,
    row: &store::MigrationRow,
) -> Result<StepResult> {
    let state = MigrationState::CopyingTemplates;
    let (source, dest) = match tokio::try_join!(
        deps.meta.list_templates(&row.source_waba_id),
        deps.meta.list_templates(&row.destination_waba_id)
    ) {
        Ok(v) => v,
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let eligible: Vec<&Template> = source
        .iter()
        .filter(|t| precheck::template_eligible(t))
        .collect();
    let present: HashSet<(String, String)> = dest.iter().map(key).collect();
    let missing: Vec<String> = eligible
        .iter()
        .filter(|t| !present.contains(&key(t)))
        .map(|t| t.id.clone())
        .collect();

    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut refusal: Option<MigrationError> = None;
    // Meta refused with 2388019: what is still missing did not fit the destination.
    let mut limit_reached = false;
    let mut dest_after = dest;
    if !missing.is_empty() {
        // First attempt copies page by page; later attempts retry only the missing ids.
        let first = MemoKey::TemplatesCopied.read(&row.step_memo).is_none();
        let calls: Vec<(u32, Option<Vec<String>>)> = if first {
            let pages = source.len().div_ceil(TEMPLATE_PAGE).max(1);
            (0..pages as u32).map(|p| (p, None)).collect()
        } else {
            missing
                .chunks(retry_chunk(row.attempt))
                .map(|c| (0, Some(c.to_vec())))
                .collect()
        };
        let mut queue: std::collections::VecDeque<(u32, Option<Vec<String>>)> = calls.into();
        // Once the pages are done, eligible templates that are neither in the destination nor
        // refused with a reason are retried by id, once.
        let mut retried_missing = !first;
        loop {
            let mut stop = false;
            while let Some((page, ids)) = queue.pop_front() {
                match deps
                    .meta
                    .migrate_templates(
                        &row.destination_waba_id,
                        &row.source_waba_id,
                        page,
                        ids.as_deref(),
                    )
                    .await
                {
                    Ok(r) => failed.extend(r.failed_templates),
                    Err(e) if e.upstream().is_some_and(|u| u.has_code(2388019)) => {
                        refusal = Some(
                            MigrationError::new(ErrorCode::TemplateLimitReached, state)
                                .with_upstream(e.upstream().cloned()),
                        );
                        limit_reached = true;
                        stop = true;
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        return Ok(StepResult::new(outcome(&e, state))
                            .remember(MemoKey::TemplatesCopied, json!(true)));
                    }
                    Err(e) => {
                        if let StepOutcome::Failed(err) = outcome(&e, state) {
                            refusal = Some(err);
                        }
                        let reason = e
                            .upstream()
                            .map(|u| u.message.clone())
                            .unwrap_or_else(|| e.to_string());
                        for id in &missing {
                            failed.entry(id.clone()).or_insert_with(|| reason.clone());
                        }
                        stop = true;
                        break;
                    }
                }
            }
            dest_after = match deps.meta.list_templates(&row.destination_waba_id).await {
                Ok(d) => d,
                Err(e) => return Ok(StepResult::new(outcome(&e, state))),
            };
            if stop || refusal.is_some() || retried_missing {
                break;
            }
            retried_missing = true;
            let present_now: HashSet<(String, String)> = dest_after.iter().map(key).collect();
            let still: Vec<String> = eligible
                .iter()
                .filter(|t| !present_now.contains(&key(t)) && !failed.contains_key(&t.id))
                .map(|t| t.id.clone())
                .collect();
            if still.is_empty() {
                break;
            }
            queue.extend(still.chunks(TEMPLATE_PAGE).map(|c| (0, Some(c.to_vec()))));
        }
    }

    let by_key: BTreeMap<(String, String), &Template> =
        dest_after.iter().map(|t| (key(t), t)).collect();
    let mut report = TemplatesReport {
        eligible: eligible.len(),
        error: refusal,
        ..Default::default()
    };
    for t in &eligible {
        match by_key.get(&key(t)) {
            Some(d) => report.migrated.push(MigratedTemplate {
                name: t.name.clone(),
                language: t.language.clone(),
                id: d.id.clone(),
            }),
            None if limit_reached && !failed.contains_key(&t.id) => {
                report.skipped.push(SkippedTemplate {
                    name: t.name.clone(),
                    language: t.language.clone(),
                    reason: "destination template limit reached".into(),
                })
            }
            None => {
                let reason = failed
                    .get(&t.id)
                    .cloned()
                    .unwrap_or_else(|| "Not present in the destination after migration".into());
                report.failed.insert(t.id.clone(), reason);
            }
        }
    }
    for t in source.iter().filter(|t| !precheck::template_eligible(t)) {
        let reason = if !t.status.eq_ignore_ascii_case("APPROVED") {
            format!("status {}", t.status)
        } else {
            format!(
                "quality {}",
                t.quality_score.as_deref().unwrap_or("unknown")
            )
        };
        report.skipped.push(SkippedTemplate {
            name: t.name.clone(),
            language: t.language.clone(),
            reason,
        });
    }
    report.status = if report.failed.is_empty() && !limit_reached {
        "completed".into()
    } else {
        "partial".into()
    };
    let data = json!({
        "templates_migrated": report.migrated.len(),
        "templates_failed": report.failed.len(),
    });
    Ok(StepResult::done()
        .with(|p| p.templates = Some(json!(report)))
        .forget(MemoKey::TemplatesCopied)
        .data(data))
}

#[cfg(test)]
mod tests {
    use super::retry_chunk;

    #[test]
    fn each_retry_sends_fewer_ids() {
        let sizes: Vec<usize> = (0..7).map(retry_chunk).collect();
        assert_eq!(sizes, [250, 250, 125, 62, 31, 31, 31]);
    }
}
