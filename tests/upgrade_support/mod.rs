//! The harness of the upgrade tests (tests/upgrade.rs, tests/upgrade_servers.rs): a sluice
//! binary started with a literal config, and every process that took over from it since.

#![allow(dead_code)]

use crate::common;
use common::config::PoolerToml;
use common::{ConsoleRow, console_rows, pg};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A sluice started by the test, and every process that took over from it since.
pub struct Generations {
    /// The first process (the test's own child, reaped here).
    pub first: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub log: PathBuf,
}

impl Generations {
    /// Starts sluice with `extra` lines in `[pooler]` and `env` in its environment (test hooks
    /// it passes to its first new process).
    pub fn start(extra: &str, env: &[(&str, &str)]) -> Generations {
        Self::start_with_pool(8, extra, env)
    }

    /// [`Generations::start`] with a pool of `pool_size` servers.
    pub fn start_with_pool(pool_size: u32, extra: &str, env: &[(&str, &str)]) -> Generations {
        Self::start_with_tail(pool_size, extra, "", env)
    }

    /// The config: `[pooler]` with `extra`, database `app` of `pool_size` servers, then `tail`
    /// (more keys of `app`, such as `dbname`, or more tables).
    fn toml(dir: &Path, port: u16, pool_size: u32, extra: &str, tail: &str) -> String {
        let pidfile = dir.join("sluice.pid");
        PoolerToml::trust()
            .listen_port(port)
            .set(&format!("pidfile = {:?}", pidfile.display().to_string()))
            .set(&format!("unix_socket_dir = {:?}", dir.display().to_string()))
            .set("max_client_conn = 500")
            .set(extra)
            .admin()
            .database("app", Some(pool_size))
            .tail(tail)
            .build()
    }

    /// Writes another config for the next process to read (the running one does not reload).
    pub fn rewrite_config(&self, pool_size: u32, extra: &str, tail: &str) {
        let toml = Self::toml(self.dir.path(), self.port, pool_size, extra, tail);
        std::fs::write(self.dir.path().join("pooler.toml"), toml).unwrap();
    }

    /// [`Generations::start_with_pool`] with `tail` after the database table.
    pub fn start_with_tail(pool_size: u32, extra: &str, tail: &str, env: &[(&str, &str)]) -> Generations {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let toml = Self::toml(dir.path(), port, pool_size, extra, tail);
        let config = dir.path().join("pooler.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.path().join("sluice.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--allow-root")
            .arg("--config")
            .arg(&config)
            .env("SLUICE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let first = cmd.spawn().expect("start sluice");
        let g = Generations {
            first,
            dir,
            port,
            log,
        };
        g.wait_for_pid(|pid| pid.is_some(), "sluice wrote its pidfile");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !g.log_text().contains("sluice listening") {
            assert!(Instant::now() < deadline, "sluice listens\n{}", g.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid in the pidfile: the process serving now.
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.path().join("sluice.pid")).ok()?;
        text.trim().parse().ok()
    }

    pub fn wait_for_pid(&self, ok: impl Fn(Option<i32>) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok(self.pid()) {
            assert!(
                Instant::now() < deadline,
                "{what}: timed out\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while `pid` runs (a zombie, or the first process once reaped, does not).
    pub fn alive(&mut self, pid: i32) -> bool {
        if pid == self.first.id() as i32 {
            return self.first.try_wait().ok().flatten().is_none();
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    /// Sends SIGUSR2 to the serving process and waits until a new one serves and the old one
    /// has exited; returns the new pid.
    pub async fn upgrade(&mut self) -> i32 {
        let old = self.pid().expect("a serving process");
        signal(old, libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.alive(old) || self.pid() == Some(old) {
            assert!(
                Instant::now() < deadline,
                "the upgrade finished in time\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let new = self.pid().expect("the new process wrote the pidfile");
        assert!(self.alive(new), "the new process serves\n{}", self.log_text());
        new
    }

    /// Waits until the log has `needle` (`count` times).
    pub async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "log line {needle:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        common::connect(self.addr(), "sluice_trust", "", "app")
            .await
            .expect("connect")
    }

    /// SHOW CLIENTS rows of database `app`.
    pub async fn show_clients(&self) -> Vec<ConsoleRow> {
        console_rows(self.addr(), "admin", "SHOW CLIENTS")
            .await
            .into_iter()
            .filter(|r| r.get("database").cloned().flatten().as_deref() == Some("app"))
            .collect()
    }
}

impl Drop for Generations {
    fn drop(&mut self) {
        if let Some(pid) = self.pid()
            && pid != self.first.id() as i32
        {
            signal(pid, libc::SIGKILL);
        }
        // A test that failed mid-upgrade leaves a new process the pidfile does not name yet:
        // every process an upgrade started (the log names them) that still runs this config.
        let config = self.dir.path().join("pooler.toml");
        for line in self.log_text().lines() {
            let Some(pid) = line
                .split("upgrade: started the new process pid=")
                .nth(1)
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy()) {
                signal(pid, libc::SIGKILL);
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a sluice process this test started (or its successor).
    unsafe { libc::kill(pid, sig) };
}

/// (addr, port, connect_time) of each client: what must not change across an upgrade.
pub fn identities(rows: &[ConsoleRow]) -> BTreeSet<(String, String, String)> {
    let get = |r: &ConsoleRow, k: &str| r.get(k).cloned().flatten().unwrap_or_default();
    rows.iter()
        .map(|r| (get(r, "addr"), get(r, "port"), get(r, "connect_time")))
        .collect()
}

/// A number from pgbench's report line that starts with `prefix`.
pub fn reported(stdout: &str, prefix: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.parse().ok()
}

pub fn pgbench(port: u16, mode: &str, clients: u32, seconds: u32, script: &Path) -> Child {
    Command::new(pg().bindir().join("pgbench"))
        .args(["-n", "-M", mode, "-c", &clients.to_string(), "-j", "2"])
        .args([
            "-T",
            &seconds.to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-U", "sluice_trust", "-f"])
        .arg(script)
        .arg("app")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench")
}

/// Sends a CancelRequest with `token` and checks that the query running in `slow` ends with
/// 57014 (query_canceled) within 10 s.
pub async fn cancel_and_see_it_cancelled<T: std::fmt::Debug>(
    token: &tokio_postgres::CancelToken,
    slow: tokio::task::JoinHandle<Result<T, tokio_postgres::Error>>,
) {
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), slow)
        .await
        .expect("the query ended")
        .unwrap()
        .expect_err("the query was cancelled");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
}
