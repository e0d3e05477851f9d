//! The admin console: a virtual database (`pgbouncer`, alias `sluice`) on the same listeners,
//! for admin_users and stats_users. Simple query protocol only. Each command is parsed, run
//! against a snapshot of the pooler's state, and answered as PgBouncer answers it.

mod commands;
mod config_view;
mod hosts;
mod leaks;
mod listeners;
mod parse;
mod result;
mod shares;
mod show;
mod stats;

pub use parse::{Command, parse};
pub use result::ResultSet;

use crate::protocol::tags::frontend;
use crate::protocol::{FrameScanner, PgError, ScanItem, TxStatus, messages, sqlstate};
use crate::shared::Shared;
use crate::stream::Stream;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Names of the console's virtual database.
pub const CONSOLE_DATABASES: [&str; 2] = ["pgbouncer", "sluice"];

/// Largest console query accepted.
const MAX_CONSOLE_QUERY: usize = 64 * 1024;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// admin_users: everything.
    Admin,
    /// stats_users: SHOW only.
    Stats,
}

/// The role a user has on the console, if any.
pub fn role_of(config: &crate::Config, user: &str) -> Option<Role> {
    if config.pooler.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if config.pooler.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}

/// Sends the console's welcome: the parameters psql and drivers expect, a key, ReadyForQuery.
pub fn welcome(out: &mut BytesMut) {
    // PgBouncer's set and order; the version names sluice after PgBouncer's `/bouncer` suffix.
    for (name, value) in [
        ("server_version", "1.25.2/sluice"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
    ] {
        messages::parameter_status(out, name, value);
    }
    messages::backend_key_data(out, 0, 0);
    messages::ready_for_query(out, TxStatus::Idle);
}

/// Serves a logged-in console session until the client leaves.
pub async fn serve(mut stream: Stream, shared: Arc<Shared>, role: Role, user: String) {
    let _console = shared.console_opened();
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut scan = FrameScanner::new(MAX_CONSOLE_QUERY, MAX_CONSOLE_QUERY);
    // After an extended-protocol message: ignore everything until Sync, as PostgreSQL does.
    let mut skipping_to_sync = false;
    loop {
        let item = match scan.next(&inbuf, |_| true) {
            Ok(item) => item,
            Err(e) => {
                let err = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("invalid message: {e}"));
                err.encode(&mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let (tag, len) = match item {
            ScanItem::Whole { tag, len } => (tag, len),
            ScanItem::Pass { .. } | ScanItem::Head { .. } => {
                unreachable!("console messages are always decoded whole")
            }
            ScanItem::NeedMore => {
                inbuf.reserve(4096);
                match stream.read_buf(&mut inbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        let msg = inbuf.split_to(len);
        match tag {
            frontend::TERMINATE => return,
            frontend::QUERY if !skipping_to_sync => {
                let body = &msg[5..];
                let query = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned();
                let stop = commands::run(&query, &shared, role, &user, &mut out).await;
                messages::ready_for_query(&mut out, TxStatus::Idle);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                if stop {
                    return;
                }
            }
            frontend::SYNC => {
                skipping_to_sync = false;
                messages::ready_for_query(&mut out, TxStatus::Idle);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            _ if skipping_to_sync => {}
            frontend::PARSE
            | frontend::BIND
            | frontend::EXECUTE
            | frontend::DESCRIBE
            | frontend::CLOSE
            | frontend::FLUSH
            | frontend::FUNCTION_CALL => {
                skipping_to_sync = true;
                PgError::error(
                    sqlstate::PROTOCOL_VIOLATION,
                    "extended query protocol not supported by admin console",
                )
                .encode(&mut out);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            other => {
                let err = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("unexpected message type '{}' on the admin console", other as char),
                );
                err.encode(&mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        if inbuf.is_empty() {
            inbuf = BytesMut::new();
        }
    }
}
