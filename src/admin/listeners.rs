//! SHOW LISTENERS: LISTEN/NOTIFY in transaction pooling, one row per (pool, channel) with its
//! subscribers and the notifications delivered and dropped, and the state of the pool's
//! listening connection (a pool whose clients listen on nothing shows one row without a channel).

use super::result::{ResultSet, n, oid, t};
use crate::shared::Shared;

/// The rows of SHOW LISTENERS.
pub(super) fn listeners(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", oid::TEXT),
        ("user", oid::TEXT),
        ("channel", oid::TEXT),
        ("subscribers", oid::INT8),
        ("delivered", oid::INT8),
        ("dropped", oid::INT8),
        ("listener_state", oid::TEXT),
        ("listener_pid", oid::INT4),
        ("listener_error", oid::TEXT),
    ]);
    for hub in shared.notify.figures() {
        let (pid, error) = match &hub.state {
            crate::notify::ListenerState::Listening { pid } => (n(*pid), None),
            crate::notify::ListenerState::Retrying { error, .. } => (None, t(error)),
            _ => (None, None),
        };
        if hub.channels.is_empty() {
            rs.push(vec![
                t(&hub.database),
                t(&hub.user),
                None,
                n(0),
                n(0),
                n(0),
                t(hub.state.name()),
                pid.clone(),
                error.clone(),
            ]);
        }
        for c in &hub.channels {
            rs.push(vec![
                t(&hub.database),
                t(&hub.user),
                t(&c.channel),
                n(c.subscribers),
                n(c.delivered),
                n(c.dropped),
                t(hub.state.name()),
                pid.clone(),
                error.clone(),
            ]);
        }
    }
    rs
}
