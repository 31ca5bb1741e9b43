//! `POST /{phone-number-id}/request_code` from `requesting_otp`.
//!
//! With an intent the code is treated as sent whatever upstream says (the partner can resend):
//! no call. Without one the step checks the number is not verified, records the intent and
//! asks once; an answer that leaves it unknown whether the SMS went out (5xx, timeout after
//! sending, lost response, a 2xx that is not `{"success": true}`) is also treated as sent.
//! Only a request that surely never left (connect timeout) is asked again. "Code sent" without
//! an intent is what a resend leaves (it removes the intent to get a new code).

use sqlx::PgPool;

use crate::fakes::Kind::*;
use crate::harness::Intent::*;
use crate::harness::Upstream::*;
use crate::harness::{Case, Endpoint, case, run_table};

#[rustfmt::skip]
const CASES: &[Case] = &[
    //   intent   upstream kind                calls applied settles in
    case(Absent,  Fresh,   Success,            1, 1, "awaiting_otp"),
    case(Absent,  Fresh,   Refused4xx,         1, 0, "failed/otp_rate_limited"),
    case(Absent,  Fresh,   Error5xx,           1, 0, "awaiting_otp"),
    case(Absent,  Fresh,   TimeoutBeforeSend,  2, 1, "awaiting_otp"),
    case(Absent,  Fresh,   TimeoutUnapplied,   1, 0, "awaiting_otp"),
    case(Absent,  Fresh,   TimeoutApplied,     1, 1, "awaiting_otp"),
    case(Absent,  Fresh,   LostResponse,       1, 1, "awaiting_otp"),
    case(Absent,  Fresh,   Html2xx,            1, 1, "awaiting_otp"),
    case(Absent,  Fresh,   Garbled2xx,         1, 1, "awaiting_otp"),
    case(Absent,  Applied, Success,            1, 1, "awaiting_otp"),
    case(Absent,  Applied, Refused4xx,         1, 0, "failed/otp_rate_limited"),
    case(Absent,  Applied, Error5xx,           1, 0, "awaiting_otp"),
    case(Absent,  Applied, TimeoutBeforeSend,  2, 1, "awaiting_otp"),
    case(Absent,  Applied, TimeoutUnapplied,   1, 0, "awaiting_otp"),
    case(Absent,  Applied, TimeoutApplied,     1, 1, "awaiting_otp"),
    case(Absent,  Applied, LostResponse,       1, 1, "awaiting_otp"),
    case(Absent,  Applied, Html2xx,            1, 1, "awaiting_otp"),
    case(Absent,  Applied, Garbled2xx,         1, 1, "awaiting_otp"),
    case(Present, Fresh,   Success,            0, 0, "awaiting_otp"),
    case(Present, Fresh,   Refused4xx,         0, 0, "awaiting_otp"),
    case(Present, Fresh,   Error5xx,           0, 0, "awaiting_otp"),
    case(Present, Fresh,   TimeoutBeforeSend,  0, 0, "awaiting_otp"),
    case(Present, Fresh,   TimeoutUnapplied,   0, 0, "awaiting_otp"),
    case(Present, Fresh,   TimeoutApplied,     0, 0, "awaiting_otp"),
    case(Present, Fresh,   LostResponse,       0, 0, "awaiting_otp"),
    case(Present, Fresh,   Html2xx,            0, 0, "awaiting_otp"),
    case(Present, Fresh,   Garbled2xx,         0, 0, "awaiting_otp"),
    case(Present, Applied, Success,            0, 0, "awaiting_otp"),
    case(Present, Applied, Refused4xx,         0, 0, "awaiting_otp"),
    case(Present, Applied, Error5xx,           0, 0, "awaiting_otp"),
    case(Present, Applied, TimeoutBeforeSend,  0, 0, "awaiting_otp"),
    case(Present, Applied, TimeoutUnapplied,   0, 0, "awaiting_otp"),
    case(Present, Applied, TimeoutApplied,     0, 0, "awaiting_otp"),
    case(Present, Applied, LostResponse,       0, 0, "awaiting_otp"),
    case(Present, Applied, Html2xx,            0, 0, "awaiting_otp"),
    case(Present, Applied, Garbled2xx,         0, 0, "awaiting_otp"),
];

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn request_code_table(pool: PgPool) {
    run_table(pool, Endpoint::RequestCode, CASES).await;
}
