//! Logging: JSON lines when stdout is not a terminal (containers, CI), pretty otherwise.
//! `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info,hyper=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    if std::io::stdout().is_terminal() {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    // Every enclosing span's fields (request_id, migration.id, step...).
                    .with_current_span(false)
                    .with_span_list(true),
            )
            .init();
    }
}
