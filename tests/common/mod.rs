//! Shared test utilities, included by each integration test file with `mod common;`: a real
//! PostgreSQL per test binary ([`pg`]), client connections, an in-process sluice, and polling with
//! a deadline.
//!
//! The PostgreSQL every test binary shares (see [`TempPostgres`] for roles and databases):
//!
//! | user           | password      | over TCP (127.0.0.1) | over the unix socket |
//! |----------------|---------------|----------------------|----------------------|
//! | `postgres`     | `postgres_pw` | scram-sha-256        | trust                |
//! | `sluice_scram` | `scram_pw`    | scram-sha-256        | trust                |
//! | `sluice_md5`   | `md5_pw`      | md5 (stored as md5)  | trust                |
//! | `sluice_trust` | (none)        | trust                | trust                |
//!
//! Databases: `postgres`, and `app` owned by `sluice_scram`. The three `sluice_*` users may create
//! tables in both.
//!
//! [`pg`] starts that server once per test process (under `cargo nextest`, once per test) and it is
//! gone when the process exits, however it exits. Tests that stop or restart PostgreSQL use their
//! own [`TempPostgres::start_standalone`]. As root, the server runs as the `postgres` OS user.
//! `SLUICE_PG_BINDIR` overrides where the PostgreSQL binaries are found.

#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod config;
pub mod listening;
mod postgres;
pub mod raw;

#[allow(unused_imports)]
pub use postgres::{SUPERUSER, SUPERUSER_PASSWORD, TempPostgres, pg};

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a test waits to open a connection before calling it a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with tokio-postgres (no TLS) to `host_port` and spawns the connection task on the
/// current runtime. An empty `password` is sent as is when the server asks for one.
pub async fn connect(
    host_port: SocketAddr,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host_port.ip().to_string())
        .port(host_port.port())
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(CONNECT_TIMEOUT);
    connect_with(config).await
}

/// Connects with a prepared config (no TLS) and spawns the connection task on the current runtime;
/// the task ends when the client is dropped or the server hangs up.
pub async fn connect_with(
    config: tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Parses `toml` (origin `test.toml`) and starts an in-process sluice on the current runtime.
/// Panics with the configuration or start-up error. Use `listen_port = 0` for an ephemeral port.
/// Without a `unix_socket_dir` in the text there is no unix socket (rather than one in /tmp
/// that a test which never calls `shutdown` would leave behind).
pub async fn start_sluice(toml: &str) -> sluice::RunningPooler {
    let mut config = sluice::Config::from_toml_str(toml, "test.toml", None)
        .unwrap_or_else(|e| panic!("invalid test config: {e}\n--- config ---\n{toml}"));
    if !toml.contains("unix_socket_dir") {
        config.pooler.unix_socket_dir = None;
    }
    sluice::start(config)
        .await
        .unwrap_or_else(|e| panic!("sluice did not start: {e}"))
}

/// Polls `condition` every 50 ms until it returns true; panics naming `what` if `timeout` passes
/// first. The condition is always checked at least once, and once more at the deadline.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

/// One console row: column name -> value.
pub type ConsoleRow = std::collections::HashMap<String, Option<String>>;

/// Runs a command on an open console (or any) connection with the simple protocol; rows as
/// column-name maps.
pub async fn console_query(c: &tokio_postgres::Client, cmd: &str) -> Vec<ConsoleRow> {
    let msgs = c.simple_query(cmd).await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Logs in to the console of the sluice at `addr` as `user` (trust auth) and runs `cmd`.
pub async fn console_rows(addr: SocketAddr, user: &str, cmd: &str) -> Vec<ConsoleRow> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname("pgbouncer");
    let c = connect_with(cfg).await.expect("console login");
    console_query(&c, cmd).await
}

/// Raises this process's soft open-files limit to the hard limit (20000 on these machines), for
/// tests that hold thousands of sockets; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// A TCP port free on 127.0.0.1 right now, for a sluice binary the test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Logs in to the console of the sluice at `addr` as `admin` (trust auth).
pub async fn admin_console(addr: SocketAddr) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("admin")
        .dbname("pgbouncer");
    connect_with(cfg).await.expect("console login")
}
