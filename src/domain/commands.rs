//! The commands a person or a partner sends to a migration (submit a code, resend, cancel,
//! retry), as pure rules: from which states each is allowed, where it leads, which memo keys it
//! edits and what it resets. The application core turns a [`Plan`] into one guarded write;
//! the worker's own edges are in [`super::machine`]. Together they are the whole state machine.

use super::memo::{MemoEdits, MemoKey};
use super::{EventType, MigrationState};

/// A command on one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `POST …/otp`: the client's code.
    SubmitCode,
    /// `POST …/otp/resend`: request another code.
    Resend,
    /// `POST …/cancel`.
    Cancel,
    /// `POST …/retry`: resume a failed migration from the step that failed (`failed_step`).
    Retry { failed_step: MigrationState },
}

impl Command {
    /// The verb of a refusal: "Cannot {action} a migration in state …".
    pub fn action(self) -> &'static str {
        match self {
            Command::SubmitCode => "submit a code to",
            Command::Resend => "resend a code for",
            Command::Cancel => "cancel",
            Command::Retry { .. } => "retry",
        }
    }

    /// The states the command is allowed in.
    pub fn allowed_in(self) -> &'static [MigrationState] {
        use MigrationState::*;
        match self {
            Command::SubmitCode | Command::Resend => &[AwaitingOtp],
            Command::Cancel => &MigrationState::ACTIVE,
            Command::Retry { .. } => &[Failed],
        }
    }

    /// The allowed states in words, for a 409.
    pub fn allowed_text(self) -> &'static str {
        match self {
            Command::SubmitCode | Command::Resend => "awaiting_otp",
            Command::Cancel => "any non-terminal state",
            Command::Retry { .. } => "failed",
        }
    }
}

/// What a command does when it is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The write is guarded by these states (the row may have moved since it was read).
    pub from: &'static [MigrationState],
    pub to: MigrationState,
    /// The audit event's (and webhook's) type: the one of the state entered.
    pub event: EventType,
    pub memo: MemoEdits,
    /// Run the new state's step now (else the row keeps its schedule).
    pub run_now: bool,
    /// Clear the stored error, the step's attempt counter and (retry) the failed step.
    pub clear_error: bool,
    /// Start the verification over: full code attempts, no deadline, no stored code.
    pub reset_otp: bool,
    /// Forget a submitted code.
    pub clear_code: bool,
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongState {
    pub action: &'static str,
    pub allowed: &'static str,
}

/// Where a failed migration resumes: the step that failed, except that a code cannot be
/// verified again once it expired or was rejected, so OTP failures resume by requesting a new
/// code.
pub fn retry_target(step: MigrationState) -> MigrationState {
    use MigrationState::*;
    match step {
        Queued => Prechecking,
        AwaitingOtp | VerifyingOtp => RequestingOtp,
        s => s,
    }
}

/// The plan of `command` for a migration in `state`, or why it is refused. Every lease is
/// released by a command (a worker holding one loses its guarded writes and stops).
pub fn plan(command: Command, state: MigrationState) -> Result<Plan, WrongState> {
    if !command.allowed_in().contains(&state) {
        return Err(WrongState {
            action: command.action(),
            allowed: command.allowed_text(),
        });
    }
    let from = command.allowed_in();
    let base = |to: MigrationState| Plan {
        from,
        to,
        event: EventType::for_transition(to),
        memo: MemoEdits::default(),
        run_now: true,
        clear_error: true,
        reset_otp: false,
        clear_code: false,
    };
    Ok(match command {
        Command::SubmitCode => base(MigrationState::VerifyingOtp),
        // The new code must really be requested: forget the intent of the last request.
        Command::Resend => Plan {
            memo: MemoEdits::default().remove(MemoKey::RequestCode),
            ..base(MigrationState::RequestingOtp)
        },
        Command::Cancel => Plan {
            run_now: false,
            clear_error: false,
            clear_code: true,
            ..base(MigrationState::Cancelled)
        },
        Command::Retry { failed_step } => {
            let to = retry_target(failed_step);
            let requests_code = to == MigrationState::RequestingOtp;
            // Polls start over; a retry that requests a code really requests one.
            let mut memo = MemoEdits::default().remove(MemoKey::ChannelPolls);
            if requests_code {
                memo = memo.remove(MemoKey::RequestCode);
            }
            Plan {
                memo,
                reset_otp: requests_code,
                clear_code: requests_code,
                ..base(to)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationState::*;

    /// Every command × every state: allowed exactly where the table says, and leading where
    /// it says.
    #[test]
    fn every_state_and_command() {
        for state in MigrationState::ALL {
            let submit = plan(Command::SubmitCode, state);
            let resend = plan(Command::Resend, state);
            let cancel = plan(Command::Cancel, state);
            if state == AwaitingOtp {
                assert_eq!(submit.as_ref().unwrap().to, VerifyingOtp);
                assert_eq!(resend.as_ref().unwrap().to, RequestingOtp);
            } else {
                assert_eq!(
                    submit.unwrap_err(),
                    WrongState {
                        action: "submit a code to",
                        allowed: "awaiting_otp"
                    },
                    "{state}"
                );
                assert!(resend.is_err(), "{state}");
            }
            match cancel {
                Ok(p) => {
                    assert!(!state.is_terminal(), "{state}");
                    assert_eq!(p.to, Cancelled);
                    assert_eq!(p.event, EventType::for_transition(Cancelled));
                    assert!(p.clear_code && !p.run_now);
                }
                Err(e) => {
                    assert!(state.is_terminal(), "{state}");
                    assert_eq!(e.allowed, "any non-terminal state");
                }
            }
            for failed_step in MigrationState::ALL {
                let retry = plan(Command::Retry { failed_step }, state);
                if state == Failed {
                    let p = retry.unwrap();
                    assert_eq!(p.to, retry_target(failed_step));
                    assert_eq!(p.from, &[Failed]);
                } else {
                    assert!(retry.is_err(), "{state}");
                }
            }
        }
    }

    #[test]
    fn retries_of_code_failures_request_a_new_code() {
        for step in [AwaitingOtp, VerifyingOtp, RequestingOtp] {
            let p = plan(Command::Retry { failed_step: step }, Failed).unwrap();
            assert_eq!(p.to, RequestingOtp);
            assert!(p.reset_otp && p.clear_code);
            assert_eq!(p.memo.removed(), ["channel_polls", "request_code"]);
        }
        let p = plan(
            Command::Retry {
                failed_step: CopyingTemplates,
            },
            Failed,
        )
        .unwrap();
        assert_eq!(p.to, CopyingTemplates);
        assert!(!p.reset_otp && !p.clear_code);
        assert_eq!(p.memo.removed(), ["channel_polls"]);
        let p = plan(
            Command::Retry {
                failed_step: Queued,
            },
            Failed,
        )
        .unwrap();
        assert_eq!(p.to, Prechecking);
    }

    #[test]
    fn active_is_every_state_but_the_terminal_ones() {
        let active: Vec<_> = MigrationState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(active, MigrationState::ACTIVE);
    }

    #[test]
    fn a_resend_forgets_only_the_request_intent() {
        let p = plan(Command::Resend, AwaitingOtp).unwrap();
        assert_eq!(p.memo.removed(), ["request_code"]);
        assert!(p.memo.set_object().as_object().unwrap().is_empty());
        assert!(p.run_now && p.clear_error);
    }
}
