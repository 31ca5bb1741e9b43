//! Percentiles over recorded samples (milliseconds) and the report.

use serde_json::{Value, json};

/// Samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, ms: f64) {
        self.0.push(ms);
    }

    pub fn extend(&mut self, other: &Samples) {
        self.0.extend_from_slice(&other.0);
    }

    /// Nearest-rank percentile; `None` without samples.
    pub fn pct(&self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    pub fn json(&self) -> Value {
        let r = |p: f64| self.pct(p).map(|v| (v * 100.0).round() / 100.0);
        json!({
            "n": self.0.len(),
            "p50_ms": r(50.0),
            "p95_ms": r(95.0),
            "p99_ms": r(99.0),
            "max_ms": r(100.0),
        })
    }

    /// `p50 / p95 / p99 ms`.
    pub fn fmt3(&self) -> String {
        match (self.pct(50.0), self.pct(95.0), self.pct(99.0)) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1} ms"),
            _ => "—".into(),
        }
    }

    /// `p50 / p99 ms`.
    pub fn fmt2(&self) -> String {
        match (self.pct(50.0), self.pct(99.0)) {
            (Some(a), Some(c)) => format!("{a:.2} / {c:.2} ms"),
            _ => "—".into(),
        }
    }
}

/// A two-column table with a note column.
#[derive(Default)]
pub struct Table(Vec<(String, String, String)>);

impl Table {
    pub fn row(&mut self, name: &str, value: impl Into<String>, note: impl Into<String>) {
        self.0.push((name.to_owned(), value.into(), note.into()));
    }

    pub fn section(&mut self, title: &str) {
        self.0
            .push((format!("**{title}**"), String::new(), String::new()));
    }

    /// Markdown, so it pastes into BENCHMARKS.md as is.
    pub fn render(&self) -> String {
        let mut out = String::from("| figure | value | note |\n|---|---|---|\n");
        for (a, b, c) in &self.0 {
            out.push_str(&format!("| {a} | {b} | {c} |\n"));
        }
        out
    }
}
