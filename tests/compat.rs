//! Real-client compatibility suite: psycopg2, psycopg 3, asyncpg, SQLAlchemy 2 and Django, each
//! running its pytest file in `tests/compat/` through an in-process sluice in transaction mode
//! with a pool of 4 servers, smaller than every scenario's client concurrency.
//!
//! The Python side runs in a virtualenv that `tests/compat/setup-venv.sh` creates (or refreshes
//! when `tests/compat/requirements.txt` changed) under `$CARGO_TARGET_DIR/compat-venv`; each test
//! here calls it first, so a plain `cargo test` works. One library: `cargo test --test compat
//! asyncpg`.

mod common;

use common::config::PoolerToml;
use common::{pg, start_sluice};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Servers per pool: smaller than any scenario's client concurrency.
const POOL_SIZE: u32 = 4;
/// How long one library's pytest run may take before the test fails.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

const USER: &str = "sluice_scram";
const PASSWORD: &str = "scram_pw";
const ADMIN: &str = "compat_admin";
const ADMIN_PASSWORD: &str = "compat_admin_pw";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv, created or refreshed once per test process by `setup-venv.sh`.
async fn venv() -> &'static Path {
    static VENV: OnceCell<PathBuf> = OnceCell::const_new();
    VENV.get_or_init(|| async {
        let root = repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"));
        let venv = root.join(target).join("compat-venv");
        let out = tokio::process::Command::new("bash")
            .arg(root.join("tests/compat/setup-venv.sh"))
            .env("SLUICE_COMPAT_VENV", &venv)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run tests/compat/setup-venv.sh");
        assert!(
            out.status.success(),
            "tests/compat/setup-venv.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        venv
    })
    .await
}

/// Transaction mode, SCRAM, a pool of [`POOL_SIZE`] in front of `db`, and a console user. The
/// suites open 100 connections at once from one address (many application processes on one
/// host), which max_logins_per_address's default of 100 in progress would refuse at the edge.
fn config(db: &str) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("max_client_conn = 400\nmax_logins_per_address = 1000\nquery_wait_timeout = \"60s\"")
        .set(&format!("admin_users = [\"{ADMIN}\"]"))
        .user_password(USER, PASSWORD)
        .user_password(ADMIN, ADMIN_PASSWORD)
        .database(db, Some(POOL_SIZE))
        .build()
}

/// Creates database `db`, starts sluice in front of it and runs `tests/compat/<file>` with pytest;
/// panics with pytest's whole output unless every test passed.
async fn run_pytest(db: &str, file: &str) {
    run_pytest_with(db, file, config).await;
}

/// [`run_pytest`] with sluice's config made by `config` from the database's name.
async fn run_pytest_with(db: &str, file: &str, config: fn(&str) -> String) {
    let venv = venv().await;
    let db = pg().create_database(db).await;
    let sluice = start_sluice(&config(&db)).await;
    let addr = sluice.tcp_addr();
    let compat_dir = repo_root().join("tests/compat");
    let child = tokio::process::Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfExX", file])
        .current_dir(&compat_dir)
        .env("SLUICE_HOST", addr.ip().to_string())
        .env("SLUICE_PORT", addr.port().to_string())
        .env("SLUICE_USER", USER)
        .env("SLUICE_PASSWORD", PASSWORD)
        .env("SLUICE_DB", &db)
        .env("SLUICE_ADMIN_USER", ADMIN)
        .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SLUICE_POOL_SIZE", POOL_SIZE.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pytest");
    let out = tokio::time::timeout(PYTEST_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pytest {file} did not finish within {PYTEST_TIMEOUT:?}"))
        .expect("wait for pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pytest {file} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Shown with --nocapture (PYTEST_ADDOPTS=-vv lists every scenario).
    println!("{file}:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_threads_transactions_cursors_and_copy() {
    run_pytest("compat_psycopg2", "test_psycopg2.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_prepare_threshold_zero_and_pipeline_mode() {
    run_pytest("compat_psycopg3", "test_psycopg3.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_with_psycopg3_notifies_and_asyncpg_add_listener() {
    run_pytest("compat_listen", "test_listen_notify.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_default_statement_cache_with_100_concurrent_tasks() {
    run_pytest("compat_asyncpg", "test_asyncpg.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_orm_with_nullpool_and_queuepool_pre_ping() {
    run_pytest("compat_sqlalchemy", "test_sqlalchemy.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_migrate_crud_atomic_select_for_update_bulk_create() {
    run_pytest("compat_django", "test_django.py").await;
}

/// The leaky-neighbour pool of issue 16: fair shares and reclaim on, a shorter wait.
fn leaky_neighbour_config(db: &str) -> String {
    PoolerToml::new("scram-sha-256")
        .pool_mode("transaction")
        .set("max_client_conn = 400\nmax_logins_per_address = 1000\nquery_wait_timeout = \"5s\"")
        .set("max_pool_share = 0.5\nidle_transaction_reclaim_timeout = \"1s\"")
        .set(&format!("admin_users = [\"{ADMIN}\"]"))
        .user_password(USER, PASSWORD)
        .user_password(ADMIN, ADMIN_PASSWORD)
        .database(db, Some(POOL_SIZE))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_leaker_is_reclaimed_while_a_psycopg2_app_runs_without_errors() {
    run_pytest_with(
        "compat_leaky_neighbour",
        "test_leaky_neighbour.py",
        leaky_neighbour_config,
    )
    .await;
}
