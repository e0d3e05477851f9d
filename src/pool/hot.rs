//! The word a pool keeps beside its settings for the per-transaction checkout and release
//! ([`Hot`]): what they need of the settings, read with one atomic load (its tests are in
//! `settings.rs`, beside the settings it is made from).

use super::PoolSettings;
use std::time::{Duration, Instant};

/// What a transaction's checkout and release need of the settings, packed in one word the pool
/// keeps beside them ([`super::Pool::hot`]): an atomic load where loading the settings costs
/// about a hundred instructions, twice per transaction. Rewritten with every change of the
/// settings; anything else is read from the settings themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hot(u64);

impl Hot {
    const ROUND_ROBIN: u64 = 1;
    const SHARES: u64 = 1 << 1;
    const RESET: u64 = 1 << 2;
    const CHECKS: u64 = 1 << 3;
    const FLAG_BITS: u32 = 4;
    /// The longest server_check_delay the word holds, in nanoseconds (36 years): a longer one
    /// is never due either.
    const MAX_DELAY: u64 = u64::MAX >> Self::FLAG_BITS;

    /// The word for `s`.
    pub(crate) fn of(s: &PoolSettings) -> Hot {
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        let checks = !s.server_check_query.trim().is_empty() || s.ha.checks_role();
        let delay = u64::try_from(s.server_check_delay.as_nanos())
            .unwrap_or(u64::MAX)
            .min(Self::MAX_DELAY);
        Hot(flag(s.round_robin, Self::ROUND_ROBIN)
            | flag(s.shares.cap(s.pool_size).is_some(), Self::SHARES)
            | flag(super::Pool::needs_reset_in(s), Self::RESET)
            | flag(checks, Self::CHECKS)
            | delay << Self::FLAG_BITS)
    }

    /// The word as stored.
    pub(crate) fn from_bits(bits: u64) -> Hot {
        Hot(bits)
    }

    /// The word to store.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    /// server_round_robin.
    pub(crate) fn round_robin(self) -> bool {
        self.0 & Self::ROUND_ROBIN != 0
    }

    /// Fair shares are on (a cap applies).
    pub(crate) fn shares(self) -> bool {
        self.0 & Self::SHARES != 0
    }

    /// Released servers get the reset query.
    pub(crate) fn reset(self) -> bool {
        self.0 & Self::RESET != 0
    }

    /// Whether a server last used at `last_used` must be checked before it is lent at `now`:
    /// there is a check (server_check_query, or the role check of a host list) and it has been
    /// idle server_check_delay. An addition and a comparison (a subtraction of instants costs
    /// about 90 instructions); a sum past the clock's range is never due, and a zero delay
    /// always is (`now` may be a reading from before the release).
    pub(crate) fn check_due(self, last_used: Instant, now: Instant) -> bool {
        if self.0 & Self::CHECKS == 0 {
            return false;
        }
        let delay = self.0 >> Self::FLAG_BITS;
        delay == 0
            || last_used
                .checked_add(Duration::from_nanos(delay))
                .is_some_and(|at| now >= at)
    }
}
