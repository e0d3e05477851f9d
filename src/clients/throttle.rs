//! Slowing down failed logins per client IP address: each failure from an address within a
//! minute of the last one doubles the delay before its error (100 ms up to 2 s). Successful
//! logins and other addresses are never delayed; the map of addresses is bounded.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Delay before the error of a first failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay before a failed login's error.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// An address with no failure for this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most addresses remembered; past it the stalest is forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// One address's recent failures.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Recent failed logins per client IP address.
#[derive(Default)]
pub(crate) struct FailedLogins {
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

impl FailedLogins {
    /// Records a failed login from `addr`; returns how long to wait before telling the client.
    pub(crate) fn record_failure(&self, addr: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.by_addr.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES
                && let Some(stalest) = map.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a)
            {
                map.remove(&stalest);
            }
        }
        let f = map.entry(addr).or_insert(Failures { count: 0, last: now });
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        delay_for(f.count)
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_addr.lock().len()
    }
}

/// The delay before the error of the `n`th recent failure (n >= 1).
fn delay_for(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_bound_and_the_map_stays_bounded() {
        assert_eq!(delay_for(1), FIRST_DELAY);
        assert_eq!(delay_for(2), FIRST_DELAY * 2);
        assert_eq!(delay_for(100), MAX_DELAY);
        let f = FailedLogins::default();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            f.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(f.len(), MAX_ADDRESSES);
    }
}
