//! Fetching a migration's API key (issue 14, item 7): the first fetch of a key is recorded once
//! in the audit trail; fetching it again is a pure read (no event, same `updated_at`).

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, TestApp};

/// Fetching the key 5 times neither appends events nor moves `updated_at`; the first reveal
/// is recorded once.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn fetching_the_api_key_again_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651160").await;
    app.complete(&id).await;
    let path = format!("/v1/migrations/{id}/api_key");

    // The first reveal: one `migration.api_key_retrieved` event.
    let key = app.stored_key(&id).await;
    assert_eq!(
        app.event_count(&id, Some("migration.api_key_retrieved"))
            .await,
        1
    );
    let events = app.event_count(&id, None).await;
    let before = app.migration(&id).await;

    for _ in 0..5 {
        let res = app.get(&path).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["api_key"], key);
    }
    let admin = app.get_as(ADMIN_KEY, &path).await;
    assert_eq!(admin.status(), StatusCode::OK);

    assert_eq!(
        app.event_count(&id, None).await,
        events,
        "fetching the key appended events"
    );
    let after = app.migration(&id).await;
    assert_eq!(
        after["updated_at"], before["updated_at"],
        "fetching the key moved updated_at"
    );
    assert_eq!(after, before);
    assert_eq!(
        app.event_count(&id, Some("migration.api_key_retrieved"))
            .await,
        1
    );
}

/// Five first fetches at once still record one reveal.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn concurrent_first_fetches_record_one_reveal(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651170").await;
    app.complete(&id).await;
    let path = format!("/v1/migrations/{id}/api_key");
    let fetches = (0..5).map(|_| app.get(&path));
    for res in futures::future::join_all(fetches).await {
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        app.event_count(&id, Some("migration.api_key_retrieved"))
            .await,
        1
    );
}
