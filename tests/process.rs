//! The binary as operators run it: a bad setting stops it with one line naming the setting,
//! and its JSON logs tie every line to a request id or a migration (and step).

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_waba-migrator");
const ADMIN_KEY: &str = "process-admin-key-0123456789abcdef";
const KEY: &str = "q0lPnMbZ7fD0T6nQxQ1j2m6kqJvN0cE5h2a8wZr3TfU="; // 32 bytes

/// `waba-migrator serve` with only `env` (no inherited settings); its exit and stderr.
async fn serve_with(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("a bad setting must stop the service at once")
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_setting_exits_with_one_line_naming_it() {
    let unreachable = "postgres://waba:hunter2pw@127.0.0.1:1/waba";
    for (setting, env, secret) in [
        (
            "DATABASE_URL",
            vec![("DATABASE_URL", "postgres://waba:hunter2pw@db:notaport/waba")],
            Some("hunter2pw"),
        ),
        (
            "ENCRYPTION_KEY",
            vec![
                ("DATABASE_URL", unreachable),
                ("ENCRYPTION_KEY", "c2hvcnQga2V5"),
            ],
            Some("c2hvcnQga2V5"),
        ),
        ("ENCRYPTION_KEY", vec![("DATABASE_URL", unreachable)], None),
        (
            "WORKER_CONCURRENCY",
            vec![("WORKER_CONCURRENCY", "0")],
            None,
        ),
        (
            "META_GRAPH_URL",
            vec![("META_GRAPH_URL", "ftp://graph.example")],
            None,
        ),
        (
            "SANDBOX_FAULT_RATE",
            vec![("SANDBOX_FAULT_RATE", "1.5")],
            None,
        ),
        (
            "ADMIN_API_KEY",
            vec![("ADMIN_API_KEY", "letmein-admin")],
            Some("letmein-admin"),
        ),
        (
            "DATABASE_MAX_CONNECTIONS",
            vec![
                ("DATABASE_URL", unreachable),
                ("ENCRYPTION_KEY", KEY),
                ("DATABASE_MAX_CONNECTIONS", "3"),
            ],
            None,
        ),
    ] {
        let started = Instant::now();
        let (status, stderr) = serve_with(&env).await;
        assert!(!status.success(), "{setting}: exited {status:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{setting}: {stderr}");
        assert!(lines[0].contains(setting), "{setting}: {stderr}");
        if let Some(secret) = secret {
            assert!(
                !stderr.contains(secret),
                "{setting} echoed its value: {stderr}"
            );
        }
        // Nothing was started or connected to first.
        assert!(started.elapsed() < Duration::from_secs(10), "{setting}");
    }

    // A grace period an upstream call in flight at SIGTERM could outlast (the old default, 20 s,
    // against the default upstream timeout, 30 s): one line naming both settings and values.
    let (status, stderr) = serve_with(&[
        ("DATABASE_URL", unreachable),
        ("ENCRYPTION_KEY", KEY),
        ("SHUTDOWN_GRACE_SECONDS", "20"),
    ])
    .await;
    assert!(!status.success(), "exited {status:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for named in [
        "SHUTDOWN_GRACE_SECONDS (20)",
        "UPSTREAM_TIMEOUT_SECONDS (30)",
    ] {
        assert!(lines[0].contains(named), "does not name {named}: {stderr}");
    }
    // The defaults pass that check: a start with them fails only on the unreachable database.
    let (status, stderr) =
        serve_with(&[("DATABASE_URL", unreachable), ("ENCRYPTION_KEY", KEY)]).await;
    assert!(!status.success());
    assert!(!stderr.contains("SHUTDOWN_GRACE_SECONDS"), "{stderr}");

    // Values clap parses: the first line names the setting too.
    for (setting, value) in [
        ("BIND_ADDR", "nowhere"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,soon"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.local"),
        // Written into every client page link.
        ("PUBLIC_BASE_URL", "https://user:pw@migrate.example.com"),
    ] {
        let (status, stderr) = serve_with(&[(setting, value)]).await;
        assert_eq!(status.code(), Some(2), "{setting}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(setting), "{setting}: {stderr}");
    }
}

/// A database of its own on the test server (`DATABASE_URL`, as `scripts/test.sh` sets it).
async fn fresh_database() -> (String, String) {
    let server = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL server (scripts/test.sh sets it)");
    let name = format!("waba_process_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The request ids in a log line's spans.
fn request_ids(line: &Value) -> Vec<&str> {
    line["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| s["request_id"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_request_ids_and_migration_ids() {
    let (database_url, _name) = fresh_database().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &database_url)
        .env("RUN_MIGRATIONS", "true")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("ENCRYPTION_KEY", KEY)
        .env("SANDBOX_CHANNEL_DELAY_MS", "50")
        .env("CHANNEL_POLL_MS", "50")
        // The grace period must outlast one upstream request (startup checks it).
        .env("UPSTREAM_TIMEOUT_SECONDS", "5")
        .env("SHUTDOWN_GRACE_SECONDS", "6")
        // No HTTP drain on SIGTERM: the test waits for the exit.
        .env("SHUTDOWN_DRAIN_SECONDS", "0")
        .env("RUST_LOG", "info,waba_migrator=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut all = String::new();
        stdout.read_to_string(&mut all).await.unwrap();
        all
    });

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the service never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let res = http
        .post(format!("{base}/v1/partners"))
        .bearer_auth(ADMIN_KEY)
        .header("x-request-id", "req-partner-0001")
        .json(&json!({"name": "Logs", "d360_partner_id": "logsPA", "d360_api_key": "logs-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = res.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = http
        .post(format!("{base}/v1/migrations"))
        .bearer_auth(&key)
        .header("x-request-id", "req-create-0001")
        .json(&json!({
            "phone_number": "+14155558801",
            "source_waba_id": "200000000000001",
            "destination_waba_id": "300000000000001",
            "meta_business_id": "100000000000000",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-request-id"], "req-create-0001");
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A generated id when the caller sends none; a problem body carries it too.
    let res = http
        .get(format!("{base}/v1/migrations/{}", uuid::Uuid::now_v7()))
        .bearer_auth(&key)
        .header("x-request-id", "req-missing-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<Value>().await.unwrap()["request_id"],
        "req-missing-0001"
    );
    let res = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(uuid::Uuid::parse_str(res.headers()["x-request-id"].to_str().unwrap()).is_ok());

    let state = |http: reqwest::Client, key: String| {
        let url = format!("{base}/v1/migrations/{id}");
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(http.clone(), key.clone()).await != "awaiting_otp" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = http
        .post(format!("{base}/v1/migrations/{id}/otp"))
        .bearer_auth(&key)
        .header("x-request-id", "req-otp-0001")
        .json(&json!({"code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    while state(http.clone(), key.clone()).await != "completed" {
        assert!(Instant::now() < deadline, "not completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = child.id().unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let out = reader.await.unwrap();

    // Every line is one JSON object.
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 20, "{out}");
    assert!(!out.contains(&key) && !out.contains(ADMIN_KEY) && !out.contains(KEY));

    // The request: the handler's line and the access-log line carry its id.
    let created = lines
        .iter()
        .find(|l| l["message"] == "migration created")
        .expect("a creation line");
    assert_eq!(request_ids(created), ["req-create-0001"]);
    assert_eq!(created["migration.id"], json!(id));
    for (rid, status) in [
        ("req-partner-0001", 201),
        ("req-create-0001", 201),
        ("req-missing-0001", 404),
        ("req-otp-0001", 202),
    ] {
        let access = lines
            .iter()
            .find(|l| l["message"] == "finished processing request" && request_ids(l) == [rid])
            .unwrap_or_else(|| panic!("no access-log line for {rid}"));
        assert_eq!(access["status"], status, "{access}");
    }

    // The worker: every line inside a step names the migration and the step.
    let step_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "step"))
        })
        .collect();
    assert!(!step_lines.is_empty(), "no worker line inside a step");
    for l in &step_lines {
        let step = l["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "step")
            .unwrap();
        assert_eq!(step["migration.id"], json!(id), "{l}");
        assert!(step["step"].is_string(), "{l}");
    }
    // Outside step spans too, every worker line about a migration names it and its step.
    for l in &lines {
        let worker = l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("waba_migrator::worker"));
        let lifecycle = l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("worker "));
        if worker && !lifecycle {
            let in_step = step_lines.iter().any(|s| std::ptr::eq(*s, l));
            assert!(
                in_step || (l["migration.id"] == json!(id) && l["step"].is_string()),
                "a worker line without its migration and step: {l}"
            );
        }
    }
    let transitions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "transition")
        .collect();
    assert!(transitions.len() >= 9, "{transitions:#?}");
    assert!(transitions.iter().all(|l| l["migration.id"] == json!(id)));
    assert!(
        transitions
            .iter()
            .any(|l| l["from"] == "generating_api_key" && l["to"] == "completed")
    );
}

/// `serve` as the README runs it: no `DATABASE_URL` (the embedded PostgreSQL under `DATA_DIR`)
/// and no `META_ACCESS_TOKEN` (the built-in sandbox). Keeps its stdout (log lines) and the keys
/// its banner printed on stderr.
struct EmbeddedServe {
    child: tokio::process::Child,
    base: String,
    sandbox: String,
    key: String,
    admin_key: String,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

impl EmbeddedServe {
    async fn start(data_dir: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let (port, sandbox_port) = (free_port(), free_port());
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", data_dir)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("SANDBOX_BIND", format!("127.0.0.1:{sandbox_port}"))
            .env("SANDBOX_CHANNEL_DELAY_MS", "50")
            .env("CHANNEL_POLL_MS", "50")
            // The grace period must outlast one upstream request (startup checks it).
            .env("UPSTREAM_TIMEOUT_SECONDS", "5")
            .env("SHUTDOWN_GRACE_SECONDS", "6")
            // No HTTP drain on SIGTERM: the test waits for each exit.
            .env("SHUTDOWN_DRAIN_SECONDS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Ok(pg_bin) = std::env::var("PG_BIN") {
            cmd.env("PG_BIN", pg_bin);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut all = String::new();
            stdout.read_to_string(&mut all).await.unwrap();
            all
        });
        // The banner (stderr) carries the keys; keep reading it to the end afterwards.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut key, mut admin_key, mut banner) = (None, None, String::new());
        let read_banner = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                banner.push_str(&line);
                banner.push('\n');
                let word = |prefix: &str| {
                    line.trim()
                        .strip_prefix(prefix)
                        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
                };
                if key.is_none() {
                    key = word("export KEY=");
                }
                if admin_key.is_none() {
                    admin_key = word("export ADMIN_KEY=");
                }
                if key.is_some() && admin_key.is_some() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read_banner)
            .await
            .unwrap_or_else(|_| panic!("no banner with both keys within 120 s:\n{banner}"));
        assert!(
            banner.contains(&format!("http://127.0.0.1:{sandbox_port}/_sandbox")),
            "the banner shows the sandbox's control API:\n{banner}"
        );
        let stderr = tokio::spawn(async move {
            let mut rest = banner;
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        });
        let serve = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            sandbox: format!("http://127.0.0.1:{sandbox_port}"),
            key: key.unwrap(),
            admin_key: admin_key.unwrap(),
            stdout,
            stderr,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{}/readyz", serve.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "the service never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        serve
    }

    /// SIGTERM, then its stdout and stderr once it exited (it stops its PostgreSQL too).
    async fn stop(mut self) -> (String, String) {
        let pid = self.child.id().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve exits after SIGTERM")
            .unwrap();
        assert!(exit.success(), "exit status {exit:?}");
        (self.stdout.await.unwrap(), self.stderr.await.unwrap())
    }

    async fn wait_for_state(&self, http: &reqwest::Client, id: &str, state: &str) -> Value {
        wait_for_state(http, &self.base, &self.key, id, state).await
    }
}

/// Migration `id` as `GET /v1/migrations/{id}` at `base` shows it to `key`.
async fn migration(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/migrations/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls migration `id` until it is in `state` (30 s at most); answers it then.
async fn wait_for_state(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    state: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = migration(http, base, key, id).await;
        if m["state"] == state {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "migration never reached {state}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A create (or precheck) body with the README walkthrough's ids.
fn readme_body(phone_number: &str) -> Value {
    json!({
        "phone_number": phone_number,
        "source_waba_id": "102290129340398",
        "destination_waba_id": "104996122399160",
        "meta_business_id": "180505742745347",
    })
}

/// The first hour of a new user, black-box: `migrate` works without `DATABASE_URL`; a dry-run
/// precheck of a failure-scenario number with the README's ids does not break them for the
/// README's happy path; a migration parked in `awaiting_otp` survives a restart of `serve`
/// (embedded database, in-process sandbox) and completes with the code submitted afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_sandbox_keeps_readme_ids_working_and_survives_a_restart() {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).unwrap();

    // `migrate` with the embedded database: starts it, applies the schema, stops it again.
    let migrate = run_embedded("migrate", &data_dir, &[]).await;
    assert!(
        migrate.status.success(),
        "migrate without DATABASE_URL: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let serve = EmbeddedServe::start(&data_dir).await;
    let http = reqwest::Client::new();

    // The development admin key works: partners can be listed.
    let partners = http
        .get(format!("{}/v1/partners", serve.base))
        .bearer_auth(&serve.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(partners.status(), StatusCode::OK);

    // A dry run of a failure-scenario number with the README's ids fails as documented...
    let precheck = http
        .post(format!("{}/v1/prechecks", serve.base))
        .bearer_auth(&serve.key)
        .json(&readme_body("+5511987650006"))
        .send()
        .await
        .unwrap();
    assert_eq!(precheck.status(), StatusCode::OK);
    let precheck: Value = precheck.json().await.unwrap();
    assert_eq!(precheck["status"], "fail", "{precheck}");
    assert!(
        precheck["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "fail" && c["id"] == "business_verified"),
        "{precheck}"
    );

    // ...and the README's happy path with the same ids still works.
    let created = http
        .post(format!("{}/v1/migrations", serve.base))
        .bearer_auth(&serve.key)
        .json(&readme_body("+5511987654321"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let parked = serve.wait_for_state(&http, &id, "awaiting_otp").await;
    let phone_number_id = parked["phone_number_id"].as_str().unwrap().to_owned();
    let sandbox_before = serve.sandbox.clone();

    // Restart while the migration waits for its code.
    let (stdout, stderr) = serve.stop().await;
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok(),
            "stdout is one JSON object a line, not {line:?}"
        );
    }
    for secret in ["export KEY=", "export ADMIN_KEY="] {
        assert!(!stdout.contains(secret), "the banner goes to stderr");
        assert!(stderr.contains(secret));
    }

    let serve = EmbeddedServe::start(&data_dir).await;
    assert_ne!(serve.sandbox, sandbox_before, "a new port, the same world");
    let submitted = http
        .post(format!("{}/v1/migrations/{id}/otp", serve.base))
        .bearer_auth(&serve.key)
        .json(&json!({"code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);
    let done = serve.wait_for_state(&http, &id, "completed").await;
    assert_eq!(done["phone_number_id"], phone_number_id.as_str());
    assert_eq!(done["api_key"]["status"], "verified", "{done}");

    // The sandbox counted exactly one code request and one registration for the number.
    let counters: Value = http
        .get(format!(
            "{}/_sandbox/counters/%2B5511987654321",
            serve.sandbox
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["register"]["applied"], 1, "{counters}");
    serve.stop().await;

    // `reencrypt` finds the embedded database too (it starts it for the occasion): with the
    // key kept beside the data, every stored secret opens under it.
    let key = std::fs::read_to_string(data_dir.join("encryption.key")).unwrap();
    let checked = run_embedded("reencrypt", &data_dir, &[("ENCRYPTION_KEY", key.trim())]).await;
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "reencrypt with the embedded database: {report}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(report.contains("migrations.api_key_enc"), "{report}");

    // Started with another key (the old one after a rotation, say), the service stops at once
    // with one line naming the setting, instead of failing every read of a secret.
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let data = data_dir.to_string_lossy().into_owned();
    let pg_bin = std::env::var("PG_BIN").unwrap_or_default();
    let mut env = vec![("DATA_DIR", data.as_str()), ("ENCRYPTION_KEY", other)];
    if !pg_bin.is_empty() {
        env.push(("PG_BIN", pg_bin.as_str()));
    }
    let (status, stderr) = serve_with(&env).await;
    assert!(!status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("ENCRYPTION_KEY does not open"),
        "{stderr}"
    );
    assert!(!stderr.contains(other), "{stderr}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `waba-migrator <command>` run to its end against the embedded database under `data_dir`,
/// with nothing else in its environment but `env` (and `PG_BIN` when the tests have one).
async fn run_embedded(
    command: &str,
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(BIN)
            .arg(command)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", data_dir)
            .envs(env.iter().copied())
            .envs(std::env::var("PG_BIN").ok().map(|v| ("PG_BIN", v)))
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{command} finishes within 2 minutes"))
    .unwrap()
}

/// `./scripts/test.sh` as a user who can neither install packages nor become root stops at
/// once, before compiling anything, with one line per missing package and its install command.
/// (As root it installs them; `.ci/run` exercises that path on every fresh CI machine.)
#[test]
fn test_script_names_missing_packages_when_it_cannot_install() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/requirements.sh");
    // A copy every user can read (the checkout may live under a private home directory).
    let copy = std::env::temp_dir().join(format!("requirements-{}.sh", uuid::Uuid::new_v4()));
    std::fs::copy(&script, &copy).unwrap();
    let check = format!(
        "say() {{ :; }}; . {}; ensure_test_requirements",
        copy.display()
    );
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if is_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--", "bash", "-c", &check]);
        c
    } else {
        let sudo = std::process::Command::new("sudo")
            .args(["-n", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sudo {
            eprintln!("this user has passwordless sudo: test.sh would install, nothing to check");
            let _ = std::fs::remove_file(&copy);
            return;
        }
        let mut c = std::process::Command::new("bash");
        c.args(["-c", &check]);
        c
    };
    let started = Instant::now();
    let out = cmd
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DATABASE_URL", "postgres://unused")
        .env("CHROMIUM", "/nonexistent/chromium")
        .env("CHROMEDRIVER", "/nonexistent/chromedriver")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    let missing: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("missing "))
        .collect();
    assert_eq!(missing.len(), 2, "{stderr}");
    assert!(
        missing[0].contains("sudo apt-get install -y chromium "),
        "{stderr}"
    );
    assert!(
        missing[1].contains("sudo apt-get install -y chromium-driver"),
        "{stderr}"
    );
}

/// `waba-migrator serve` on a fresh database, in sandbox mode with its own sandbox port, with
/// `env` on top; under `ulimit -n <files>` when given. Its stdout (log lines) is collected.
struct Served {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    base: String,
    stdout: tokio::task::JoinHandle<String>,
}

impl Served {
    async fn start(env: &[(&str, &str)], files: Option<u32>) -> Self {
        let (database_url, _name) = fresh_database().await;
        let port = free_port();
        let mut cmd = match files {
            // `exec` keeps the PID: the test stops the service itself by it.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" serve"), BIN]);
                c
            }
            None => {
                let mut c = Command::new(BIN);
                c.arg("serve");
                c
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database_url)
            .env("RUN_MIGRATIONS", "true")
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("SANDBOX_BIND", format!("127.0.0.1:{}", free_port()))
            .env("ADMIN_API_KEY", ADMIN_KEY)
            .env("ENCRYPTION_KEY", KEY)
            .env("UPSTREAM_TIMEOUT_SECONDS", "5")
            .env("SHUTDOWN_GRACE_SECONDS", "6")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut all = String::new();
            let _ = out.read_to_string(&mut all).await;
            all
        });
        let served = Self {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(format!("{}/readyz", served.base))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "the service never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    }

    async fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    }

    /// A connection that sends the unfinished request head and nothing more.
    async fn unfinished_head(&self) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        s
    }

    /// GET `path` on a connection of its own.
    async fn fresh_get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let mut req = http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on a connection of its own: {e}"))
    }
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The probe: connections whose request head never ends. Under `ulimit -n 512` the
/// service caps its connections below the file limit (128 by default there), more such
/// connections than it has files cannot make `/healthz` unreachable, each is closed within the
/// header timeout, and the API serves again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn unfinished_request_heads_are_closed_and_health_checks_answer_at_the_cap() {
    const HEADER_TIMEOUT_S: u64 = 3;
    let served = Served::start(
        &[
            (
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                &HEADER_TIMEOUT_S.to_string(),
            ),
            ("SHUTDOWN_DRAIN_SECONDS", "0"),
        ],
        Some(512),
    )
    .await;

    // 600 unfinished heads: more than the process may open files.
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..600 {
        slow.push(served.unfinished_head().await);
    }

    // The cap is reached, and health checks are still answered (on connections of their own,
    // closed after the answer); the API asks to come back later.
    let health = served.fresh_get("/healthz", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.headers()["connection"], "close");
    let ready = served.fresh_get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let busy = served.fresh_get("/v1/partners", Some(ADMIN_KEY)).await;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(busy.headers()["content-type"], "application/problem+json");
    let problem: Value = busy.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_connections", "{problem}");

    // Every unfinished head is closed within the header timeout (plus a loaded machine's slack).
    let bound = Duration::from_secs(HEADER_TIMEOUT_S + 15);
    for (i, s) in slow.iter_mut().enumerate() {
        let left = bound.saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).await,
            "connection {i} still open {:?} after it sent its unfinished head",
            opened.elapsed()
        );
    }

    // The API serves normally again.
    let partners = served.fresh_get("/v1/partners", Some(ADMIN_KEY)).await;
    assert_eq!(partners.status(), StatusCode::OK);
    assert!(
        partners
            .headers()
            .get("connection")
            .is_none_or(|v| v != "close")
    );

    served.sigterm().await;
    let Served {
        mut child, stdout, ..
    } = served;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let logs = stdout.await.unwrap();
    let listening = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "API listening")
        .expect("an `API listening` line");
    // Half of the 512 files left after 256 for everything else.
    assert_eq!(listening["max_connections"], 128, "{listening}");
    assert!(!logs.contains("Too many open files"), "{logs}");
}

/// SIGTERM with requests in flight, kept-alive clients and clients that never finish their
/// request head: `/readyz` answers 503 for the drain while every request is still answered;
/// then the request in flight is answered too and the process exits within drain + shutdown
/// timeout, although the slow clients are still connected (their header timeout is 60 s).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_answers_in_flight_requests_and_exits_within_the_bound() {
    const DRAIN_S: u64 = 2;
    const TIMEOUT_S: u64 = 6;
    let served = Served::start(
        &[
            ("SHUTDOWN_DRAIN_SECONDS", &DRAIN_S.to_string()),
            ("HTTP_SHUTDOWN_TIMEOUT_SECONDS", &TIMEOUT_S.to_string()),
            ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "60"),
            // A dry-run precheck waits this long for the sandbox's answers: in flight across
            // the end of the drain.
            ("SANDBOX_LATENCY_MS", "4000"),
        ],
        None,
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let res = http
        .post(format!("{}/v1/partners", served.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "Drain", "d360_partner_id": "drainPA", "d360_api_key": "drain-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = res.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(served.unfinished_head().await);
    }
    // A kept-alive client.
    assert_eq!(
        http.get(format!("{}/healthz", served.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let precheck = tokio::spawn(
        http.post(format!("{}/v1/prechecks", served.base))
            .bearer_auth(&key)
            .json(&json!({
                "phone_number": "+14155558802",
                "source_waba_id": "200000000000001",
                "destination_waba_id": "300000000000001",
                "meta_business_id": "100000000000000",
            }))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    served.sigterm().await;

    // The drain: not ready, but every request is answered (each with `Connection: close`).
    let mut saw_draining = false;
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_millis(DRAIN_S * 1000 - 700) {
        let res = http
            .get(format!("{}/readyz", served.base))
            .send()
            .await
            .expect("requests during the drain are answered");
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(res.headers()["connection"], "close");
            assert_eq!(res.json::<Value>().await.unwrap()["status"], "draining");
            saw_draining = true;
            let res = http
                .get(format!("{}/v1/migrations", served.base))
                .bearer_auth(&key)
                .send()
                .await
                .expect("requests during the drain are answered");
            assert_eq!(res.status(), StatusCode::OK);
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_draining && answered > 0, "/readyz never answered 503");

    // The request in flight at SIGTERM (and past the drain) is answered.
    let precheck = precheck
        .await
        .unwrap()
        .expect("the in-flight precheck is answered");
    assert_eq!(precheck.status(), StatusCode::OK);
    assert!(
        signalled.elapsed() > Duration::from_secs(DRAIN_S),
        "the precheck ended within the drain; make it slower"
    );

    // Gone within drain + shutdown timeout, though the slow clients still hold their
    // connections: the bound, not the clients, ended it.
    let Served {
        mut child, stdout, ..
    } = served;
    let exit = tokio::time::timeout(Duration::from_secs(DRAIN_S + TIMEOUT_S + 15), child.wait())
        .await
        .expect("the process exits within drain + shutdown timeout")
        .unwrap();
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        took >= Duration::from_secs(DRAIN_S + TIMEOUT_S),
        "exited {took:?} after SIGTERM: before the slow clients were cut?"
    );
    let logs = stdout.await.unwrap();
    assert!(
        logs.contains("closing the connections still open at HTTP_SHUTDOWN_TIMEOUT_SECONDS"),
        "{logs}"
    );
    for s in &mut slow {
        assert!(closed_within(s, Duration::from_secs(1)).await);
    }
}

/// Ctrl-C (SIGINT) in a terminal skips the drain: with a 60 s drain configured, the process
/// still stops within seconds, and the listener is gone.
#[tokio::test(flavor = "multi_thread")]
async fn sigint_skips_the_drain() {
    let served = Served::start(&[("SHUTDOWN_DRAIN_SECONDS", "60")], None).await;
    let pid = served.child.id().expect("running");
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let Served { mut child, .. } = served;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("SIGINT does not wait for the 60 s drain")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A process's stdout (its JSON log lines), read as they come.
struct LogLines {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LogLines {
    fn read(stdout: tokio::process::ChildStdout) -> Self {
        use tokio::io::AsyncBufReadExt;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self { lines }
    }

    /// The first log line whose `message` is `message`, waiting up to `within` for it.
    async fn wait_for(&self, message: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["message"] == message);
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no `{message}` log line within {within:?}:\n{}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// `waba-migrator <args>` with only `env` (and `PATH`, and `PG_BIN` when the tests have one),
/// stdout piped, stderr inherited, killed if the test drops it.
fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, LogLines) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(std::env::var("PG_BIN").ok().map(|v| ("PG_BIN", v)))
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = LogLines::read(child.stdout.take().unwrap());
    (child, logs)
}

async fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
}

async fn sigterm_and_wait(child: &mut tokio::process::Child, what: &str) {
    sigterm(child).await;
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} exits after SIGTERM"))
        .unwrap();
    assert!(exit.success(), "{what}: {exit:?}");
}

async fn wait_ready(base: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{what} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `data_dir` of the embedded PostgreSQL a process's log lines say it used (under
/// `/var/tmp` when run as root and `postgres` cannot reach the one asked for).
fn embedded_data_dir(stdout: &str) -> std::path::PathBuf {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "embedded PostgreSQL is ready")
        .and_then(|l| l["data_dir"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| panic!("no `embedded PostgreSQL is ready` line:\n{stdout}"))
}

/// A start that fails after the embedded PostgreSQL was started (here: BIND_ADDR is taken)
/// names the setting and leaves no PostgreSQL running behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_stops_the_embedded_postgres_it_started() {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = run_embedded(
        "serve",
        &data_dir,
        &[
            ("BIND_ADDR", taken_addr.as_str()),
            ("SANDBOX_BIND", "127.0.0.1:0"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("BIND_ADDR"), "{stderr}");

    let pg_dir = embedded_data_dir(&stdout);
    let pid_file = pg_dir.join("postmaster.pid");
    let left_running = pid_file.exists();
    if left_running {
        // Stop what the failed start left behind (fast shutdown), so the test leaves nothing.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        let _ = Command::new("kill").args(["-INT", &pid]).status().await;
    }
    assert!(
        !left_running,
        "the embedded PostgreSQL under {} is still running after the failed start",
        pg_dir.display()
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A `worker` sharing a running `serve`'s DATA_DIR (no DATABASE_URL) uses the embedded
/// PostgreSQL `serve` started, and leaves it running when it stops: `serve` stays ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_leaves_the_embedded_postgres_of_a_running_serve_running() {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let serve = EmbeddedServe::start(&data_dir).await;

    let data = data_dir.to_string_lossy().into_owned();
    let hub = format!("{}/api/v2", serve.sandbox);
    let (mut worker, logs) = spawn_with(
        &["worker"],
        &[
            ("DATA_DIR", data.as_str()),
            ("BIND_ADDR", "127.0.0.1:0"),
            // Not sandbox mode (which runs only in `serve`): the running serve's sandbox.
            ("META_ACCESS_TOKEN", "any-token"),
            ("META_GRAPH_URL", serve.sandbox.as_str()),
            ("D360_HUB_URL", hub.as_str()),
            ("D360_WABA_URL", serve.sandbox.as_str()),
            ("UPSTREAM_TIMEOUT_SECONDS", "5"),
            ("SHUTDOWN_GRACE_SECONDS", "6"),
            ("SHUTDOWN_DRAIN_SECONDS", "0"),
        ],
    );
    logs.wait_for("worker started", Duration::from_secs(120))
        .await;
    sigterm_and_wait(&mut worker, "the worker").await;

    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/readyz", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "serve lost its database when the worker stopped: {}\n{}",
        ready.text().await.unwrap_or_default(),
        logs.all()
    );
    let partners = http
        .get(format!("{}/v1/partners", serve.base))
        .bearer_auth(&serve.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(partners.status(), StatusCode::OK);
    serve.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The environment both processes of a split deployment share: one database, the standalone
/// sandbox at `sandbox` as the upstreams (any token), numbers announced to it.
fn split_env<'a>(database_url: &'a str, sandbox: &'a str, hub: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", database_url),
        ("ENCRYPTION_KEY", KEY),
        ("META_ACCESS_TOKEN", "split-token"),
        ("META_GRAPH_URL", sandbox),
        ("D360_HUB_URL", hub),
        ("D360_WABA_URL", sandbox),
        ("SANDBOX_SEED_NUMBERS", "true"),
        ("CHANNEL_POLL_MS", "50"),
        ("UPSTREAM_TIMEOUT_SECONDS", "5"),
        ("SHUTDOWN_GRACE_SECONDS", "6"),
        ("SHUTDOWN_DRAIN_SECONDS", "0"),
    ]
}

/// `serve --no-workers` and a `worker` (on its own BIND_ADDR, port 0: the log says which) on one
/// database and a standalone sandbox: a migration made through the API completes, and the
/// worker, which ran its steps, serves `/healthz`, `/readyz` and `/metrics` with them (the
/// image's health check passes), but not the API; on SIGTERM its `/readyz` drains as `serve`'s.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_health_and_the_metrics_of_its_steps() {
    let (database_url, _name) = fresh_database().await;
    let sandbox_port = free_port();
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let hub = format!("{sandbox}/api/v2");
    let sandbox_bind = format!("127.0.0.1:{sandbox_port}");
    let (_sandbox_child, _sandbox_logs) = spawn_with(
        &["sandbox", "--bind", &sandbox_bind],
        &[("SANDBOX_CHANNEL_DELAY_MS", "50")],
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{sandbox}/_sandbox/counters"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the sandbox did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let api_bind = format!("127.0.0.1:{api_port}");
    let mut env = split_env(&database_url, &sandbox, &hub);
    env.extend([
        ("RUN_MIGRATIONS", "true"),
        ("BIND_ADDR", api_bind.as_str()),
        ("ADMIN_API_KEY", ADMIN_KEY),
    ]);
    let (mut api_child, _api_logs) = spawn_with(&["serve", "--no-workers"], &env);
    wait_ready(&api, "serve --no-workers").await;

    let mut env = split_env(&database_url, &sandbox, &hub);
    env.extend([
        ("BIND_ADDR", "127.0.0.1:0"),
        // The API's drain; a worker's endpoints do not drain.
        ("SHUTDOWN_DRAIN_SECONDS", "60"),
    ]);
    let (mut worker, logs) = spawn_with(&["worker"], &env);
    let listening = logs
        .wait_for("operations endpoints listening", Duration::from_secs(60))
        .await;
    let addr = listening["addr"]
        .as_str()
        .expect("the address it listens on");
    assert!(!addr.ends_with(":0"), "{listening}");
    let ops = format!("http://{addr}");
    wait_ready(&ops, "the worker").await;

    let res = http
        .post(format!("{api}/v1/partners"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "Split", "d360_partner_id": "splitPA", "d360_api_key": "split-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = res.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{api}/v1/migrations"))
        .bearer_auth(&key)
        .json(&readme_body("+14155558803"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_state(&http, &api, &key, &id, "awaiting_otp").await;
    let res = http
        .post(format!("{api}/v1/migrations/{id}/otp"))
        .bearer_auth(&key)
        .json(&json!({"code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    wait_for_state(&http, &api, &key, &id, "completed").await;

    // The worker's metrics: the steps it ran.
    let metrics = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let steps: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("waba_step_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(steps >= 1.0, "no step in the worker's /metrics:\n{metrics}");
    // The image's HEALTHCHECK against the worker.
    let health = Command::new(BIN)
        .args(["healthcheck", &format!("{ops}/healthz")])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    // Only the operations endpoints.
    let res = http
        .get(format!("{ops}/v1/migrations"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // SIGTERM: an idle worker exits at once, without the API's drain (no load balancer
    // routes to it), well within `docker stop`'s 10 s.
    sigterm(&worker).await;
    let exit = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("the idle worker exits at once, without a drain")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    sigterm_and_wait(&mut api_child, "serve --no-workers").await;
}

/// Sandbox mode (no META_ACCESS_TOKEN) runs the API and the workers in one process: `worker`
/// and `serve --no-workers` refuse to start, with one line saying how to split them.
#[tokio::test]
async fn sandbox_mode_refuses_to_split_the_api_and_the_workers() {
    let unreachable = "postgres://waba:hunter2pw@127.0.0.1:1/waba";
    for args in [&["worker"][..], &["serve", "--no-workers"]] {
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(BIN)
                .args(args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("DATABASE_URL", unreachable)
                .env("ENCRYPTION_KEY", KEY)
                .env("ADMIN_API_KEY", ADMIN_KEY)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("refused at once")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        for named in [
            "sandbox mode runs the API and the workers in one process",
            "waba-migrator sandbox",
            "META_ACCESS_TOKEN",
            "SANDBOX_SEED_NUMBERS=true",
        ] {
            assert!(
                lines[0].contains(named),
                "{args:?} does not name {named}: {stderr}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
    }
}

/// An empty variable (`HTTP_MAX_CONNECTIONS=` in an env file) counts as unset: `serve` starts
/// with the defaults (here in sandbox mode, with a development admin key). Except where being
/// unset means development mode: an empty `META_ACCESS_TOKEN` or `DATABASE_URL` (a secret not
/// filled in) is refused, not taken for the sandbox or the embedded database.
#[tokio::test(flavor = "multi_thread")]
async fn empty_settings_count_as_unset() {
    for setting in ["META_ACCESS_TOKEN", "DATABASE_URL"] {
        let (status, stderr) = serve_with(&[(setting, ""), ("ADMIN_API_KEY", ADMIN_KEY)]).await;
        assert!(!status.success(), "{setting}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(&format!("{setting} is set but empty")),
            "{stderr}"
        );
    }
    let sandbox_bind = format!("127.0.0.1:{}", free_port());
    let served = Served::start(
        &[
            ("ADMIN_API_KEY", ""),
            ("ENCRYPTION_KEY_OLD", ""),
            ("HTTP_MAX_CONNECTIONS", ""),
            ("SANDBOX_SEED", ""),
            ("SANDBOX_BIND", &sandbox_bind),
            ("SHUTDOWN_DRAIN_SECONDS", "0"),
        ],
        None,
    )
    .await;
    let scenarios = reqwest::get(format!("http://{sandbox_bind}/_sandbox/scenarios"))
        .await
        .expect("the in-process sandbox of sandbox mode answers");
    assert_eq!(scenarios.status(), StatusCode::OK);
    served.sigterm().await;
    let Served {
        mut child, stdout, ..
    } = served;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let logs = stdout.await.unwrap();
    assert!(logs.contains("SANDBOX MODE"), "{logs}");
}

/// `serve` on a database without the schema (RUN_MIGRATIONS is off by default with
/// DATABASE_URL) stops with one line saying how to apply it.
#[tokio::test]
async fn serve_on_a_database_without_the_schema_names_migrate() {
    let (database_url, _name) = fresh_database().await;
    let (status, stderr) = serve_with(&[
        ("DATABASE_URL", &database_url),
        ("ENCRYPTION_KEY", KEY),
        ("ADMIN_API_KEY", ADMIN_KEY),
    ])
    .await;
    assert!(!status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for named in ["waba-migrator migrate", "RUN_MIGRATIONS=true"] {
        assert!(lines[0].contains(named), "does not name {named}: {stderr}");
    }
    assert!(!lines[0].contains("does not exist"), "{stderr}");
}
