//! Durations written as `"10s"`, `"250ms"` or a plain number of seconds.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses `"10s"`, `"250ms"`, `"2m"` or `"1.5"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// serde adapter for duration fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Duration::from_secs(n)),
        Raw::Float(f) if f.is_finite() && f >= 0.0 => Ok(Duration::from_secs_f64(f)),
        Raw::Float(f) => Err(serde::de::Error::custom(format!("invalid duration {f}"))),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}
