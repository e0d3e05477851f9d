//! The listener keys: `listen_addr` as PgBouncer's comma-separated list of addresses,
//! `unix_socket_mode` (octal, as a string or a TOML integer) and the checks of
//! `unix_socket_mode` and `unix_socket_group`.

use super::PoolerConfig;
use super::keys::Problem;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// What a mode value may look like; used in error messages.
const EXPECTED: &str = "a file mode in octal, e.g. \"0777\", \"0o770\" or the TOML integer 0o777";

/// Highest mode accepted (permission and sticky/setid bits).
const MAX_MODE: u32 = 0o7777;

/// Parses an octal mode string: `"0777"`, `"777"` or `"0o777"`.
pub(crate) fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")).unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= MAX_MODE && !digits.is_empty() => Ok(mode),
        _ => Err(format!("invalid unix_socket_mode {text:?}; expected {EXPECTED}")),
    }
}

/// serde adapter: a mode from an octal string or an integer.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(ModeVisitor)
}

/// serde adapter: writes a mode back as the octal string the config accepts (`"0777"`).
pub(super) fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("0{mode:o}"))
}

/// Accepts integers (taken as the mode's value: write `0o777` in TOML) and octal strings.
struct ModeVisitor;

impl Visitor<'_> for ModeVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        match u32::try_from(v) {
            Ok(mode) if mode <= MAX_MODE => Ok(mode),
            _ => Err(E::custom(format!(
                "invalid unix_socket_mode {v}; expected {EXPECTED}"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        parse_mode(v).map_err(E::custom)
    }
}

impl super::Config {
    /// The first IP address `pooler.listen_addr` names: `*` is 0.0.0.0 and `localhost` is
    /// 127.0.0.1. Falls back to 127.0.0.1 for a value validation would have refused.
    pub fn listen_ip(&self) -> IpAddr {
        self.listen_ips()
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Every address of `pooler.listen_addr`, a comma-separated list as in PgBouncer
    /// (`"*, ::"`, `"127.0.0.1,::1"`), duplicates removed; items validation refuses are left out.
    pub fn listen_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for item in self.pooler.listen_addr.split(',').map(str::trim) {
            let ip = match item {
                "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                addr => match addr.trim_start_matches('[').trim_end_matches(']').parse() {
                    Ok(ip) => ip,
                    Err(_) => continue,
                },
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

/// The id of a group by name, when the system knows it.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes only into `group` and `buf` (whose length is passed) and sets
    // `found` to `&group` or null; both outlive the call.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

/// Appends the problems of the unix-socket keys of `[pooler]`.
pub(super) fn check(p: &PoolerConfig, out: &mut Vec<Problem>) {
    if let Some(group) = p.unix_socket_group.as_deref() {
        if group.trim().is_empty() {
            out.push(Problem::new(
                &["pooler", "unix_socket_group"],
                "must not be empty; leave it out to keep the socket's group as it is",
            ));
        } else if group_id(group).is_none() {
            out.push(Problem::new(
                &["pooler", "unix_socket_group"],
                format!("no such group {group:?} on this system"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mode;

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0777"), Ok(0o777));
        assert_eq!(parse_mode("770"), Ok(0o770));
        assert_eq!(parse_mode("0o700"), Ok(0o700));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("17777").is_err());
    }
}
