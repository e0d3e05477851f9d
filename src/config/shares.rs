//! The keys of fair shares and reclaim under pressure (`pool_share_key`, `max_pool_share`,
//! `idle_transaction_reclaim_timeout`): the grouping key's values and their checks.

use super::PoolerConfig;
use super::keys::Problem;
use serde::Deserialize;

/// What groups a pool's clients for fair shares (`pool_share_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShareKey {
    /// Clients with the same application_name share (the usual unit of "one application").
    #[default]
    ApplicationName,
    /// Clients from the same IP address share (unix-socket clients form one group).
    ClientAddr,
    /// No grouping: the whole pool is one group, shares never apply.
    None,
}

/// Checks of the share and reclaim keys in `[pooler]`.
pub(super) fn check(p: &PoolerConfig, out: &mut Vec<Problem>) {
    let share = p.max_pool_share;
    if !share.is_finite() || !(0.0..=1.0).contains(&share) {
        out.push(Problem::new(
            &["pooler", "max_pool_share"],
            format!("must be between 0 and 1 (a fraction of pool_size; 0 turns shares off), got {share}"),
        ));
    }
}
