//! SHOW POOL_SHARES: per pool and share group (pool_share_key), the servers the group holds,
//! how many of them sit idle in a transaction, its waiting clients, and the cap it is held to
//! while other groups hold or wait for servers (max_pool_share; 0: shares off, no cap).

use super::result::{ResultSet, n, oid, t};
use crate::shared::Shared;

const S: u32 = oid::TEXT;
const I: u32 = oid::INT4;

/// The rows, pool by pool (database, user), groups by name; only groups holding or waiting for
/// servers are listed, at most `MAX_SHARE_GROUPS` (and the overflow group) per pool.
pub(super) fn pool_shares(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", S),
        ("user", S),
        ("share_key", S),
        ("cl_active", I),
        ("cl_waiting", I),
        ("sv_idle_in_transaction", I),
        ("cap", I),
    ]);
    let mut pools = shared.pools.all();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    for pool in pools {
        let (groups, cap) = pool.share_groups();
        for g in groups {
            rs.push(vec![
                t(&*pool.key.database),
                t(&*pool.key.user),
                t(g.group),
                n(g.active),
                n(g.waiting),
                n(g.idle_in_transaction),
                n(cap.unwrap_or(0)),
            ]);
        }
    }
    rs
}
