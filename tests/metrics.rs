//! The Prometheus endpoint through real clients: the series pgbouncer_exporter publishes, with
//! values that agree with the admin console; sluice's histograms and counters; /health through a
//! graceful shutdown; garbage requests; and no endpoint without `[metrics]`.

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, pg, start_sluice, wait_until};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

fn config(extra: &str) -> String {
    PoolerToml::trust()
        .admin()
        .set("max_client_conn = 77\nstats_period = \"1s\"")
        .user("admin")
        .user("sluice_trust")
        .database("app", Some(3))
        .tail(extra)
        .build()
}

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// Sends raw bytes as a request; returns (status, body).
async fn request(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to the endpoint");
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read the answer");
    let text = String::from_utf8(out).expect("utf-8 answer");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
}

/// One sample of the text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format: `name{k="v",...} value` lines; `# TYPE` lines into `types`.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line:?}"));
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "label value quoted in {line:?}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(o) => val.push(o),
                                None => panic!("dangling escape in {line:?}"),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key.trim().to_string(), val);
                }
                (name.to_string(), labels)
            }
        };
        samples.push(Sample { name, labels, value });
    }
    (samples, types)
}

/// The value of the one sample named `name` whose labels include `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}{with:?}: {found:?}");
    found[0].value
}

async fn scrape(addr: SocketAddr) -> (Vec<Sample>, HashMap<String, String>) {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

async fn console(addr: SocketAddr) -> tokio_postgres::Client {
    common::admin_console(addr).await
}

async fn show(c: &tokio_postgres::Client, cmd: &str) -> Vec<HashMap<String, String>> {
    c.simple_query(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn pool_row<'a>(rows: &'a [HashMap<String, String>], db: &str, user: &str) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r["database"] == db && r["user"] == user)
        .unwrap_or_else(|| panic!("no pool {db}/{user} in {rows:?}"))
}

fn col(row: &HashMap<String, String>, name: &str) -> f64 {
    row[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name} = {:?}", row[name]))
}

#[tokio::test(flavor = "multi_thread")]
async fn series_agree_with_the_console() {
    let sluice = start_sluice(&config(METRICS)).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    let admin = console(sluice.tcp_addr()).await;

    // One client holds a server in an open transaction; another runs short queries.
    let holder = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let worker = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    const QUERIES: usize = 12;
    for _ in 0..QUERIES {
        worker.simple_query("SELECT 1").await.unwrap();
    }
    // Wait until the worker's server is back in the pool, so nothing moves while we compare.
    wait_until(Duration::from_secs(5), "one server active, one idle", || async {
        let p = show(&admin, "SHOW POOLS").await;
        let r = pool_row(&p, "app", "sluice_trust");
        r["sv_active"] == "1" && r["sv_idle"] == "1"
    })
    .await;

    let (samples, types) = scrape(addr).await;
    let pools = show(&admin, "SHOW POOLS").await;
    let row = pool_row(&pools, "app", "sluice_trust");
    let pool = [("database", "app"), ("user", "sluice_trust")];
    for (metric, column) in [
        ("client_active_connections", "cl_active"),
        ("client_waiting_connections", "cl_waiting"),
        ("client_active_cancel_connections", "cl_active_cancel_req"),
        ("client_waiting_cancel_connections", "cl_waiting_cancel_req"),
        ("server_active_connections", "sv_active"),
        ("server_active_cancel_connections", "sv_active_cancel"),
        ("server_being_canceled_connections", "sv_being_canceled"),
        ("server_idle_connections", "sv_idle"),
        ("server_used_connections", "sv_used"),
        ("server_testing_connections", "sv_tested"),
        ("server_login_connections", "sv_login"),
        ("client_maxwait_seconds", "maxwait"),
    ] {
        let name = format!("pgbouncer_pools_{metric}");
        assert_eq!(
            value(&samples, &name, &pool),
            col(row, column),
            "{name} vs {column}"
        );
        assert_eq!(types.get(&name).map(String::as_str), Some("gauge"), "{name}");
    }
    assert_eq!(
        value(&samples, "pgbouncer_pools_client_active_connections", &pool),
        2.0
    );

    // Counters per database, as SHOW STATS_TOTALS has them (seconds where it has microseconds).
    let totals = show(&admin, "SHOW STATS_TOTALS").await;
    let t = totals
        .iter()
        .find(|r| r["database"] == "app")
        .expect("app totals");
    let db = [("database", "app")];
    let queries = value(&samples, "pgbouncer_stats_totals_queries_pooled_total", &db);
    assert!(queries >= QUERIES as f64, "queries_pooled_total {queries}");
    assert!(
        queries <= col(t, "query_count"),
        "{queries} > console {}",
        t["query_count"]
    );
    for (metric, column, scale) in [
        ("sql_transactions_pooled_total", "xact_count", 1.0),
        ("received_bytes_total", "bytes_received", 1.0),
        ("sent_bytes_total", "bytes_sent", 1.0),
        ("server_assignments_total", "server_assignment_count", 1.0),
        ("queries_duration_seconds_total", "query_time", 1e-6),
        ("server_in_transaction_seconds_total", "xact_time", 1e-6),
        ("client_wait_seconds_total", "wait_time", 1e-6),
    ] {
        let name = format!("pgbouncer_stats_totals_{metric}");
        let v = value(&samples, &name, &db);
        assert!(
            v <= col(t, column) * scale + 1e-9,
            "{name} {v} vs console {column} {}",
            t[column]
        );
        assert_eq!(types.get(&name).map(String::as_str), Some("counter"), "{name}");
    }
    assert!(
        value(
            &samples,
            "pgbouncer_stats_totals_sql_transactions_pooled_total",
            &db
        ) >= QUERIES as f64
    );
    for name in ["client_parses_total", "server_parses_total", "binds_total"] {
        value(&samples, &format!("pgbouncer_stats_totals_{name}"), &db);
    }

    // SHOW DATABASES, LISTS and CONFIG.
    let dbs = show(&admin, "SHOW DATABASES").await;
    let d = dbs.iter().find(|r| r["name"] == "app").unwrap();
    let port = pg().port().to_string();
    let dl = [
        ("name", "app"),
        ("host", "127.0.0.1"),
        ("port", port.as_str()),
        ("database", "app"),
        ("force_user", ""),
        ("pool_mode", ""),
    ];
    assert_eq!(value(&samples, "pgbouncer_databases_pool_size", &dl), 3.0);
    for (metric, column) in [
        ("pool_size", "pool_size"),
        ("reserve_pool", "reserve_pool_size"),
        ("max_connections", "max_connections"),
        ("current_connections", "current_connections"),
        ("paused", "paused"),
        ("disabled", "disabled"),
    ] {
        let name = format!("pgbouncer_databases_{metric}");
        assert_eq!(value(&samples, &name, &dl), col(d, column), "{name}");
    }
    let lists = show(&admin, "SHOW LISTS").await;
    let item = |l: &str| col(lists.iter().find(|r| r["list"] == l).unwrap(), "items");
    for (list, name) in [
        ("databases", "pgbouncer_databases"),
        ("users", "pgbouncer_users"),
        ("pools", "pgbouncer_pools"),
        ("used_clients", "pgbouncer_used_clients"),
        ("used_servers", "pgbouncer_used_servers"),
        ("free_clients", "pgbouncer_free_clients"),
    ] {
        assert_eq!(value(&samples, name, &[]), item(list), "{name}");
    }
    assert_eq!(
        value(&samples, "pgbouncer_config_max_client_connections", &[]),
        77.0
    );
    value(&samples, "pgbouncer_config_max_user_connections", &[]);
    assert_eq!(value(&samples, "pgbouncer_up", &[]), 1.0);
    let version = samples
        .iter()
        .find(|s| s.name == "pgbouncer_version_info")
        .expect("version_info");
    let shown = show(&admin, "SHOW VERSION").await;
    assert_eq!(version.labels["version"], shown[0]["version"], "{version:?}");
    assert_eq!(
        value(
            &samples,
            "sluice_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let clients = show(&admin, "SHOW CLIENTS").await;
    for state in ["active", "idle"] {
        let rows = clients
            .iter()
            .filter(|r| r["database"] == "app" && r["state"] == state)
            .count();
        let series = samples
            .iter()
            .filter(|s| s.name == "pgbouncer_client_connections")
            .filter(|s| s.labels["database"] == "app" && s.labels["state"] == state)
            .map(|s| s.value)
            .sum::<f64>();
        assert_eq!(series, rows as f64, "pgbouncer_client_connections state {state}");
    }

    // sluice's own: bucketed histograms per pool, and event counters.
    for h in [
        "sluice_checkout_wait_seconds",
        "sluice_transaction_duration_seconds",
        "sluice_query_duration_seconds",
    ] {
        assert_eq!(types.get(h).map(String::as_str), Some("histogram"), "{h}");
        let count = value(&samples, &format!("{h}_count"), &pool);
        assert!(count >= 1.0, "{h}_count {count}");
        let inf = value(
            &samples,
            &format!("{h}_bucket"),
            &[pool[0], pool[1], ("le", "+Inf")],
        );
        assert_eq!(inf, count, "{h}: +Inf bucket");
        assert!(value(&samples, &format!("{h}_sum"), &pool) >= 0.0);
        let buckets = samples.iter().filter(|s| s.name == format!("{h}_bucket")).count();
        assert!(buckets > 5, "{h}: {buckets} buckets");
    }
    assert!(value(&samples, "sluice_query_duration_seconds_count", &pool) >= QUERIES as f64);
    assert!(value(&samples, "sluice_server_connects_total", &[]) >= 2.0);
    assert_eq!(value(&samples, "sluice_server_connect_failures_total", &[]), 0.0);
    assert_eq!(value(&samples, "sluice_query_wait_timeouts_total", &[]), 0.0);
    for reason in ["lifetime", "idle_timeout", "reconnect", "check_failed", "dead"] {
        value(&samples, "sluice_server_recycled_total", &[("reason", reason)]);
    }
    value(&samples, "sluice_abandoned_transactions_total", &[]);

    // RECONNECT closes the idle server: counted as recycled for that reason.
    admin.simple_query("RECONNECT app").await.unwrap();
    let (samples, _) = scrape(addr).await;
    assert!(
        value(
            &samples,
            "sluice_server_recycled_total",
            &[("reason", "reconnect")]
        ) >= 1.0
    );

    holder.batch_execute("COMMIT").await.unwrap();
    drop((holder, worker, admin));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_lifecycle_and_garbage_gets_errors() {
    let sluice = start_sluice(&config(METRICS)).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    assert_eq!(get(addr, "/health").await, (200, "ok".to_string()));

    assert_eq!(request(addr, b"\x00\x01\xff garbage\r\n\r\n").await.0, 400);
    assert_eq!(request(addr, b"GET /metrics\r\n\r\n").await.0, 400);
    assert_eq!(request(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.0, 405);
    assert_eq!(get(addr, "/nowhere").await.0, 404);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert_eq!(request(addr, &huge).await.0, 431);
    // A client that connects and says nothing does not block others.
    let _silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(addr, "/health").await.0, 200);
    assert_eq!(get(addr, "/metrics?x=1").await.0, 200);

    // While draining for clients, the pooler accepts nobody new: /health says so.
    let client = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let admin = console(sluice.tcp_addr()).await;
    admin.simple_query("SHUTDOWN WAIT_FOR_CLIENTS").await.unwrap();
    let (status, _) = get(addr, "/health").await;
    assert_eq!(status, 503);
    assert_eq!(
        get(addr, "/metrics").await.0,
        200,
        "metrics still served while draining"
    );
    drop((client, admin));
    tokio::time::timeout(Duration::from_secs(10), sluice.exited())
        .await
        .expect("exits once its clients left");
    sluice.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_metrics_table_no_endpoint() {
    let sluice = start_sluice(&config("")).await;
    assert!(sluice.metrics_addr().is_none());
    assert!(sluice.shared().metrics.is_none());
    let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    sluice.shutdown().await;

    // An empty [metrics] table is allowed and also means off.
    let sluice = start_sluice(&config("[metrics]\n")).await;
    assert!(sluice.metrics_addr().is_none());
    sluice.shutdown().await;
}

#[test]
fn metrics_config_errors_are_located() {
    let load = |t: &str| sluice::Config::from_toml_str(t, "m.toml", None);
    let e = load("[pooler]\n[metrics]\nlisten = \"localhost\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (3, 1, "metrics.listen"),
        "{e}"
    );
    assert!(e.message.contains("socket address"), "{e}");
    let e = load("[metrics]\nlisen = \"127.0.0.1:9127\"\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "metrics.lisen"), "{e}");
    assert!(e.message.contains("did you mean \"listen\""), "{e}");
    let e = load("[metrics]\nlisten = 9127\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    let c = load("[metrics]\nlisten = \"127.0.0.1:9127\"\n").unwrap();
    assert_eq!(
        c.metrics.unwrap().listen_addr(),
        Some("127.0.0.1:9127".parse().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leaks_appear_in_the_leak_series() {
    let toml = config(METRICS).replace(
        "stats_period = \"1s\"\n",
        "stats_period = \"1s\"\nleak_idle_in_transaction_threshold = \"1s\"\n",
    );
    let sluice = start_sluice(&toml).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    let mut leaky = RawClient::login_trust(
        sluice.tcp_addr(),
        &[
            ("user", "sluice_trust"),
            ("database", "app"),
            ("application_name", "leaky_worker"),
        ],
    )
    .await;
    leaky.query("BEGIN; SELECT 1").await;
    leaky.read_until(b'Z').await;
    let current = [
        ("kind", "idle_in_transaction"),
        ("application_name", "leaky_worker"),
    ];
    wait_until(
        Duration::from_secs(5),
        "the leak in sluice_leaks_current",
        || async {
            let (samples, _) = scrape(addr).await;
            samples.iter().any(|s| {
                s.name == "sluice_leaks_current"
                    && current.iter().all(|(k, v)| s.labels[*k] == *v)
                    && s.value == 1.0
            })
        },
    )
    .await;
    let (samples, types) = scrape(addr).await;
    assert_eq!(value(&samples, "sluice_leaks_total", &current), 1.0);
    assert_eq!(
        types.get("sluice_leaks_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("sluice_leaks_current").map(String::as_str),
        Some("gauge")
    );

    // The client vanishes mid-transaction (no Terminate): abandoned, and no longer a suspect.
    drop(leaky);
    wait_until(
        Duration::from_secs(5),
        "abandoned counted, suspect gone",
        || async {
            let (samples, _) = scrape(addr).await;
            value(&samples, "sluice_abandoned_transactions_total", &[]) >= 1.0
                && value(&samples, "sluice_leaks_current", &current) == 0.0
        },
    )
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_timeouts_and_connect_failures_are_counted() {
    let toml = config(METRICS).replace("pool_size = 3", "pool_size = 1").replace(
        "stats_period = \"1s\"\n",
        "stats_period = \"1s\"\nquery_wait_timeout = \"300ms\"\n",
    ) + "[databases.nowhere]\nhost = \"127.0.0.1\"\nport = 1\ndbname = \"app\"\n";
    let sluice = start_sluice(&toml).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    let holder = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
        .await
        .unwrap();
    let err = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("no server within 300ms");
    let db = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(db.contains("query_wait_timeout"), "{err:?}");
    let failing = connect(sluice.tcp_addr(), "sluice_trust", "", "nowhere").await;
    if let Ok(c) = failing {
        assert!(c.simple_query("SELECT 1").await.is_err());
    }
    let (samples, _) = scrape(addr).await;
    assert_eq!(value(&samples, "sluice_query_wait_timeouts_total", &[]), 1.0);
    assert!(value(&samples, "sluice_server_connect_failures_total", &[]) >= 1.0);
    assert_eq!(value(&samples, "sluice_server_connects_total", &[]), 1.0);
    holder.batch_execute("COMMIT").await.unwrap();
    sluice.shutdown().await;
}

/// Times one GET of `path` (a fresh connection each time).
async fn timed_get(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let started = std::time::Instant::now();
    let (status, _) = get(addr, path).await;
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_answered_while_a_thousand_idle_sockets_are_held() {
    assert!(
        common::raise_fd_limit() >= 4000,
        "the test needs 4000 descriptors"
    );
    let sluice = start_sluice(&config(METRICS)).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    // 1,000 sockets that never finish a request: half silent, half a slowloris that sent
    // part of a request head.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(addr).await.expect("connect an idle socket");
        if i % 2 == 1 {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        idle.push(s);
    }
    // Let the endpoint accept them all before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut times = Vec::new();
    for _ in 0..9 {
        let (status, took) = timed_get(addr, "/health").await;
        assert_eq!(status, 200);
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!("/health with 1,000 idle sockets held: median {median:?}, all {times:?}");
    assert!(
        median < Duration::from_millis(100),
        "/health median {median:?} with 1,000 idle sockets held (all: {times:?})"
    );
    assert!(
        times[times.len() - 1] < Duration::from_secs(1),
        "slowest /health {times:?}"
    );
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("pgbouncer_up"), "metrics body: {body}");

    // The idle sockets are closed after the header timeout (5 s), not held for good.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    for s in idle.iter_mut().take(10) {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        let r = tokio::time::timeout(left, s.read(&mut buf)).await;
        assert!(
            r.is_ok(),
            "an idle socket still open after {:?}",
            started.elapsed()
        );
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_are_closed_at_once_and_the_endpoint_recovers() {
    assert!(
        common::raise_fd_limit() >= 10_000,
        "the test needs 10,000 descriptors"
    );
    let sluice = start_sluice(&config(METRICS)).await;
    let addr = sluice.metrics_addr().expect("metrics endpoint bound");
    // 4,096 idle sockets fill the endpoint's connection limit.
    let mut idle = Vec::new();
    for _ in 0..4096 {
        idle.push(TcpStream::connect(addr).await.expect("connect an idle socket"));
    }
    // One more is closed as soon as it is accepted, instead of waiting behind them.
    let mut buf = [0u8; 64];
    let mut closed_at_once = false;
    for _ in 0..20 {
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) if started.elapsed() < Duration::from_secs(1) => {
                closed_at_once = true;
                break;
            }
            // Accepted before the limit filled (the accept queue was still draining).
            _ => idle.push(extra),
        }
    }
    assert!(
        closed_at_once,
        "a connection past the limit was not closed at once"
    );
    drop(idle);
    wait_until(Duration::from_secs(5), "/health answers again", || async {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        else {
            return false;
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut out = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await,
            Ok(Ok(_)) if out.starts_with(b"HTTP/1.1 200")
        )
    })
    .await;
    sluice.shutdown().await;
}
