//! The graphile-worker anchor (issue 18): the reference PostgreSQL job queue, run by this
//! process against the same PostgreSQL as the service and measured the same way.
//!
//! graphile-worker 0.18.0 (Node) drains no-op jobs, as `../shared/anchors/graphile-worker`'s
//! `gw-bench.mjs drain` does: one worker process (`gw-worker.mjs`, vendored in
//! `benchmarks/anchor/graphile-worker/` with its `package-lock.json`) with `--anchor-concurrency`
//! (10), a 1,000-job warm-up, then `--anchor-jobs` (20,000) no-op jobs enqueued in one
//! transaction and timed from its COMMIT until the jobs table is empty. CPU is `utime + stime`
//! from `/proc` of the worker process and of PostgreSQL (postmaster, reaped and live backends)
//! over exactly that window, the enqueue included, as the service's is read over its drive.
//! The worker connects over TCP to 127.0.0.1 like the service does.
//!
//! A third mode runs *step jobs* instead of no-op jobs (`--anchor-step-runs`): each makes two
//! Graph API calls to the bench's sandbox and records itself in one statement (a row changes
//! state, an event row is appended), the work a transition of the service does beside its
//! engine. That mode is this repository's addition, not part of the pinned anchor's bench.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::procs;
use super::stats::Samples;

const PACKAGE_JSON: &str = include_str!("../../../benchmarks/anchor/graphile-worker/package.json");
const PACKAGE_LOCK: &str =
    include_str!("../../../benchmarks/anchor/graphile-worker/package-lock.json");
const WORKER_MJS: &str = include_str!("../../../benchmarks/anchor/graphile-worker/gw-worker.mjs");

/// graphile-worker's own schema migrations, run with its library (`runMigrations`).
const MIGRATE_MJS: &str = "import { runMigrations, Logger } from 'graphile-worker';\n\
await runMigrations({ connectionString: process.env.GW_URL, logger: new Logger(() => () => {}) });\n";

/// `gw-bench.mjs`'s enqueue: `n` jobs of a task (`$2`) in one statement. No-op jobs carry its
/// empty payload; a step job's names its item (`{"id": i}`).
const ADD_JOBS_SQL: &str = "SELECT count(*)::int FROM graphile_worker.add_jobs(array(
  SELECT ($2::text,
          CASE WHEN $2::text = 'step' THEN json_build_object('id', i) ELSE '{}'::json END,
          null, null, null, null, null, null)::graphile_worker.job_spec
  FROM generate_series(1, $1::int) i))";

/// The rows step jobs record themselves in (see `gw-worker.mjs`): an item per job, and its
/// events keyed by the item's version, as the service's `migration_events` are.
const STEP_TABLES_SQL: &str = "CREATE TABLE step_items (
    id bigint PRIMARY KEY, state text NOT NULL, version integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now());
  CREATE TABLE step_events (
    item_id bigint NOT NULL, seq integer NOT NULL, type text NOT NULL, from_state text,
    to_state text, data jsonb, created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, seq))";

/// What the anchor's jobs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Nothing (the pinned anchor's jobs).
    Noop,
    /// Two sandbox calls and a recorded state change (`gw-worker.mjs`'s `step`).
    Step,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Step => "step",
        }
    }
}

const DB: &str = "gw_anchor";

/// The anchor's knobs, part of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnchorArgs {
    /// No-op jobs per anchor drain (0: skip the anchor).
    #[arg(long, default_value_t = 20_000)]
    pub anchor_jobs: i32,
    /// Anchor drains per mode (the median is the figure).
    #[arg(long, default_value_t = 3)]
    pub anchor_runs: usize,
    /// graphile-worker concurrency of its one worker process (its default is 1; the anchor's
    /// published figures use 10).
    #[arg(long, default_value_t = 10)]
    pub anchor_concurrency: usize,
    /// Size of graphile-worker's local queue (batched claims) for the second mode (0: skip it).
    #[arg(long, default_value_t = 100)]
    pub anchor_local_queue: usize,
    /// Drains of step jobs (two sandbox calls and a recorded state change each, graphile-worker
    /// defaults), half before the service's drive and half after (0: skip them).
    #[arg(long, default_value_t = 3)]
    pub anchor_step_runs: usize,
    /// Where the anchor's npm packages are installed (default: `gw-anchor` next to the
    /// directory of this executable, i.e. `target/gw-anchor`).
    #[arg(long)]
    pub anchor_dir: Option<PathBuf>,
}

/// One drain.
#[derive(Debug, Clone)]
pub struct Drain {
    pub jobs: i32,
    pub drain_s: f64,
    pub worker_cpu_s: f64,
    pub postgres_cpu_s: f64,
    pub wal: procs::WalSnapshot,
}

impl Drain {
    pub fn jobs_per_s(&self) -> f64 {
        f64::from(self.jobs) / self.drain_s
    }

    /// Worker + PostgreSQL CPU per job, in ms.
    pub fn cpu_ms_per_job(&self) -> f64 {
        (self.worker_cpu_s + self.postgres_cpu_s) * 1e3 / f64::from(self.jobs)
    }

    fn json(&self) -> Value {
        json!({
            "jobs": self.jobs,
            "drain_s": super::round(self.drain_s, 3),
            "jobs_per_s": super::round(self.jobs_per_s(), 1),
            "cpu_s": { "worker": super::round(self.worker_cpu_s, 2), "postgres": super::round(self.postgres_cpu_s, 2) },
            "cpu_ms_per_job": super::round(self.cpu_ms_per_job(), 4),
            "per_job": self.wal.per(f64::from(self.jobs)),
        })
    }
}

/// The drains of one mode (no-op jobs with defaults or the local queue, or step jobs).
#[derive(Debug, Clone)]
pub struct Mode {
    pub task: Task,
    pub local_queue: usize,
    pub drains: Vec<Drain>,
}

impl Mode {
    /// The median drain by CPU per job.
    pub fn median(&self) -> &Drain {
        let mut v: Vec<&Drain> = self.drains.iter().collect();
        v.sort_by(|a, b| a.cpu_ms_per_job().total_cmp(&b.cpu_ms_per_job()));
        v[v.len() / 2]
    }

    pub fn json(&self) -> Value {
        let per_job = Samples(self.drains.iter().map(Drain::cpu_ms_per_job).collect());
        json!({
            "task": self.task.name(),
            "local_queue": self.local_queue,
            "median": self.median().json(),
            "cpu_ms_per_job_min": per_job.pct(0.0).map(|v| super::round(v, 4)),
            "cpu_ms_per_job_max": per_job.pct(100.0).map(|v| super::round(v, 4)),
            "drains": self.drains.iter().map(Drain::json).collect::<Vec<_>>(),
        })
    }
}

/// Writes the vendored anchor into `dir` and installs its packages (`npm ci`, once per lock).
pub async fn install(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = dir.join(".installed-lock");
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    };
    write("package.json", PACKAGE_JSON)?;
    write("package-lock.json", PACKAGE_LOCK)?;
    write("gw-worker.mjs", WORKER_MJS)?;
    write("migrate.mjs", MIGRATE_MJS)?;
    let installed = std::fs::read_to_string(&stamp).ok().as_deref() == Some(PACKAGE_LOCK)
        && dir
            .join("node_modules/graphile-worker/package.json")
            .is_file();
    if installed {
        return Ok(());
    }
    eprintln!(
        "bench: installing the graphile-worker anchor (npm ci) in {}",
        dir.display()
    );
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context(
            "cannot run npm (Node 20 and npm are needed for the anchor; --anchor-jobs 0 skips it)",
        )?;
    if !out.status.success() {
        bail!(
            "npm ci failed in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&stamp, PACKAGE_LOCK)?;
    Ok(())
}

/// `--anchor-dir`, else `target/gw-anchor` (next to the directory of this executable).
pub fn default_dir(args: &AnchorArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.anchor_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("executable has no directory")?;
    Ok(bin_dir.parent().unwrap_or(bin_dir).join("gw-anchor"))
}

/// Creates the anchor's database on the bench's PostgreSQL and runs graphile-worker's schema
/// migrations; primes the planner statistics as `gw-bench.mjs setup` does; creates the step
/// jobs' tables.
async fn setup(
    admin: &sqlx::PgPool,
    dir: &Path,
    url: &str,
    jobs: i32,
) -> anyhow::Result<sqlx::PgPool> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .execute(admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {DB}"))
        .execute(admin)
        .await?;
    let out = Command::new("node")
        .arg("migrate.mjs")
        .current_dir(dir)
        .env("GW_URL", url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run node")?;
    if !out.status.success() {
        bail!(
            "graphile-worker migrations failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    // A brand-new jobs table has no statistics; the anchor's first drain planned badly until
    // autoanalyze ran mid-drain. Analyze it once full, then empty it (gw-bench.mjs setup).
    sqlx::query(ADD_JOBS_SQL)
        .bind(jobs)
        .bind(Task::Noop.name())
        .execute(&db)
        .await?;
    sqlx::query("ANALYZE graphile_worker._private_jobs")
        .execute(&db)
        .await?;
    sqlx::query("DELETE FROM graphile_worker._private_jobs")
        .execute(&db)
        .await?;
    sqlx::query("VACUUM ANALYZE graphile_worker._private_jobs")
        .execute(&db)
        .await?;
    sqlx::raw_sql(STEP_TABLES_SQL).execute(&db).await?;
    Ok(db)
}

async fn wait_empty(db: &sqlx::PgPool, timeout: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + timeout;
    loop {
        let (any,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)")
                .fetch_one(db)
                .await?;
        if !any {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the anchor's queue did not drain within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The anchor, set up on the bench's PostgreSQL; its drains are run in rounds around the
/// service's drive, so drift on the shared machine hits both alike.
pub struct Anchor {
    args: AnchorArgs,
    dir: PathBuf,
    url: String,
    sandbox_url: String,
    db: sqlx::PgPool,
    postmaster: u32,
    modes: Vec<Mode>,
}

impl Anchor {
    /// Installs the anchor and creates its database (`None` with `--anchor-jobs 0`).
    pub async fn prepare(
        args: &AnchorArgs,
        admin: &sqlx::PgPool,
        pg_port: u16,
        postmaster: u32,
        sandbox_url: &str,
    ) -> anyhow::Result<Option<Self>> {
        if args.anchor_jobs <= 0 {
            return Ok(None);
        }
        let dir = default_dir(args)?;
        install(&dir).await?;
        let url = format!("postgres://waba@127.0.0.1:{pg_port}/{DB}");
        let db = setup(admin, &dir, &url, args.anchor_jobs).await?;
        Ok(Some(Self {
            args: args.clone(),
            dir,
            url,
            sandbox_url: sandbox_url.to_owned(),
            db,
            postmaster,
            modes: Vec::new(),
        }))
    }

    /// One drain of `--anchor-jobs` jobs of `task` by a fresh worker process.
    async fn drain(&self, task: Task, local_queue: usize) -> anyhow::Result<Drain> {
        let (db, dir, url) = (&self.db, self.dir.as_path(), self.url.as_str());
        let jobs = self.args.anchor_jobs;
        const WARMUP: i32 = 1000;
        if task == Task::Step {
            // Fresh items, one per job (the warm-up's jobs take the first 1,000 a step earlier).
            sqlx::query("TRUNCATE step_items, step_events")
                .execute(db)
                .await?;
            sqlx::query("INSERT INTO step_items (id, state) SELECT i, 'queued' FROM generate_series(1, $1::int) i")
                .bind(jobs.max(WARMUP))
                .execute(db)
                .await?;
            sqlx::query("VACUUM ANALYZE step_items, step_events")
                .execute(db)
                .await?;
        }
        sqlx::query(
            "VACUUM ANALYZE graphile_worker._private_jobs, graphile_worker._private_job_queues, graphile_worker._private_tasks",
        )
        .execute(db)
        .await?;
        sqlx::query("CHECKPOINT").execute(db).await?;
        let mut child = Command::new("node")
            .arg("gw-worker.mjs")
            .arg(url)
            .arg(self.args.anchor_concurrency.to_string())
            .current_dir(dir)
            .env("NO_LOG_SUCCESS", "1")
            .env("GW_LOCAL_QUEUE", local_queue.to_string())
            .env("GW_SANDBOX_URL", &self.sandbox_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node gw-worker.mjs")?;
        let pid = child.id().unwrap_or(0);
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = lines.next_line().await? {
                if l == "READY" {
                    return anyhow::Ok(());
                }
            }
            bail!("the anchor's worker exited before READY")
        })
        .await;
        ready.context("the anchor's worker was not READY within 30 s")??;
        // Its progress lines are read (and dropped) so the pipe never fills; DONE is its count.
        let counted = tokio::spawn(async move {
            let mut done = None;
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(n) = l.strip_prefix("DONE ") {
                    done = n.parse::<i64>().ok();
                }
            }
            done
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        sqlx::query(ADD_JOBS_SQL)
            .bind(WARMUP)
            .bind(task.name())
            .execute(db)
            .await?;
        wait_empty(db, Duration::from_secs(120)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let wal0 = procs::WalSnapshot::take(db).await?;
        let worker0 = procs::cpu_seconds(pid, false);
        let pg0 = procs::postgres_cpu_seconds(self.postmaster);
        let mut tx = db.begin().await?;
        let (n,): (i32,) = sqlx::query_as(ADD_JOBS_SQL)
            .bind(jobs)
            .bind(task.name())
            .fetch_one(&mut *tx)
            .await?;
        anyhow::ensure!(n == jobs, "add_jobs returned {n}, not {jobs}");
        let t0 = Instant::now();
        tx.commit().await?;
        wait_empty(db, Duration::from_secs(300)).await?;
        let drain_s = t0.elapsed().as_secs_f64();
        let worker_cpu_s = procs::cpu_seconds(pid, false) - worker0;
        let postgres_cpu_s = procs::postgres_cpu_seconds(self.postmaster) - pg0;
        let wal = procs::WalSnapshot::take(db).await?.since(&wal0);

        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let done = counted.await.ok().flatten();
        if done != Some(i64::from(jobs + WARMUP)) {
            bail!(
                "the anchor's worker reports {done:?} jobs run, expected {}",
                jobs + WARMUP
            );
        }
        if task == Task::Step {
            let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM step_events")
                .fetch_one(db)
                .await?;
            anyhow::ensure!(
                events == i64::from(jobs + WARMUP),
                "the anchor's step jobs recorded {events} events, expected {}",
                jobs + WARMUP
            );
        }
        Ok(Drain {
            jobs,
            drain_s,
            worker_cpu_s,
            postgres_cpu_s,
            wal,
        })
    }

    /// `runs` drains of `task` jobs with graphile-worker's local queue of `local_queue` (0: its
    /// defaults).
    pub async fn drains(
        &mut self,
        task: Task,
        local_queue: usize,
        runs: usize,
    ) -> anyhow::Result<()> {
        for _ in 0..runs {
            let d = self.drain(task, local_queue).await?;
            let found = self
                .modes
                .iter_mut()
                .find(|m| m.task == task && m.local_queue == local_queue);
            let mode = match found {
                Some(m) => m,
                None => {
                    self.modes.push(Mode {
                        task,
                        local_queue,
                        drains: Vec::new(),
                    });
                    self.modes.last_mut().expect("just pushed")
                }
            };
            mode.drains.push(d);
            let d = mode.drains.last().expect("just pushed");
            eprintln!(
                "bench: anchor {} lq={local_queue} run {}: {:.0} jobs/s, {:.3} ms CPU per job (worker {:.2} s + postgres {:.2} s)",
                task.name(),
                mode.drains.len(),
                d.jobs_per_s(),
                d.cpu_ms_per_job(),
                d.worker_cpu_s,
                d.postgres_cpu_s
            );
        }
        Ok(())
    }

    /// The drains of each mode, in the order they were first run.
    pub async fn finish(self) -> Vec<Mode> {
        self.db.close().await;
        self.modes
    }
}

#[cfg(test)]
mod tests {
    use super::WORKER_MJS;

    /// A step job reads a WABA's numbers as the precheck does: with the same fields.
    #[test]
    fn step_jobs_ask_for_the_fields_the_service_asks_for() {
        let fields = waba_migrator::clients::meta::PHONE_NUMBER_FIELDS;
        assert!(
            WORKER_MJS.contains(&format!("const PHONE_NUMBER_FIELDS = \"{fields}\";")),
            "gw-worker.mjs's PHONE_NUMBER_FIELDS is not {fields}"
        );
    }
}
