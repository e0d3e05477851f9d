//! Who is on the other end of a socket, from /proc: the command line of a pid, and the process
//! owning a loopback TCP connection. Used only when a leak is reported, never per message.

use std::net::{IpAddr, SocketAddr};

/// The command line of `pid` (arguments joined by spaces, at most 200 characters).
pub(crate) fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(text.chars().take(200).collect())
}

/// The pid owning the client end of the loopback TCP connection `client` -> `server` (IPv4
/// only). Both ends are matched: an ephemeral port can be shared by connections to different
/// destinations.
pub(crate) fn tcp_owner(client: SocketAddr, server: SocketAddr) -> Option<i32> {
    let inode = socket_inode(client, server)?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                return Some(pid);
            }
        }
    }
    None
}

fn hex(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip() else { return None };
    Some(format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    ))
}

/// The inode of the socket `local` -> `remote`, from /proc/net/tcp.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str());
        matches.then(|| fields.get(9)?.parse().ok().filter(|&i: &u64| i != 0))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_loopback_connection_and_its_command_line() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pid = tcp_owner(client.local_addr().unwrap(), client.peer_addr().unwrap()).expect("owner found");
        assert_eq!(pid, std::process::id() as i32);
        assert!(!cmdline(pid).unwrap().is_empty());
    }
}
