//! `ENCRYPTION_KEY` rotation: the service keeps working with the new key plus
//! `ENCRYPTION_KEY_OLD`, `reencrypt` moves every stored secret to the new key, and afterwards the
//! new key alone opens everything.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use waba_migrator::crypto::Cipher;
use waba_migrator::crypto::aad;
use waba_migrator::crypto_rotation::{
    ENCRYPTED_COLUMNS, first_unopenable, reencrypt, reencrypt_columns, replace_fingerprint_key,
    with_kept_fingerprint_key,
};
use waba_migrator::db;

use crate::helpers::{Options, TestApp};

fn cipher(primary: &SecretString, old: Option<&SecretString>) -> Cipher {
    Cipher::from_base64_with_old(primary, old).unwrap()
}

fn with_cipher(c: Cipher, background_worker: bool) -> Options {
    Options {
        cipher: Some(c),
        background_worker,
        ..Options::default()
    }
}

fn body_with_pin(phone: &str, pin: &str) -> Value {
    let mut body = TestApp::create_body(phone);
    body["pin"] = pin.into();
    body
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn service_keeps_working_across_a_key_rotation(pool: PgPool) {
    let (key_a, key_b) = (Cipher::generate_key(), Cipher::generate_key());

    // Everything written under A: the partner's 360dialog key and webhook secret, a completed
    // migration's PIN and generated key.
    let app = TestApp::spawn_with(pool.clone(), with_cipher(cipher(&key_a, None), true)).await;
    let partner_key = app.partner_key.clone();
    let m0 = app
        .create_with(body_with_pin("+14155552101", "246810"))
        .await;
    app.complete(&m0).await;
    let key0 = app.stored_key(&m0).await;
    drop(app);

    // Primary B, old A: values under A still open in the API and the worker, and the partner
    // created under A runs a whole migration (its 360dialog key is opened by the worker).
    let mut app = TestApp::spawn_with(
        pool.clone(),
        with_cipher(cipher(&key_b, Some(&key_a)), true),
    )
    .await;
    app.partner_key = partner_key.clone();
    assert_eq!(app.stored_key(&m0).await, key0);
    let m1 = app
        .create_with(body_with_pin("+14155552102", "135791"))
        .await;
    let done = app.complete(&m1).await;
    assert_eq!(done["api_key"]["status"], "verified", "{done:#}");
    let key1 = app.stored_key(&m1).await;

    // Re-encrypt while the service runs; then again, which changes nothing.
    let rotating = cipher(&key_b, Some(&key_a));
    let report = reencrypt(&pool, &rotating, 2).await.unwrap();
    assert_eq!(report.columns.len(), ENCRYPTED_COLUMNS.len(), "{report}");
    assert_eq!(report.undecryptable(), 0, "{report}");
    for (column, resealed, current) in [
        // The partner of the first app (under A) and that of the second (under B).
        ("partners.d360_api_key_enc", 1, 1),
        ("partners.webhook_secret_enc", 1, 1),
        // m0 under A, m1 under B.
        ("migrations.pin_enc", 1, 1),
        ("migrations.api_key_enc", 1, 1),
        // Codes are cleared once used.
        ("migrations.otp_code_enc", 0, 0),
    ] {
        let c = report.column(column).unwrap();
        assert_eq!((c.resealed, c.current), (resealed, current), "{report}");
    }
    let again = reencrypt(&pool, &rotating, 2).await.unwrap();
    assert_eq!(again.resealed(), 0, "{again}");
    assert_eq!(again.undecryptable(), 0, "{again}");
    drop(app);

    // B alone: every stored value opens, and the partner runs another migration.
    let only_b = cipher(&key_b, None);
    let check = reencrypt(&pool, &only_b, 500).await.unwrap();
    assert_eq!((check.resealed(), check.undecryptable()), (0, 0), "{check}");
    let mut app = TestApp::spawn_with(pool.clone(), with_cipher(only_b, true)).await;
    app.partner_key = partner_key;
    assert_eq!(app.stored_key(&m0).await, key0);
    assert_eq!(app.stored_key(&m1).await, key1);
    let m2 = app.create("+14155552103").await;
    app.complete(&m2).await;
    // A (alone) no longer opens what was re-sealed.
    let pin: Vec<u8> = sqlx::query_scalar("SELECT pin_enc FROM migrations WHERE id = $1")
        .bind(Uuid::parse_str(&m0).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let m0_id = Uuid::parse_str(&m0).unwrap();
    assert!(cipher(&key_a, None).open(&pin, &aad::pin(m0_id)).is_err());
    assert_eq!(
        cipher(&key_b, None)
            .open(&pin, &aad::pin(m0_id))
            .unwrap()
            .expose_secret(),
        "246810"
    );
}

/// What is derived from the key rather than sealed with it (an `Idempotency-Key`'s fingerprint
/// of the request, the client page's token) is made with the fingerprint key kept in the
/// database, which `reencrypt` re-seals: both still work once the old key is gone.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn idempotency_keys_and_client_page_links_outlive_a_key_rotation(pool: PgPool) {
    let (key_a, key_b) = (Cipher::generate_key(), Cipher::generate_key());
    // As `serve` starts: the kept key loaded (and, the first time, kept).
    let started = async |c: Cipher| with_kept_fingerprint_key(&pool, c).await.unwrap();
    let create = async |app: &TestApp, key: &str| {
        let res = app
            .http
            .post(app.url("/v1/migrations"))
            .bearer_auth(key)
            .header("Idempotency-Key", "rotation-1")
            .json(&TestApp::create_body("+14155552301"))
            .send()
            .await
            .unwrap();
        let replayed = res.headers().contains_key("idempotent-replayed");
        (res.status(), replayed, res.json::<Value>().await.unwrap())
    };
    let token = |m: &Value| {
        let url = m["client_page"]["url"].as_str().unwrap().to_owned();
        url.rsplit_once("/c/").unwrap().1.to_owned()
    };

    let app = TestApp::spawn_with(
        pool.clone(),
        with_cipher(started(cipher(&key_a, None)).await, false),
    )
    .await;
    let partner_key = app.partner_key.clone();
    let (status, _, first) = create(&app, &partner_key).await;
    assert_eq!(status, 201, "{first:#}");
    let link = token(&first);
    drop(app);

    // The whole rotation: B with A, reencrypt, then B alone.
    let rotating = started(cipher(&key_b, Some(&key_a))).await;
    let report = reencrypt(&pool, &rotating, 10).await.unwrap();
    assert_eq!(
        report.column("fingerprint_keys.key_enc").unwrap().resealed,
        1,
        "{report}"
    );
    let mut app = TestApp::spawn_with(
        pool.clone(),
        with_cipher(started(cipher(&key_b, None)).await, false),
    )
    .await;
    app.partner_key = partner_key.clone();

    let (status, replayed, again) = create(&app, &partner_key).await;
    assert_eq!(
        status, 201,
        "replayed, not idempotency_key_reused: {again:#}"
    );
    assert!(replayed);
    assert_eq!(again["id"], first["id"]);
    let m = app.migration(first["id"].as_str().unwrap()).await;
    assert_eq!(token(&m), link, "the link the client was sent");
    assert_eq!(link_status(&app, &link).await, 200);

    // Without the kept key, B alone would have made other fingerprints and tokens.
    let bare = cipher(&key_b, None);
    assert!(
        !bare
            .fingerprints(b"x")
            .contains(&rotating.fingerprints(b"x")[0])
    );

    // After a leak, a new kept key: what the old one made stops matching.
    replace_fingerprint_key(&pool, &cipher(&key_b, None))
        .await
        .unwrap();
    let fresh = started(cipher(&key_b, None)).await;
    assert!(
        !fresh
            .fingerprints(b"x")
            .contains(&rotating.fingerprints(b"x")[0])
    );
    drop(app);
    let app = TestApp::spawn_with(pool.clone(), with_cipher(fresh, false)).await;
    assert_eq!(
        link_status(&app, &link).await,
        404,
        "the old link no longer works"
    );
}

/// The status a client page link answers with.
async fn link_status(app: &TestApp, token: &str) -> reqwest::StatusCode {
    let url = app.url(&format!("/c/{token}"));
    app.http.get(url).send().await.unwrap().status()
}

/// Table-driven: every column of `ENCRYPTED_COLUMNS` (including ones added later) gets a value
/// under the old key, is re-sealed, and opens under the new key alone; a value under an
/// unrelated key is reported, by the function and by `waba-migrator reencrypt`'s exit status.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn reencrypt_reseals_every_listed_column_and_reports_strangers(pool: PgPool) {
    let (key_a, key_b, key_c) = (
        Cipher::generate_key(),
        Cipher::generate_key(),
        Cipher::generate_key(),
    );
    let under_a = cipher(&key_a, None);
    let app = TestApp::spawn_with(pool.clone(), with_cipher(under_a.clone(), false)).await;
    let partner = Uuid::parse_str(&app.partner_id).unwrap();
    let migration = Uuid::parse_str(&app.create("+14155552201").await).unwrap();
    let stranger = Uuid::parse_str(&app.create("+14155552202").await).unwrap();

    let kept = db::fingerprint_keys::KEPT;
    db::fingerprint_keys::insert_if_absent(&pool, b"placeholder")
        .await
        .unwrap();
    let row_of = |table: &str| match table {
        "partners" => partner,
        "migrations" => migration,
        "fingerprint_keys" => kept,
        other => panic!("add a row of table {other} to this test"),
    };
    let plain = |name: &str| format!("secret stored in {name}");
    let mut before = Vec::new();
    for col in ENCRYPTED_COLUMNS {
        let id = row_of(col.table);
        let sealed = under_a.seal(&plain(&col.name()), &(col.aad)(id));
        sqlx::query(&format!(
            "UPDATE {} SET {} = $1 WHERE id = $2",
            col.table, col.column
        ))
        .bind(&sealed)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        before.push(sealed);
    }
    sqlx::query("UPDATE migrations SET pin_enc = $1 WHERE id = $2")
        .bind(cipher(&key_c, None).seal("111111", &aad::pin(stranger)))
        .bind(stranger)
        .execute(&pool)
        .await
        .unwrap();

    // Batches of one row: the keyset walk crosses every row.
    let rotating = cipher(&key_b, Some(&key_a));
    let report = reencrypt_columns(&pool, &rotating, ENCRYPTED_COLUMNS, 1)
        .await
        .unwrap();
    for col in ENCRYPTED_COLUMNS {
        let c = report.column(&col.name()).unwrap();
        assert_eq!(c.resealed, 1, "{report}");
        assert_eq!(c.changed_meanwhile, 0, "{report}");
        let expected: &[Uuid] = if col.name() == "migrations.pin_enc" {
            &[stranger]
        } else {
            &[]
        };
        assert_eq!(c.undecryptable, expected, "{report}");
    }
    assert_eq!(report.undecryptable(), 1);

    // Now B alone opens each value, to what was stored.
    let only_b = cipher(&key_b, None);
    for col in ENCRYPTED_COLUMNS {
        let id = row_of(col.table);
        let stored: Vec<u8> = sqlx::query_scalar(&format!(
            "SELECT {} FROM {} WHERE id = $1",
            col.column, col.table
        ))
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            only_b
                .open(&stored, &(col.aad)(id))
                .unwrap()
                .expose_secret(),
            plain(&col.name())
        );
    }
    // The startup check samples each column's oldest and newest value: the newest PIN (under
    // an unrelated key, as a row a cut-short re-encryption left under the old one would be)
    // stops a service holding B alone.
    assert_eq!(
        first_unopenable(&pool, &only_b).await.unwrap().as_deref(),
        Some("migrations.pin_enc")
    );

    // Idempotent: nothing left to re-seal, the stranger is still reported.
    let again = reencrypt_columns(&pool, &rotating, ENCRYPTED_COLUMNS, 1)
        .await
        .unwrap();
    assert_eq!(again.resealed(), 0, "{again}");
    assert_eq!(again.undecryptable(), 1, "{again}");

    // A concurrent write wins: the guarded replace of a stale value changes nothing.
    let pin_before = &before[ENCRYPTED_COLUMNS
        .iter()
        .position(|c| c.name() == "migrations.pin_enc")
        .unwrap()];
    let replaced = db::encrypted::replace_if_unchanged(
        &pool,
        "migrations",
        "pin_enc",
        migration,
        pin_before,
        &only_b.seal("000000", &aad::pin(migration)),
    )
    .await
    .unwrap();
    assert!(!replaced);

    // The command: non-zero exit naming the stranger, then success once it is fixed.
    let run = |old: Option<&SecretString>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waba-migrator"));
        cmd.arg("reencrypt")
            .env("DATABASE_URL", database_url(&pool))
            .env("ENCRYPTION_KEY", key_b.expose_secret())
            .env("REENCRYPT_BATCH_SIZE", "1")
            .env("RUST_LOG", "warn")
            .env_remove("ENCRYPTION_KEY_OLD");
        if let Some(old) = old {
            cmd.env("ENCRYPTION_KEY_OLD", old.expose_secret());
        }
        cmd.output().unwrap()
    };
    let out = run(Some(&key_a));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("migrations.pin_enc"), "{stdout}");
    assert!(stdout.contains(&stranger.to_string()), "{stdout}");
    sqlx::query("UPDATE migrations SET pin_enc = $1 WHERE id = $2")
        .bind(only_b.seal("111111", &aad::pin(stranger)))
        .bind(stranger)
        .execute(&pool)
        .await
        .unwrap();
    let out = run(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("partners.d360_api_key_enc"), "{stdout}");
    assert_eq!(app.count_migrations().await, 2);
}

/// The URL of the test's own database (`#[sqlx::test]` creates one per test).
fn database_url(pool: &PgPool) -> String {
    let mut url = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    let opts = pool.connect_options();
    url.set_path(opts.get_database().unwrap());
    url.to_string()
}
