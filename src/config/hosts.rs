//! Several hosts per database (libpq's and PgBouncer's host lists): the `port` key that takes a
//! number or a comma-separated list, parsing `host = "a,b:5433"` into addresses, and the
//! `target_session_attrs` and `load_balance_hosts` values.

use serde::Deserialize;
use serde::de::{self, Visitor};
use std::fmt;

/// Most hosts one database entry may list (bounds the per-host state a pool keeps).
pub(crate) const MAX_HOSTS: usize = 32;

/// The `port` key: one port for every host, or one per host of the `host` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(Vec<u16>);

impl Ports {
    /// One port for every host.
    pub fn one(port: u16) -> Ports {
        Ports(vec![port])
    }

    /// The first (or only) port: what single-host displays show.
    pub fn first(&self) -> u16 {
        self.0.first().copied().unwrap_or(0)
    }

    /// Every port given, in order.
    pub fn all(&self) -> &[u16] {
        &self.0
    }
}

/// A single-port config compares with its number, as before host lists.
impl PartialEq<u16> for Ports {
    fn eq(&self, other: &u16) -> bool {
        self.0.as_slice() == [*other]
    }
}

impl From<u16> for Ports {
    fn from(port: u16) -> Ports {
        Ports::one(port)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Ports, D::Error> {
        struct PortsVisitor;
        impl Visitor<'_> for PortsVisitor {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or a string of comma-separated port numbers")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ports, E> {
                u16::try_from(v)
                    .map(Ports::one)
                    .map_err(|_| E::custom(format!("port {v} is out of range (1-65535)")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ports, E> {
                u16::try_from(v)
                    .map(Ports::one)
                    .map_err(|_| E::custom(format!("port {v} is out of range (1-65535)")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ports, E> {
                let mut out = Vec::new();
                for item in v.split(',') {
                    let item = item.trim();
                    let port = item.parse::<u16>().map_err(|_| {
                        E::custom(format!("{item:?} in port list {v:?} is not a port number"))
                    })?;
                    out.push(port);
                }
                if out.len() > MAX_HOSTS {
                    return Err(E::custom(format!("more than {MAX_HOSTS} ports")));
                }
                Ok(Ports(out))
            }
        }
        d.deserialize_any(PortsVisitor)
    }
}

/// libpq's `target_session_attrs`: which servers of the host list a database's pools accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server that logs in (no role check).
    #[default]
    Any,
    /// A server whose `transaction_read_only` is off.
    ReadWrite,
    /// A server whose `transaction_read_only` is on.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery (a standby).
    Standby,
    /// A standby when one is up, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// libpq's `load_balance_hosts`: how new servers are spread over the matching hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// Hosts are tried in the order listed.
    #[default]
    Disable,
    /// Hosts are tried in a random order for each new server.
    Random,
    /// Each new server starts at the host after the previous one's.
    RoundRobin,
}

/// One entry of a host list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddr {
    /// Host name, IP address, or unix-socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('/') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host` (comma-separated; items may be `name:port` or `[v6]:port`) and pairs each with
/// its port: from the item, else from `ports` (one for all, or one per host; one host with
/// several ports is that host at each port).
pub fn parse_host_list(host: &str, ports: &Ports) -> Result<Vec<HostAddr>, String> {
    let mut items: Vec<&str> = host.split(',').map(str::trim).collect();
    // One host with several ports: that host at each port.
    if items.len() == 1 && ports.all().len() > 1 {
        items = vec![items[0]; ports.all().len()];
    }
    if items.len() > MAX_HOSTS {
        return Err(format!(
            "lists {} hosts; at most {MAX_HOSTS} are allowed",
            items.len()
        ));
    }
    let ports = ports.all();
    if ports.len() != 1 && ports.len() != items.len() {
        return Err(format!(
            "lists {} hosts but port lists {} ports; give one port for all or one per host",
            items.len(),
            ports.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() {
            return Err(format!("host list {host:?} has an empty entry"));
        }
        let default_port = if ports.len() == 1 { ports[0] } else { ports[i] };
        let (name, port) = split_item(item)?;
        let port = port.unwrap_or(default_port);
        if port == 0 {
            return Err(format!("port of host {name:?} must not be 0"));
        }
        out.push(HostAddr {
            host: name.to_string(),
            port,
        });
    }
    Ok(out)
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`; a socket directory or a bare IPv6 address has
/// no port part.
fn split_item(item: &str) -> Result<(&str, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} in host entry {item:?} is not a port number"))
    };
    if item.starts_with('/') {
        return Ok((item, None));
    }
    if let Some(rest) = item.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("host entry {item:?} has no closing ']'"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((addr, Some(port_of(p)?))),
            None if after.is_empty() => Ok((addr, None)),
            None => Err(format!("unexpected {after:?} after ']' in host entry {item:?}")),
        };
    }
    match item.matches(':').count() {
        0 => Ok((item, None)),
        1 => {
            let (name, p) = item.split_once(':').unwrap_or((item, ""));
            Ok((name, Some(port_of(p)?)))
        }
        _ => Ok((item, None)), // a bare IPv6 address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(host: &str, ports: Ports) -> Vec<String> {
        parse_host_list(host, &ports)
            .map(|v| v.iter().map(ToString::to_string).collect())
            .unwrap_or_else(|e| vec![format!("error: {e}")])
    }

    #[test]
    fn host_lists_pair_hosts_with_ports() {
        assert_eq!(addrs("127.0.0.1", Ports::one(5432)), ["127.0.0.1:5432"]);
        assert_eq!(addrs("a, b", Ports::one(5432)), ["a:5432", "b:5432"]);
        assert_eq!(addrs("a,b", Ports(vec![1, 2])), ["a:1", "b:2"]);
        assert_eq!(addrs("a:7,b", Ports::one(5)), ["a:7", "b:5"]);
        assert_eq!(addrs("a", Ports(vec![1, 2])), ["a:1", "a:2"]);
        assert_eq!(addrs("[::1]:7,::1", Ports::one(5)), ["[::1]:7", "[::1]:5"]);
        assert!(addrs("a,b,c", Ports(vec![1, 2]))[0].contains("3 hosts but port lists 2"));
        assert!(addrs("a,,b", Ports::one(5))[0].contains("empty entry"));
        assert!(addrs("a:x", Ports::one(5))[0].contains("not a port number"));
    }
}
