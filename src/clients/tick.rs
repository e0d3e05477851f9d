//! A point in time in 8 bytes where an `Instant` takes 16: every client's record keeps several
//! (connect time, phase and request times, the held server's start, the transaction's start),
//! and an idle client carries them for its whole life.

use std::num::NonZeroU64;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Nanoseconds after [`EPOCH`], plus one (so an `Option<Tick>` is 8 bytes too). Ordered as the
/// instants it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(NonZeroU64);

/// A hundred years before the first reading: a client handed over by an upgrade brings an
/// older connect time, which must still fit; u64 nanoseconds last 584 years.
static EPOCH: LazyLock<Instant> = LazyLock::new(|| {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(100 * 365 * 86_400))
        .unwrap_or(now)
});

impl Tick {
    /// The tick of `at` (an instant before the epoch, which cannot happen, reads as the epoch).
    pub(crate) fn at(at: Instant) -> Tick {
        let nanos = u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX - 1);
        Tick(NonZeroU64::MIN.saturating_add(nanos))
    }

    /// The tick `d` after this one: a later reading's tick from the time between them,
    /// when the caller has that time already (an addition, where [`Tick::at`] subtracts
    /// instants and multiplies).
    pub(crate) fn after(self, d: Duration) -> Tick {
        Tick(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The instant this tick stands for.
    pub(crate) fn instant(self) -> Instant {
        *EPOCH + Duration::from_nanos(self.0.get() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_gives_back_its_instant_to_the_nanosecond() {
        let now = Instant::now();
        assert_eq!(Tick::at(now).instant(), now);
        let old = now - Duration::from_secs(40 * 86_400);
        assert_eq!(Tick::at(old).instant(), old);
        assert!(Tick::at(old) < Tick::at(now));
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
        let later = now + Duration::from_micros(1234);
        assert_eq!(Tick::at(now).after(later - now), Tick::at(later));
    }
}
