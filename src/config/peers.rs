//! `peer_id` and the `[peers]` table: several sluice instances behind one load balancer, each
//! forwarding the cancel requests that carry another instance's id to that instance (as
//! PgBouncer 1.19+'s peering does).

use super::keys::Problem;
use super::{Config, PoolerConfig};
use serde::Deserialize;

/// Highest accepted peer id: the id takes 14 bits of the cancel key's process id field.
pub const MAX_PEER_ID: u16 = 16_383;

/// One `[peers.ID]` entry: where the instance with that `peer_id` listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Host name, IP address, or unix socket directory (a path starting with `/`).
    pub host: String,
    /// Its port (and unix socket name `.s.PGSQL.<port>`).
    #[serde(default = "default_port")]
    pub port: u16,
}

/// PgBouncer's (and sluice's) listen port.
fn default_port() -> u16 {
    6432
}

impl Config {
    /// The instance that owns peer id `id`, when `[peers]` lists it.
    pub(crate) fn peer(&self, id: u16) -> Option<&PeerConfig> {
        self.peers.get(&id.to_string())
    }
}

/// Checks `pooler.peer_id` and every `[peers]` entry: ids are integers in 1..=16383, hosts are
/// not empty.
pub(super) fn check(config: &Config, out: &mut Vec<Problem>) {
    check_id(&config.pooler, out);
    for (id, peer) in &config.peers {
        match id.parse::<u16>() {
            Ok(n) if (1..=MAX_PEER_ID).contains(&n) && n.to_string() == *id => {}
            _ => out.push(Problem::new(
                &["peers", id],
                format!("peer ids are integers from 1 to {MAX_PEER_ID}, got {id:?}"),
            )),
        }
        if peer.host.is_empty() {
            out.push(Problem::new(&["peers", id, "host"], "must not be empty"));
        }
    }
}

/// `peer_id`: 0 (peering off) or an id in range.
fn check_id(p: &PoolerConfig, out: &mut Vec<Problem>) {
    if p.peer_id > MAX_PEER_ID {
        out.push(Problem::new(
            &["pooler", "peer_id"],
            format!("must be from 0 (off) to {MAX_PEER_ID}, got {}", p.peer_id),
        ));
    }
}
