//! `sluice convert`: Debian's shipped pgbouncer.ini and a realistic ~50-key one (databases with
//! connection strings, users, an %include, lists) convert into configs `sluice check` accepts and
//! sluice serves with; and the PgBouncer keys sluice gained for it (connect_query,
//! query_wait_timeout per user, TCP keepalive, server_round_robin, listen_addr lists) each do
//! what they say.

mod common;

use common::binary::SluiceBinary;
use common::{connect, console_query, pg, start_sluice, wait_until};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `sluice convert` on `ini`: (exit code, stdout, stderr).
fn convert(ini: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("convert")
        .arg(ini)
        .output()
        .expect("run sluice convert");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sluice check` on `toml`: (exit code, stdout and stderr).
fn check(toml: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(toml)
        .output()
        .expect("run sluice check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn debian_shipped_pgbouncer_ini_converts_to_a_valid_config() {
    let ini = Path::new("/etc/pgbouncer/pgbouncer.ini");
    assert!(
        ini.exists(),
        "{} is missing: install Debian's pgbouncer package (scripts/test.sh does as root)",
        ini.display()
    );
    let (code, toml, stderr) = convert(ini);
    assert_eq!(code, 0, "convert failed: {stderr}");
    // Debian's file sets these; they must come through under the same names.
    for key in ["listen_port = 6432", "auth_type = \"md5\"", "auth_file = "] {
        assert!(toml.contains(key), "{key} missing from:\n{toml}");
    }
    // PgBouncer's default pool mode (session) is written out: sluice's own is transaction.
    assert!(toml.contains("pool_mode = \"session\""), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pooler.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, text) = check(&out);
    assert_eq!(
        code, 0,
        "sluice check refused the conversion:\n{text}\n--- toml ---\n{toml}"
    );
}

/// A pgbouncer.ini as a team might run it: 50-odd settings over [databases], [users],
/// [pgbouncer] and an included file, pointing at the test's PostgreSQL on `pg_port`, listening on
/// `port`.
fn realistic_ini(dir: &Path, port: u16) -> std::path::PathBuf {
    let pg_port = pg().port();
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"sluice_md5\" \"md5_pw\"\n\"admin\" \"admin_pw\"\n").unwrap();
    let extra = dir.join("pgbouncer-extra.ini");
    std::fs::write(
        &extra,
        format!(
            "; included by pgbouncer.ini\n\
             [databases]\n\
             reports = host=127.0.0.1 port={pg_port} dbname=app max_db_client_connections=1 application_name=reports\n\
             [pgbouncer]\n\
             server_lifetime = 1800\n\
             server_idle_timeout = 300.5\n\
             tcp_keepalive = 1\n\
             tcp_keepidle = 30\n\
             tcp_keepintvl = 10\n\
             tcp_keepcnt = 5\n\
             tcp_user_timeout = 45000\n"
        ),
    )
    .unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            ";; production pooler\n\
             [databases]\n\
             app = host=127.0.0.1 port={pg_port} dbname=app pool_size=3 min_pool_size=0 reserve_pool=1 \
             connect_query='SET search_path = sluice_conv, public' client_encoding=UTF8 datestyle='ISO, MDY' timezone=UTC\n\
             \"legacy-app\" = host=127.0.0.1 port={pg_port} dbname=postgres pool_mode=session max_db_connections=4 query_wait_timeout=30\n\
             * = host=127.0.0.1 port={pg_port}\n\
             \n\
             [users]\n\
             sluice_md5 = pool_mode=transaction max_user_connections=10 max_user_client_connections=50 query_wait_timeout=20\n\
             reporting = pool_mode=session query_timeout=60\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1, 127.0.0.2\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = md5\n\
             auth_file = {userlist}\n\
             admin_users = admin, postgres\n\
             stats_users = stats, monitoring\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 10\n\
             min_pool_size = 0\n\
             reserve_pool_size = 2\n\
             reserve_pool_timeout = 3\n\
             max_db_connections = 50\n\
             max_user_connections = 50\n\
             server_round_robin = 1\n\
             ignore_startup_parameters = extra_float_digits, options\n\
             application_name_add_host = 1\n\
             stats_period = 30\n\
             max_prepared_statements = 100\n\
             log_connections = 0\n\
             log_disconnections = 1\n\
             log_pooler_errors = 1\n\
             log_stats = 0\n\
             syslog = 1\n\
             syslog_facility = local0\n\
             verbose = 1\n\
             server_reset_query = DISCARD ALL\n\
             server_check_delay = 10\n\
             server_check_query = select 1\n\
             server_connect_timeout = 5\n\
             server_login_retry = 2\n\
             client_login_timeout = 30\n\
             autodb_idle_timeout = 600\n\
             dns_max_ttl = 30\n\
             query_timeout = 0\n\
             query_wait_timeout = 60\n\
             client_idle_timeout = 0\n\
             idle_transaction_timeout = 120\n\
             server_tls_sslmode = prefer\n\
             server_tls_protocols = secure\n\
             pkt_buf = 8192\n\
             listen_backlog = 256\n\
             %include {extra}\n",
            userlist = userlist.display(),
            extra = extra.display(),
        ),
    )
    .unwrap();
    ini
}

#[tokio::test(flavor = "multi_thread")]
async fn a_realistic_pgbouncer_ini_converts_checks_and_serves() {
    // The schema connect_query puts first on the search_path, in the database `app`.
    let app = common::connect(pg().addr(), common::SUPERUSER, common::SUPERUSER_PASSWORD, "app")
        .await
        .unwrap();
    app.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS sluice_conv; GRANT USAGE ON SCHEMA sluice_conv TO PUBLIC;",
    )
    .await
    .unwrap();

    let captured = std::sync::Mutex::new((String::new(), String::new()));
    let sluice = SluiceBinary::spawn(
        |port, dir| {
            let ini = realistic_ini(dir, port);
            let (code, toml, stderr) = convert(&ini);
            assert_eq!(code, 0, "convert failed: {stderr}");
            *captured.lock().unwrap() = (toml.clone(), stderr);
            toml
        },
        |_| {},
    );
    let (toml, warnings) = captured.lock().unwrap().clone();
    let (code, text) = check(&sluice.config);
    assert_eq!(
        code, 0,
        "sluice check refused the conversion:\n{text}\n--- toml ---\n{toml}"
    );

    // Translated under sluice's names and types.
    for line in [
        "admin_users = [\"admin\", \"postgres\"]",
        "listen_addr = \"127.0.0.1, 127.0.0.2\"",
        "server_round_robin = true",
        "tcp_keepidle = \"30s\"",
        "tcp_user_timeout = \"45s\"",
        "server_idle_timeout = \"300.5s\"",
        "reserve_pool_size = 1",
        "connect_query = \"SET search_path = sluice_conv, public\"",
        "datestyle = \"ISO, MDY\"",
        "[databases.legacy-app]",
        "[databases.\"*\"]",
        "query_wait_timeout = \"20s\"",
    ] {
        assert!(toml.contains(line), "{line} missing from:\n{toml}");
    }
    // Kept as comments saying why, and warned about when behaviour changes.
    assert!(toml.contains("syslog = 1: not converted: unsupported"), "{toml}");
    assert!(toml.contains("dns_max_ttl = \"30s\""), "{toml}");
    assert!(
        toml.contains("pkt_buf = 8192: not converted: not needed"),
        "{toml}"
    );
    assert!(
        toml.contains("query_timeout: not converted: unsupported"),
        "{toml}"
    );
    assert!(warnings.contains("syslog: unsupported"), "{warnings}");
    assert!(
        warnings.contains("reporting query_timeout: unsupported"),
        "{warnings}"
    );
    assert!(!warnings.contains("pkt_buf"), "{warnings}");

    sluice_serves_the_converted_config(&sluice).await;
}

async fn sluice_serves_the_converted_config(sluice: &SluiceBinary) {
    let addr = sluice.addr();
    wait_until(
        Duration::from_secs(10),
        "sluice serves the converted config",
        || async {
            match connect(addr, "sluice_md5", "md5_pw", "app").await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await;
    // connect_query ran on every server: three clients in transactions at once hold all three
    // servers of the pool, and each sees the search_path it set.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = connect(addr, "sluice_md5", "md5_pw", "app").await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        clients.push(c);
    }
    let mut pids = std::collections::BTreeSet::new();
    for c in &clients {
        let row = c
            .query_one("SELECT current_setting('search_path'), pg_backend_pid()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "sluice_conv, public");
        pids.insert(row.get::<_, i32>(1));
        assert_eq!(
            c.query_one("SHOW TimeZone", &[])
                .await
                .unwrap()
                .get::<_, String>(0),
            "UTC"
        );
    }
    assert_eq!(pids.len(), 3, "three servers");
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    // max_db_client_connections from a connection string: the second client is refused with
    // PgBouncer's error.
    let _first = connect(addr, "sluice_md5", "md5_pw", "reports").await.unwrap();
    let e = connect(addr, "sluice_md5", "md5_pw", "reports")
        .await
        .unwrap_err();
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("no more connections allowed (max_db_client_connections)"),
        "{e}"
    );
}

#[test]
fn lists_and_quoting_convert_as_pgbouncer_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        "[pgbouncer]\nlisten_addr = *, ::\nadmin_users = alice, bob\nstats_users=carol\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         [databases]\n\"odd \"\"name\"\"\" = host=127.0.0.1 dbname=x connect_query='SELECT ''a b''' pool_mode=statement\n\
         [peers]\n1 = host=127.0.0.1 port=6433 pool_size=4\n2 = host=/tmp/pgb2\n",
    )
    .unwrap();
    let (code, toml, stderr) = convert(&ini);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "listen_addr = \"*, ::\"",
        "admin_users = [\"alice\", \"bob\"]",
        "stats_users = [\"carol\"]",
        "ignore_startup_parameters = [\"extra_float_digits\", \"options\"]",
        "[databases.'odd \"name\"']",
        "connect_query = \"SELECT 'a b'\"",
        "[peers.1]\nhost = \"127.0.0.1\"\nport = 6433",
        "[peers.2]\nhost = \"/tmp/pgb2\"",
    ] {
        assert!(toml.contains(line), "{line} missing from:\n{toml}");
    }
    // pool_mode = statement is kept as a comment, with a warning.
    assert!(
        toml.contains("pool_mode: not converted: pool_mode = statement is unsupported"),
        "{toml}"
    );
    assert!(
        stderr.contains("pool_mode = statement is unsupported"),
        "{stderr}"
    );
    let out = dir.path().join("pooler.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, text) = check(&out);
    assert_eq!(code, 0, "{text}\n{toml}");
}

#[test]
fn unreadable_input_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("bad.ini");
    std::fs::write(&ini, "[databases]\napp = host=x\nother = host=y pool_size=ten\n").unwrap();
    let (code, toml, stderr) = convert(&ini);
    assert_eq!(code, 1, "{toml}");
    assert!(toml.is_empty());
    let at = format!("{}:3: other pool_size: invalid integer \"ten\"", ini.display());
    assert!(stderr.contains(&at), "{stderr}");

    std::fs::write(&ini, "[databases]\napp = host=x bogus=1\n").unwrap();
    let (code, _, stderr) = convert(&ini);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(":2: app bogus: unrecognized connection parameter"),
        "{stderr}"
    );

    std::fs::write(&ini, "[pgbouncer]\n%include /nonexistent/pgb.ini\n").unwrap();
    let (code, _, stderr) = convert(&ini);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(":2: %include: cannot read /nonexistent/pgb.ini"),
        "{stderr}"
    );
}

#[test]
fn the_key_document_is_the_converters_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/pgbouncer-keys.md");
    let doc = std::fs::read_to_string(path).expect("docs/pgbouncer-keys.md");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        // Rewrites the table between the markers from the code.
        let (head, rest) = doc.split_once("-->\n").expect("BEGIN marker");
        let tail = &rest[rest.find("<!-- END KEY TABLE").expect("END marker")..];
        let table = sluice::convert::markdown_table();
        std::fs::write(path, format!("{head}-->\n{}\n{tail}", table.trim())).unwrap();
        return;
    }
    assert!(
        doc.contains(sluice::convert::markdown_table().trim()),
        "docs/pgbouncer-keys.md is out of date: paste the output of sluice::convert::markdown_table() between its markers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_query_survives_the_session_mode_reset_query() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\npool_mode = \"session\"\n[users.sluice_trust]\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 1\n\
         connect_query = \"SET search_path = sluice_reset, public\"\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
        let row = c
            .query_one("SELECT current_setting('search_path'), pg_backend_pid()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "sluice_reset, public");
        servers.push(row.get::<_, i32>(1));
        drop(c);
        // The server goes back through DISCARD ALL before the next session gets it.
        wait_until(Duration::from_secs(5), "the server is idle again", || async {
            sluice
                .shared()
                .pools
                .all()
                .iter()
                .all(|p| p.server_counts().idle == 1)
        })
        .await;
    }
    assert_eq!(
        servers[0], servers[1],
        "the second session reused the first one's server"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_connect_query_fails_the_login_clearly() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\n[users.sluice_trust]\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\nconnect_query = \"SELECT no_such_function()\"\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let e = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap_err();
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("connect_query failed"), "{e}");
    assert!(message.contains("no_such_function"), "{e}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_short_query_wait_timeout_fails_fast_while_another_user_waits() {
    // One server for the database, whoever asks (max_db_connections = 1, forced user).
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nquery_wait_timeout = \"20s\"\n\
         [users.holder]\n[users.patient]\n[users.hasty]\nquery_wait_timeout = \"1s\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"sluice_trust\"\nmax_db_connections = 1\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addr = sluice.tcp_addr();
    // Logged in first (a login may need the server itself), then the holder takes it.
    let holder = connect(addr, "holder", "", "app").await.unwrap();
    let patient = connect(addr, "patient", "", "app").await.unwrap();
    let hasty = connect(addr, "hasty", "", "app").await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let patient_query = tokio::spawn(async move { patient.simple_query("SELECT 2").await.map(|_| ()) });
    let started = Instant::now();
    let e = hasty.simple_query("SELECT 3").await.unwrap_err();
    let waited = started.elapsed();
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("query_wait_timeout"), "{e:?}");
    assert!(
        waited < Duration::from_secs(5),
        "hasty waited {waited:?}, not its own 1s"
    );
    // The patient client is still waiting (the global 20s), and gets the server once it is free.
    assert!(
        !patient_query.is_finished(),
        "the patient client gave up with the hasty one"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), patient_query).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "patient client: {done:?}");
    sluice.shutdown().await;
}

/// TCP keepalive options of one socket, read back with getsockopt.
#[derive(Debug, PartialEq)]
struct Keepalive {
    on: i32,
    idle: i32,
    interval: i32,
    count: i32,
    user_timeout_ms: i32,
}

fn int_opt(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    v
}

fn keepalive_of(fd: i32) -> Keepalive {
    Keepalive {
        on: int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        idle: int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        interval: int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
        count: int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        user_timeout_ms: int_opt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    }
}

/// (local port, peer port) of a TCP socket fd, None for anything else.
fn ports_of(fd: i32) -> Option<(u16, u16)> {
    let port = |peer: bool| {
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let p = (&mut addr as *mut libc::sockaddr_storage).cast();
        // SAFETY: the kernel writes at most `len` bytes of address into `addr`.
        let rc = unsafe {
            if peer {
                libc::getpeername(fd, p, &mut len)
            } else {
                libc::getsockname(fd, p, &mut len)
            }
        };
        if rc != 0 || i32::from(addr.ss_family) != libc::AF_INET {
            return None;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin: libc::sockaddr_in = unsafe { *(&addr as *const libc::sockaddr_storage).cast() };
        Some(u16::from_be(sin.sin_port))
    };
    Some((port(false)?, port(true)?))
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_keepalive_keys_reach_client_and_server_sockets() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\ntcp_keepalive = true\ntcp_keepidle = \"37s\"\n\
         tcp_keepintvl = \"11s\"\ntcp_keepcnt = 4\ntcp_user_timeout = 7000\n[users.sluice_trust]\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let port = sluice.tcp_addr().port();
    let client = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let server_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // sluice runs in this process: its sockets are among this process's descriptors.
    let expected = Keepalive {
        on: 1,
        idle: 37,
        interval: 11,
        count: 4,
        user_timeout_ms: 7000,
    };
    let mut accepted = Vec::new();
    let mut to_server = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        match ports_of(fd) {
            Some((local, _)) if local == port => accepted.push(keepalive_of(fd)),
            Some((_, peer)) if peer == pg().port() => to_server.push(keepalive_of(fd)),
            _ => {}
        }
    }
    assert!(
        !accepted.is_empty() && !to_server.is_empty(),
        "sockets not found (server {server_pid})"
    );
    assert!(
        accepted.iter().all(|k| *k == expected),
        "client side: {accepted:?}"
    );
    assert!(
        to_server.contains(&expected),
        "no server socket with the options: {to_server:?}"
    );
    client.batch_execute("COMMIT").await.unwrap();
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_round_robin_spreads_transactions_over_the_pools_servers() {
    for (round_robin, want_several) in [(true, true), (false, false)] {
        let text = format!(
            "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\nserver_round_robin = {round_robin}\n\
             [users.sluice_trust]\n[databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 3\n",
            pg().port()
        );
        let sluice = start_sluice(&text).await;
        let addr = sluice.tcp_addr();
        // Three servers open: three clients in transactions at once.
        let mut clients = Vec::new();
        for _ in 0..3 {
            let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
            c.batch_execute("BEGIN; SELECT 1").await.unwrap();
            clients.push(c);
        }
        for c in &clients {
            c.batch_execute("COMMIT").await.unwrap();
        }
        // A client may see its COMMIT before its session has given the server back.
        wait_until(Duration::from_secs(5), "three idle servers", || async {
            sluice
                .shared()
                .pools
                .all()
                .iter()
                .all(|p| p.server_counts().idle == 3)
        })
        .await;
        let one = &clients[0];
        let mut pids = std::collections::BTreeSet::new();
        // Simple queries: one transaction, one checkout each. (An extended-protocol query_one
        // is a prepare, an execute and a fire-and-forget Close, whose checkouts vary with
        // timing, so which servers its executes land on would not show the order.)
        for _ in 0..6 {
            let rows = console_query(one, "SELECT pg_backend_pid() AS pid").await;
            pids.insert(rows[0]["pid"].clone());
        }
        if want_several {
            assert_eq!(pids.len(), 3, "round robin used servers {pids:?}");
        } else {
            assert_eq!(pids.len(), 1, "last-in-first-out used servers {pids:?}");
        }
        drop(clients);
        sluice.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_addr_lists_bind_every_address() {
    let text = format!(
        "[pooler]\nlisten_port = 0\nlisten_addr = \"127.0.0.1, 127.0.0.2\"\nauth_type = \"trust\"\n\
         [users.sluice_trust]\n[databases.app]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg().port()
    );
    let sluice = start_sluice(&text).await;
    let addrs = sluice.tcp_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0].port(), addrs[1].port(), "one port for every address");
    for addr in addrs {
        let c = connect(addr, "sluice_trust", "", "app").await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_fast_close_ends_outdated_sessions_between_transactions_only() {
    for fast_close in [true, false] {
        let text = format!(
            "[pooler]\nlisten_port = 0\nauth_type = \"trust\"\npool_mode = \"session\"\n\
             server_fast_close = {fast_close}\nadmin_users = [\"admin\"]\n\
             [users.sluice_trust]\n[users.admin]\n[databases.app]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg().port()
        );
        let sluice = start_sluice(&text).await;
        let addr = sluice.tcp_addr();
        let idle = connect(addr, "sluice_trust", "", "app").await.unwrap();
        let first = pid(&idle).await.unwrap();
        // A session inside a transaction when RECONNECT comes: never interrupted.
        let busy = std::sync::Arc::new(connect(addr, "sluice_trust", "", "app").await.unwrap());
        busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let console = common::admin_console(addr).await;
        console.simple_query("RECONNECT app").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        busy.simple_query("SELECT 2").await.unwrap();
        busy.batch_execute("COMMIT").await.unwrap();
        if fast_close {
            // The idle session was ended (its server closed), with the reason.
            let e = pid(&idle).await.unwrap_err();
            let message = e.as_db_error().map(|d| d.message().to_string());
            assert!(
                e.is_closed()
                    || message
                        .as_deref()
                        .is_some_and(|m| m.contains("server_fast_close")),
                "{e:?}"
            );
            // The one in a transaction goes once the transaction is over.
            wait_until(
                Duration::from_secs(5),
                "the busy session ends after COMMIT",
                || {
                    let busy = busy.clone();
                    async move { busy.simple_query("SELECT 3").await.is_err() }
                },
            )
            .await;
        } else {
            // Without it, the session keeps its (outdated) server until it ends.
            assert_eq!(pid(&idle).await.unwrap(), first);
            busy.simple_query("SELECT 3").await.unwrap();
        }
        drop((idle, busy, console));
        sluice.shutdown().await;
    }
}

/// The backend pid of the server a client is on.
async fn pid(c: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .map(|r| r.get::<_, i32>(0))
}

#[test]
fn the_new_keys_are_validated_with_file_line_and_key() {
    let cases = [
        (
            "[pooler]\ntcp_keepcnt = 500\n",
            2,
            "pooler.tcp_keepcnt",
            "at most 127",
        ),
        (
            "[pooler]\ntcp_keepidle = \"1.5s\"\n",
            2,
            "pooler.tcp_keepidle",
            "whole seconds",
        ),
        (
            "[pooler]\nlisten_addr = \"*, db.example\"\n",
            2,
            "pooler.listen_addr",
            "db.example",
        ),
        (
            "[databases.app]\nconnect_query = \"\"\n",
            2,
            "databases.app.connect_query",
            "must not be empty",
        ),
        (
            "[users.u]\nquery_wait_timeout = \"0\"\n",
            2,
            "users.u.query_wait_timeout",
            "greater than zero",
        ),
        (
            "[databases.app]\nquery_wait_timeout = \"soon\"\n",
            2,
            "databases.app.query_wait_timeout",
            "invalid duration",
        ),
        (
            "[pooler]\nserver_round_robin = 1\n",
            2,
            "pooler.server_round_robin",
            "bool",
        ),
        (
            "[pooler]\ntcp_user_timeout = -5\n",
            2,
            "pooler.tcp_user_timeout",
            "negative",
        ),
    ];
    for (text, line, key, words) in cases {
        let e = sluice::Config::from_toml_str(text, "pooler.toml", None).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("pooler.toml", line, key),
            "{e}"
        );
        assert!(e.message.contains(words), "{e}");
    }
}

#[test]
fn query_wait_timeout_is_the_users_then_the_databases_then_the_global_one() {
    let text = "[pooler]\nquery_wait_timeout = \"60s\"\n\
                [users.quick]\nquery_wait_timeout = \"2s\"\n[users.plain]\n\
                [databases.slow]\nquery_wait_timeout = \"30s\"\n[databases.plain]\n";
    let c = sluice::Config::from_toml_str(text, "pooler.toml", None).unwrap();
    let qwt = |db: &str, user: &str| {
        let db = c.database(db).unwrap();
        c.effective(db, user).query_wait_timeout
    };
    assert_eq!(qwt("slow", "quick"), Duration::from_secs(2));
    assert_eq!(qwt("slow", "plain"), Duration::from_secs(30));
    assert_eq!(qwt("plain", "plain"), Duration::from_secs(60));
    assert_eq!(qwt("plain", "quick"), Duration::from_secs(2));
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 300, ..Default::default() })]

    /// Whatever the file holds, the converter answers with TOML that parses or an error naming
    /// the file; it never panics.
    #[test]
    fn any_input_converts_to_valid_toml_or_a_located_error(
        lines in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::string::string_regex("\\[(pgbouncer|databases|users|peers|x)\\]").unwrap(),
                proptest::string::string_regex("[a-z_\"*#; ]{0,12} ?= ?[a-z0-9_=' ,.\"*:-]{0,30}").unwrap(),
                proptest::string::string_regex("[ -~]{0,40}").unwrap(),
            ],
            0..12,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("p.ini");
        std::fs::write(&ini, lines.join("\n")).unwrap();
        match sluice::convert::convert_file(&ini) {
            Ok(c) => {
                let parsed = c.toml.parse::<toml::Table>();
                proptest::prop_assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), c.toml);
            }
            Err(e) => proptest::prop_assert!(e.file.ends_with("p.ini") || e.file.contains('/'), "{e}"),
        }
    }
}
