//! The built `sluice` binary as a child process: a config file in a temp dir, stderr captured
//! to a file, signals, and waiting for it to serve or to exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for sluice to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running sluice binary; killed when dropped.
pub struct SluiceBinary {
    /// The child process.
    pub child: Child,
    /// Its TCP port.
    pub port: u16,
    /// Holds the config, the captured stderr and whatever else the test puts there.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Where its stderr goes.
    pub stderr: PathBuf,
}

impl SluiceBinary {
    /// A command that runs the binary on `config` (with `--allow-root`: tests run as root in
    /// CI), logging at `info`, stderr to `stderr`.
    pub fn command(config: &std::path::Path, stderr: &std::path::Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--allow-root")
            .arg("--config")
            .arg(config)
            .env("SLUICE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).expect("stderr file"));
        cmd
    }

    /// Writes the config made by `toml(port, dir)` and starts the binary; `customize` may
    /// change the command (environment, arguments, limits) first.
    pub fn spawn(
        toml: impl FnOnce(u16, &std::path::Path) -> String,
        customize: impl FnOnce(&mut Command),
    ) -> SluiceBinary {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("pooler.toml");
        std::fs::write(&config, toml(port, dir.path())).expect("write config");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Self::command(&config, &stderr);
        customize(&mut cmd);
        let child = cmd.spawn().expect("start sluice");
        SluiceBinary {
            child,
            port,
            dir,
            config,
            stderr,
        }
    }

    /// The TCP address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until a trust client of `db` can log in and run a query.
    pub async fn wait_up(&self, db: &str) {
        let addr = self.addr();
        super::wait_until(Duration::from_secs(10), "sluice serves queries", || async {
            match super::connect(addr, "sluice_trust", "", db).await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// What it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we own.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `limit` for it to exit; its exit status if it did.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SluiceBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
