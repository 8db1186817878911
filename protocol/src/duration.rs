//! `Dur`: a duration written the way compose files and Docker flags write it
//! ("10s", "1m30s", "500ms", "1.5s", "2h"). Serialized as that string, so JSON
//! and YAML show what the user typed; held as whole milliseconds.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub u64);

impl Dur {
    pub const ZERO: Dur = Dur(0);
    pub const fn from_millis(ms: u64) -> Self {
        Dur(ms)
    }
    pub const fn from_secs(s: u64) -> Self {
        Dur(s * 1000)
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Dur(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"10s\", \"1m30s\", \"500ms\")")]
pub struct DurError {
    pub input: String,
    pub reason: &'static str,
}

impl std::str::FromStr for Dur {
    type Err = DurError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurError {
            input: s.to_string(),
            reason,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(err("empty"));
        }
        if t == "0" {
            return Ok(Dur(0));
        }
        if t.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let mut total: f64 = 0.0;
        let mut rest = t;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (ns, us, ms, s, m, h)"))?;
            if num_end == 0 {
                return Err(err("expected a number"));
            }
            let value: f64 = rest[..num_end].parse().map_err(|_| err("bad number"))?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            rest = &rest[unit_end..];
            let ms_per = match unit {
                "ns" => 1e-6,
                "us" | "µs" => 1e-3,
                "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m, h)")),
            };
            total += value * ms_per;
        }
        if !total.is_finite() || total > 1e15 {
            return Err(err("too large"));
        }
        Ok(Dur(total.round() as u64))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return write!(f, "0s");
        }
        if !ms.is_multiple_of(1000) {
            if ms < 1000 {
                return write!(f, "{ms}ms");
            }
            let s = ms as f64 / 1000.0;
            return write!(f, "{s}s");
        }
        let mut secs = ms / 1000;
        let h = secs / 3600;
        secs %= 3600;
        let m = secs / 60;
        secs %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"1m30s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                // A bare number: milliseconds in the binary codec; in text, only 0 is unambiguous.
                Ok(Dur(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(Dur)
                    .map_err(|_| E::custom("negative durations are not allowed"))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_u64(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compose_durations() {
        assert_eq!("10s".parse::<Dur>(), Ok(Dur(10_000)));
        assert_eq!("1m30s".parse::<Dur>(), Ok(Dur(90_000)));
        assert_eq!("500ms".parse::<Dur>(), Ok(Dur(500)));
        assert_eq!("1.5s".parse::<Dur>(), Ok(Dur(1500)));
        assert_eq!("2h".parse::<Dur>(), Ok(Dur(7_200_000)));
        assert_eq!("0".parse::<Dur>(), Ok(Dur(0)));
        assert!("10".parse::<Dur>().is_err());
        assert!("-5s".parse::<Dur>().is_err());
        assert!("5x".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for ms in [0, 1, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 3_723_000] {
            let d = Dur(ms);
            assert_eq!(d.to_string().parse::<Dur>(), Ok(d), "{d}");
        }
    }
}
