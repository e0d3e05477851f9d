//! `auth_hba_file` for `auth_type = "hba"`: PostgreSQL's pg_hba.conf syntax (local, host, hostssl,
//! hostnossl; database and user lists; addresses with a CIDR suffix or a separate mask; the
//! methods trust, reject, md5, scram-sha-256, password and cert). The first matching line decides.
//! Not supported, and refused when loading: `@file` includes, role membership (`+role`,
//! `samerole`), host names.
//! Options after the method are ignored (the line still applies).

use std::net::IpAddr;

/// How a matching line says to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    /// No password.
    Trust,
    /// Refuse the connection.
    Reject,
    /// MD5 (or SCRAM when the secret is a SCRAM verifier, as PostgreSQL does).
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// Cleartext password.
    Password,
    /// The TLS client certificate's CN must be the user name.
    Cert,
}

/// Which connections a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    conn: ConnType,
    databases: Vec<String>,
    users: Vec<String>,
    /// Network and prefix length; None for `local` and `all`.
    address: Option<(IpAddr, u8)>,
    method: HbaMethod,
}

/// The parsed rules of one file, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

/// A connection to check against the rules.
#[derive(Debug, Clone, Copy)]
pub struct HbaRequest<'a> {
    /// The client's IP, or None for a unix-socket client.
    pub addr: Option<IpAddr>,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// Database name asked for.
    pub database: &'a str,
    /// User name asked for.
    pub user: &'a str,
}

impl HbaRules {
    /// Parses pg_hba.conf text; errors name the line.
    pub fn parse(text: &str) -> Result<HbaRules, String> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let rule = parse_line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            rules.push(rule);
        }
        Ok(HbaRules { rules })
    }

    /// The method of the first line matching `req`, or None when no line does.
    pub fn method_for(&self, req: &HbaRequest<'_>) -> Option<HbaMethod> {
        self.rules.iter().find(|r| r.matches(req)).map(|r| r.method)
    }
}

impl Rule {
    fn matches(&self, req: &HbaRequest<'_>) -> bool {
        let conn_ok = match (self.conn, req.addr) {
            (ConnType::Local, None) => true,
            (ConnType::Host, Some(_)) => true,
            (ConnType::HostSsl, Some(_)) => req.tls,
            (ConnType::HostNoSsl, Some(_)) => !req.tls,
            _ => false,
        };
        let addr_ok = match (self.address, req.addr) {
            (None, _) => true,
            (Some((net, bits)), Some(ip)) => in_network(ip, net, bits),
            (Some(_), None) => false,
        };
        conn_ok
            && addr_ok
            && list_matches(&self.databases, req.database, req.user)
            && list_matches(&self.users, req.user, req.user)
    }
}

fn list_matches(list: &[String], name: &str, user: &str) -> bool {
    list.iter().any(|entry| match entry.as_str() {
        "all" => true,
        "sameuser" => name == user,
        other => other == name,
    })
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    // An IPv4 client seen over an IPv6 socket matches IPv4 rules.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => mask_eq(&a.octets(), &n.octets(), bits),
        (IpAddr::V6(a), IpAddr::V6(n)) => mask_eq(&a.octets(), &n.octets(), bits),
        _ => false,
    }
}

fn mask_eq(a: &[u8], n: &[u8], bits: u8) -> bool {
    let mut left = bits as usize;
    for (x, y) in a.iter().zip(n) {
        let take = left.min(8);
        if take == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - take);
        if x & mask != y & mask {
            return false;
        }
        left -= take;
    }
    true
}

fn parse_line(line: &str) -> Result<Rule, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let conn = match words.first().copied() {
        Some("local") => ConnType::Local,
        Some("host") => ConnType::Host,
        Some("hostssl") => ConnType::HostSsl,
        Some("hostnossl") => ConnType::HostNoSsl,
        Some(other) => return Err(format!("unknown connection type {other:?}")),
        None => return Err("empty line".to_string()),
    };
    let need = if conn == ConnType::Local { 4 } else { 5 };
    if words.len() < need {
        return Err(format!("expected at least {need} fields"));
    }
    let databases = name_list(words[1])?;
    let users = name_list(words[2])?;
    let (address, method_at) = if conn == ConnType::Local {
        (None, 3)
    } else if words[3] == "all" {
        (None, 4)
    } else if let Some((ip, bits)) = words[3].split_once('/') {
        let ip: IpAddr = ip.parse().map_err(|_| format!("bad address {:?}", words[3]))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("bad CIDR mask in {:?}", words[3]))?;
        (Some((ip, bits)), 4)
    } else if let Ok(ip) = words[3].parse::<IpAddr>() {
        let mask: IpAddr = words
            .get(4)
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("address {:?} needs a CIDR suffix or a mask", words[3]))?;
        (Some((ip, mask_bits(mask)?)), 5)
    } else {
        return Err(format!("host names are not supported ({:?})", words[3]));
    };
    let method = match words.get(method_at).copied() {
        Some("trust") => HbaMethod::Trust,
        Some("reject") => HbaMethod::Reject,
        Some("md5") => HbaMethod::Md5,
        Some("scram-sha-256") => HbaMethod::ScramSha256,
        Some("password") => HbaMethod::Password,
        Some("cert") => HbaMethod::Cert,
        Some(other) => return Err(format!("unsupported method {other:?}")),
        None => return Err("method missing".to_string()),
    };
    Ok(Rule {
        conn,
        databases,
        users,
        address,
        method,
    })
}

fn name_list(field: &str) -> Result<Vec<String>, String> {
    field
        .split(',')
        .map(|n| {
            let n = n.trim_matches('"');
            if n.starts_with('@') || n.starts_with('+') {
                Err(format!(
                    "{n:?}: @file includes and +group membership are not supported"
                ))
            } else if n.is_empty() {
                Err("empty name in a list".to_string())
            } else {
                Ok(n.to_string())
            }
        })
        .collect()
}

fn mask_bits(mask: IpAddr) -> Result<u8, String> {
    let bytes = match mask {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    };
    let bits: u32 = bytes.iter().map(|b| b.count_ones()).sum();
    let contiguous = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .skip_while(|&b| b == 1)
        .all(|b| b == 0);
    if contiguous {
        Ok(bits as u8)
    } else {
        Err(format!("mask {mask} is not contiguous"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins() {
        let rules = HbaRules::parse(
            "# comment\nlocal all all trust\nhostssl app alice,bob 10.0.0.0/8 cert\n\
             host all bob 127.0.0.1 255.255.255.255 reject\nhostnossl all all ::1/128 md5\n\
             host all all 0.0.0.0/0 scram-sha-256\n",
        )
        .unwrap();
        let req = |addr: Option<&str>, tls, user| HbaRequest {
            addr: addr.map(|a| a.parse().unwrap()),
            tls,
            database: "app",
            user,
        };
        assert_eq!(rules.method_for(&req(None, false, "x")), Some(HbaMethod::Trust));
        assert_eq!(
            rules.method_for(&req(Some("10.1.2.3"), true, "alice")),
            Some(HbaMethod::Cert)
        );
        assert_eq!(
            rules.method_for(&req(Some("10.1.2.3"), false, "alice")),
            Some(HbaMethod::ScramSha256)
        );
        assert_eq!(
            rules.method_for(&req(Some("127.0.0.1"), false, "bob")),
            Some(HbaMethod::Reject)
        );
        assert_eq!(
            rules.method_for(&req(Some("::1"), false, "bob")),
            Some(HbaMethod::Md5)
        );
        assert_eq!(rules.method_for(&req(Some("::1"), true, "bob")), None);
        assert!(HbaRules::parse("host all @x 1.2.3.4/32 md5").is_err());
        assert!(HbaRules::parse("host all all 1.2.3.4 255.0.255.0 md5").is_err());
    }
}
