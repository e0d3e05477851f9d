//! A sluice binary started by a test and the processes that take over from it in upgrades
//! (SIGUSR2): the pidfile names the serving one (tests/upgrade.rs, tests/upgrade_listen.rs).

use super::config::PoolerToml;
use super::{ConsoleRow, console_rows};
use std::collections::BTreeSet;
use std::path::PathBuf;
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
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let pidfile = dir.path().join("sluice.pid");
        let toml = PoolerToml::trust()
            .listen_port(port)
            .set(&format!("pidfile = {:?}", pidfile.display().to_string()))
            .set(&format!(
                "unix_socket_dir = {:?}",
                dir.path().display().to_string()
            ))
            .set("max_client_conn = 500")
            .set(extra)
            .admin()
            .database("app", Some(pool_size))
            .build();
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
        super::connect(self.addr(), "sluice_trust", "", "app")
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
