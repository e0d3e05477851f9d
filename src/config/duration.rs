//! Durations in the config: `"10s"`, `"250ms"`, `"2m"`, `"1h"`, or a plain number of seconds.

use serde::Deserializer;
use serde::de::{self, Visitor};
use std::fmt;
use std::time::Duration;

/// What a duration value may look like; used in error messages.
const EXPECTED: &str =
    "a duration such as \"10s\", \"250ms\", \"2m\", \"1h\" or a non-negative number of seconds";

/// Parses a duration: a non-negative number (integer or decimal) optionally followed by a unit,
/// `ms`, `s`, `m` (or `min`) or `h`; no unit means seconds. Examples: `"10s"`, `"250ms"`, `"2m"`,
/// `"1h"`, `"1.5"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.trim();
    let ok_chars = num
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    let value: f64 = match num.parse() {
        Ok(v) if ok_chars && num.starts_with(|c: char| c != 'e' && c != 'E') => v,
        _ => return Err(format!("invalid duration {text:?}; expected {EXPECTED}")),
    };
    let secs_per_unit = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?}; expected ms, s, m or h"
            ));
        }
    };
    seconds(value * secs_per_unit).map_err(|why| format!("invalid duration {text:?}: {why}"))
}

/// A number of seconds as a `Duration`, refusing negative, infinite and NaN values.
fn seconds(value: f64) -> Result<Duration, String> {
    if value.is_sign_negative() && value != 0.0 {
        return Err("a duration cannot be negative".to_string());
    }
    Duration::try_from_secs_f64(value.abs()).map_err(|_| "out of range".to_string())
}

/// serde adapter for duration fields (`#[serde(deserialize_with = "duration::deserialize")]`).
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Accepts integers, floats and strings.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => Err(E::custom(format!(
                "invalid duration {v}: a duration cannot be negative"
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        seconds(v).map_err(|why| E::custom(format!("invalid duration {v}: {why}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// serde adapter: writes a duration the way the config accepts it back (`"250ms"`, `"10s"`).
pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `"250ms"` for sub-second durations, `"10s"` (or `"1.5s"`) otherwise, `"0"` for zero.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".to_string()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// serde adapter for optional duration fields (absent: None).
pub(super) mod option {
    use serde::Deserializer;
    use std::time::Duration;

    /// A present value is read as a duration.
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

/// serde adapter for durations PgBouncer writes in milliseconds (`tcp_user_timeout`): a bare
/// integer is milliseconds, as there; a string is a duration as everywhere else (`"30s"`).
pub(super) mod millis {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    /// Reads an integer as milliseconds, a string as a duration.
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(MillisVisitor)
    }

    /// Writes the duration as the config accepts it back (`"30s"`).
    pub(in crate::config) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::serialize(d, s)
    }

    struct MillisVisitor;

    impl Visitor<'_> for MillisVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number of milliseconds (as in PgBouncer) or a duration such as \"30s\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_millis(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_millis)
                .map_err(|_| E::custom(format!("invalid duration {v}: a duration cannot be negative")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
    }
}
