//! The task behind a pool's listening connection: opens it (outside the pool's slots, see
//! `pool/dedicated.rs`), LISTENs on the union of the clients' channels and keeps that in step as
//! they change, hands each NotificationResponse to the hub, and after a failure reconnects with
//! a back-off, LISTENs again and tells the subscribed clients (a NOTICE) that notifications may
//! have been missed. It ends when nobody listens any more.

use super::hub::{Hub, ListenerState, since_text};
use crate::protocol::PgError;
use crate::server::ServerConn;
use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// First wait after a failed attempt; it doubles up to the pool's server_login_retry (at least
/// this).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest a LISTEN/UNLISTEN round trip may take before the connection is given up.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(30);

pub(super) fn spawn(hub: Arc<Hub>) {
    tokio::spawn(run(hub));
}

/// Why a listening connection ended.
enum Ended {
    /// Nobody listens any more.
    Unused,
    /// It failed (and when).
    Failed(String, Instant),
}

async fn run(hub: Arc<Hub>) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    // Set while a connection was lost and not yet restored: clients are told once it is.
    let mut lost: Option<Instant> = None;
    loop {
        if hub.stop_if_unused() {
            return;
        }
        let Some(pool) = hub.pool() else {
            hub.stop();
            return;
        };
        hub.set_connection(ListenerState::Connecting);
        let opened = pool.open_dedicated().await;
        let cap = pool.settings().server_login_retry.max(FIRST_BACKOFF);
        drop(pool);
        match opened {
            Err(e) => {
                failures += 1;
                tracing::warn!(pool = %hub.key(), error = %e.message, failures, "listening connection could not be opened");
                hub.set_connection(ListenerState::Retrying {
                    failures,
                    error: e.message.clone(),
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cap);
            }
            Ok(mut server) => {
                tracing::info!(pool = %hub.key(), pid = server.conn.backend_pid, "listening connection opened");
                match serve(&hub, &mut server.conn, &mut lost).await {
                    Ended::Unused => {
                        let _ = server.conn.writer.write_all(b"X\0\0\0\x04").await;
                        // Closed: a LISTEN coming now waits for the next connection's.
                        hub.confirm(&BTreeSet::new());
                        tracing::info!(pool = %hub.key(), "nobody listens any more; listening connection closed");
                    }
                    Ended::Failed(error, at) => {
                        failures = 1;
                        tracing::warn!(pool = %hub.key(), %error, "listening connection lost; reconnecting");
                        hub.confirm(&BTreeSet::new());
                        hub.set_connection(ListenerState::Retrying { failures, error });
                        lost.get_or_insert(at);
                        tokio::time::sleep(FIRST_BACKOFF).await;
                        backoff = (FIRST_BACKOFF * 2).min(cap);
                        continue;
                    }
                }
                backoff = FIRST_BACKOFF;
                failures = 0;
            }
        }
    }
}

/// Keeps one connection LISTENing on the wanted channels and delivering, until nobody listens
/// or it fails.
async fn serve(hub: &Hub, conn: &mut ServerConn, lost: &mut Option<Instant>) -> Ended {
    let mut listening: BTreeSet<String> = BTreeSet::new();
    // The last fence NOTIFYed on this connection.
    let mut fence_sent = 0u64;
    loop {
        let wanted = hub.wanted();
        if wanted.is_empty() {
            return Ended::Unused;
        }
        if wanted != listening {
            let sql = reconcile_sql(&listening, &wanted);
            let done = tokio::time::timeout(ROUND_TRIP_LIMIT, round_trip(hub, conn, &sql)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ended::Failed(e, Instant::now()),
                Err(_) => return Ended::Failed("LISTEN did not complete in time".into(), Instant::now()),
            }
            listening = wanted;
            hub.confirm(&listening);
            hub.set_connection(ListenerState::Listening {
                pid: conn.backend_pid,
            });
            if let Some(since) = lost.take() {
                tell_restored(hub, since);
            }
            continue; // look again: subscriptions may have changed meanwhile
        }
        // Hand-over markers go once this connection LISTENs on everything wanted when they
        // were asked for (taken in one look with the channels, see `Hub::take_marks`).
        if let Some(marks) = hub.take_marks(&listening) {
            let sql = marks_sql(&marks);
            let done = tokio::time::timeout(ROUND_TRIP_LIMIT, round_trip(hub, conn, &sql)).await;
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => "NOTIFY did not complete in time".into(),
            };
            hub.mark_again(marks);
            return Ended::Failed(failed, Instant::now());
        }
        // A LISTEN waits for its fence: NOTIFYed on this connection's own fence channel, it
        // comes back after everything committed before it (one NOTIFY covers all fences asked).
        if let Some(n) = hub.fence_to_send(fence_sent) {
            let mut sql = "NOTIFY ".to_string();
            push_identifier(&mut sql, hub.fence_channel());
            sql.push_str(&format!(", '{n}';"));
            match tokio::time::timeout(ROUND_TRIP_LIMIT, round_trip(hub, conn, &sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ended::Failed(e, Instant::now()),
                Err(_) => return Ended::Failed("NOTIFY did not complete in time".into(), Instant::now()),
            }
            fence_sent = n;
            continue;
        }
        let woke = hub.wake.notified();
        tokio::pin!(woke);
        tokio::select! {
            _ = &mut woke => {}
            msg = conn.read_message() => {
                if let Err(e) = on_message(hub, msg) {
                    return Ended::Failed(e, Instant::now());
                }
            }
        }
    }
}

/// LISTEN for what is new and UNLISTEN for what is gone, in one simple query.
fn reconcile_sql(listening: &BTreeSet<String>, wanted: &BTreeSet<String>) -> String {
    let mut sql = String::new();
    for c in wanted.difference(listening) {
        sql.push_str("LISTEN ");
        push_identifier(&mut sql, c);
        sql.push(';');
    }
    for c in listening.difference(wanted) {
        sql.push_str("UNLISTEN ");
        push_identifier(&mut sql, c);
        sql.push(';');
    }
    sql
}

/// NOTIFY on each marker channel, in one simple query.
fn marks_sql(marks: &[String]) -> String {
    let mut sql = String::new();
    for m in marks {
        sql.push_str("NOTIFY ");
        push_identifier(&mut sql, m);
        sql.push(';');
    }
    sql
}

/// A quoted identifier, as PostgreSQL reads it back exactly.
fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}

/// Sends one simple query and reads to its ReadyForQuery, delivering notifications on the way.
async fn round_trip(hub: &Hub, conn: &mut ServerConn, sql: &str) -> Result<(), String> {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).map_err(|e| e.to_string())?;
    conn.writer.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut failure = None;
    loop {
        let msg = conn.read_message().await;
        match msg {
            Ok(Message::ReadyForQuery(_)) => {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            Ok(Message::ErrorResponse(body)) => {
                let e = crate::server::error_from_body(&body);
                failure.get_or_insert(e.message);
            }
            other => on_message(hub, other)?,
        }
    }
}

/// A message read while listening: notifications are delivered; an error ends the connection.
fn on_message(hub: &Hub, msg: Result<Message, crate::server::ServerError>) -> Result<(), String> {
    match msg {
        Err(e) => Err(e.to_string()),
        Ok(Message::NotificationResponse(body)) => {
            let channel = body.channel().map_err(|e| e.to_string())?;
            let payload = body.message().map_err(|e| e.to_string())?;
            if channel == hub.fence_channel() {
                if let Ok(n) = payload.parse() {
                    hub.fence_seen(n);
                }
                return Ok(());
            }
            hub.deliver(channel, notification(body.process_id(), channel, payload));
            Ok(())
        }
        Ok(Message::ErrorResponse(body)) => Err(crate::server::error_from_body(&body).message),
        Ok(_) => Ok(()),
    }
}

/// A NotificationResponse as the client receives it.
fn notification(pid: i32, channel: &str, payload: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(channel.len() + payload.len() + 11);
    out.put_u8(crate::protocol::tags::backend::NOTIFICATION_RESPONSE);
    out.put_i32(0);
    out.put_i32(pid);
    out.extend_from_slice(channel.as_bytes());
    out.put_u8(0);
    out.extend_from_slice(payload.as_bytes());
    out.put_u8(0);
    crate::protocol::messages::patch_length(&mut out, 0);
    out.freeze()
}

/// The channel of a NotificationResponse built by [`notification`] (None for other messages).
pub(super) fn channel_of(msg: &[u8]) -> Option<&[u8]> {
    if msg.first() != Some(&crate::protocol::tags::backend::NOTIFICATION_RESPONSE) {
        return None;
    }
    let rest = msg.get(9..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    Some(&rest[..end])
}

/// Tells every subscribed client that notifications may have been missed while the connection
/// was down.
fn tell_restored(hub: &Hub, since: Instant) {
    let notice = PgError::notice(
        "sluice: the listening connection was lost and restored; notifications may have been missed",
    )
    .with_detail(format!(
        "pool {}: no notifications were received for {} while the connection was being re-established",
        hub.key(),
        since_text(since)
    ))
    .with_hint("Re-read whatever state the notifications announce.");
    let mut out = BytesMut::new();
    notice.encode(&mut out);
    hub.tell_all(out.freeze());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_quoted_and_only_differences_are_sent() {
        let a: BTreeSet<String> = ["a".to_string(), "b\"c".to_string()].into();
        let b: BTreeSet<String> = ["a".to_string(), "Z".to_string()].into();
        assert_eq!(
            reconcile_sql(&BTreeSet::new(), &a),
            "LISTEN \"a\";LISTEN \"b\"\"c\";"
        );
        assert_eq!(reconcile_sql(&a, &b), "LISTEN \"Z\";UNLISTEN \"b\"\"c\";");
        assert_eq!(marks_sql(&["m".to_string()]), "NOTIFY \"m\";");
    }

    #[test]
    fn the_channel_of_a_notification_is_read_back() {
        let n = notification(7, "sluice_handover_1_2", "x");
        assert_eq!(channel_of(&n), Some(&b"sluice_handover_1_2"[..]));
        assert_eq!(channel_of(b"N\0\0\0\x04"), None);
    }
}
