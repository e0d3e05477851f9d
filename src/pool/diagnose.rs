//! What a pool is doing, in words: the DETAIL of a query_wait_timeout error says how many
//! servers are in use, what they are doing and for how long, and which client holds the oldest.

use super::Pool;
use crate::clients::{ClientInfo, PeerAddr};
use crate::server::{ServerUse, TxState};
use std::time::{Duration, Instant};

impl Pool {
    /// One paragraph describing the pool's servers and the client holding the oldest one.
    pub fn describe_servers(&self) -> String {
        let (infos, waiting, slots_used) = {
            let st = self.state.lock();
            (
                st.servers.values().cloned().collect::<Vec<_>>(),
                st.waiters.len(),
                st.slots_used,
            )
        };
        let now = Instant::now();
        let (mut active, mut idle_tx, mut held_idle, mut idle, mut other) = (0, 0, 0, 0, 0);
        let (mut longest_active, mut longest_idle_tx) = (Duration::ZERO, Duration::ZERO);
        let mut oldest: Option<(Duration, String, i32, TxState)> = None;
        for info in &infos {
            match info.current() {
                ServerUse::Lent {
                    holder,
                    since,
                    tx,
                    tx_since,
                } => {
                    let in_state = now.duration_since(tx_since);
                    match tx {
                        TxState::Active => {
                            active += 1;
                            longest_active = longest_active.max(in_state);
                        }
                        TxState::IdleInTransaction => {
                            idle_tx += 1;
                            longest_idle_tx = longest_idle_tx.max(in_state);
                        }
                        TxState::Idle => held_idle += 1,
                    }
                    let held = now.duration_since(since);
                    if oldest.as_ref().is_none_or(|o| held > o.0) {
                        oldest = Some((held, holder.describe(), info.backend_pid(), tx));
                    }
                }
                ServerUse::Idle => idle += 1,
                ServerUse::Login | ServerUse::Cleaning { .. } => other += 1,
            }
        }
        let mut text = format!(
            "pool {}/{} has {} of {} servers in use: {} active (longest {}), {} idle in transaction \
             (longest {}), {} held idle by session clients, {} idle, {} logging in or being cleaned; \
             {} clients waiting.",
            self.key.database,
            self.key.user,
            slots_used,
            self.settings().pool_size,
            active,
            secs(longest_active),
            idle_tx,
            secs(longest_idle_tx),
            held_idle,
            idle,
            other,
            waiting,
        );
        if let Some((held, who, pid, tx)) = oldest {
            let doing = match tx {
                TxState::Active => "running a query",
                TxState::IdleInTransaction => "idle in transaction",
                TxState::Idle => "idle",
            };
            text.push_str(&format!(
                " The oldest server (backend pid {pid}) has been held for {} by {who}, now {doing}.",
                secs(held)
            ));
        }
        let top = top_holders(&infos);
        if !top.is_empty() {
            text.push_str(" Top holders: ");
            text.push_str(&top.join("; "));
            text.push('.');
        }
        text
    }
}

/// The clients holding most of the pool's servers, grouped by application and origin (process
/// command line, or address): `3 by 'celery' (pid 4242: celery worker -Q emails)`.
fn top_holders(infos: &[std::sync::Arc<crate::server::ServerInfo>]) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<(String, String), (usize, Option<i32>)> = Default::default();
    for info in infos {
        if let ServerUse::Lent { holder, .. } = info.current() {
            let origin = client_origin(&holder);
            let entry = groups.entry((holder.application_name(), origin)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.or(holder.process().map(|p| p.0));
        }
    }
    let mut v: Vec<_> = groups.into_iter().collect();
    v.sort_by_key(|g| std::cmp::Reverse(g.1.0));
    v.into_iter()
        .take(3)
        .map(|((app, origin), (n, pid))| match pid {
            Some(pid) => format!("{n} by '{app}' (pid {pid}: {origin})"),
            None => format!("{n} by '{app}' from {origin}"),
        })
        .collect()
}

/// Where a client comes from, for grouping (here and in the leak reports): its process command
/// line when known, else its IP.
pub(crate) fn client_origin(client: &ClientInfo) -> String {
    match (client.process(), &client.peer()) {
        (Some((_, cmd)), _) if !cmd.is_empty() => cmd,
        (_, PeerAddr::Tcp(a)) => a.ip().to_string(),
        (_, PeerAddr::Unix) => "unix socket".to_string(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
