//! SHOW HOSTS: each host of every pool that has a host list or a target_session_attrs, with its
//! last known role and health (what the no-host error's DETAIL names too), and how many of the
//! pool's server connections are open to it.

use super::result::{ResultSet, n, oid, t};
use crate::shared::Shared;

/// The rows of SHOW HOSTS: one per (pool, host), for pools that route over hosts.
pub(super) fn hosts(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", oid::TEXT),
        ("user", oid::TEXT),
        ("host", oid::TEXT),
        ("port", oid::INT4),
        ("role", oid::TEXT),
        ("state", oid::TEXT),
        ("last_check", oid::TEXT),
        ("failures", oid::INT8),
        ("servers", oid::INT4),
    ]);
    let mut pools = shared.pools.all();
    pools.sort_by(|a, b| (&a.key.database, &a.key.user).cmp(&(&b.key.database, &b.key.user)));
    for pool in pools {
        let servers = pool.server_infos();
        for h in pool.host_states() {
            let on_host = servers
                .iter()
                .filter(|i| *i.addr.0 == *h.addr.host && i.addr.1 == h.addr.port)
                .count();
            rs.push(vec![
                t(&pool.key.database),
                t(&pool.key.user),
                t(&h.addr.host),
                n(h.addr.port),
                t(h.role.as_str()),
                t(h.health.as_str()),
                h.last_check.map(super::show::timestamp),
                n(h.failures),
                n(on_host),
            ]);
        }
    }
    rs
}
