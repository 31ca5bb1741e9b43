//! Plans of the service's own statements: `auto_explain` on one session of ours, so the plan is
//! that of exactly the SQL the library function sends (no copy of it here to drift).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::PgConnection;

/// `auto_explain` (ANALYZE, BUFFERS, text) for every statement of `conn` until [`Explainer::off`].
pub struct Explainer {
    log: PathBuf,
    offset: u64,
}

impl Explainer {
    /// Loads `auto_explain` into this session (superuser) and starts logging every plan.
    pub async fn on(conn: &mut PgConnection, data_dir: &Path) -> anyhow::Result<Self> {
        sqlx::raw_sql(
            "LOAD 'auto_explain';
             SET auto_explain.log_min_duration = 0;
             SET auto_explain.log_analyze = on;
             SET auto_explain.log_buffers = on;
             SET auto_explain.log_timing = on;
             SET auto_explain.log_format = text;",
        )
        .execute(&mut *conn)
        .await
        .context("LOAD 'auto_explain'")?;
        let log = data_dir.join("postgres.log");
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        Ok(Self { log, offset })
    }

    /// Stops logging; returns the plans logged since [`Explainer::on`], one `Vec` of lines
    /// each (the first line is the duration, then `Query Text:` and the plan).
    pub async fn off(self, conn: &mut PgConnection) -> anyhow::Result<Vec<Vec<String>>> {
        sqlx::raw_sql("SET auto_explain.log_min_duration = -1")
            .execute(&mut *conn)
            .await?;
        let bytes = std::fs::read(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        let text = String::from_utf8_lossy(bytes.get(self.offset as usize..).unwrap_or(&[]));
        let mut plans: Vec<Vec<String>> = Vec::new();
        let mut current: Option<Vec<String>> = None;
        for line in text.lines() {
            if line.contains("duration:") && line.contains("plan:") {
                if let Some(p) = current.take() {
                    plans.push(p);
                }
                let head = line.split("LOG:").nth(1).unwrap_or(line).trim().to_owned();
                current = Some(vec![head]);
            } else if let Some(p) = current.as_mut() {
                if line.starts_with('\t') || line.starts_with(' ') {
                    p.push(line.trim_end().replace('\t', "  "));
                } else {
                    plans.push(current.take().unwrap_or_default());
                }
            }
        }
        if let Some(p) = current {
            plans.push(p);
        }
        Ok(plans)
    }
}

/// The plan lines that say how rows were found (scans, buffers, execution time).
pub fn key_lines(plan: &[String]) -> Vec<String> {
    plan.iter()
        .filter(|l| {
            let t = l.trim_start();
            t.contains("Scan")
                || t.starts_with("Buffers:")
                || t.starts_with("Execution Time")
                || t.starts_with("->  Sort")
                || t.starts_with("Sort ")
                || t.starts_with("Limit")
                || t.starts_with("Rows Removed")
                || t.starts_with("Index Cond")
                || t.starts_with("Filter")
                || t.starts_with("duration:")
        })
        .map(|l| {
            let l = l.trim_end();
            if l.chars().count() > 220 {
                format!("{}…", l.chars().take(220).collect::<String>())
            } else {
                l.to_owned()
            }
        })
        .collect()
}
