//! `POST /partners/{pid}/channels/{channel_id}/api_keys` from `generating_api_key` (the
//! channel is running and the partner may generate keys), then `GET /health_status` with the
//! key and `completed`.
//!
//! 360dialog shows a key once and generating one revokes every earlier key, so there is no
//! upstream state to read back: a key is stored the instant it arrives and never generated
//! again once stored. A key generated but never received (timeout or reset after applying, a
//! 2xx body without the key) is held by nobody, so generating again only revokes that one:
//! those cases apply twice by design, and the invariant checked instead is that the stored key
//! is the channel's only valid key. "Key made, lost" is a channel with such a key already.
//! An intent next to a stored key cannot happen (storing the key removes the intent in the same
//! write); those lines show that a stored key wins anyway.

use sqlx::PgPool;

use crate::fakes::Kind::*;
use crate::harness::Intent::*;
use crate::harness::Upstream::*;
use crate::harness::{Case, Endpoint, case, run_table};

#[rustfmt::skip]
const CASES: &[Case] = &[
    //   intent   upstream kind                calls applied settles in
    case(Absent,  Fresh,   Success,            1, 1, "completed"),
    case(Absent,  Fresh,   Refused4xx,         1, 0, "failed/api_key_permission_missing"),
    case(Absent,  Fresh,   Error5xx,           2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutBeforeSend,  2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutUnapplied,   2, 1, "completed"),
    case(Absent,  Fresh,   TimeoutApplied,     2, 2, "completed"),
    case(Absent,  Fresh,   LostResponse,       2, 2, "completed"),
    case(Absent,  Fresh,   Html2xx,            2, 2, "completed"),
    case(Absent,  Fresh,   Garbled2xx,         2, 2, "completed"),
    case(Absent,  Applied, Success,            1, 1, "completed"),
    case(Absent,  Applied, Refused4xx,         1, 0, "failed/api_key_permission_missing"),
    case(Absent,  Applied, Error5xx,           2, 1, "completed"),
    case(Absent,  Applied, TimeoutBeforeSend,  2, 1, "completed"),
    case(Absent,  Applied, TimeoutUnapplied,   2, 1, "completed"),
    case(Absent,  Applied, TimeoutApplied,     2, 2, "completed"),
    case(Absent,  Applied, LostResponse,       2, 2, "completed"),
    case(Absent,  Applied, Html2xx,            2, 2, "completed"),
    case(Absent,  Applied, Garbled2xx,         2, 2, "completed"),
    case(Absent,  Stored,  Success,            0, 0, "completed"),
    case(Absent,  Stored,  Refused4xx,         0, 0, "completed"),
    case(Absent,  Stored,  Error5xx,           0, 0, "completed"),
    case(Absent,  Stored,  TimeoutBeforeSend,  0, 0, "completed"),
    case(Absent,  Stored,  TimeoutUnapplied,   0, 0, "completed"),
    case(Absent,  Stored,  TimeoutApplied,     0, 0, "completed"),
    case(Absent,  Stored,  LostResponse,       0, 0, "completed"),
    case(Absent,  Stored,  Html2xx,            0, 0, "completed"),
    case(Absent,  Stored,  Garbled2xx,         0, 0, "completed"),
    case(Present, Fresh,   Success,            1, 1, "completed"),
    case(Present, Fresh,   Refused4xx,         1, 0, "failed/api_key_permission_missing"),
    case(Present, Fresh,   Error5xx,           2, 1, "completed"),
    case(Present, Fresh,   TimeoutBeforeSend,  2, 1, "completed"),
    case(Present, Fresh,   TimeoutUnapplied,   2, 1, "completed"),
    case(Present, Fresh,   TimeoutApplied,     2, 2, "completed"),
    case(Present, Fresh,   LostResponse,       2, 2, "completed"),
    case(Present, Fresh,   Html2xx,            2, 2, "completed"),
    case(Present, Fresh,   Garbled2xx,         2, 2, "completed"),
    case(Present, Applied, Success,            1, 1, "completed"),
    case(Present, Applied, Refused4xx,         1, 0, "failed/api_key_permission_missing"),
    case(Present, Applied, Error5xx,           2, 1, "completed"),
    case(Present, Applied, TimeoutBeforeSend,  2, 1, "completed"),
    case(Present, Applied, TimeoutUnapplied,   2, 1, "completed"),
    case(Present, Applied, TimeoutApplied,     2, 2, "completed"),
    case(Present, Applied, LostResponse,       2, 2, "completed"),
    case(Present, Applied, Html2xx,            2, 2, "completed"),
    case(Present, Applied, Garbled2xx,         2, 2, "completed"),
    case(Present, Stored,  Success,            0, 0, "completed"),
    case(Present, Stored,  Refused4xx,         0, 0, "completed"),
    case(Present, Stored,  Error5xx,           0, 0, "completed"),
    case(Present, Stored,  TimeoutBeforeSend,  0, 0, "completed"),
    case(Present, Stored,  TimeoutUnapplied,   0, 0, "completed"),
    case(Present, Stored,  TimeoutApplied,     0, 0, "completed"),
    case(Present, Stored,  LostResponse,       0, 0, "completed"),
    case(Present, Stored,  Html2xx,            0, 0, "completed"),
    case(Present, Stored,  Garbled2xx,         0, 0, "completed"),
];

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn api_keys_table(pool: PgPool) {
    run_table(pool, Endpoint::ApiKeys, CASES).await;
}
