//! The migration domain: states, the pure transition rules, error codes and validated values.
//! Nothing here does I/O or knows about HTTP, SQL or upstream clients.

pub mod commands;
pub mod error;
pub mod event;
pub mod machine;
pub mod memo;
pub mod pacing;
pub mod state;
pub mod templates;
pub mod upstream;
pub mod values;
pub mod waiting;

pub use error::{Actor, ErrorCode, MigrationError};
pub use event::EventType;
pub use machine::{Decision, RetryPolicy, StepOutcome};
pub use state::{Flow, MigrationState, OtpMethod};
pub use templates::{MigratedTemplate, SkippedTemplate, TemplatesReport};
pub use waiting::WaitingFor;
