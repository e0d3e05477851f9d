//! The unix socket as PgBouncer has it: in /tmp by default, with `unix_socket_mode` and
//! `unix_socket_group` applied to the socket file; a socket another process listens on is left
//! alone.

mod common;

use common::config::PoolerToml;
use common::{connect_with, start_sluice};
use std::os::unix::fs::MetadataExt;

fn config(extra: &str) -> String {
    PoolerToml::trust().set(extra).database("app", None).build()
}

#[tokio::test]
async fn the_default_unix_socket_is_in_tmp_and_serves_clients() {
    let parsed = sluice::Config::from_toml_str(&config(""), "test.toml", None).unwrap();
    assert_eq!(
        parsed.pooler.unix_socket_dir.as_deref(),
        Some(std::path::Path::new("/tmp"))
    );
    // sluice::start, not start_sluice: the harness turns the default socket off.
    let sluice = sluice::start(parsed).await.unwrap();
    let port = sluice.tcp_addr().port();
    let path = format!("/tmp/.s.PGSQL.{port}");
    assert_eq!(sluice.unix_socket_path().unwrap().to_str(), Some(path.as_str()));
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o777, "PgBouncer's default unix_socket_mode");
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path("/tmp")
        .port(port)
        .user("sluice_trust")
        .dbname("app");
    let client = connect_with(cfg).await.expect("login over /tmp's socket");
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    sluice.shutdown().await;
    assert!(
        !std::path::Path::new(&path).exists(),
        "the socket file is removed at exit"
    );
}

#[tokio::test]
async fn unix_socket_mode_and_group_are_applied_to_the_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "unix_socket_dir = {:?}\nunix_socket_mode = \"0660\"\nunix_socket_group = \"nogroup\"",
        dir.path().display().to_string()
    );
    let sluice = start_sluice(&config(&extra)).await;
    let meta = std::fs::metadata(sluice.unix_socket_path().unwrap()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 65534, "owned by the group nogroup");
    sluice.shutdown().await;

    // The TOML integer form, and an empty dir turns the socket off.
    let extra = format!(
        "unix_socket_dir = {:?}\nunix_socket_mode = 0o700",
        dir.path().display().to_string()
    );
    let sluice = start_sluice(&config(&extra)).await;
    let meta = std::fs::metadata(sluice.unix_socket_path().unwrap()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    sluice.shutdown().await;
    let sluice = start_sluice(&config("unix_socket_dir = \"\"")).await;
    assert!(sluice.unix_socket_path().is_none());
    sluice.shutdown().await;
}

#[tokio::test]
async fn unknown_group_and_bad_mode_are_config_errors() {
    let e = sluice::Config::from_toml_str(&config("unix_socket_group = \"no_such_group_x\""), "t.toml", None)
        .unwrap_err();
    assert_eq!(e.key, "pooler.unix_socket_group");
    assert!(e.message.contains("no such group"), "{e}");
    let e =
        sluice::Config::from_toml_str(&config("unix_socket_mode = \"0999\""), "t.toml", None).unwrap_err();
    assert_eq!(e.key, "pooler.unix_socket_mode");
    assert!(e.message.contains("octal"), "{e}");
}

#[tokio::test]
async fn a_socket_another_process_listens_on_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join(format!(".s.PGSQL.{port}"));
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let text = config(&format!(
        "unix_socket_dir = {:?}",
        dir.path().display().to_string()
    ))
    .replace("listen_port = 0", &format!("listen_port = {port}"));
    let parsed = sluice::Config::from_toml_str(&text, "test.toml", None).unwrap();
    let e = sluice::start(parsed).await.err().expect("refused");
    assert!(e.to_string().contains("another process is listening"), "{e}");
    assert!(path.exists(), "the other process's socket file stays");
}
