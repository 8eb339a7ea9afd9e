//! Event time: a UTC instant in microseconds since the Unix epoch.
//!
//! Encoding is hand-written because `chrono`'s formatter dominated the generator's profile;
//! parsing stays with `chrono`, which handles every RFC 3339 variant (offsets, fractions).

use std::fmt;

use chrono::{DateTime, NaiveDate};
use serde::{Serialize, Serializer};

/// A UTC instant with microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(i64);

/// Microseconds in one second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

impl EventTime {
    /// The latest representable instant (used as "never").
    pub const MAX: EventTime = EventTime(i64::MAX);

    /// The instant `micros` microseconds after 1970-01-01T00:00:00Z.
    pub const fn from_micros(micros: i64) -> Self {
        EventTime(micros)
    }

    /// The instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        EventTime(millis * 1000)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch (floored).
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        EventTime(chrono::Utc::now().timestamp_micros())
    }

    /// This instant moved by `micros` (negative moves back).
    pub const fn add_micros(self, micros: i64) -> Self {
        EventTime(self.0 + micros)
    }

    /// Parses an RFC 3339 timestamp with any offset, normalised to UTC.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = DateTime::parse_from_rfc3339(s).ok()?;
        Some(EventTime(dt.timestamp_micros()))
    }

    /// Parses `YYYY-MM-DD` as midnight UTC of that day.
    pub fn parse_date(s: &str) -> Option<Self> {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        Some(EventTime(
            d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros(),
        ))
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` (or `.uuuuuuZ` when the instant has sub-millisecond
    /// digits) into `out`. Years outside 0..=9999 are clamped to keep the shape fixed.
    pub fn write_rfc3339(self, out: &mut String) {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let sub = self.0.rem_euclid(MICROS_PER_SEC) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let y = y.clamp(0, 9999) as u32;
        let mut buf = [0u8; 27];
        put4(&mut buf[0..4], y);
        buf[4] = b'-';
        put2(&mut buf[5..7], m);
        buf[7] = b'-';
        put2(&mut buf[8..10], d);
        buf[10] = b'T';
        put2(&mut buf[11..13], sod / 3600);
        buf[13] = b':';
        put2(&mut buf[14..16], sod / 60 % 60);
        buf[16] = b':';
        put2(&mut buf[17..19], sod % 60);
        buf[19] = b'.';
        let len = if sub.is_multiple_of(1000) {
            put3(&mut buf[20..23], sub / 1000);
            buf[23] = b'Z';
            24
        } else {
            put3(&mut buf[20..23], sub / 1000);
            put3(&mut buf[23..26], sub % 1000);
            buf[26] = b'Z';
            27
        };
        // Every byte written above is ASCII.
        out.push_str(std::str::from_utf8(&buf[..len]).unwrap_or_default());
    }

    /// The UTC calendar date `YYYY-MM-DD` of this instant.
    pub fn date_string(self) -> String {
        let (y, m, d) = civil_from_days(self.0.div_euclid(MICROS_PER_SEC).div_euclid(86_400));
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// Hour of the UTC day, 0..=23.
    pub fn hour_of_day(self) -> u32 {
        (self.0.div_euclid(MICROS_PER_SEC).rem_euclid(86_400) / 3600) as u32
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(27);
        self.write_rfc3339(&mut s);
        f.write_str(&s)
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = String::with_capacity(27);
        self.write_rfc3339(&mut s);
        serializer.serialize_str(&s)
    }
}

fn put2(dst: &mut [u8], v: u32) {
    dst[0] = b'0' + (v / 10 % 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

fn put3(dst: &mut [u8], v: u32) {
    dst[0] = b'0' + (v / 100 % 10) as u8;
    put2(&mut dst[1..3], v % 100);
}

fn put4(dst: &mut [u8], v: u32) {
    put2(&mut dst[0..2], v / 100);
    put2(&mut dst[2..4], v % 100);
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, exact for the whole `i64` day range we can meet.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            EventTime::from_micros(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let t = EventTime::parse_rfc3339("2025-08-19T14:05:22Z").unwrap();
        assert_eq!(t.to_string(), "2025-08-19T14:05:22.000Z");
        let t = EventTime::parse_rfc3339("2024-02-29T23:59:59.123456+02:00").unwrap();
        assert_eq!(t.to_string(), "2024-02-29T21:59:59.123456Z");
        assert_eq!(t.date_string(), "2024-02-29");
        assert_eq!(t.hour_of_day(), 21);
    }

    proptest! {
        #[test]
        fn encoder_agrees_with_chrono(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            let ours = EventTime::from_micros(micros).to_string();
            let back = EventTime::parse_rfc3339(&ours).unwrap();
            prop_assert_eq!(back.as_micros(), micros);
            let theirs = chrono::DateTime::from_timestamp_micros(micros).unwrap();
            prop_assert_eq!(&ours[..19], theirs.format("%Y-%m-%dT%H:%M:%S").to_string());
        }
    }
}
