//! `POST /{phone-number-id}/verify_code` from `verifying_otp` (a code was requested and the
//! partner submitted the right one), then on to `completed`.
//!
//! A refusal (136025, wrong or expired code) goes back to `awaiting_otp`. Any other failure is
//! retried, and the retry reads `code_verification_status` first: `VERIFIED` means the earlier
//! call was applied, so it is not sent again.

use sqlx::PgPool;

use crate::fakes::Kind::*;
use crate::harness::Intent::*;
use crate::harness::Upstream::*;
use crate::harness::{Case, Endpoint, case, run_table};

#[rustfmt::skip]
const CASES: &[Case] = &[
    //   intent   upstream kind                calls applied settles in
    case(Absent,  Fresh,   Success,            1, 1, "completed"),
    case(Absent,  Fresh,   Refused4xx,         1, 0, "awaiting_otp"),
    case(Absent,  Fresh,   Error5xx,           2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutBeforeSend,  2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutUnapplied,   2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutApplied,     1, 1, "completed"),
    case(Absent,  Fresh,   LostResponse,       1, 1, "completed"),
    case(Absent,  Fresh,   Html2xx,            1, 1, "completed"),
    case(Absent,  Fresh,   Garbled2xx,         1, 1, "completed"),
    case(Absent,  Applied, Success,            0, 0, "completed"),
    case(Absent,  Applied, Refused4xx,         0, 0, "completed"),
    case(Absent,  Applied, Error5xx,           0, 0, "completed"),
    case(Absent,  Applied, TimeoutBeforeSend,  0, 0, "completed"),
    case(Absent,  Applied, TimeoutUnapplied,   0, 0, "completed"),
    case(Absent,  Applied, TimeoutApplied,     0, 0, "completed"),
    case(Absent,  Applied, LostResponse,       0, 0, "completed"),
    case(Absent,  Applied, Html2xx,            0, 0, "completed"),
    case(Absent,  Applied, Garbled2xx,         0, 0, "completed"),
    case(Present, Fresh,   Success,            1, 1, "completed"),
    case(Present, Fresh,   Refused4xx,         1, 0, "awaiting_otp"),
    case(Present, Fresh,   Error5xx,           2, 1, "completed"),
    case(Present, Fresh,   TimeoutBeforeSend,  2, 1, "completed"),
    case(Present, Fresh,   TimeoutUnapplied,   2, 1, "completed"),
    case(Present, Fresh,   TimeoutApplied,     1, 1, "completed"),
    case(Present, Fresh,   LostResponse,       1, 1, "completed"),
    case(Present, Fresh,   Html2xx,            1, 1, "completed"),
    case(Present, Fresh,   Garbled2xx,         1, 1, "completed"),
    case(Present, Applied, Success,            0, 0, "completed"),
    case(Present, Applied, Refused4xx,         0, 0, "completed"),
    case(Present, Applied, Error5xx,           0, 0, "completed"),
    case(Present, Applied, TimeoutBeforeSend,  0, 0, "completed"),
    case(Present, Applied, TimeoutUnapplied,   0, 0, "completed"),
    case(Present, Applied, TimeoutApplied,     0, 0, "completed"),
    case(Present, Applied, LostResponse,       0, 0, "completed"),
    case(Present, Applied, Html2xx,            0, 0, "completed"),
    case(Present, Applied, Garbled2xx,         0, 0, "completed"),
];

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn verify_code_table(pool: PgPool) {
    run_table(pool, Endpoint::VerifyCode, CASES).await;
}
