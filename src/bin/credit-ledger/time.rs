//! Times and durations on the command line, parsed and printed with `jiff`.
//!
//! In: RFC 3339 with any offset (`2026-11-25T14:15:34Z`, `2026-11-25T15:15:34.5+01:00`), a bare
//! date (`2026-11-25`, midnight UTC) or Unix milliseconds; durations such as `150m`, `2h30m`,
//! `90s`, `1d` or `500ms`. Out: every time in the zone `--tz` names (UTC unless told), RFC 3339
//! in JSON and CSV, `2026-11-25 14:15:34` in tables, durations as `2h 30m`, which reads back as
//! a duration.
//!
//! The zone is a display setting of the whole process, like a locale: `main` sets it once from
//! `--tz` before any command runs, and every time the tool prints goes through this module, so
//! a new command gets `--tz` without plumbing.

use std::sync::OnceLock;

use jiff::civil::Date;
use jiff::fmt::friendly::SpanPrinter;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// A zone times are printed in: the `--tz` option.
#[derive(Debug, Clone)]
pub struct Zone {
    tz: TimeZone,
    /// How headers name it: `UTC`, `Europe/Berlin`.
    label: String,
    /// UTC prints `Z` instead of `+00:00`.
    utc: bool,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            tz: TimeZone::UTC,
            label: "UTC".into(),
            utc: true,
        }
    }

    /// `UTC`, `local` (the machine's zone: `TZ`, else `/etc/localtime`) or an IANA name such as
    /// `Europe/Berlin` (from the system's zoneinfo, else the copy built into the tool).
    pub fn parse(s: &str) -> Result<Zone, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("utc") || s == "Z" {
            return Ok(Zone::utc());
        }
        if s.eq_ignore_ascii_case("local") {
            let tz = TimeZone::try_system().map_err(|e| {
                format!("cannot tell this machine's time zone ({e}); name one, such as --tz Europe/Berlin")
            })?;
            let label = tz.iana_name().unwrap_or("local").to_string();
            return Ok(Zone {
                tz,
                label,
                utc: false,
            });
        }
        let tz = TimeZone::get(s).map_err(|_| {
            format!("`{s}` is not a time zone; give UTC, local, or an IANA name such as Europe/Berlin or America/New_York")
        })?;
        Ok(Zone {
            tz,
            label: s.to_string(),
            utc: false,
        })
    }

    /// `2026-11-25T14:15:34Z`, `2026-11-25T15:15:34.120+01:00`: RFC 3339 in this zone, with
    /// milliseconds only when there are some.
    pub fn rfc3339(&self, ms: u64) -> String {
        let Some(t) = timestamp(ms) else {
            return beyond_range(ms);
        };
        let z = t.to_zoned_datetime(self.tz.clone());
        let fraction = if t.subsec_millisecond() == 0 {
            ""
        } else {
            ".%3f"
        };
        let offset = if self.utc { "Z" } else { "%:z" };
        z.strftime(&format!("%Y-%m-%dT%H:%M:%S{fraction}{offset}"))
            .to_string()
    }

    /// `2026-11-25 14:15:34`: for tables, whose header names the zone.
    pub fn human(&self, ms: u64) -> String {
        match timestamp(ms) {
            Some(t) => t
                .to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string(),
            None => beyond_range(ms),
        }
    }

    /// `2026-11-25 15:15:34 CET`: for sentences, with the zone's abbreviation at that time.
    pub fn human_zoned(&self, ms: u64) -> String {
        match timestamp(ms) {
            Some(t) => t
                .to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S %Z")
                .to_string(),
            None => beyond_range(ms),
        }
    }
}

/// The zone of this process's output, once `main` has set it.
static ZONE: OnceLock<Zone> = OnceLock::new();

/// Set the zone every time is printed in (from `--tz`); the first call wins.
pub fn set_zone(zone: Zone) {
    let _ = ZONE.set(zone);
}

fn zone() -> &'static Zone {
    ZONE.get_or_init(Zone::utc)
}

/// The zone's name for table headers: `DATE (Europe/Berlin)`.
pub fn zone_label() -> &'static str {
    &zone().label
}

/// RFC 3339 in the `--tz` zone: JSON and CSV.
pub fn format_rfc3339(ms: u64) -> String {
    zone().rfc3339(ms)
}

/// `2026-11-25 14:15:34` in the `--tz` zone: table cells.
pub fn format_human(ms: u64) -> String {
    zone().human(ms)
}

/// `2026-11-25 14:15:34 UTC` in the `--tz` zone: sentences.
pub fn format_human_zoned(ms: u64) -> String {
    zone().human_zoned(ms)
}

/// `2h 30m`, `1m 30s`, `500ms`, `0s`: jiff's compact friendly format, which
/// [`parse_duration_ms`] reads back.
pub fn format_duration(ms: u64) -> String {
    let d = SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX));
    SpanPrinter::new().duration_to_string(&d)
}

fn timestamp(ms: u64) -> Option<Timestamp> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()
}

/// A stored time past the year 9999 (only a `--now` of the far future, allowed on purpose, can
/// write one): printed as its number, which `at_ms` carries anyway.
fn beyond_range(ms: u64) -> String {
    format!("{ms} ms after 1970 (past the year 9999)")
}

/// Parse a time: Unix milliseconds (`1764080134000`), an RFC 3339 timestamp with any offset
/// (`2026-11-25T14:15:34Z`, `2026-11-25T15:15:34.5+01:00`; a space instead of `T` is fine),
/// or a bare date (`2026-11-25`, meaning midnight UTC).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let give = "give RFC 3339 such as 2026-11-25T14:15:34Z, a date such as 2026-11-25, or Unix milliseconds";
    if s.is_empty() {
        return Err(format!("empty time; {give}"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is too large for Unix milliseconds; {give}"));
    }
    let t = if s.len() == 10 {
        s.parse::<Date>()
            .and_then(|d| d.to_zoned_datetime(TimeZone::UTC))
            .map(|z| z.timestamp())
    } else {
        s.parse::<Timestamp>()
    }
    .map_err(|e| format!("`{s}` is not a time ({e}); {give}"))?;
    u64::try_from(t.as_millisecond())
        .map_err(|_| format!("`{s}` is before 1970-01-01T00:00:00Z; {give}"))
}

/// Parse a duration: `90s`, `150m`, `2h30m`, `2h 30m`, `1d`, `500ms`, `1.5h` (jiff's friendly
/// format; days are 24 hours), or ISO 8601 (`PT2H30M`). A bare number is minutes.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!("`{s}` is not a duration ({why}); write it like 150m, 2h30m, 90s or 1d")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let minutes: u64 = t.parse().map_err(|_| bad("too large"))?;
        return minutes.checked_mul(60_000).ok_or_else(|| bad("too large"));
    }
    let span: Span = t.parse().map_err(|e: jiff::Error| bad(&e.to_string()))?;
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad("months and years have no fixed length; use days"))?;
    if d.is_negative() {
        return Err(bad("negative"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("finer than a millisecond"));
    }
    u64::try_from(d.as_millis()).map_err(|_| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").expect("the tzdb knows Berlin")
    }

    #[test]
    fn formats_known_instants_in_utc() {
        let utc = Zone::utc();
        assert_eq!(utc.rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc.rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc.rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc.human(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(
            utc.human_zoned(1_700_000_000_000),
            "2023-11-14 22:13:20 UTC"
        );
        // Past jiff's range (year 9999) a time still prints, as its number, without panicking.
        for ms in [253_402_300_800_000, u64::MAX] {
            assert!(utc.rfc3339(ms).starts_with(&ms.to_string()), "{ms}");
            assert!(utc.human(ms).starts_with(&ms.to_string()), "{ms}");
        }
    }

    #[test]
    fn formats_in_a_named_zone_with_its_offset_and_summer_time() {
        let z = berlin();
        // Winter: CET, +01:00.
        assert_eq!(z.rfc3339(1_700_000_000_000), "2023-11-14T23:13:20+01:00");
        assert_eq!(z.human(1_700_000_000_000), "2023-11-14 23:13:20");
        assert_eq!(z.human_zoned(1_700_000_000_000), "2023-11-14 23:13:20 CET");
        // Summer: CEST, +02:00 (2023-07-01T12:00:00Z).
        assert_eq!(
            z.rfc3339(1_688_212_800_500),
            "2023-07-01T14:00:00.500+02:00"
        );
        assert_eq!(z.human_zoned(1_688_212_800_000), "2023-07-01 14:00:00 CEST");
        // What it prints, it reads back.
        assert_eq!(
            parse_time(&z.rfc3339(1_688_212_800_500)),
            Ok(1_688_212_800_500)
        );
        let ny = Zone::parse("America/New_York").unwrap();
        assert_eq!(ny.rfc3339(1_700_000_000_000), "2023-11-14T17:13:20-05:00");
    }

    #[test]
    fn zones_by_name() {
        assert_eq!(Zone::parse("utc").unwrap().label, "UTC");
        assert_eq!(
            Zone::parse("UTC").unwrap().rfc3339(0),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(berlin().label, "Europe/Berlin");
        for bad in ["", "Mars/Olympus", "CET+1", "../../etc/passwd"] {
            let e = Zone::parse(bad).unwrap_err();
            assert!(e.contains("Europe/Berlin"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_what_it_formats() {
        let utc = Zone::utc();
        for ms in [
            0,
            1,
            999,
            86_399_999,
            951_782_400_123,
            1_764_080_134_000,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_time(&utc.rfc3339(ms)), Ok(ms), "{ms}");
            assert_eq!(parse_time(&berlin().rfc3339(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn accepts_offsets_dates_and_millis() {
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_time("2023-11-14t22:13:20.5z"), Ok(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14 22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13Z"), Ok(1_699_999_980_000));
        assert_eq!(
            parse_time("2023-11-14T17:13:20-05:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_time(" 2023-11-14T22:13:20Z "), Ok(1_700_000_000_000));
        // Digits past the millisecond are dropped.
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456789Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-02-29",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20Zjunk",
            "1969-12-31T23:59:59Z",
            "1969-12-31",
            "99999999999999999999999",
            "-5",
            "2023-11-14T22:13:20.Z",
            "é",
        ] {
            let e = parse_time(bad).expect_err(bad);
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("150m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("2h30m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("2h 30m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("PT2H30M"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("30"), Ok(1_800_000));
        for bad in [
            "",
            "m",
            "5x",
            "h2",
            "-5m",
            "99999999999999999999d",
            "1 month",
            "1y",
            "1.5ms",
        ] {
            let e = parse_duration_ms(bad).expect_err(bad);
            assert!(e.contains("150m"), "{bad}: {e}");
        }
    }

    #[test]
    fn printed_durations_read_back() {
        for (ms, shown) in [
            (0, "0s"),
            (500, "500ms"),
            (90_000, "1m 30s"),
            (9_000_000, "2h 30m"),
            (86_400_000, "24h"),
            (90_061_500, "25h 1m 1s 500ms"),
        ] {
            assert_eq!(format_duration(ms), shown);
            assert_eq!(parse_duration_ms(shown), Ok(ms), "{shown}");
        }
        // Too long for i64 milliseconds: the largest, not a wrap.
        assert!(!format_duration(u64::MAX).starts_with('-'));
    }
}
