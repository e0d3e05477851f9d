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
        Command::Empty => messages::empty_query_response(out),
        Command::Show(what) => match render(&what, shared) {
            Some(Shown::Rows(rs)) => rs.encode(out),
            Some(Shown::Notice(text)) => {
                PgError::notice(text).encode(out);
                messages::command_complete(out, "SHOW");
            }
            None => error(out, format!("invalid command '{}', use SHOW HELP;", query.trim())),
        },
        Command::Set { .. } | Command::Action { .. } if role != Role::Admin => {
            error(out, "admin access needed".to_string());
        }
        Command::Set { key, value } => match config_view::set(shared, &key, &value) {
            Ok(()) => {
                tracing::info!(%user, %key, %value, "SET from the console");
                messages::command_complete(out, "SET");
            }
            Err(e) => error(out, e),
        },
        Command::Action { verb, arg } => match act(shared, &verb, arg.as_deref(), query).await {
            Ok(tag) => {
                tracing::info!(%user, %verb, arg = ?arg, "console command");
                messages::command_complete(out, tag);
            }
            Err(e) => error(out, e),
        },
    }
    false
}

fn error(out: &mut BytesMut, message: String) {
    PgError::error(sqlstate::PROTOCOL_VIOLATION, message).encode(out);
}

/// The pools a command addresses: those of `db`, or all; an unknown database is an error.
fn pools_of(shared: &Shared, db: Option<&str>) -> Result<Vec<Arc<Pool>>, String> {
    let all = shared.pools.all();
    match db {
        None => Ok(all),
        Some(name) => {
            if shared.config.load().database(name).is_none() && !all.iter().any(|p| p.key.database == name) {
                return Err(format!("no such database: {name}"));
            }
            Ok(all.into_iter().filter(|p| p.key.database == name).collect())
        }
    }
}

fn need_arg<'a>(verb: &str, arg: Option<&'a str>) -> Result<&'a str, String> {
    arg.ok_or_else(|| format!("{verb} needs an argument"))
}

async fn act(
    shared: &Arc<Shared>,
    verb: &str,
    arg: Option<&str>,
    query: &str,
) -> Result<&'static str, String> {
    match verb {
        "PAUSE" => {
            let pools = pools_of(shared, arg)?;
            futures_join(pools.iter().map(|p| p.pause())).await;
            Ok("PAUSE")
        }
        "RESUME" => {
            for p in pools_of(shared, arg)? {
                p.resume();
            }
            if arg.is_none() {
                shared.set_suspended(false);
            }
            Ok("RESUME")
        }
        "SUSPEND" => {
            for p in shared.pools.all() {
                p.pause_quietly();
            }
            shared.set_suspended(true);
            Ok("SUSPEND")
        }
        "DISABLE" | "ENABLE" => {
            let db = need_arg(verb, arg)?;
            pools_of(shared, Some(db))?;
            shared.set_disabled(db, verb == "DISABLE");
            Ok(if verb == "DISABLE" { "DISABLE" } else { "ENABLE" })
        }
        "RECONNECT" => {
            for p in pools_of(shared, arg)? {
                p.reconnect();
            }
            Ok("RECONNECT")
        }
        "KILL" => {
            let db = need_arg(verb, arg)?;
            let pools = pools_of(shared, Some(db))?;
            for p in &pools {
                p.pause_quietly();
                p.reconnect();
            }
            for c in shared.clients().iter().filter(|c| c.database == db) {
                c.kill("database removed");
            }
            Ok("KILL")
        }
        "KILL_CLIENT" => {
            let id: u64 = need_arg(verb, arg)?
                .parse()
                .map_err(|_| "KILL_CLIENT needs a client id".to_string())?;
            let client = shared.clients().into_iter().find(|c| c.id == id);
            match client {
                Some(c) => {
                    c.kill("client killed by admin");
                    Ok("KILL_CLIENT")
                }
                None => Err(format!("client {id} not found")),
            }
        }
        "WAIT_CLOSE" => {
            let pools = pools_of(shared, arg)?;
            futures_join(pools.iter().map(|p| p.wait_close())).await;
            Ok("WAIT_CLOSE")
        }
        "RELOAD" => match shared.reload() {
            Ok(()) => Ok("RELOAD"),
            Err(e) => Err(format!("RELOAD failed, the old configuration stays: {e}")),
        },
        "SHUTDOWN" => {
            let mode = match arg.map(str::to_ascii_uppercase).as_deref() {
                None => None,
                Some("WAIT_FOR_SERVERS") => Some(ShutdownMode::WaitForServers),
                Some("WAIT_FOR_CLIENTS") => Some(ShutdownMode::WaitForClients),
                Some(other) => return Err(format!("invalid SHUTDOWN mode '{other}'")),
            };
            shared.shutdown(mode);
            Ok("SHUTDOWN")
        }
        _ => Err(format!(
            "invalid command '{}', use SHOW HELP;",
            query.trim().trim_end_matches(';')
        )),
    }
}

async fn futures_join<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    for f in futures {
        f.await;
    }
}
