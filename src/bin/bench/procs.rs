//! Child processes (`waba-migrator sandbox` / `serve`) and `/proc` accounting.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A child process with its log file.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", name, bin.display()))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                eprintln!("bench: {} did not stop in {grace:?}; killing it", self.name);
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
    }
}

/// Waits until `url` answers 2xx.
pub async fn wait_ok(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not answer {url} within 60 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux configuration we run on (getconf CLK_TCK).
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) of `pid`; with `children`, plus its reaped children's.
pub fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    // Fields 14..17 (utime, stime, cutime, cstime) are at indexes 11..14 here.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let mut ticks = n(11) + n(12);
    if children {
        ticks += n(13) + n(14);
    }
    ticks / ticks_per_second()
}

fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU seconds of a PostgreSQL server: the postmaster, its exited backends, its live ones.
pub fn postgres_cpu_seconds(postmaster: u32) -> f64 {
    let mut total = cpu_seconds(postmaster, true);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && ppid(pid) == Some(postmaster)
            {
                total += cpu_seconds(pid, false);
            }
        }
    }
    total
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// The postmaster's pid from `postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds of every party, read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub service: f64,
    pub sandbox: f64,
    pub postgres: f64,
    pub driver: f64,
}

impl CpuSnapshot {
    pub fn take(service: u32, sandbox: u32, postmaster: u32) -> Self {
        Self {
            service: cpu_seconds(service, false),
            sandbox: cpu_seconds(sandbox, false),
            postgres: postgres_cpu_seconds(postmaster),
            driver: cpu_seconds(std::process::id(), false),
        }
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            service: self.service - before.service,
            sandbox: self.sandbox - before.sandbox,
            postgres: self.postgres - before.postgres,
            driver: self.driver - before.driver,
        }
    }

    pub fn total(&self) -> f64 {
        self.service + self.sandbox + self.postgres + self.driver
    }
}

/// Write-ahead log and commit counters of a PostgreSQL server (`pg_stat_wal`,
/// `pg_stat_database`), read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalSnapshot {
    pub records: f64,
    pub full_page_images: f64,
    pub bytes: f64,
    /// WAL flushes to disk (`wal_sync`): a commit that finds its record already flushed by
    /// another backend's flush (group commit) adds none.
    pub syncs: f64,
    /// Transactions committed, read-only ones included, over every database.
    pub commits: f64,
}

impl WalSnapshot {
    pub async fn take(db: &sqlx::PgPool) -> anyhow::Result<Self> {
        let (records, full_page_images, bytes, syncs, commits): (f64, f64, f64, f64, f64) =
            sqlx::query_as(
                "SELECT wal_records::float8, wal_fpi::float8, wal_bytes::float8, wal_sync::float8,
                        (SELECT sum(xact_commit)::float8 FROM pg_stat_database)
                   FROM pg_stat_wal",
            )
            .fetch_one(db)
            .await?;
        Ok(Self {
            records,
            full_page_images,
            bytes,
            syncs,
            commits,
        })
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            records: self.records - before.records,
            full_page_images: self.full_page_images - before.full_page_images,
            bytes: self.bytes - before.bytes,
            syncs: self.syncs - before.syncs,
            commits: self.commits - before.commits,
        }
    }

    /// Per unit of work (`n` transitions or jobs), as JSON.
    pub fn per(&self, n: f64) -> serde_json::Value {
        let n = n.max(1.0);
        serde_json::json!({
            "wal_records": (self.records / n * 100.0).round() / 100.0,
            "wal_full_page_images": (self.full_page_images / n * 1000.0).round() / 1000.0,
            "wal_bytes": (self.bytes / n).round(),
            "wal_syncs": (self.syncs / n * 1000.0).round() / 1000.0,
            "commits": (self.commits / n * 100.0).round() / 100.0,
        })
    }

    /// `records / bytes / syncs / commits` per unit, for the table.
    pub fn fmt_per(&self, n: f64) -> String {
        let n = n.max(1.0);
        format!(
            "{:.1} records, {:.0} B, {:.2} flushes, {:.2} commits",
            self.records / n,
            self.bytes / n,
            self.syncs / n,
            self.commits / n
        )
    }
}
