//! Host names of server connections to addresses: resolved through the system resolver and kept
//! for at most `dns_max_ttl` (PgBouncer's key; a failed lookup for `dns_nxdomain_ttl`), so a pool
//! opening servers does not ask for every connection, and a host whose address moved is found
//! again within that time. A connection that fails on every cached address looks the name up
//! again at once, so a moved host costs no more than one failed attempt. IP addresses and unix
//! socket directories never come here. The cache is process-wide (names are the configuration's,
//! not clients'), bounded, and listed by SHOW DNS_HOSTS.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Most names kept; past it the entry resolved longest ago goes. Names come from the
/// configuration (and auto databases' templates), so this is far above any real need.
const MAX_NAMES: usize = 1024;

/// How long answers are kept, in milliseconds (0: not at all); set from the configuration.
struct Ttls {
    found_ms: AtomicU64,
    not_found_ms: AtomicU64,
}

/// One cached answer.
#[derive(Debug, Clone)]
enum Answer {
    /// The addresses the name resolved to.
    Found(Vec<SocketAddr>),
    /// The lookup failed with this error.
    NotFound(String),
}

/// A name's cached answer and when it was looked up.
#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    resolved_at: Instant,
}

/// The process-wide cache.
struct Cache {
    ttls: Ttls,
    names: Mutex<HashMap<(String, u16), Entry>>,
}

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache {
    ttls: Ttls {
        found_ms: AtomicU64::new(15_000),
        not_found_ms: AtomicU64::new(15_000),
    },
    names: Mutex::new(HashMap::new()),
});

/// Sets how long answers are kept (`dns_max_ttl`, `dns_nxdomain_ttl`; zero: not cached). Called
/// when a configuration is installed.
pub(crate) fn set_ttls(found: Duration, not_found: Duration) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    CACHE.ttls.found_ms.store(ms(found), Ordering::Relaxed);
    CACHE.ttls.not_found_ms.store(ms(not_found), Ordering::Relaxed);
}

/// A cached name as SHOW DNS_HOSTS shows it.
#[derive(Debug, Clone)]
pub(crate) struct CachedName {
    /// `host:port` as configured.
    pub name: String,
    /// Seconds the answer stays valid.
    pub ttl_left: u64,
    /// The addresses, comma-separated (empty for a failed lookup).
    pub addrs: String,
}

/// Every cached name whose answer is still valid.
pub(crate) fn cached_names() -> Vec<CachedName> {
    let now = Instant::now();
    let names = CACHE.names.lock();
    let mut out: Vec<CachedName> = names
        .iter()
        .filter_map(|((host, port), e)| {
            let left = ttl_of(&e.answer).checked_sub(now.duration_since(e.resolved_at))?;
            let addrs = match &e.answer {
                Answer::Found(a) => a.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(","),
                Answer::NotFound(_) => String::new(),
            };
            Some(CachedName {
                name: format!("{host}:{port}"),
                ttl_left: left.as_secs(),
                addrs,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// How long an answer of this kind is kept now.
fn ttl_of(answer: &Answer) -> Duration {
    let ms = match answer {
        Answer::Found(_) => CACHE.ttls.found_ms.load(Ordering::Relaxed),
        Answer::NotFound(_) => CACHE.ttls.not_found_ms.load(Ordering::Relaxed),
    };
    Duration::from_millis(ms)
}

/// The cached answer for `host:port` while it is valid.
fn cached(host: &str, port: u16) -> Option<Answer> {
    let names = CACHE.names.lock();
    let e = names.get(&(host.to_string(), port))?;
    (e.resolved_at.elapsed() < ttl_of(&e.answer)).then(|| e.answer.clone())
}

/// Keeps `answer` for `host:port` (when its kind is cached at all), making room if full.
fn remember(host: &str, port: u16, answer: Answer) {
    if ttl_of(&answer).is_zero() {
        return;
    }
    let mut names = CACHE.names.lock();
    if names.len() >= MAX_NAMES && !names.contains_key(&(host.to_string(), port)) {
        let oldest = names
            .iter()
            .min_by_key(|(_, e)| e.resolved_at)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            names.remove(&k);
        }
    }
    names.insert(
        (host.to_string(), port),
        Entry {
            answer,
            resolved_at: Instant::now(),
        },
    );
}

/// Asks the system resolver and caches the answer.
async fn look_up(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                let e = format!("{host} resolved to no address");
                remember(host, port, Answer::NotFound(e.clone()));
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, e));
            }
            remember(host, port, Answer::Found(addrs.clone()));
            Ok(addrs)
        }
        Err(e) => {
            remember(host, port, Answer::NotFound(e.to_string()));
            Err(e)
        }
    }
}

/// Tries each address in turn; the last error if none takes the connection.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to")))
}

/// Opens a TCP connection to `host:port`: an IP address directly, a name through the cache. When
/// every cached address fails, the name is looked up again and the fresh addresses tried, if
/// they differ.
pub(crate) async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return TcpStream::connect((ip, port)).await;
    }
    match cached(host, port) {
        Some(Answer::Found(addrs)) => match connect_any(&addrs).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let fresh = look_up(host, port).await?;
                if fresh == addrs {
                    return Err(e);
                }
                tracing::info!(host, port, "server address changed; connecting to the new one");
                connect_any(&fresh).await
            }
        },
        Some(Answer::NotFound(e)) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, e)),
        None => connect_any(&look_up(host, port).await?).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_looked_up_once_within_its_ttl_and_listed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        set_ttls(Duration::from_secs(60), Duration::from_secs(60));
        connect("localhost", port)
            .await
            .expect("connect through the name");
        let listed = cached_names();
        let entry = listed
            .iter()
            .find(|n| n.name == format!("localhost:{port}"))
            .expect("localhost is cached");
        assert!(entry.addrs.contains("127.0.0.1"), "{entry:?}");
        assert!(entry.ttl_left > 50, "{entry:?}");
        // A stale cached address is replaced by a fresh lookup when it fails.
        CACHE.names.lock().insert(
            ("localhost".to_string(), port),
            Entry {
                answer: Answer::Found(vec![SocketAddr::from(([127, 0, 0, 1], 1))]),
                resolved_at: Instant::now(),
            },
        );
        connect("localhost", port)
            .await
            .expect("the moved address is found at once");
        let addrs = cached("localhost", port);
        assert!(
            matches!(&addrs, Some(Answer::Found(a)) if a.iter().all(|a| a.port() == port)),
            "{addrs:?}"
        );
    }
}
