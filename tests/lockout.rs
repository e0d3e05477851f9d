//! Nobody locks clients out before logging in: half-open logins (with an admin user name too)
//! count against max_client_conn and are capped per address, the console's reserve is granted
//! only after authentication, failed logins are slowed down per address, client_login_timeout
//! ends a half-open login, and short frames before login get FATAL 08P01.

mod common;

use common::raw::RawClient;
use common::{connect, pg, start_sluice};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;

/// md5 logins (cheap for the test's own CPU); `admin` is a console user.
fn config(extra: &str) -> String {
    format!(
        "[pooler]\nlisten_port = 0\nauth_type = \"md5\"\nadmin_users = [\"admin\"]\n{extra}\n\
         [users.admin]\npassword = \"admin_pw\"\n[users.sluice_md5]\npassword = \"md5_pw\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 2\n",
        pg().port()
    )
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
                worst = worst.max(started.elapsed());
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
    assert!(rounds >= 10, "the victim ran {rounds} rounds");
    assert!(
        worst < Duration::from_secs(1),
        "the victim's worst login+query: {worst:?}"
    );
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
