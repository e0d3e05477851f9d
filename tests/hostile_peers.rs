//! The classes of PgBouncer's 2026 security fixes, tried against sluice with real sockets: a
//! SCRAM client-final whose nonce does not extend the client's and server's, a server demanding
//! an absurd SCRAM iteration count, empty and malformed `-c` startup options, a second
//! StartupMessage in the middle of a SASL exchange, lengths near the i32/u32 limits before and
//! after login, and a server whose ReadyForQuery carries an unknown transaction status. Each
//! attack gets a clear error (or a close) and a victim client logging in and querying alongside
//! sees nothing.

mod common;

use bytes::{BufMut, BytesMut};
use common::config::PoolerToml;
use common::raw::{RawClient, RawMessage};
use common::{connect, pg, start_sluice};
use postgres_protocol::message::frontend;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(auth: &str, extra_db: &str) -> String {
    PoolerToml::new(auth)
        .set("unix_socket_dir = \"\"")
        .user_password("sluice_scram", "scram_pw")
        .database("app", Some(2))
        .tail(extra_db)
        .build()
}

/// A victim that logs in with SCRAM and queries; panics if anything fails.
async fn victim_is_served(addr: std::net::SocketAddr) {
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        connect(addr, "sluice_scram", "scram_pw", "app"),
    )
    .await
    .expect("victim login within 5 s")
    .expect("victim login");
    let n: i32 = c
        .query_one("SELECT 41 + 1", &[])
        .await
        .expect("victim query")
        .get(0);
    assert_eq!(n, 42);
}

/// Reads what sluice answers until it closes (bounded by 5 s); the messages read.
async fn answers_until_close(c: &mut RawClient) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), read_checked(c)).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// One backend message, refusing a length sluice should never send (below 4, above 1 MB).
async fn read_checked(c: &mut RawClient) -> Option<RawMessage> {
    let tag = c.stream.read_u8().await.ok()?;
    let len = c.stream.read_i32().await.ok()?;
    assert!((4..1 << 20).contains(&len), "sluice sent a bad length {len}");
    let mut body = vec![0u8; len as usize - 4];
    c.stream.read_exact(&mut body).await.ok()?;
    Some(RawMessage { tag, body })
}

fn fatal_sqlstate(msgs: &[RawMessage]) -> Option<String> {
    msgs.iter().find(|m| m.tag == b'E').and_then(|m| m.field(b'C'))
}

/// Starts a SCRAM login and returns the server-first message after sending `client_first`.
async fn scram_until_server_first(c: &mut RawClient, client_first: &str) -> String {
    c.send_startup(3, 0, &[("user", "sluice_scram"), ("database", "app")])
        .await;
    let m = c.read_message().await.expect("auth request");
    assert_eq!((m.tag, &m.body[..4]), (b'R', &10i32.to_be_bytes()[..]));
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", client_first.as_bytes(), &mut out).unwrap();
    c.send(&out).await;
    let m = c.read_message().await.expect("SASLContinue");
    assert_eq!(m.tag, b'R');
    String::from_utf8(m.body[4..].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_final_nonce_that_does_not_extend_both_nonces_is_refused() {
    let sluice = start_sluice(&config("scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    let zeros = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for nonce in ["clientnonce", "", "clientnonceX", "other"] {
        let mut c = RawClient::connect(addr).await;
        let server_first = scram_until_server_first(&mut c, "n,,n=,r=clientnonce").await;
        assert!(server_first.starts_with("r=clientnonce"), "{server_first}");
        let mut out = BytesMut::new();
        frontend::sasl_response(format!("c=biws,r={nonce},p={zeros}").as_bytes(), &mut out).unwrap();
        c.send(&out).await;
        let msgs = answers_until_close(&mut c).await;
        assert!(
            !msgs
                .iter()
                .any(|m| m.tag == b'R' && m.body[..4] == 12i32.to_be_bytes()),
            "nonce {nonce:?} must never reach SASLFinal"
        );
        let code = fatal_sqlstate(&msgs);
        assert!(
            matches!(code.as_deref(), Some("28P01" | "08P01")),
            "nonce {nonce:?}: {msgs:?}"
        );
    }
    victim_is_served(addr).await;
}

/// Reads a startup packet as a server would, answering an SSLRequest with 'N' (no TLS) and
/// reading the startup packet that follows it.
async fn read_startup(s: &mut tokio::net::TcpStream) -> Option<()> {
    let len = s.read_i32().await.ok()?;
    let mut startup = vec![0u8; (len as usize).saturating_sub(4).min(10_000)];
    s.read_exact(&mut startup).await.ok()?;
    if startup[..] == 80877103i32.to_be_bytes() {
        s.write_all(b"N").await.ok()?;
        let len = s.read_i32().await.ok()?;
        let mut startup = vec![0u8; (len as usize).saturating_sub(4).min(10_000)];
        s.read_exact(&mut startup).await.ok()?;
    }
    Some(())
}

/// A sluice whose database `evil` is the hostile server on `port` (logging in as a forced user
/// with a password) and whose database `app` is the real PostgreSQL.
async fn pooler_in_front_of(port: u16) -> sluice::RunningPooler {
    start_sluice(&format!(
        "[pooler]\nlisten_port = 0\nunix_socket_dir = \"\"\nauth_type = \"trust\"\n\
         server_connect_timeout = \"30s\"\nquery_wait_timeout = \"30s\"\nquery_timeout = \"30s\"\n\
         [databases.evil]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"victim\"\npassword = \"pw\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg().port()
    ))
    .await
}

/// A TCP "server" that answers every login with SCRAM demanding `iterations`, then waits.
async fn hostile_scram_server(iterations: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_startup(&mut s).await?;
                let mut out = BytesMut::new();
                out.put_u8(b'R');
                out.put_i32(4 + 4 + 14 + 1);
                out.put_i32(10);
                out.extend_from_slice(b"SCRAM-SHA-256\0\0");
                s.write_all(&out).await.ok()?;
                let _tag = s.read_u8().await.ok()?;
                let len = s.read_i32().await.ok()?;
                let mut body = vec![0u8; (len as usize).saturating_sub(4).min(10_000)];
                s.read_exact(&mut body).await.ok()?;
                let text = String::from_utf8_lossy(&body).to_string();
                let client_nonce = text.split("r=").nth(1)?.split(',').next()?.to_string();
                let first = format!("r={client_nonce}hostile,s=c2FsdHNhbHQ=,i={iterations}");
                let mut out = BytesMut::new();
                out.put_u8(b'R');
                out.put_i32(4 + 4 + first.len() as i32);
                out.put_i32(11);
                out.extend_from_slice(first.as_bytes());
                s.write_all(&out).await.ok()?;
                // Hold the connection: a client that computes forever is never answered.
                tokio::time::sleep(Duration::from_secs(60)).await;
                Some(())
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_demanding_absurd_scram_iterations_is_refused_at_once() {
    for iterations in ["2147483647", "4294967295", "99999999999999999999", "0", "-1"] {
        let port = hostile_scram_server(iterations).await;
        let sluice = pooler_in_front_of(port).await;
        let started = Instant::now();
        let err = connect(sluice.tcp_addr(), "sluice_trust", "", "evil")
            .await
            .expect_err("no login to a hostile server");
        let text = err
            .as_db_error()
            .map_or(err.to_string(), |d| d.message().to_string());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "i={iterations}: refused only after {:?}: {text}",
            started.elapsed()
        );
        assert!(text.contains("SCRAM iterations"), "i={iterations}: {text}");
        // The pooler is not stuck in PBKDF2: another database is served.
        let c = connect(sluice.tcp_addr(), "sluice_trust", "", "app")
            .await
            .expect("bystander");
        c.simple_query("SELECT 1").await.expect("bystander query");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_and_malformed_dash_c_options_get_a_clear_error() {
    let sluice = start_sluice(&config("trust", "")).await;
    let addr = sluice.tcp_addr();
    for options in [
        "-c=",
        "-c",
        "-c ",
        "-c =x",
        "-c=work_mem",
        "--=",
        "--",
        "-x",
        "-c a",
    ] {
        let mut c = RawClient::connect(addr).await;
        c.send_startup(
            3,
            0,
            &[
                ("user", "sluice_scram"),
                ("database", "app"),
                ("options", options),
            ],
        )
        .await;
        let msgs = answers_until_close(&mut c).await;
        let error = msgs.iter().find(|m| m.tag == b'E');
        let error = error.unwrap_or_else(|| panic!("options {options:?}: no error in {msgs:?}"));
        assert_eq!(error.field(b'S').as_deref(), Some("FATAL"), "{options:?}");
        assert_eq!(
            error.field(b'C').as_deref(),
            Some("08P01"),
            "{options:?}: {:?}",
            error.field(b'M')
        );
        assert!(
            !msgs.iter().any(|m| m.tag == b'Z'),
            "options {options:?} must not log in"
        );
    }
    victim_is_served(addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_startup_message_during_sasl_is_a_protocol_violation() {
    let sluice = start_sluice(&config("scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    // Right after AuthenticationSASL, and after the server-first message.
    for after_first in [false, true] {
        let mut c = RawClient::connect(addr).await;
        if after_first {
            scram_until_server_first(&mut c, "n,,n=,r=abcdef").await;
        } else {
            c.send_startup(3, 0, &[("user", "sluice_scram"), ("database", "app")])
                .await;
            let m = c.read_message().await.expect("SASL request");
            assert_eq!(m.tag, b'R');
        }
        c.send_startup(3, 0, &[("user", "postgres"), ("database", "app")])
            .await;
        let msgs = answers_until_close(&mut c).await;
        assert_eq!(fatal_sqlstate(&msgs).as_deref(), Some("08P01"), "{msgs:?}");
        assert!(!msgs.iter().any(|m| m.tag == b'Z'), "must not log in: {msgs:?}");
    }
    victim_is_served(addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lengths_near_the_integer_limits_are_refused_before_and_after_login() {
    let sluice = start_sluice(&config("scram-sha-256", "")).await;
    let addr = sluice.tcp_addr();
    let edges: [u32; 6] = [
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0xffff_fffc,
        0x7fff_fffc,
        0x4000_0000,
    ];

    // The startup packet's length.
    for len in edges {
        let mut c = RawClient::connect(addr).await;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&196608i32.to_be_bytes());
        c.send(&out).await;
        let msgs = answers_until_close(&mut c).await;
        assert!(
            msgs.iter().all(|m| m.tag == b'E'),
            "startup length {len:#x}: only an error may come back: {msgs:?}"
        );
    }

    // A PasswordMessage's length, and a SASLInitialResponse whose inner length lies.
    for len in edges {
        let mut c = RawClient::connect(addr).await;
        c.send_startup(3, 0, &[("user", "sluice_scram"), ("database", "app")])
            .await;
        c.read_message().await.expect("SASL request");
        let mut out = vec![b'p'];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"SCRAM-SHA-256\0");
        c.send(&out).await;
        let msgs = answers_until_close(&mut c).await;
        assert_eq!(
            fatal_sqlstate(&msgs).as_deref(),
            Some("08P01"),
            "p length {len:#x}: {msgs:?}"
        );

        let mut c = RawClient::connect(addr).await;
        c.send_startup(3, 0, &[("user", "sluice_scram"), ("database", "app")])
            .await;
        c.read_message().await.expect("SASL request");
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(b"n,,n=,r=abc");
        let mut out = vec![b'p'];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        c.send(&out).await;
        let msgs = answers_until_close(&mut c).await;
        assert_eq!(
            fatal_sqlstate(&msgs).as_deref(),
            Some("08P01"),
            "SASL inner length {len:#x}: {msgs:?}"
        );
    }

    // After login: a Query claiming each length.
    for len in edges {
        let mut c = RawClient::connect(addr).await;
        c.login_scram("sluice_scram", "scram_pw", "app").await;
        let mut out = vec![b'Q'];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"SELECT 1\0");
        c.send(&out).await;
        let msgs = answers_until_close(&mut c).await;
        assert_eq!(
            fatal_sqlstate(&msgs).as_deref(),
            Some("08P01"),
            "Q length {len:#x}: {msgs:?}"
        );
    }
    victim_is_served(addr).await;
}

/// A TCP "server" that logs anyone in and ends the login with a ReadyForQuery whose status byte
/// is `status`, then holds the connection without answering anything.
async fn server_with_ready_status(status: u8) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_startup(&mut s).await?;
                let mut out = BytesMut::new();
                out.put_u8(b'R');
                out.put_i32(8);
                out.put_i32(0);
                out.put_u8(b'K');
                out.put_i32(12);
                out.put_i32(4242);
                out.put_i32(99);
                out.put_u8(b'Z');
                out.put_i32(5);
                out.put_u8(status);
                s.write_all(&out).await.ok()?;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Some(())
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_transaction_status_from_a_server_is_refused_at_login() {
    let port = server_with_ready_status(b'X').await;
    let sluice = pooler_in_front_of(port).await;
    let addr = sluice.tcp_addr();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let c = connect(addr, "sluice_trust", "", "evil").await?;
        c.simple_query("SELECT 1").await.map(|_| ())
    })
    .await
    .expect("refused at once, not left waiting on the server");
    let err = outcome.expect_err("a server with an unknown status is not used");
    let text = err
        .as_db_error()
        .map_or(err.to_string(), |d| d.message().to_string());
    assert!(text.contains("unknown transaction status"), "{text}");
    let c = connect(addr, "sluice_trust", "", "app").await.expect("bystander");
    c.simple_query("SELECT 1").await.expect("bystander query");
}
