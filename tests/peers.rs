//! Several sluice instances behind one load balancer: a cancel request that lands on an instance
//! that did not issue the client's key is forwarded to the instance that did (`peer_id`,
//! `[peers]`), and a request for an instance nobody lists is ignored.

mod common;

use common::config::PoolerToml;
use common::{connect, pg, start_sluice};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

fn config(db: &str, peer_id: u16, peers: &str) -> String {
    PoolerToml::trust()
        .set(&format!("peer_id = {peer_id}\nquery_wait_timeout = \"30s\""))
        .database_on(db, pg().port(), Some(2))
        .tail(peers)
        .build()
}

/// Runs `sql` on `client` in the background, sends the client's cancel key to `other` after the
/// query started, and returns the query's outcome and how long it took.
async fn cancel_through(
    client: tokio_postgres::Client,
    other: std::net::SocketAddr,
    sql: &'static str,
) -> (
    Result<(), tokio_postgres::Error>,
    Duration,
    tokio_postgres::Client,
) {
    let token = client.cancel_token();
    let started = Instant::now();
    let running = tokio::spawn(async move {
        let r = client.batch_execute(sql).await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = tokio::net::TcpStream::connect(other).await.unwrap();
    token.cancel_query_raw(stream, NoTls).await.unwrap();
    let (r, client) = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the query ended")
        .unwrap();
    (r, started.elapsed(), client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_sent_to_a_peer_cancels_the_query_on_the_instance_that_runs_it() {
    let db = pg().create_database("t_peers").await;
    let a = start_sluice(&config(&db, 1, "")).await;
    let b = start_sluice(&config(
        &db,
        2,
        &format!(
            "[peers.1]\nhost = \"127.0.0.1\"\nport = {}\n",
            a.tcp_addr().port()
        ),
    ))
    .await;
    let client = connect(a.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    let (r, took, client) = cancel_through(client, b.tcp_addr(), "SELECT pg_sleep(30)").await;
    let e = r.expect_err("the query was cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    assert!(took < Duration::from_secs(10), "cancelled only after {took:?}");
    // The client goes on on its connection.
    client
        .batch_execute("SELECT 1")
        .await
        .expect("the connection is still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_for_an_instance_no_peer_lists_is_ignored() {
    let db = pg().create_database("t_peers_unlisted").await;
    let a = start_sluice(&config(&db, 1, "")).await;
    // B lists only itself: the request for instance 1 has nowhere to go.
    let b = start_sluice(&config(&db, 2, "")).await;
    let client = connect(a.tcp_addr(), "sluice_trust", "", &db).await.unwrap();
    let (r, took, _client) = cancel_through(client, b.tcp_addr(), "SELECT pg_sleep(1.5)").await;
    r.expect("nothing cancelled the query");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

#[test]
fn peer_ids_out_of_range_are_config_errors_naming_the_key() {
    let load = |text: &str| sluice::Config::from_toml_str(text, "pooler.toml", None);
    let e = load("[pooler]\npeer_id = 16384\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "pooler.peer_id"), "{e}");
    assert!(e.message.contains("16383"), "{e}");
    let e = load("[peers.web1]\nhost = \"10.0.0.1\"\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "peers.web1"), "{e}");
    let e = load("[peers.0]\nhost = \"10.0.0.1\"\n").unwrap_err();
    assert_eq!(e.key, "peers.0", "{e}");
    let e = load("[peers.3]\nhost = \"10.0.0.1\"\nprot = 6432\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "peers.3.prot"), "{e}");
    let ok = load(
        "[pooler]\npeer_id = 2\n[peers.1]\nhost = \"10.0.0.1\"\n[peers.2]\nhost = \"/tmp\"\nport = 6433\n",
    )
    .unwrap();
    assert_eq!(ok.pooler.peer_id, 2);
    assert_eq!(ok.peers.len(), 2);
}
