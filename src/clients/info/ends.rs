//! Where a client connected from and to: its address as shown ([`PeerAddr`]) and both ends of
//! its connection as its record keeps them, in 16 bytes.

use super::ClientInfo;
use std::net::{SocketAddr, SocketAddrV4};

/// Where a client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A unix-socket client.
    Unix,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix => f.write_str("unix socket"),
        }
    }
}

/// Both ends of a client's connection (and a unix-socket peer's pid), in 16 bytes: IPv4 TCP
/// clients, the usual case, keep both addresses inline; anything else is boxed.
#[derive(Debug)]
pub(super) enum Ends {
    /// TCP over IPv4, with sluice's own end when known.
    V4 {
        peer: SocketAddrV4,
        local: Option<SocketAddrV4>,
    },
    /// A unix-socket client, with its process id (SO_PEERCRED) when known.
    Unix { pid: Option<i32> },
    /// Any other combination (IPv6).
    Other(Box<(PeerAddr, Option<SocketAddr>, Option<i32>)>),
}

impl Ends {
    pub(super) fn new(peer: PeerAddr, pid: Option<i32>, local: Option<SocketAddr>) -> Ends {
        match (peer, local, pid) {
            (PeerAddr::Tcp(SocketAddr::V4(peer)), None, None) => Ends::V4 { peer, local: None },
            (PeerAddr::Tcp(SocketAddr::V4(peer)), Some(SocketAddr::V4(l)), None) => {
                Ends::V4 { peer, local: Some(l) }
            }
            (PeerAddr::Unix, None, pid) => Ends::Unix { pid },
            (peer, local, pid) => Ends::Other(Box::new((peer, local, pid))),
        }
    }
}

impl ClientInfo {
    /// Where it connected from.
    pub fn peer(&self) -> PeerAddr {
        match &self.ends {
            Ends::V4 { peer, .. } => PeerAddr::Tcp(SocketAddr::V4(*peer)),
            Ends::Unix { .. } => PeerAddr::Unix,
            Ends::Other(o) => o.0.clone(),
        }
    }

    /// sluice's own end of the connection (TCP).
    pub fn local(&self) -> Option<SocketAddr> {
        match &self.ends {
            Ends::V4 { local, .. } => local.map(SocketAddr::V4),
            Ends::Unix { .. } => None,
            Ends::Other(o) => o.1,
        }
    }

    /// Process id of a unix-socket peer (SO_PEERCRED).
    pub fn peer_pid(&self) -> Option<i32> {
        match &self.ends {
            Ends::V4 { .. } => None,
            Ends::Unix { pid } => *pid,
            Ends::Other(o) => o.2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::ClientNames;
    use std::time::{Duration, Instant};

    #[test]
    fn both_ends_of_a_connection_read_back_as_given() {
        let v4: SocketAddr = "10.1.2.3:41234".parse().unwrap(); // ok: literal test input
        let local: SocketAddr = "10.1.2.4:6432".parse().unwrap(); // ok: literal test input
        let v6: SocketAddr = "[::1]:5000".parse().unwrap(); // ok: literal test input
        let mk = |peer, pid, local| ClientInfo::new(peer, pid, local, ClientNames::new("d", "u"), "");
        let c = mk(PeerAddr::Tcp(v4), None, Some(local));
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v4), Some(local), None)
        );
        let c = mk(PeerAddr::Tcp(v4), None, None);
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v4), None, None)
        );
        let c = mk(PeerAddr::Unix, Some(42), None);
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Unix, None, Some(42))
        );
        let c = mk(PeerAddr::Tcp(v6), None, Some(v4));
        assert_eq!(
            (c.peer(), c.local(), c.peer_pid()),
            (PeerAddr::Tcp(v6), Some(v4), None)
        );
        let then = Instant::now() - Duration::from_secs(3600);
        let c = c.connected_since(then, 1);
        assert_eq!(c.connected_at(), then);
    }
}
