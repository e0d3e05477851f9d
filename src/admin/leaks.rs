//! SHOW LEAKS and SHOW LEAKS_SUMMARY (sluice's own): the clients suspected of leaking
//! connections now, with everything needed to find the code (application, address, process,
//! last query, backend pid), and the history per application and origin.

use super::result::{ResultSet, n, oid, t};
use crate::clients::{ClientPhase, PeerAddr};
use crate::shared::Shared;
use std::time::Instant;

const S: u32 = oid::TEXT;
const I: u32 = oid::INT4;
const Q: u32 = oid::INT8;

fn phase_name(p: ClientPhase) -> &'static str {
    match p {
        ClientPhase::Idle => "idle",
        ClientPhase::Waiting => "waiting",
        ClientPhase::Active => "active",
        ClientPhase::IdleInTransaction => "idle in transaction",
        ClientPhase::Holding => "idle (holding a server)",
    }
}

/// SHOW LEAKS: one row per current suspect.
pub(super) fn leaks(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("id", Q),
        ("kind", S),
        ("user", S),
        ("database", S),
        ("application_name", S),
        ("addr", S),
        ("port", I),
        ("pid", I),
        ("process", S),
        ("state", S),
        ("held_seconds", Q),
        ("idle_seconds", Q),
        ("transaction_age_seconds", Q),
        ("last_query", S),
        ("server_pid", I),
        ("detected_seconds_ago", Q),
    ]);
    let now = Instant::now();
    for s in shared.leaks.suspects() {
        let c = &s.client;
        let live = c.live();
        let (addr, port) = match &c.peer() {
            PeerAddr::Tcp(a) => (a.ip().to_string(), i32::from(a.port())),
            PeerAddr::Unix => ("unix".to_string(), 0),
        };
        let process = c.process();
        let idle = matches!(
            live.phase,
            ClientPhase::Idle | ClientPhase::Holding | ClientPhase::IdleInTransaction
        );
        rs.push(vec![
            n(c.id),
            t(s.kind.as_str()),
            t(&**c.user()),
            t(&**c.database()),
            t(c.application_name()),
            t(addr),
            n(port),
            process.as_ref().map(|p| p.0.to_string()),
            process.map(|p| p.1),
            t(phase_name(live.phase)),
            n(live.server_since.map_or(0, |x| now.duration_since(x).as_secs())),
            n(if idle {
                now.duration_since(live.phase_since).as_secs()
            } else {
                0
            }),
            n(live.xact_since.map_or(0, |x| now.duration_since(x).as_secs())),
            t(c.last_query()),
            live.server.map(|x| x.1.to_string()),
            n(now.duration_since(s.detected_at).as_secs()),
        ]);
    }
    rs
}

/// SHOW LEAKS_SUMMARY: per (application_name, origin): suspects now, episodes seen, abandoned
/// transactions, the longest server hold seen, and idle transactions reclaimed for waiters.
pub(super) fn summary(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("application_name", S),
        ("origin", S),
        ("current_suspects", Q),
        ("total_leaks", Q),
        ("abandoned_transactions", Q),
        ("longest_hold_seconds", Q),
        ("reclaimed_transactions", Q),
    ]);
    for row in shared.leaks.summary() {
        rs.push(vec![
            t(row.application_name),
            t(row.origin),
            n(row.current),
            n(row.entry.total),
            n(row.entry.abandoned),
            n(row.entry.longest_hold.as_secs()),
            n(row.entry.reclaimed),
        ]);
    }
    rs
}
