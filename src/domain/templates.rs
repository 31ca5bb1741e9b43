//! What the template step reports: the templates copied to the destination WABA, the ones that
//! failed or were skipped, and why (`Migration.templates`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MigrationError;

/// `templates` of a migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplatesReport {
    /// `completed` when every eligible template is in the destination, else `partial`.
    pub status: String,
    /// Eligible source templates (APPROVED with GREEN or UNKNOWN quality):
    /// `migrated` + `failed` + those skipped for the destination's template limit.
    pub eligible: usize,
    pub migrated: Vec<MigratedTemplate>,
    /// Source template id → Meta's reason.
    pub failed: BTreeMap<String, String>,
    /// Not copied: ineligible at the source (status or quality), or no room left in the
    /// destination (template limit).
    pub skipped: Vec<SkippedTemplate>,
    /// Set when copying stopped on an upstream refusal, e.g. `template_limit_reached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MigrationError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigratedTemplate {
    pub name: String,
    pub language: String,
    /// The template's id in the destination WABA.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SkippedTemplate {
    pub name: String,
    pub language: String,
    pub reason: String,
}
