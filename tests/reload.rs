//! A reload (console RELOAD or SIGHUP to the real binary) never takes away what a pool could do:
//! pools that log in to PostgreSQL with SCRAM pass-through (a verifier in auth_file or
//! `[users]`) or with a secret auth_query found keep opening servers after a reload of an
//! unchanged file, of a changed pool_size, and a RECONNECT; a changed password takes effect for
//! new logins while the pool keeps serving. The other derived state a reload touches: TLS
//! contexts (a reload whose files cannot be used changes nothing), and servers opened under an
//! old address, database or pool mode (replaced, never handed on).

mod common;

use common::{connect, connect_with, pg, wait_until};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where the test's role gets its secret in sluice's configuration.
#[derive(Clone, Copy)]
enum SecretSource {
    /// A SCRAM verifier in the auth_file (PgBouncer's userlist.txt).
    AuthFile,
    /// A SCRAM verifier as `[users.NAME] password`.
    Users,
    /// Nothing in the config: auth_query reads pg_authid as auth_user `postgres`.
    AuthQuery,
}

/// How the test asks for a reload.
#[derive(Clone, Copy)]
enum Reload {
    Console,
    Sighup,
}

/// A sluice binary started on a config file the test rewrites, with its log lines collected.
struct Pooler {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A login role with a SCRAM password; returns its name and its pg_authid verifier.
async fn create_role(password: &str) -> (String, String) {
    let name = format!(
        "rl_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = pg().admin_client().await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; DROP ROLE IF EXISTS {name}; \
             CREATE ROLE {name} LOGIN PASSWORD '{password}'; GRANT sluice_users TO {name}"
        ))
        .await
        .expect("create role");
    (name.clone(), verifier_of(&name).await)
}

async fn verifier_of(role: &str) -> String {
    pg().admin_client()
        .await
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role])
        .await
        .expect("read pg_authid")
        .get(0)
}

async fn change_password(role: &str, password: &str) -> String {
    pg().admin_client()
        .await
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}'"
        ))
        .await
        .expect("alter role");
    verifier_of(role).await
}

impl Pooler {
    /// Writes the config (and auth_file) for `role` with `verifier` and starts sluice on it.
    fn start(source: SecretSource, role: &str, verifier: &str) -> Pooler {
        let dir = tempfile::tempdir().unwrap();
        let mut pooler = Pooler {
            child: Command::new("true").spawn().unwrap(),
            port: common::free_port(),
            dir,
            log: Arc::default(),
        };
        pooler.write(source, role, verifier, 2);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(pooler.config_path())
            .arg("--allow-root")
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stderr = child.stderr.take().unwrap();
        let log = pooler.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        let _ = pooler.child.wait();
        pooler.child = child;
        pooler
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("pooler.toml")
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// (Re)writes the configuration: the role's secret from `source`, `pool_size`.
    fn write(&self, source: SecretSource, role: &str, verifier: &str, pool_size: u32) {
        let auth_file: PathBuf = self.dir.path().join("userlist.txt");
        let (auth_file_line, users) = match source {
            SecretSource::AuthFile => {
                std::fs::write(
                    &auth_file,
                    format!("\"postgres\" \"postgres_pw\"\n\"{role}\" \"{verifier}\"\n"),
                )
                .unwrap();
                (
                    format!("auth_file = \"{}\"\n", auth_file.display()),
                    String::new(),
                )
            }
            SecretSource::Users => (
                String::new(),
                format!("[users.{role}]\npassword = \"{verifier}\"\n"),
            ),
            SecretSource::AuthQuery => (
                "auth_user = \"postgres\"\nauth_cache_ttl = \"1s\"\n".to_string(),
                String::new(),
            ),
        };
        let config = format!(
            "[pooler]\nlisten_port = {port}\nlisten_addr = \"127.0.0.1\"\nunix_socket_dir = \"\"\n\
             auth_type = \"scram-sha-256\"\nadmin_users = [\"postgres\"]\n{auth_file_line}\
             [users.postgres]\npassword = \"postgres_pw\"\n{users}\
             [databases.app]\nhost = \"127.0.0.1\"\nport = {pg_port}\ndbname = \"postgres\"\n\
             pool_size = {pool_size}\n",
            port = self.port,
            pg_port = pg().port(),
        );
        write_atomically(&self.config_path(), &config);
    }

    async fn console(&self) -> tokio_postgres::Client {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password("postgres_pw")
            .dbname("pgbouncer");
        connect_with(cfg).await.expect("console login")
    }

    async fn up(&self) {
        wait_until(Duration::from_secs(10), "sluice accepts logins", || async {
            connect(self.addr(), "postgres", "postgres_pw", "app")
                .await
                .is_ok()
        })
        .await;
    }

    fn reloads_logged(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    }

    /// Reloads the configuration and returns once sluice has applied it.
    async fn reload(&self, how: Reload) {
        match how {
            Reload::Console => {
                self.console().await.simple_query("RELOAD").await.expect("RELOAD");
            }
            Reload::Sighup => {
                let before = self.reloads_logged();
                // SAFETY: kill(2) on the pid of a child this test owns.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
                wait_until(Duration::from_secs(10), "SIGHUP reload applied", || async {
                    self.reloads_logged() > before
                })
                .await;
            }
        }
    }

    async fn reconnect(&self) {
        self.console()
            .await
            .simple_query("RECONNECT")
            .await
            .expect("RECONNECT");
    }

    async fn pool_size(&self) -> String {
        let rows = self.console().await.simple_query("SHOW DATABASES").await.unwrap();
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) if r.get("name") == Some("app") => {
                    r.get("pool_size").map(str::to_string)
                }
                _ => None,
            })
            .expect("app in SHOW DATABASES")
    }
}

/// Replaces `path` in one rename, so a reload never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The backend pid the client's next transaction runs on, and that it ran as `role`.
async fn backend_of(c: &tokio_postgres::Client, role: &str) -> Result<i32, String> {
    let row = c
        .query_one("SELECT pg_backend_pid(), current_user::text", &[])
        .await
        .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| d.message().to_string()))?;
    assert_eq!(row.get::<_, String>(1), role);
    Ok(row.get(0))
}

/// The whole scenario of one secret source through one kind of reload.
async fn pool_keeps_logging_in_across_reloads(source: SecretSource, how: Reload) {
    let (role, verifier) = create_role("first_pw").await;
    let sluice = Pooler::start(source, &role, &verifier);
    sluice.up().await;
    let early = connect(sluice.addr(), &role, "first_pw", "app")
        .await
        .expect("first login");
    let pid0 = backend_of(&early, &role).await.expect("first query");

    // 1. A reload of an unchanged file, then RECONNECT: the client logged in before the reload
    // needs a new server, and nobody has logged in since to teach the pool anything.
    sluice.reload(how).await;
    sluice.reconnect().await;
    let pid1 = backend_of(&early, &role)
        .await
        .expect("a server opened after a reload of an unchanged file");
    assert_ne!(pid0, pid1, "RECONNECT must have replaced the server");

    // 2. A changed pool_size: applied, and the pool still logs in.
    sluice.write(source, &role, &verifier, 3);
    sluice.reload(how).await;
    assert_eq!(sluice.pool_size().await, "3");
    sluice.reconnect().await;
    let pid2 = backend_of(&early, &role)
        .await
        .expect("a server opened after a reload with a new pool_size");
    assert_ne!(pid1, pid2);
    let late = connect(sluice.addr(), &role, "first_pw", "app")
        .await
        .expect("login after the reloads");
    backend_of(&late, &role).await.expect("query of a new login");

    // 3. The password changes in PostgreSQL and in sluice's config: new logins need the new
    // one, and the pool keeps serving the clients it has.
    let new_verifier = change_password(&role, "second_pw").await;
    sluice.write(source, &role, &new_verifier, 3);
    sluice.reload(how).await;
    wait_until(
        Duration::from_secs(10),
        "the new password lets a client in (auth_query's cache expires after 1 s)",
        || async { connect(sluice.addr(), &role, "second_pw", "app").await.is_ok() },
    )
    .await;
    let refused = connect(sluice.addr(), &role, "first_pw", "app")
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|d| d.code().code()),
        Some("28P01"),
        "the old password is refused: {refused}"
    );
    backend_of(&early, &role)
        .await
        .expect("the pool keeps serving an old client");
    let fresh = connect(sluice.addr(), &role, "second_pw", "app")
        .await
        .expect("new password");
    backend_of(&fresh, &role)
        .await
        .expect("query with the new password");
    // New servers log in with what the new password's login taught the pool.
    sluice.reconnect().await;
    backend_of(&early, &role)
        .await
        .expect("after RECONNECT, servers log in with the new password");
    backend_of(&fresh, &role).await.expect("and serve the new client");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_from_auth_file_survives_console_reload() {
    pool_keeps_logging_in_across_reloads(SecretSource::AuthFile, Reload::Console).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_from_auth_file_survives_sighup() {
    pool_keeps_logging_in_across_reloads(SecretSource::AuthFile, Reload::Sighup).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_from_users_table_survives_console_reload() {
    pool_keeps_logging_in_across_reloads(SecretSource::Users, Reload::Console).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_from_users_table_survives_sighup() {
    pool_keeps_logging_in_across_reloads(SecretSource::Users, Reload::Sighup).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_secret_survives_console_reload() {
    pool_keeps_logging_in_across_reloads(SecretSource::AuthQuery, Reload::Console).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_secret_survives_sighup() {
    pool_keeps_logging_in_across_reloads(SecretSource::AuthQuery, Reload::Sighup).await;
}

/// An in-process sluice on a config file, with trust auth and the console for `admin`.
async fn in_process(dir: &Path, text: &str) -> sluice::RunningPooler {
    let path = dir.join("pooler.toml");
    write_atomically(&path, text);
    sluice::start(sluice::Config::load(&path).expect("config"))
        .await
        .expect("sluice starts")
}

fn trust_config(extra_pooler: &str, database: &str) -> String {
    format!(
        "[pooler]\nlisten_port = 0\nunix_socket_dir = \"\"\nauth_type = \"trust\"\n\
         admin_users = [\"admin\"]\n{extra_pooler}\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 1\n{database}\n",
        pg().port()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_whose_tls_files_cannot_be_used_changes_nothing() {
    let pki = common::certs::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls = |key: &Path| {
        format!(
            "client_tls_sslmode = \"prefer\"\nclient_tls_cert_file = \"{}\"\n\
             client_tls_key_file = \"{}\"",
            pki.server_cert.display(),
            key.display()
        )
    };
    let sluice = in_process(dir.path(), &trust_config(&tls(&pki.server_key), "")).await;
    let addr = sluice.tcp_addr();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("sluice_trust")
        .dbname("app");
    let over_tls = || async {
        let c = common::certs::connect_tls(cfg.clone(), &pki.ca).await?;
        c.query_one("SELECT 1", &[])
            .await
            .map(|r| r.get::<_, i32>(0) == 1)
    };
    assert!(over_tls().await.expect("TLS before the reload"));

    // A certificate rotation caught half way: the key file is not there (yet).
    let missing = dir.path().join("rotating.key");
    write_atomically(&dir.path().join("pooler.toml"), &trust_config(&tls(&missing), ""));
    let admin = common::admin_console(addr).await;
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().starts_with("RELOAD failed")),
        "{err}"
    );
    // Nothing changed: new clients still get TLS.
    assert!(over_tls().await.expect("TLS after the refused reload"));
    // Once the file is there, the same reload goes through.
    std::fs::copy(&pki.server_key, &missing).unwrap();
    admin
        .simple_query("RELOAD")
        .await
        .expect("RELOAD with the file in place");
    assert!(over_tls().await.expect("TLS with the rotated files"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_from_session_to_transaction_mode_never_hands_session_state_on() {
    let dir = tempfile::tempdir().unwrap();
    let session = trust_config("pool_mode = \"session\"", "");
    let sluice = in_process(dir.path(), &session).await;
    let addr = sluice.tcp_addr();
    let holder = connect(addr, "sluice_trust", "", "app").await.unwrap();
    holder
        .batch_execute("SET work_mem = '77MB'; SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    write_atomically(
        &dir.path().join("pooler.toml"),
        &trust_config("pool_mode = \"transaction\"", ""),
    );
    common::admin_console(addr)
        .await
        .simple_query("RELOAD")
        .await
        .expect("RELOAD");
    // The session-mode client leaves after the switch; its server must not be pooled as is.
    drop(holder);
    let victim = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let mut errors = 0;
    for _ in 0..5 {
        match victim
            .query_one(
                "SELECT current_setting('work_mem'), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
                &[],
            )
            .await
        {
            Ok(row) => {
                assert_ne!(
                    row.get::<_, String>(0),
                    "77MB",
                    "another client's SET reached the victim"
                );
                assert_eq!(
                    row.get::<_, i64>(1),
                    0,
                    "another client's advisory lock reached the victim"
                );
            }
            Err(_) => errors += 1,
        }
    }
    assert_eq!(errors, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_moves_a_database_replaces_its_servers() {
    let db = pg().create_database("t_reload_moved").await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = in_process(dir.path(), &trust_config("", "dbname = \"postgres\"")).await;
    let addr = sluice.tcp_addr();
    let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
    let current = || async {
        c.query_one("SELECT current_database()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(current().await, "postgres");
    write_atomically(
        &dir.path().join("pooler.toml"),
        &trust_config("", &format!("dbname = \"{db}\"")),
    );
    common::admin_console(addr)
        .await
        .simple_query("RELOAD")
        .await
        .expect("RELOAD");
    assert_eq!(
        current().await,
        db,
        "the idle server of the old database was reused"
    );
}
