//! Running one console query: parse, check the role, execute, and write the reply (rows, a
//! command tag, or an error) — PgBouncer's tags and error texts.

use super::Role;
use super::config_view;
use super::parse::{Command, Invalid, parse};
use super::show::{Shown, render};
use crate::pool::Pool;
use crate::protocol::{PgError, messages, sqlstate};
use crate::shared::{Shared, ShutdownMode};
use bytes::BytesMut;
use std::sync::Arc;

/// Runs `query` and appends the reply (without ReadyForQuery) to `out`. Returns true when the
/// console session should end.
pub(super) async fn run(
    query: &str,
    shared: &Arc<Shared>,
    role: Role,
    user: &str,
    out: &mut BytesMut,
) -> bool {
    let cmd = match parse(query) {
        Ok(c) => c,
        Err(Invalid(q)) => {
            error(out, format!("invalid command '{q}', use SHOW HELP;"));
            return false;
        }
    };
    match cmd {
        Command::Show(what) if what == "FDS" && role != Role::Admin => {
            error(out, "admin access needed".to_string())
        }
        Command::Show(what) => match render(&what, shared) {
            Some(Shown::Rows(rs)) => rs.encode(out),
            Some(Shown::Notice(text)) => {
                PgError::notice("Console usage").with_detail(text).encode(out);
                messages::command_complete(out, "SHOW");
            }
            None => error(out, format!("invalid command '{query}', use SHOW HELP;")),
        },
        Command::Set { key, .. }
            if super::show::FAKE_PARAMETERS
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(&key)) =>
        {
            PgError::notice("SET ignored").encode(out);
            messages::command_complete(out, "SET");
        }
        Command::Set { .. } | Command::Action { .. } if role != Role::Admin => {
            error(out, "admin access needed".to_string());
        }
        Command::Set { key, value } => match config_view::set(shared, &key, &value) {
            Ok(()) => {
                tracing::info!(%user, %key, %value, "SET from the console");
                messages::command_complete(out, &format!("SET {key}={value}"));
            }
            Err(config_view::Refused(why)) => {
                tracing::info!(%user, %key, %value, error = %why, "SET refused");
                err("SET failed")
                    .with_detail(why)
                    .with_hint(config_view::changeable_hint())
                    .encode(out);
            }
        },
        Command::Action { verb, arg } => match act(shared, &verb, arg.as_deref(), query).await {
            Ok(Some(tag)) => {
                tracing::info!(%user, command = %format!("{verb} {}", arg.unwrap_or_default()).trim_end(), "console command");
                messages::command_complete(out, tag);
            }
            Ok(None) => return true,
            Err(e) => e.encode(out),
        },
    }
    false
}

fn error(out: &mut BytesMut, message: String) {
    err(message).encode(out);
}

/// A console error as PgBouncer sends it: ERROR, SQLSTATE 08P01.
fn err(message: impl Into<String>) -> PgError {
    PgError::error(sqlstate::PROTOCOL_VIOLATION, message)
}

/// The pools a command addresses: those of `db`, or all; an unknown database is an error.
fn pools_of(shared: &Shared, db: Option<&str>) -> Result<Vec<Arc<Pool>>, PgError> {
    let all = shared.pools.all();
    match db {
        None => Ok(all),
        Some(name) => {
            if shared.config.load().database(name).is_none() && !all.iter().any(|p| p.key.database == name) {
                return Err(err(format!("no such database: {name}")));
            }
            Ok(all.into_iter().filter(|p| p.key.database == name).collect())
        }
    }
}

fn need_db(arg: Option<&str>) -> Result<&str, PgError> {
    arg.ok_or_else(|| err("a database is required"))
}

/// Runs an admin action; Ok(None) means no reply (plain SHUTDOWN: the process exits).
async fn act(
    shared: &Arc<Shared>,
    verb: &str,
    arg: Option<&str>,
    query: &str,
) -> Result<Option<&'static str>, PgError> {
    let tag = match verb {
        "PAUSE" => {
            let pools = pools_of(shared, arg)?;
            if !pools.is_empty() && pools.iter().all(|p| p.is_paused()) || shared.is_suspended() {
                return Err(err("already suspended/paused"));
            }
            for p in &pools {
                p.pause().await;
            }
            "PAUSE"
        }
        "RESUME" => {
            if shared.lifecycle() != crate::shared::Lifecycle::Running {
                return Err(err("pooler is shutting down"));
            }
            let pools = pools_of(shared, arg)?;
            let any_paused = pools.iter().any(|p| p.is_paused());
            match arg {
                Some(db) if !any_paused => return Err(err(format!("database {db} is not paused"))),
                None if !any_paused && !shared.is_suspended() => {
                    return Err(err("pooler is not paused/suspended"));
                }
                _ => {}
            }
            for p in pools {
                p.resume();
            }
            if arg.is_none() {
                shared.set_suspended(false);
            }
            "RESUME"
        }
        "SUSPEND" => {
            if shared.is_suspended() {
                return Err(err("already suspended/paused"));
            }
            for p in shared.pools.all() {
                p.pause_quietly();
            }
            shared.set_suspended(true);
            "SUSPEND"
        }
        "DISABLE" | "ENABLE" => {
            let db = need_db(arg)?;
            pools_of(shared, Some(db))?;
            shared.set_disabled(db, verb == "DISABLE");
            if verb == "DISABLE" { "DISABLE" } else { "ENABLE" }
        }
        "RECONNECT" => {
            for p in pools_of(shared, arg)? {
                p.reconnect();
            }
            "RECONNECT"
        }
        "KILL" => {
            let pools = pools_of(shared, arg)?;
            for p in &pools {
                p.pause_quietly();
                p.reconnect();
            }
            for c in shared
                .clients()
                .iter()
                .filter(|c| arg.is_none_or(|db| **c.database() == *db))
            {
                c.kill("database removed");
            }
            "KILL"
        }
        "KILL_CLIENT" => {
            let id: u64 = arg
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| err("invalid client pointer supplied"))?;
            let client = shared
                .clients()
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| err("client not found"))?;
            client.kill("admin forced disconnect");
            "KILL_CLIENT"
        }
        "WAIT_CLOSE" => {
            for p in pools_of(shared, arg)? {
                p.wait_close().await;
            }
            "WAIT_CLOSE"
        }
        "RELOAD" => match crate::service::reload(shared) {
            Ok(()) => "RELOAD",
            Err(e) => {
                tracing::error!(error = %e, "RELOAD failed; keeping the old configuration");
                return Err(
                    PgError::error("F0000", "RELOAD failed, see logs for additional details")
                        .with_detail(e.to_string()),
                );
            }
        },
        "SHUTDOWN" => {
            let mode = match arg.map(str::to_ascii_uppercase).as_deref() {
                None => {
                    shared.shutdown(None);
                    return Ok(None);
                }
                Some("WAIT_FOR_SERVERS") => ShutdownMode::WaitForServers,
                Some("WAIT_FOR_CLIENTS") => ShutdownMode::WaitForClients,
                Some(_) => return Err(err(format!("invalid command '{query}', use SHOW HELP;"))),
            };
            shared.shutdown(Some(mode));
            "SHUTDOWN"
        }
        _ => return Err(err(format!("invalid command '{query}', use SHOW HELP;"))),
    };
    Ok(Some(tag))
}
