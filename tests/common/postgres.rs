//! `TempPostgres`: a throwaway PostgreSQL in a temp dir (initdb, free port, SCRAM over TCP), run as
//! the `postgres` OS user when the tests run as root, and removed by a watchdog when the test process
//! exits however it exits.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

mod standby;

/// Superuser created by initdb; logs in over TCP with [`SUPERUSER_PASSWORD`].
pub const SUPERUSER: &str = "postgres";
/// Password of [`SUPERUSER`] (stored as SCRAM).
pub const SUPERUSER_PASSWORD: &str = "postgres_pw";

/// Roles, databases and grants every TempPostgres starts with (see `tests/common/mod.rs`).
const SETUP_SQL: &str = r#"
ALTER ROLE postgres PASSWORD 'postgres_pw';
CREATE ROLE sluice_scram LOGIN PASSWORD 'scram_pw';
SET password_encryption = 'md5';
CREATE ROLE sluice_md5 LOGIN PASSWORD 'md5_pw';
RESET password_encryption;
CREATE ROLE sluice_trust LOGIN;
CREATE ROLE sluice_users NOLOGIN;
GRANT sluice_users TO sluice_scram, sluice_md5, sluice_trust;
GRANT ALL ON SCHEMA public TO sluice_users;
CREATE DATABASE app OWNER sluice_scram;
GRANT ALL ON DATABASE app TO sluice_users;
\connect app
GRANT ALL ON SCHEMA public TO sluice_users;
"#;

/// pg_hba.conf: anything over the unix socket is trusted; TCP depends on the user.
const PG_HBA: &str = "\
local all all trust
local replication all trust
host all sluice_trust 127.0.0.1/32 trust
host all sluice_md5 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

/// Runs in the background for the life of a TempPostgres. Its stdin is a pipe whose only writer is
/// the test process, so `read` returns when the handle is dropped or the process dies (even by
/// SIGKILL); then it stops the postmaster (SIGQUIT: immediate shutdown) and removes the directory.
const WATCHDOG: &str = r#"
trap '' INT HUP
dir="$1"
# Alive and not a zombie: an orphaned postmaster that exited waits for PID 1 to reap it.
alive() {
  local state=""
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  read -r _ _ state _ < "/proc/$1/stat" || return 1
  [ "$state" != Z ]
}
read -r _ || true
pidfile="$dir/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  pid=$(head -n 1 "$pidfile" || true)
  if [ -n "$pid" ] && alive "$pid"; then
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
fi
rm -rf -- "$dir"
"#;

/// A PostgreSQL server in a temp dir, listening on 127.0.0.1 and on a unix socket in that dir.
///
/// Roles: superuser `postgres` / `postgres_pw`; `sluice_scram` / `scram_pw` (SCRAM);
/// `sluice_md5` / `md5_pw` (stored as md5, md5 auth over TCP); `sluice_trust` (trust over TCP).
/// The three `sluice_*` roles are members of `sluice_users`, which may create tables in the public
/// schemas of `postgres` and of `app` (a database owned by `sluice_scram`).
pub struct TempPostgres {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// True when running as root: every server binary goes through `runuser -u postgres`.
    as_postgres_user: bool,
    /// The watchdog and the write end of its stdin; taking and dropping it tears everything down.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

static SHARED: OnceLock<TempPostgres> = OnceLock::new();

/// The PostgreSQL shared by every test of this test binary, started on first use.
///
/// Safe to call from many threads at once; it is stopped and its directory removed when the process
/// exits (an `atexit` hook waits for that; the watchdog covers panics, signals and SIGKILL).
pub fn pg() -> &'static TempPostgres {
    SHARED.get_or_init(|| {
        let pg = TempPostgres::start_standalone();
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(teardown_shared) };
        pg
    })
}

extern "C" fn teardown_shared() {
    if let Some(pg) = SHARED.get() {
        pg.teardown();
    }
}

/// A new temp dir for a data directory (owned by the postgres OS user when
/// `as_postgres_user`), and the watchdog that removes it and stops its server if the test
/// process dies: the watchdog and its stdin (closing it is the signal).
fn data_dir_with_watchdog(prefix: &str, as_postgres_user: bool) -> (PathBuf, Child, ChildStdin) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir for PostgreSQL")
        .keep();
    if as_postgres_user {
        let (uid, gid) = postgres_os_user();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown temp dir to postgres");
    }
    let mut watchdog = Command::new("bash")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sluice-pg-watchdog")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn PostgreSQL watchdog");
    let stdin = watchdog.stdin.take().expect("watchdog stdin");
    (dir, watchdog, stdin)
}

impl TempPostgres {
    /// Creates, configures and starts a PostgreSQL of its own (not shared); dropping it stops the
    /// server and removes its directory. Panics with PostgreSQL's log when it cannot start.
    pub fn start_standalone() -> TempPostgres {
        let bindir = find_bindir();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        let (dir, watchdog, stdin) = data_dir_with_watchdog("sluice-pg-", as_postgres_user);
        let mut pg = TempPostgres {
            bindir,
            dir,
            port: 0,
            as_postgres_user,
            watchdog: Mutex::new(Some((watchdog, stdin))),
        };
        pg.initdb();
        pg.start_on_a_free_port();
        pg.run_setup_sql();
        pg
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, for `connect`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Directory holding the unix socket `.s.PGSQL.<port>` (the temp dir itself).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Data directory (`<temp dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Directory of the PostgreSQL binaries in use (initdb, postgres, psql, pgbench ...).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Runs the bindir's psql (with `-X`, no psqlrc) against this server as the superuser over the
    /// unix socket, unless `args` say otherwise; waits for it and returns its output.
    pub fn psql(&self, args: &[&str]) -> Output {
        Command::new(self.bindir.join("psql"))
            .arg("-X")
            .args(args)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// Runs psql against another server (sluice): `args` carry host/port/user/db; `password` is
    /// given through PGPASSWORD. Nothing points it at this PostgreSQL.
    pub fn psql_to(&self, args: &[&str], password: &str) -> Output {
        Command::new(self.bindir.join("psql"))
            .arg("-X")
            .args(args)
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// Creates a fresh database `name` (dropping any old one) owned by `sluice_scram`, with
    /// `sluice_users` allowed to create tables in it, so a test can count its own backends by
    /// `datname` in pg_stat_activity. Returns the name.
    pub async fn create_database(&self, name: &str) -> String {
        let admin = self.admin_client().await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER sluice_scram"))
            .await
            .expect("create database");
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(name);
        let in_db = super::connect_with(config)
            .await
            .expect("connect to the new database");
        in_db
            .batch_execute("GRANT ALL ON SCHEMA public TO sluice_users")
            .await
            .expect("grant");
        name.to_string()
    }

    /// A superuser client over the unix socket, its connection task spawned on the current runtime.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres")
            .connect_timeout(std::time::Duration::from_secs(10));
        super::connect_with(config)
            .await
            .expect("admin connection to PostgreSQL over its unix socket")
    }

    /// Client backends connected to database `db` (how a test counts the servers of its pools).
    pub async fn backends_in(&self, db: &str) -> i64 {
        self.admin_client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                &[&db],
            )
            .await
            .expect("count backends")
            .get(0)
    }

    /// Client backends PostgreSQL has for `usename`, not counting the session that asks.
    pub async fn backend_count(&self, usename: &str) -> i64 {
        let client = self.admin_client().await;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[&usename],
            )
            .await
            .expect("count backends in pg_stat_activity");
        row.get(0)
    }

    /// Stops the server (fast shutdown: sessions are terminated, a clean checkpoint is written) and
    /// waits until it is gone. The data dir and port are kept for [`TempPostgres::start`].
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server as a crash would (immediate shutdown, recovery on the next start).
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts the server again on the same data dir and port, and waits until it accepts
    /// connections. Panics when it cannot (for example when the port was taken meanwhile).
    pub fn start(&mut self) {
        if let Err(log) = self.pg_ctl_start() {
            panic!("PostgreSQL did not restart on port {}:\n{log}", self.port);
        }
    }

    /// Kills the postmaster with SIGKILL (a crash: no shutdown, no checkpoint) and waits until
    /// that process is gone. Its backends notice and exit on their own; [`TempPostgres::start`]
    /// then recovers. Panics when there is no running postmaster.
    pub fn kill_postmaster(&mut self) {
        let pidfile = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile).expect("read postmaster.pid");
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid on the first line of postmaster.pid");
        // SAFETY: kill(2) with a pid read from PostgreSQL's own lock file.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "postmaster {pid} survived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Starts the server after [`TempPostgres::kill_postmaster`]: retried while the dead
    /// postmaster's backends still hold its shared memory (they exit within moments).
    pub fn start_after_crash(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) if std::time::Instant::now() >= deadline => {
                    panic!(
                        "PostgreSQL did not start after a crash on port {}:\n{log}",
                        self.port
                    )
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Turns on TLS: writes `cert_pem`/`key_pem` into the data directory (owned by the server's
    /// OS user, key mode 0600), sets `ssl = on`, and restarts the server.
    pub fn enable_ssl(&mut self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (name, text, mode) in [("server.crt", cert_pem, 0o644), ("server.key", key_pem, 0o600)] {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write TLS file into the data dir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod TLS file");
            if self.as_postgres_user {
                let (uid, gid) = postgres_os_user();
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown TLS file");
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        file.write_all(b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            .expect("write postgresql.conf");
        self.stop();
        self.start();
    }

    fn initdb(&self) {
        let data = self.data_dir();
        let out = self.run_server_binary(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        assert!(out.status.success(), "initdb failed:\n{}", output_text(&out));
        let conf = format!(
            "\n# sluice test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n\
             log_min_messages = warning\n",
            self.dir.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        file.write_all(conf.as_bytes()).expect("write postgresql.conf");
        std::fs::write(data.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
    }

    /// First start: a port that is free now may be taken before postgres binds it, so retry.
    fn start_on_a_free_port(&mut self) {
        let mut last_log = String::new();
        for _ in 0..5 {
            self.port = free_port();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) => last_log = log,
            }
        }
        panic!("PostgreSQL did not start:\n{last_log}");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let port_opt = format!("-p {}", self.port);
        let out = self.run_server_binary(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                port_opt.as_ref(),
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("{}\n--- postgres.log ---\n{log_text}", output_text(&out)))
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let data = self.data_dir();
        let out = self.run_server_binary(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-m".as_ref(),
                mode.as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", output_text(&out));
    }

    fn run_setup_sql(&self) {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", "postgres"])
            .args(["-c", "SET client_min_messages = warning"])
            .arg("-f")
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("psql stdin")
                    .write_all(SETUP_SQL.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run psql for the setup SQL");
        assert!(out.status.success(), "setup SQL failed:\n{}", output_text(&out));
    }

    /// Runs initdb/pg_ctl: directly, or as the `postgres` user when we are root (both refuse root).
    /// Either way under a raised open-files limit (runuser resets it to 1024), in a process group of
    /// its own so that Ctrl-C on the test run reaches the watchdog's cleanup, not the server.
    fn run_server_binary(&self, name: &str, args: &[&std::ffi::OsStr]) -> Output {
        let script = "ulimit -n 20000 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$@\"";
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "bash", "-c", script, "bash"]);
            c
        } else {
            let mut c = Command::new("bash");
            c.args(["-c", script, "bash"]);
            c
        };
        cmd.arg(self.bindir.join(name))
            .args(args)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"))
    }

    /// Closes the watchdog's pipe and waits while it stops the server and removes the directory.
    fn teardown(&self) {
        let taken = self.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// True while process `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// A port that nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// `$SLUICE_PG_BINDIR`, else `pg_config --bindir` when it holds initdb, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bindir() -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            let has_initdb = |dir: &Path| dir.join("initdb").is_file();
            if let Some(dir) = std::env::var_os("SLUICE_PG_BINDIR").map(PathBuf::from) {
                assert!(
                    has_initdb(&dir),
                    "SLUICE_PG_BINDIR={} has no initdb",
                    dir.display()
                );
                return dir;
            }
            if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if out.status.success() && has_initdb(&dir) {
                    return dir;
                }
            }
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, dir)| has_initdb(dir))
                .collect();
            versions.sort();
            versions.pop().map(|(_, dir)| dir).expect(
                "PostgreSQL server binaries not found (no initdb via pg_config or in \
                 /usr/lib/postgresql/*/bin); run scripts/test.sh, which installs them",
            )
        })
        .clone()
}

/// Uid and gid of the `postgres` OS user.
fn postgres_os_user() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the fields are copied out before any other call.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root, but there is no `postgres` OS user to run PostgreSQL"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
