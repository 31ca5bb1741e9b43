//! A private PostgreSQL server for `waba-migrator serve` when no `DATABASE_URL` is set.
//!
//! [`EmbeddedPostgres::start`] runs the PostgreSQL server binaries already installed on the machine
//! (`initdb`, `pg_ctl`, `postgres`) against a data directory of our own, so that
//! `cargo run -- serve` works on a fresh machine without any database setup:
//!
//! * The binaries come from `PG_BIN` if set, else the highest version under
//!   `/usr/lib/postgresql/*/bin` (preferring the version an existing data directory was created
//!   with), else `pg_config --bindir`, else `pg_ctl` on `PATH`.
//! * The cluster is created on first use (`UTF8`, `C` locale, superuser role `waba`, `trust`
//!   authentication for the local socket and `127.0.0.1` only) and reused afterwards.
//! * The server listens on a unix socket inside the data directory (mode 0700, so only its owner
//!   can connect) and, only if a port is given, on `127.0.0.1:<port>` as well. Trust
//!   authentication means any local user who can reach that TCP port is superuser: only pass a
//!   port on a single-user development machine.
//! * PostgreSQL refuses to run as root. When we run as root, every PostgreSQL command runs as the
//!   `postgres` OS user (`runuser -u postgres --`) and the data directory is handed to that user.
//!   If `postgres` cannot reach the requested directory (for example it lives under `/root`), the
//!   cluster lives in `/var/tmp/waba-migrator-<hash of the requested path>` instead and a warning
//!   says so.
//! * The server log is `<data dir>/postgres.log`; our settings are written to
//!   `<data dir>/waba-migrator.conf` on every start (included from `postgresql.conf`).
//!
//! The server is a detached daemon (started with `pg_ctl`), not a child of this process.
//! **Callers must call [`EmbeddedPostgres::stop`]** on shutdown; there is deliberately no `Drop`
//! impl (stopping needs async process work). A `start` that fails after starting the server
//! (it never became ready, refused our connection, or the database could not be created) stops
//! it before returning the error. If the process dies without calling `stop`, the
//! server keeps running and the next `start` on the same data directory reuses it; if the server
//! itself was killed, the next `start` recovers from the stale `postmaster.pid`.
//! `stop` stops the server even when `start` reused an already running one: a process that
//! shares a data directory with another (a `worker` beside a running `serve`) calls it only when
//! [`EmbeddedPostgres::reused`] is false, i.e. for a server it started itself.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::process::Command;

/// Superuser role created by `initdb`.
const SUPERUSER: &str = "waba";
/// The application database, created on start if missing.
const DATABASE: &str = "waba_migrator";
/// Port number used to name the unix socket when no TCP port is requested.
const DEFAULT_PORT: u16 = 5432;
const LOG_FILE: &str = "postgres.log";
const CONF_FILE: &str = "waba-migrator.conf";
const INCLUDE_LINE: &str = "include_if_exists = 'waba-migrator.conf'";
/// `pg_ctl -t`: how long to wait for start and stop.
const PG_CTL_TIMEOUT_SECS: u64 = 60;
/// How long to wait for a (re)used server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// `postgres.log` is rotated to `postgres.log.1` on start once it is larger than this.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Unix socket paths are limited to 107 bytes; the socket file is `<dir>/.s.PGSQL.<port>`.
const MAX_SOCKET_DIR_LEN: usize = 107 - "/.s.PGSQL.65535".len();
/// Environment variables that would change what the PostgreSQL tools do behind our back.
const PG_ENV_VARS: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
    "PGCTLTIMEOUT",
];

/// A PostgreSQL server running from the machine's server binaries on a private data directory.
///
/// See the [module docs](self). Call [`stop`](Self::stop) on shutdown.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pg: PgTools,
    data_dir: PathBuf,
    tcp_port: Option<u16>,
    url: String,
    /// The server was already running on the data directory (another process started it).
    reused: bool,
}

impl EmbeddedPostgres {
    /// Find the server binaries, initialise `data_dir` if needed, start the server (or reuse the
    /// one already running on `data_dir`), wait until it accepts connections and create the
    /// database `waba_migrator` if it is missing.
    ///
    /// The server listens on a unix socket in the data directory and, if `port` is `Some`, on
    /// `127.0.0.1:<port>` too. The effective data directory may differ from `data_dir` when
    /// running as root (see the module docs); [`data_dir`](Self::data_dir) tells which one is used.
    pub async fn start(data_dir: &Path, port: Option<u16>) -> Result<Self> {
        let run_as = if current_uid().await? == 0 {
            Some(postgres_os_user().await?)
        } else {
            None
        };
        let data_dir = prepare_data_dir(data_dir, run_as.as_ref()).await?;
        let cluster_major = read_pg_version(&data_dir)?;
        let bin_dir = find_bin_dir(std::env::var_os("PG_BIN"), cluster_major.as_deref()).await?;
        let pg = PgTools { bin_dir, run_as };
        let binaries_major = pg.major_version().await?;
        if let Some(cluster_major) = &cluster_major
            && *cluster_major != binaries_major
        {
            bail!(
                "the embedded PostgreSQL data directory {} was created by PostgreSQL {cluster_major}, \
                 but the server binaries in {} are PostgreSQL {binaries_major}: set PG_BIN to a \
                 PostgreSQL {cluster_major} bin directory, or move the data directory away to start \
                 with an empty database (or pg_upgrade it), or set DATABASE_URL",
                data_dir.display(),
                pg.bin_dir.display(),
            );
        }
        tracing::info!(
            data_dir = %data_dir.display(),
            bin_dir = %pg.bin_dir.display(),
            version = %binaries_major,
            "using embedded PostgreSQL"
        );

        let mut server = Self {
            pg,
            data_dir,
            tcp_port: port,
            url: String::new(),
            reused: false,
        };
        let (endpoint, reused) = server.start_or_reuse().await?;
        server.reused = reused;
        match server.connect_and_create_database(port, endpoint).await {
            Ok(()) => Ok(server),
            // A server this call started is not left running behind an error.
            Err(error) if !server.reused => {
                if let Err(stop_error) = server.stop_server().await {
                    tracing::warn!(error = %format!("{stop_error:#}"), "could not stop the embedded PostgreSQL it started");
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// The rest of [`start`](Self::start) once a server runs: its endpoint, readiness and the
    /// application database.
    async fn connect_and_create_database(
        &mut self,
        port: Option<u16>,
        endpoint: Endpoint,
    ) -> Result<()> {
        if let (Some(wanted), Some(actual)) = (port, endpoint.tcp_port()) {
            if wanted != actual {
                tracing::warn!(
                    wanted,
                    actual,
                    "embedded PostgreSQL was already running on another TCP port; reusing it as is \
                     (stop it to apply the new port)"
                );
            }
        } else if port.is_some() && endpoint.tcp_port().is_none() {
            tracing::warn!(
                "embedded PostgreSQL was already running without a TCP listener; reusing it as is \
                 (stop it to apply the new port)"
            );
        }
        self.tcp_port = endpoint.tcp_port();
        self.url = endpoint.url(DATABASE)?;

        let admin_url = endpoint.url("postgres")?;
        let mut conn = wait_until_accepting(&admin_url, &self.data_dir).await?;
        ensure_database(&mut conn, DATABASE).await?;
        conn.close().await.ok();
        tracing::info!(
            data_dir = %self.data_dir.display(),
            tcp_port = ?self.tcp_port,
            "embedded PostgreSQL is ready"
        );
        Ok(())
    }

    /// `postgres://` URL of the `waba_migrator` database, usable by sqlx. The host is the
    /// percent-encoded unix socket directory (or `127.0.0.1` if the reused server has no socket).
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// The data directory actually in use (after the `/var/tmp` fallback, canonicalised).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TCP port the server listens on at `127.0.0.1`, if any.
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// Whether another process started the server (e.g. a running `serve`, or one that started
    /// it at the same moment as this one): then only that process should stop it.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Stop the server with a fast shutdown (`pg_ctl stop -m fast`): open sessions are
    /// disconnected, in-flight transactions are rolled back. Succeeds if it is already stopped.
    pub async fn stop(self) -> Result<()> {
        self.stop_server().await
    }

    async fn stop_server(&self) -> Result<()> {
        tracing::info!(data_dir = %self.data_dir.display(), "stopping embedded PostgreSQL");
        let output = self
            .pg
            .run(
                self.pg
                    .command("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "fast", "-w", "-t"])
                    .arg(PG_CTL_TIMEOUT_SECS.to_string()),
                "pg_ctl stop",
            )
            .await?;
        if output.status.success() || !self.pg.is_running(&self.data_dir).await? {
            return Ok(());
        }
        bail!(
            "could not stop the embedded PostgreSQL server in {}: {}\n{}\nStop it by hand with \
             `{} stop -D {} -m immediate`",
            self.data_dir.display(),
            describe_output(&output),
            log_tail(&self.data_dir, 0),
            self.pg.bin_dir.join("pg_ctl").display(),
            self.data_dir.display(),
        )
    }

    /// Reuse the server running on the data directory, or initialise and start one; says
    /// whether it was reused (another process started it, perhaps at the same moment).
    async fn start_or_reuse(&self) -> Result<(Endpoint, bool)> {
        let pid_file = self.data_dir.join("postmaster.pid");
        remove_lock_files_of_defunct_server(&pid_file)?;
        if self.pg.is_running(&self.data_dir).await? {
            tracing::info!(
                data_dir = %self.data_dir.display(),
                "embedded PostgreSQL is already running on this data directory; reusing it"
            );
            // It may still be starting up (or shutting down): wait for a verdict.
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                match read_pid_file(&pid_file) {
                    Some(pid) if pid.status == "ready" => return Ok((pid.endpoint()?, true)),
                    None if !self.pg.is_running(&self.data_dir).await? => break,
                    _ if Instant::now() > deadline => bail!(
                        "an embedded PostgreSQL server is running on {} but did not become ready \
                         within {}s (see {}): stop it with `{} stop -D {} -m fast` and try again",
                        self.data_dir.display(),
                        READY_TIMEOUT.as_secs(),
                        self.data_dir.join(LOG_FILE).display(),
                        self.pg.bin_dir.join("pg_ctl").display(),
                        self.data_dir.display(),
                    ),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            tracing::info!("the running embedded PostgreSQL went away; starting it again");
        }

        if !self.data_dir.join("PG_VERSION").exists() {
            self.initdb().await?;
        }
        self.write_config()?;
        let started = self.pg_ctl_start().await?;
        let endpoint = read_pid_file(&pid_file)
            .ok_or_else(|| {
                anyhow!(
                    "embedded PostgreSQL started but {} is missing or incomplete",
                    pid_file.display()
                )
            })
            .and_then(|pid| pid.endpoint());
        match endpoint {
            Ok(endpoint) => Ok((endpoint, !started)),
            Err(error) => {
                if started && let Err(stop_error) = self.stop_server().await {
                    tracing::warn!(error = %format!("{stop_error:#}"), "could not stop the embedded PostgreSQL it started");
                }
                Err(error)
            }
        }
    }

    async fn initdb(&self) -> Result<()> {
        let data_dir = &self.data_dir;
        let mut entries = std::fs::read_dir(data_dir)
            .with_context(|| format!("could not read the data directory {}", data_dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.file_name()))
            .collect::<Vec<_>>();
        if !entries.is_empty() {
            entries.sort();
            let names = entries
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            bail!(
                "the embedded PostgreSQL data directory {} is not empty but is not a PostgreSQL \
                 data directory either (no PG_VERSION; it contains: {names}): empty or remove it, \
                 or choose another data directory, or set DATABASE_URL",
                data_dir.display(),
            );
        }
        tracing::info!(data_dir = %data_dir.display(), "initialising embedded PostgreSQL cluster (initdb)");
        let output = self
            .pg
            .run(
                self.pg.command("initdb").arg("-D").arg(data_dir).args([
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth=trust",
                ]),
                "initdb",
            )
            .await?;
        if !output.status.success() {
            bail!(
                "initdb failed for the embedded PostgreSQL data directory {}: {}",
                data_dir.display(),
                describe_output(&output),
            );
        }
        let hba = "# Written by waba-migrator: trust the local socket and 127.0.0.1 only.\n\
                   # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
                   local   all       all                 trust\n\
                   host    all       all   127.0.0.1/32  trust\n";
        self.write_owned(&data_dir.join("pg_hba.conf"), hba.as_bytes())
    }

    /// Write our settings to `waba-migrator.conf` and make sure `postgresql.conf` includes it.
    fn write_config(&self) -> Result<()> {
        let socket_dir = self.socket_dir()?;
        let port = self.tcp_port.unwrap_or(DEFAULT_PORT);
        let listen = if self.tcp_port.is_some() {
            "127.0.0.1"
        } else {
            ""
        };
        let conf = format!(
            "# Written by waba-migrator on every start of the embedded server; edits are lost.\n\
             # Put your own settings in postgresql.conf above the include line, or use ALTER SYSTEM.\n\
             listen_addresses = {}\n\
             port = {port}\n\
             unix_socket_directories = {}\n\
             unix_socket_permissions = 0700\n",
            conf_quote(listen),
            conf_quote(&socket_dir.to_string_lossy()),
        );
        self.write_owned(&self.data_dir.join(CONF_FILE), conf.as_bytes())?;

        let main_conf = self.data_dir.join("postgresql.conf");
        let current = std::fs::read_to_string(&main_conf)
            .with_context(|| format!("could not read {}", main_conf.display()))?;
        if !current.lines().any(|line| line.trim() == INCLUDE_LINE) {
            let mut updated = current;
            if !updated.ends_with('\n') {
                updated.push('\n');
            }
            writeln!(
                updated,
                "\n# Added by waba-migrator (must stay last).\n{INCLUDE_LINE}"
            )?;
            self.write_owned(&main_conf, updated.as_bytes())?;
        }
        Ok(())
    }

    /// The unix socket directory: the data directory, unless its path is too long for a socket.
    fn socket_dir(&self) -> Result<PathBuf> {
        let path = self.data_dir.as_os_str();
        if path.len() <= MAX_SOCKET_DIR_LEN && path.to_str().is_some() {
            return Ok(self.data_dir.clone());
        }
        let dir = PathBuf::from(format!(
            "/var/tmp/waba-migrator-sock-{:016x}",
            fnv1a64(path.as_bytes())
        ));
        tracing::info!(
            socket_dir = %dir.display(),
            "the data directory path is too long for a unix socket; using a short socket directory"
        );
        ensure_private_dir(&dir, self.pg.run_as.as_ref())?;
        Ok(dir)
    }

    /// Starts the server: `true`, or `false` when another process started it meanwhile.
    async fn pg_ctl_start(&self) -> Result<bool> {
        let log_file = self.data_dir.join(LOG_FILE);
        rotate_log(&log_file);
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let log_offset = std::fs::metadata(&log_file).map_or(0, |m| m.len());
            tracing::info!(data_dir = %self.data_dir.display(), attempt, "starting embedded PostgreSQL (pg_ctl start)");
            let output = self
                .pg
                .run(
                    self.pg
                        .command("pg_ctl")
                        .arg("start")
                        .arg("-D")
                        .arg(&self.data_dir)
                        .arg("-l")
                        .arg(&log_file)
                        .args(["-w", "-t"])
                        .arg(PG_CTL_TIMEOUT_SECS.to_string()),
                    "pg_ctl start",
                )
                .await?;
            if output.status.success() {
                return Ok(true);
            }
            let log = log_tail(&self.data_dir, log_offset);
            if self.pg.is_running(&self.data_dir).await? {
                // Someone else started it concurrently; use that one (and leave it to them).
                return Ok(false);
            }
            // After a crash, processes of the old server may still hold its shared memory for a
            // moment; the server refuses to start until they are gone.
            if log.contains("still in use") && attempt < ATTEMPTS {
                tracing::warn!(
                    attempt,
                    "embedded PostgreSQL: processes of a previous server are still exiting; retrying"
                );
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                continue;
            }
            let hint = if log.contains("could not bind")
                || log.contains("could not create any TCP/IP sockets")
            {
                format!(
                    "TCP port {} on 127.0.0.1 is probably in use by another program: choose \
                     another port, or set DATABASE_URL to use an existing server",
                    self.tcp_port.unwrap_or(DEFAULT_PORT)
                )
            } else if log.contains("ermission denied") {
                "the PostgreSQL OS user must own the data directory and be able to reach it; \
                 or set DATABASE_URL to use an existing server"
                    .to_owned()
            } else {
                "see the log above; or set DATABASE_URL to use an existing server".to_owned()
            };
            bail!(
                "could not start the embedded PostgreSQL server on {}: {}\n{log}\nHint: {hint}",
                self.data_dir.display(),
                describe_output(&output),
            );
        }
        unreachable!("the last attempt returns or bails")
    }

    /// Write a file in the data directory, owned by the PostgreSQL OS user.
    fn write_owned(&self, path: &Path, contents: &[u8]) -> Result<()> {
        std::fs::write(path, contents)
            .with_context(|| format!("could not write {}", path.display()))?;
        if let Some(user) = &self.pg.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("could not chown {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }
}

/// The OS user PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// The PostgreSQL tools and who runs them.
#[derive(Debug)]
struct PgTools {
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
}

impl PgTools {
    /// A command for a PostgreSQL tool from `bin_dir`, run as the PostgreSQL OS user.
    fn command(&self, tool: &str) -> Command {
        as_user(self.run_as.as_ref(), self.bin_dir.join(tool).as_os_str())
    }

    async fn run(&self, command: &mut Command, what: &str) -> Result<Output> {
        run(command, what).await
    }

    /// `pg_ctl status`: exit code 0 means running, 3 not running, 4 no usable data directory.
    async fn is_running(&self, data_dir: &Path) -> Result<bool> {
        if !data_dir.join("PG_VERSION").exists() {
            return Ok(false);
        }
        let output = self
            .run(
                self.command("pg_ctl").arg("status").arg("-D").arg(data_dir),
                "pg_ctl status",
            )
            .await?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => bail!(
                "`pg_ctl status` failed for the embedded PostgreSQL data directory {}: {}",
                data_dir.display(),
                describe_output(&output),
            ),
        }
    }

    /// Major version of the binaries, from `pg_ctl --version` ("pg_ctl (PostgreSQL) 15.14 …").
    async fn major_version(&self) -> Result<String> {
        let output = self
            .run(self.command("pg_ctl").arg("--version"), "pg_ctl --version")
            .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "`{} --version` failed: {}",
                self.bin_dir.join("pg_ctl").display(),
                describe_output(&output)
            );
        }
        text.split_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|version| major_of(version).map(str::to_owned))
            .ok_or_else(|| {
                anyhow!(
                    "could not parse the PostgreSQL version from `{}`",
                    text.trim()
                )
            })
    }
}

/// Where and how to reach a running server, from its `postmaster.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PidFile {
    port: u16,
    socket_dir: Option<PathBuf>,
    listen_address: Option<String>,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Socket { dir: PathBuf, port: u16, tcp: bool },
    Tcp { host: String, port: u16 },
}

impl PidFile {
    fn endpoint(&self) -> Result<Endpoint> {
        let tcp = self.listen_address.is_some();
        match (&self.socket_dir, &self.listen_address) {
            (Some(dir), _) => Ok(Endpoint::Socket {
                dir: dir.clone(),
                port: self.port,
                tcp,
            }),
            (None, Some(address)) => Ok(Endpoint::Tcp {
                host: if address == "*" || address == "0.0.0.0" {
                    "127.0.0.1".to_owned()
                } else {
                    address.clone()
                },
                port: self.port,
            }),
            (None, None) => bail!(
                "the running embedded PostgreSQL server listens neither on a unix socket nor on TCP"
            ),
        }
    }
}

impl Endpoint {
    fn tcp_port(&self) -> Option<u16> {
        match self {
            Endpoint::Socket { port, tcp, .. } => tcp.then_some(*port),
            Endpoint::Tcp { port, .. } => Some(*port),
        }
    }

    fn url(&self, database: &str) -> Result<String> {
        let (host, port) = match self {
            Endpoint::Socket { dir, port, .. } => {
                let dir = dir.to_str().ok_or_else(|| {
                    anyhow!(
                        "the embedded PostgreSQL socket directory {} is not valid UTF-8",
                        dir.display()
                    )
                })?;
                (percent_encode(dir), *port)
            }
            Endpoint::Tcp { host, port } => (host.clone(), *port),
        };
        Ok(format!(
            "postgres://{SUPERUSER}@{host}:{port}/{database}?sslmode=disable"
        ))
    }
}

/// Parse `postmaster.pid`: pid, data dir, start time, port, socket dir, listen address,
/// shared memory key, status. `None` if it is missing or not yet complete.
fn read_pid_file(path: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_pid_file(&text)
}

fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines = text.lines().map(str::trim).collect::<Vec<_>>();
    let status = lines.get(7)?.to_string();
    let port = lines.get(3)?.parse().ok()?;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Some(PidFile {
        port,
        socket_dir: non_empty(lines.get(4)?).map(PathBuf::from),
        listen_address: non_empty(lines.get(5)?),
        status,
    })
}

/// A killed server whose process nobody reaped (a zombie: its parent is an init that does not
/// reap, as in some containers and VMs) still "exists" for `kill(pid, 0)`, so both `pg_ctl status`
/// and the new postmaster would take its lock files for a live server. Remove them.
fn remove_lock_files_of_defunct_server(pid_file: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let Some(pid) = first_line_pid(&text) else {
        return Ok(());
    };
    if !is_defunct(pid) {
        return Ok(());
    }
    tracing::warn!(
        pid,
        pid_file = %pid_file.display(),
        "the embedded PostgreSQL server was killed (its process is defunct); removing its stale lock files"
    );
    std::fs::remove_file(pid_file)
        .with_context(|| format!("could not remove the stale {}", pid_file.display()))?;
    if let Some(PidFile {
        port,
        socket_dir: Some(dir),
        ..
    }) = parse_pid_file(&text)
    {
        let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
        let same_owner = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|text| first_line_pid(&text))
            == Some(pid);
        if same_owner {
            std::fs::remove_file(&lock)
                .with_context(|| format!("could not remove the stale {}", lock.display()))?;
        }
    }
    Ok(())
}

fn first_line_pid(text: &str) -> Option<u32> {
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` is a zombie (exited, not yet reaped).
fn is_defunct(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Connect (to the `postgres` database) until the server accepts connections.
async fn wait_until_accepting(url: &str, data_dir: &Path) -> Result<PgConnection> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("invalid embedded PostgreSQL URL {url}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match PgConnection::connect_with(&options).await {
            Ok(conn) => return Ok(conn),
            // Refused by pg_hba.conf or a password check: waiting does not change the answer.
            Err(sqlx::Error::Database(error))
                if error.code().is_some_and(|code| code.starts_with("28")) =>
            {
                return Err(anyhow!(
                    "the embedded PostgreSQL server on {} refuses our connection at {url}: {} \
                     (check pg_hba.conf in the data directory)",
                    data_dir.display(),
                    error.message(),
                ));
            }
            Err(error) if Instant::now() > deadline => {
                return Err(anyhow::Error::new(error).context(format!(
                    "the embedded PostgreSQL server on {} does not accept connections at {url} \
                     (see {})",
                    data_dir.display(),
                    data_dir.join(LOG_FILE).display(),
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn ensure_database(conn: &mut PgConnection, name: &str) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .context("could not list the databases of the embedded PostgreSQL server")?;
    if exists {
        return Ok(());
    }
    tracing::info!(database = name, "creating database in embedded PostgreSQL");
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&sql).execute(&mut *conn).await {
        Ok(_) => Ok(()),
        // Created concurrently by another process: duplicate_database or unique_violation.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "could not create database {name} in embedded PostgreSQL"
        ))),
    }
}

/// Create `requested`, and when running as root make sure the PostgreSQL OS user can use it,
/// falling back to a directory under `/var/tmp` when it cannot reach it.
async fn prepare_data_dir(requested: &Path, run_as: Option<&OsUser>) -> Result<PathBuf> {
    std::fs::create_dir_all(requested).with_context(|| {
        format!(
            "could not create the embedded PostgreSQL data directory {}",
            requested.display()
        )
    })?;
    let canonical = requested.canonicalize().with_context(|| {
        format!(
            "could not resolve the embedded PostgreSQL data directory {}",
            requested.display()
        )
    })?;
    let Some(user) = run_as else {
        return Ok(canonical);
    };
    let parent = canonical.parent().unwrap_or(Path::new("/"));
    if can_traverse(user, parent).await? {
        hand_over(&canonical, user)?;
        return Ok(canonical);
    }
    let fallback = fallback_dir(&canonical);
    tracing::warn!(
        requested = %canonical.display(),
        data_dir = %fallback.display(),
        user = %user.name,
        "running as root: the `{}` OS user cannot reach {}, so the embedded PostgreSQL data lives in {} \
         instead (set DATABASE_URL, or choose a data directory under a path that user can traverse, \
         to avoid this)",
        user.name,
        parent.display(),
        fallback.display(),
    );
    ensure_private_dir(&fallback, Some(user))?;
    Ok(fallback)
}

fn fallback_dir(canonical: &Path) -> PathBuf {
    PathBuf::from(format!(
        "/var/tmp/waba-migrator-{:016x}",
        fnv1a64(canonical.as_os_str().as_bytes())
    ))
}

/// Whether `user` can search `dir` and every directory above it.
async fn can_traverse(user: &OsUser, dir: &Path) -> Result<bool> {
    let mut command = as_user(Some(user), OsStr::new("test"));
    command.arg("-x").arg(dir);
    let output = run(&mut command, "test -x (as the postgres user)").await?;
    Ok(output.status.success())
}

/// Give `dir` (recursively, if it is not already theirs) to `user`.
fn hand_over(dir: &Path, user: &OsUser) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("could not inspect {}", dir.display()))?;
    if meta.uid() == user.uid {
        return Ok(());
    }
    chown_recursive(dir, user).with_context(|| {
        format!(
            "could not hand the embedded PostgreSQL data directory {} over to the `{}` OS user",
            dir.display(),
            user.name
        )
    })
}

fn chown_recursive(path: &Path, user: &OsUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// Create (mode 0700) or check a directory in a shared place such as `/var/tmp`: it must be a
/// real directory owned by us (or root) or by the PostgreSQL OS user, never someone else's.
fn ensure_private_dir(dir: &Path, run_as: Option<&OsUser>) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("could not create {}", dir.display()))
            );
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("could not inspect {}", dir.display()))?;
    let me = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    let trusted_owner = meta.uid() == me || run_as.is_some_and(|u| meta.uid() == u.uid);
    if !meta.is_dir() || !trusted_owner {
        bail!(
            "{} exists but is not a directory owned by this user or by the PostgreSQL OS user: \
             remove it, or set DATABASE_URL",
            dir.display()
        );
    }
    if let Some(user) = run_as {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
            .with_context(|| format!("could not chown {} to {}", dir.display(), user.name))?;
    }
    Ok(())
}

/// Locate the PostgreSQL server binaries (see the module docs for the order).
async fn find_bin_dir(
    pg_bin: Option<std::ffi::OsString>,
    preferred_major: Option<&str>,
) -> Result<PathBuf> {
    if let Some(dir) = pg_bin.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        bail!(
            "PG_BIN is set to {}, but that directory does not contain the PostgreSQL server \
             binaries (initdb, pg_ctl, postgres): point PG_BIN at e.g. /usr/lib/postgresql/15/bin, \
             unset it, or set DATABASE_URL",
            dir.display()
        );
    }

    let mut versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let key = version_key(&name)?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((key, name, bin))
        })
        .collect::<Vec<_>>();
    versions.sort();
    if let Some(preferred) = preferred_major
        && let Some((_, _, bin)) = versions.iter().find(|(_, name, _)| name == preferred)
    {
        return Ok(bin.clone());
    }
    if let Some((_, _, bin)) = versions.pop() {
        return Ok(bin);
    }

    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .await
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server_binaries(&dir) {
            return Ok(dir);
        }
    }

    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_server_binaries(dir))
    {
        return Ok(dir);
    }

    bail!(
        "PostgreSQL server binaries not found (looked at PG_BIN, /usr/lib/postgresql/*/bin, \
         `pg_config --bindir` and PATH): install the `postgresql` package (Debian/Ubuntu: \
         `apt-get install postgresql`), set PG_BIN to the directory holding initdb and pg_ctl, \
         or set DATABASE_URL to use an existing server"
    )
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|tool| dir.join(tool).is_file())
}

/// Sort key of a directory name like `15` or `9.6`.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Major version of a full version: `15.14` → `15`, `16beta1` → `16`, `9.6.24` → `9.6`.
fn major_of(version: &str) -> Option<&str> {
    let digits_end = version
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version.len());
    let first = &version[..digits_end];
    let first_num: u32 = first.parse().ok()?;
    if first_num >= 10 {
        return Some(first);
    }
    // Before 10, the major version had two parts.
    let rest = &version[digits_end..];
    let minor_len = rest
        .strip_prefix('.')?
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len() - 1);
    Some(&version[..digits_end + 1 + minor_len])
}

/// Major version recorded in `<data dir>/PG_VERSION`, if the directory is initialised.
fn read_pg_version(data_dir: &Path) -> Result<Option<String>> {
    let path = data_dir.join("PG_VERSION");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("could not read {}", path.display()))),
    }
}

async fn current_uid() -> Result<u32> {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let output = run(Command::new("id").arg("-u"), "id -u").await?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("could not determine the current user id (`id -u`)")
}

async fn postgres_os_user() -> Result<OsUser> {
    const NAME: &str = "postgres";
    let id = |flag: &'static str| async move {
        let output = run(Command::new("id").arg(flag).arg(NAME), "id").await?;
        if !output.status.success() {
            bail!(
                "running as root, but there is no `{NAME}` OS user to run PostgreSQL as (PostgreSQL \
                 refuses to run as root): install the `postgresql` package (which creates it), run \
                 waba-migrator as a non-root user, or set DATABASE_URL"
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u32>()
            .with_context(|| format!("unexpected output of `id {flag} {NAME}`"))
    };
    Ok(OsUser {
        name: NAME.to_owned(),
        uid: id("-u").await?,
        gid: id("-g").await?,
    })
}

/// `program`, run as `user` via `runuser` if given, with a neutral environment and directory.
fn as_user(user: Option<&OsUser>, program: &OsStr) -> Command {
    let mut command = match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.arg("-u").arg(&user.name).arg("--").arg(program);
            command
        }
        None => Command::new(program),
    };
    for var in PG_ENV_VARS {
        command.env_remove(var);
    }
    command
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn run(command: &mut Command, what: &str) -> Result<Output> {
    command.output().await.map_err(|e| {
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let hint = if e.kind() == std::io::ErrorKind::NotFound && program == "runuser" {
            " (runuser, from util-linux, is needed to run PostgreSQL as the `postgres` user when \
             running as root; install util-linux, run as a non-root user, or set DATABASE_URL)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("could not run {what} ({program}){hint}"))
    })
}

fn describe_output(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = format!("{}\n{}", stdout.trim(), stderr.trim());
    format!("{} ({})", text.trim(), output.status)
}

/// The last lines of `postgres.log` written after byte `from`, for error messages.
fn log_tail(data_dir: &Path, from: u64) -> String {
    let path = data_dir.join(LOG_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return format!("(no log at {})", path.display());
    };
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines = text.lines().collect::<Vec<_>>();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("last lines of {}:\n{tail}", path.display())
}

fn rotate_log(log_file: &Path) {
    if std::fs::metadata(log_file).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let mut rotated = log_file.as_os_str().to_owned();
        rotated.push(".1");
        if let Err(error) = std::fs::rename(log_file, &rotated) {
            tracing::warn!(%error, "could not rotate {}", log_file.display());
        }
    }
}

/// A postgresql.conf string literal.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encode everything but RFC 3986 unreserved characters (for a URL host).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// FNV-1a, 64 bit: a hash that is stable across Rust versions and runs (names of fallback dirs).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "embedpg-{label}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn select_one(url: &str) -> (i32, String, bool) {
        let pool = PgPool::connect(url).await.expect("connect");
        let row: (i32, String, bool) = sqlx::query_as(
            "SELECT 1, current_database()::text, \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
        )
        .fetch_one(&pool)
        .await
        .expect("SELECT 1");
        pool.close().await;
        row
    }

    fn postmaster_pid(data_dir: &Path) -> u32 {
        let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    fn is_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists() && !is_defunct(pid)
    }

    #[tokio::test]
    async fn starts_connects_stops_and_restarts_on_the_same_data_dir() {
        let tmp = TempDir::new("reuse");
        let data = tmp.0.join("data");

        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("first start");
        assert!(pg.database_url().starts_with("postgres://waba@%2F"));
        assert_eq!(pg.tcp_port(), None);
        let (one, db, superuser) = select_one(pg.database_url()).await;
        assert_eq!((one, db.as_str(), superuser), (1, DATABASE, true));
        assert!(pg.data_dir().join(LOG_FILE).is_file());
        let first_url = pg.database_url().to_owned();
        pg.stop().await.expect("first stop");
        assert!(!pg_is_up(&data));

        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("second start (reuse)");
        assert_eq!(pg.database_url(), first_url);
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        pg.stop().await.expect("second stop");
    }

    fn pg_is_up(data_dir: &Path) -> bool {
        data_dir.join("postmaster.pid").exists()
    }

    #[tokio::test]
    async fn a_start_that_fails_after_starting_the_server_stops_it() {
        let tmp = TempDir::new("refused");
        let data = tmp.0.join("data");
        let pg = EmbeddedPostgres::start(&data, None).await.expect("start");
        let data_dir = pg.data_dir().to_owned();
        pg.stop().await.expect("stop");

        // The server starts, then refuses every connection: `start` fails at once (waiting
        // would not change the answer) and leaves no server running behind its error.
        let hba = data_dir.join("pg_hba.conf");
        let original = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, "local all all reject\nhost all all all reject\n").unwrap();
        let began = Instant::now();
        let error = EmbeddedPostgres::start(&data, None)
            .await
            .expect_err("a server refusing connections");
        let message = format!("{error:#}");
        assert!(message.contains("refuses our connection"), "{message}");
        assert!(message.contains("pg_hba.conf"), "{message}");
        assert!(
            began.elapsed() < READY_TIMEOUT / 2,
            "failed fast: {:?}",
            began.elapsed()
        );
        assert!(!pg_is_up(&data_dir), "the server it started was stopped");

        // Put right, the next start works.
        std::fs::write(&hba, original).unwrap();
        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("start again");
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        pg.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn reuses_a_running_server_and_recovers_from_a_killed_one() {
        let tmp = TempDir::new("crash");
        let data = tmp.0.join("data");

        // Our process "dies" without stop(): the server keeps running and is reused.
        let pg = EmbeddedPostgres::start(&data, None).await.expect("start");
        let data_dir = pg.data_dir().to_owned();
        let pid = postmaster_pid(&data_dir);
        drop(pg);
        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("start while running");
        assert_eq!(
            postmaster_pid(&data_dir),
            pid,
            "the running server is reused"
        );
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        drop(pg);

        // The server itself is killed: a stale postmaster.pid is left behind.
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) {
            assert!(Instant::now() < deadline, "postmaster {pid} did not die");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(data_dir.join("postmaster.pid").exists(), "stale pid file");

        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("start after kill -9");
        assert_ne!(postmaster_pid(&data_dir), pid);
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
        pg.stop().await.expect("stop");
        assert!(!data_dir.join("postmaster.pid").exists());

        // A stale postmaster.pid naming a process that no longer exists (the usual aftermath of
        // a crash where the dead server was reaped): pg_ctl and postgres cope with it.
        let gone = (100_000..4_000_000)
            .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .unwrap();
        let stale = pid_file.replacen(&postmaster_pid_text(&pid_file), &gone.to_string(), 1);
        std::fs::write(data_dir.join("postmaster.pid"), stale).unwrap();
        let pg = EmbeddedPostgres::start(&data, None)
            .await
            .expect("start with a stale postmaster.pid");
        assert_ne!(postmaster_pid(&data_dir), gone);
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        pg.stop().await.expect("final stop");
    }

    fn postmaster_pid_text(pid_file: &str) -> String {
        pid_file.lines().next().unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn listens_on_127_0_0_1_when_given_a_port() {
        let tmp = TempDir::new("tcp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();

        let pg = EmbeddedPostgres::start(&tmp.0.join("data"), Some(port))
            .await
            .expect("start");
        assert_eq!(pg.tcp_port(), Some(port));
        let tcp_url = format!("postgres://waba@127.0.0.1:{port}/{DATABASE}");
        assert_eq!(select_one(&tcp_url).await.0, 1);
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        pg.stop().await.expect("stop");
    }

    #[tokio::test]
    async fn a_busy_tcp_port_gives_an_actionable_error() {
        let tmp = TempDir::new("busy");
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();

        let err = EmbeddedPostgres::start(&tmp.0.join("data"), Some(port))
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        eprintln!("{msg}");
        assert!(msg.contains(&format!("TCP port {port}")), "{msg}");
        assert!(msg.contains("DATABASE_URL"), "{msg}");
    }

    #[tokio::test]
    async fn falls_back_to_var_tmp_when_postgres_cannot_reach_the_data_dir() {
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("skipped: only meaningful when running as root");
            return;
        }
        let tmp = TempDir::new("private");
        let private = tmp.0.join("private");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .unwrap();
        let requested = private.join("data");

        let pg = EmbeddedPostgres::start(&requested, None)
            .await
            .expect("start");
        let used = pg.data_dir().to_owned();
        let expected = fallback_dir(&requested.canonicalize().unwrap());
        assert_eq!(used, expected);
        assert!(used.join("PG_VERSION").is_file());
        assert_eq!(select_one(pg.database_url()).await.0, 1);
        pg.stop().await.expect("stop");

        // Same request, same fallback.
        let pg = EmbeddedPostgres::start(&requested, None)
            .await
            .expect("restart");
        assert_eq!(pg.data_dir(), expected);
        pg.stop().await.expect("stop again");
        std::fs::remove_dir_all(&expected).unwrap();
    }

    #[tokio::test]
    async fn a_non_empty_foreign_directory_is_refused_with_a_clear_error() {
        let tmp = TempDir::new("foreign");
        let data = tmp.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("notes.txt"), "mine").unwrap();
        // Keep the postgres user able to reach it when root, so we test the emptiness check.
        let err = EmbeddedPostgres::start(&data, None).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("not a PostgreSQL data directory"), "{msg}");
        assert!(msg.contains("notes.txt"), "{msg}");
    }

    #[tokio::test]
    async fn missing_binaries_give_an_actionable_error() {
        let err = find_bin_dir(Some("/nonexistent/pg/bin".into()), None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("PG_BIN") && msg.contains("DATABASE_URL"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn finds_installed_binaries() {
        let dir = find_bin_dir(None, None).await.expect("binaries installed");
        assert!(has_server_binaries(&dir));
    }

    #[test]
    fn socket_urls_parse_back_to_the_same_socket() {
        let endpoint = Endpoint::Socket {
            dir: PathBuf::from("/tmp/a dir/with:odd@chars%"),
            port: 5433,
            tcp: false,
        };
        let url = endpoint.url("waba_migrator").unwrap();
        assert_eq!(
            url,
            "postgres://waba@%2Ftmp%2Fa%20dir%2Fwith%3Aodd%40chars%25:5433/waba_migrator?sslmode=disable"
        );
        let options: PgConnectOptions = url.parse().unwrap();
        assert_eq!(
            options.get_socket(),
            Some(&PathBuf::from("/tmp/a dir/with:odd@chars%"))
        );
        assert_eq!(options.get_port(), 5433);
        assert_eq!(options.get_username(), "waba");
        assert_eq!(options.get_database(), Some("waba_migrator"));
    }

    #[test]
    fn parses_postmaster_pid() {
        let text = "123\n/data\n1700000000\n5432\n/data\n127.0.0.1\n  1234   5678\nready   \n";
        let pid = parse_pid_file(text).unwrap();
        assert_eq!(
            pid.endpoint().unwrap(),
            Endpoint::Socket {
                dir: PathBuf::from("/data"),
                port: 5432,
                tcp: true
            }
        );
        assert_eq!(pid.status, "ready");
        let tcp_only = "1\n/d\n1\n55432\n\n127.0.0.1\n1 2\nready\n";
        assert_eq!(
            parse_pid_file(tcp_only).unwrap().endpoint().unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 55432
            }
        );
        assert_eq!(parse_pid_file("123\n/data\n"), None, "still starting");
    }

    #[test]
    fn versions() {
        assert_eq!(major_of("15.14"), Some("15"));
        assert_eq!(major_of("16beta1"), Some("16"));
        assert_eq!(major_of("9.6.24"), Some("9.6"));
        assert_eq!(major_of("9.6"), Some("9.6"));
        let mut keys = ["9.6", "15", "10", "16"].map(|v| version_key(v).unwrap());
        keys.sort();
        assert_eq!(keys.last(), Some(&vec![16]));
        assert_eq!(version_key("15-old"), None);
    }

    #[test]
    fn conf_quoting_and_stable_hash() {
        assert_eq!(conf_quote("it's a\\b"), "'it''s a\\\\b'");
        assert_eq!(conf_quote(""), "''");
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
