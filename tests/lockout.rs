//! Nobody locks clients out before logging in: half-open logins (with an admin user name too)
//! count against max_client_conn and are capped per address, the console's reserve is granted
//! only after authentication, failed logins are slowed down per address, client_login_timeout
//! ends a half-open login, and short frames before login get FATAL 08P01.

mod common;

use common::config::PoolerToml;
use common::raw::RawClient;
use common::{connect, start_sluice};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;

/// md5 logins (cheap for the test's own CPU); `admin` is a console user.
fn config(extra: &str) -> String {
    PoolerToml::new("md5")
        .admin()
        .set(extra)
        .user_password("admin", "admin_pw")
        .user_password("sluice_md5", "md5_pw")
        .database("app", Some(2))
        .build()
}

/// A raw connection from the loopback address `src` (127.0.0.0/8 all reach 127.0.0.1).
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<RawClient> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    Ok(RawClient { stream })
}

/// How the first message after a StartupMessage went.
#[derive(Debug, PartialEq)]
enum First {
    /// The server asked for a password: the login is in progress.
    AuthRequest,
    /// Refused with this SQLSTATE and message.
    Error(String, String),
    /// Nothing within the time, or the connection closed.
    Nothing,
}

async fn first_answer(c: &mut RawClient, within: Duration) -> First {
    match tokio::time::timeout(within, c.read_message()).await {
        Ok(Some(m)) if m.tag == b'R' => First::AuthRequest,
        Ok(Some(m)) if m.tag == b'E' => First::Error(
            m.field(b'C').unwrap_or_default(),
            m.field(b'M').unwrap_or_default(),
        ),
        _ => First::Nothing,
    }
}

/// A login with a wrong password from `src`: (SQLSTATE of the error, time to the error).
async fn wrong_password(src: Ipv4Addr, to: SocketAddr) -> Option<(String, Duration)> {
    let mut c = connect_from(src, to).await.ok()?;
    let started = Instant::now();
    c.send_startup(3, 0, &[("user", "sluice_md5"), ("database", "app")])
        .await;
    match first_answer(&mut c, Duration::from_secs(10)).await {
        First::AuthRequest => {}
        First::Error(code, _) => return Some((code, started.elapsed())),
        First::Nothing => return None,
    }
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::password_message(b"md500000000000000000000000000000000", &mut out)
        .ok()?;
    c.send(&out).await;
    match first_answer(&mut c, Duration::from_secs(10)).await {
        First::Error(code, _) => Some((code, started.elapsed())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_open_admin_logins_and_wrong_passwords_do_not_lock_a_client_out() {
    assert!(
        common::raise_fd_limit() >= 16_000,
        "the test needs 16,000 descriptors"
    );
    let sluice = start_sluice(&config("max_client_conn = 1000")).await;
    let addr = sluice.tcp_addr();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The victim's pool has its server before the attack (its first login opens it).
    connect(addr, "sluice_md5", "md5_pw", "app")
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
    // The victim: logs in from 127.0.0.1 and queries every 200 ms, timing both.
    let victim = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut worst, mut errors, mut rounds) = (Duration::ZERO, Vec::new(), 0);
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let round = async {
                    let c = connect(addr, "sluice_md5", "md5_pw", "app").await?;
                    c.simple_query("SELECT 1").await
                };
                match tokio::time::timeout(Duration::from_secs(5), round).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push("no answer within 5 s".to_string()),
                }
                let took = started.elapsed();
                if took > Duration::from_millis(300) {
                    println!("victim round {rounds}: login+query took {took:?}");
                }
                worst = worst.max(took);
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (worst, errors, rounds)
        }
    });

    // 5,000 logins that name the console's admin and never answer the password request, from
    // 127.0.0.2, held open; and 2,000 wrong passwords from 127.0.0.3, 200 at a time.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let half_open = futures_util::stream::iter(0..5000)
        .map(|_| async move {
            let mut c = connect_from(attacker, addr).await.ok()?;
            c.send_startup(3, 0, &[("user", "admin"), ("database", "pgbouncer")])
                .await;
            let first = first_answer(&mut c, Duration::from_secs(10)).await;
            Some((c, first))
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>();
    let guesser = Ipv4Addr::new(127, 0, 0, 3);
    let guesses = futures_util::stream::iter(0..2000)
        .map(|_| wrong_password(guesser, addr))
        .buffer_unordered(200)
        .collect::<Vec<_>>();
    let (half_open, guesses) = tokio::join!(half_open, guesses);

    let mut held = Vec::new();
    let mut refused = 0;
    for (c, first) in half_open.into_iter().flatten() {
        match first {
            First::AuthRequest => held.push(c),
            First::Error(code, message) => {
                assert_eq!(code, "08P01", "{message}");
                refused += 1;
            }
            First::Nothing => {}
        }
    }
    let failed = guesses
        .iter()
        .flatten()
        .filter(|(code, _)| code == "28P01")
        .count();
    done.store(true, Ordering::Relaxed);
    let (worst, errors, rounds) = victim.await.unwrap();
    println!(
        "victim: {rounds} rounds, worst login+query {worst:?}; attacker: {} held, {refused} \
         refused; guesser: {failed} failures checked of {}",
        held.len(),
        guesses.len()
    );
    assert!(errors.is_empty(), "the victim's errors: {errors:?}");
    assert!(
        worst < Duration::from_secs(1),
        "the victim's worst login+query: {worst:?}"
    );
    assert!(rounds >= 10, "the victim ran {rounds} rounds");
    assert!(
        held.len() <= 100 && refused >= 4900,
        "half-open logins from one address are capped at max_logins_per_address (100): \
         {} held, {refused} refused",
        held.len()
    );
    assert!(failed > 0, "some wrong passwords were checked: {guesses:?}");

    // Failures from 127.0.0.3 are slowed now; another address is not.
    let (code, slow) = wrong_password(guesser, addr).await.expect("an answer");
    assert_eq!(code, "28P01");
    assert!(
        slow >= Duration::from_millis(1500),
        "the guesser's next failure took {slow:?}"
    );
    let (code, quick) = wrong_password(Ipv4Addr::new(127, 0, 0, 4), addr)
        .await
        .expect("an answer");
    assert_eq!(code, "28P01");
    assert!(
        quick < Duration::from_millis(800),
        "a first failure elsewhere took {quick:?}"
    );

    drop(held);
    sluice.shutdown().await;
}

/// A raw login naming the console's admin that stops at the password request.
async fn half_open_admin(addr: SocketAddr) -> (RawClient, First) {
    let mut c = RawClient::connect(addr).await;
    c.send_startup(3, 0, &[("user", "admin"), ("database", "pgbouncer")])
        .await;
    let first = first_answer(&mut c, Duration::from_secs(5)).await;
    (c, first)
}

/// Retries `f` for up to 5 s until it succeeds (a closed login's slot is given back when
/// sluice notices the close).
async fn retry_ok<T, E: std::fmt::Debug, Fut: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("still failing after 5 s: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// SHOW LISTS login_clients on an open console connection.
async fn login_clients(console: &tokio_postgres::Client) -> Option<usize> {
    let rows = common::console_query(console, "SHOW LISTS").await;
    rows.iter()
        .find(|r| r.get("list").cloned().flatten().as_deref() == Some("login_clients"))
        .and_then(|r| r.get("items").cloned().flatten())
        .and_then(|v| v.parse::<usize>().ok())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_reserve_is_granted_only_after_authentication() {
    let sluice = start_sluice(&config("max_client_conn = 2")).await;
    let addr = sluice.tcp_addr();

    // Half-open console logins count against max_client_conn like any login.
    let (a, first) = half_open_admin(addr).await;
    assert_eq!(first, First::AuthRequest);
    let (b, first) = half_open_admin(addr).await;
    assert_eq!(first, First::AuthRequest);
    let e = connect(addr, "sluice_md5", "md5_pw", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("08P01"), "{e}");
    assert!(message(&e).contains("max_client_conn"), "{e:?}");
    drop((a, b));
    let c1 = retry_ok(|| connect(addr, "sluice_md5", "md5_pw", "app")).await;
    let _c2 = connect(addr, "sluice_md5", "md5_pw", "app").await.unwrap();

    // max_client_conn is full of clients: an authenticated console user still gets in, from
    // the console's reserve...
    let admin = connect(addr, "admin", "admin_pw", "pgbouncer").await.unwrap();
    admin.simple_query("SHOW LISTS").await.unwrap();
    // ...but a wrong password does not, and neither does a client.
    let e = connect(addr, "admin", "nope", "pgbouncer").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    let e = connect(addr, "sluice_md5", "md5_pw", "app").await.unwrap_err();
    assert!(message(&e).contains("max_client_conn"), "{e:?}");

    // Logins that wait for a console seat are bounded too: 16 places (the reserve's size),
    // then refused at once, before any password is asked for.
    let mut waiting = Vec::new();
    for _ in 0..16 {
        let (c, first) = half_open_admin(addr).await;
        assert_eq!(first, First::AuthRequest);
        waiting.push(c);
    }
    let (_c, first) = half_open_admin(addr).await;
    match first {
        First::Error(code, message) => {
            assert_eq!(code, "08P01");
            assert!(message.contains("max_client_conn"), "{message}");
        }
        other => panic!("a 17th half-open console login while full: {other:?}"),
    }
    drop(waiting);
    let mut left = 100;
    while login_clients(&admin).await != Some(0) && left > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left -= 1;
    }

    // The reserve itself is bounded: 16 console sessions in all while clients fill
    // max_client_conn (the first is `admin` above).
    let mut consoles = vec![admin];
    let outcome = loop {
        match connect(addr, "admin", "admin_pw", "pgbouncer").await {
            Ok(c) if consoles.len() < 40 => consoles.push(c),
            other => break other.map(|_| ()),
        }
    };
    let e = outcome.expect_err("the console reserve has a bound");
    assert!(message(&e).contains("max_client_conn"), "{e:?}");
    assert_eq!(consoles.len(), 16);

    // A console session that ends gives its seat back.
    consoles.pop();
    retry_ok(|| connect(addr, "admin", "admin_pw", "pgbouncer")).await;
    drop(c1);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_login_timeout_ends_a_half_open_login_and_login_clients_counts_it() {
    let sluice = start_sluice(&config("client_login_timeout = \"2s\"")).await;
    let addr = sluice.tcp_addr();
    let started = Instant::now();
    let (mut half_open, first) = half_open_admin(addr).await;
    assert_eq!(first, First::AuthRequest);
    let mut silent = RawClient::connect(addr).await; // never sends a byte

    let admin = connect(addr, "admin", "admin_pw", "pgbouncer").await.unwrap();
    // The silent connection is counted once sluice has accepted it, which a loaded machine may
    // do a moment after the client's connect returned (the kernel completes the handshake).
    let mut counted = login_clients(&admin).await;
    while counted != Some(2) && started.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        counted = login_clients(&admin).await;
    }
    assert_eq!(counted, Some(2), "two logins in progress");

    for c in [&mut half_open, &mut silent] {
        match first_answer(c, Duration::from_secs(5)).await {
            First::Error(code, message) => {
                assert_eq!(code, "08P01");
                assert!(message.contains("client_login_timeout"), "{message}");
            }
            other => panic!("a half-open login after client_login_timeout: {other:?}"),
        }
        assert!(c.read_message().await.is_none(), "closed after the FATAL");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "ended after {took:?}"
    );
    assert_eq!(login_clients(&admin).await, Some(0));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_frame_lengths_before_login_get_fatal_08p01() {
    let sluice = start_sluice(&config("")).await;
    let addr = sluice.tcp_addr();
    let expect_fatal = |m: Option<common::raw::RawMessage>, what: &str| {
        let m = m.unwrap_or_else(|| panic!("{what}: closed without an error"));
        assert_eq!(m.tag, b'E', "{what}: {m:?}");
        assert_eq!(m.field(b'S').as_deref(), Some("FATAL"), "{what}");
        assert_eq!(m.field(b'C').as_deref(), Some("08P01"), "{what}");
    };
    // Startup packets with a length below 4 (and below the 8 a startup packet needs), some
    // with bytes after them.
    for (what, bytes) in [
        ("length 0", vec![0u8, 0, 0, 0]),
        (
            "length 3 and more bytes",
            vec![0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
        ("length -1", vec![0xff, 0xff, 0xff, 0xff]),
        ("length 7", vec![0, 0, 0, 7, 0, 3, 0]),
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send(&bytes).await;
        expect_fatal(c.read_message().await, what);
        assert!(c.read_message().await.is_none(), "{what}: closed after the FATAL");
    }
    // After an SSLRequest was refused.
    let mut c = RawClient::connect(addr).await;
    c.send(&[0, 0, 0, 8, 4, 210, 22, 47]).await;
    assert_eq!(c.read_byte().await, b'N');
    c.send(&[0, 0, 0, 2]).await;
    expect_fatal(c.read_message().await, "after SSLRequest");
    // A password message with a length below 4, for a client and for the console.
    for (user, db) in [("sluice_md5", "app"), ("admin", "pgbouncer")] {
        let mut c = RawClient::connect(addr).await;
        c.send_startup(3, 0, &[("user", user), ("database", db)]).await;
        assert_eq!(
            first_answer(&mut c, Duration::from_secs(5)).await,
            First::AuthRequest
        );
        c.send(&[b'p', 0, 0, 0, 2]).await;
        expect_fatal(c.read_message().await, "password message of length 2");
    }
    sluice.shutdown().await;
}
