//! Times and durations on the command line: RFC 3339 (UTC out, any offset in) or Unix
//! milliseconds, and durations such as `150m`, `2h30m` or `90s`. Written here to avoid a date
//! dependency; the calendar arithmetic is Howard Hinnant's `days_from_civil`.

/// Milliseconds in one day.
const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let d = i64::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// `2026-11-25T14:15:34.120Z`: RFC 3339 in UTC, with milliseconds only when there are some.
pub fn format_rfc3339(ms: u64) -> String {
    let (date, h, mi, s, frac) = split(ms);
    if frac == 0 {
        format!("{date}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{date}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

/// `2026-11-25 14:15:34`: for tables (always UTC, said in the header).
pub fn format_human(ms: u64) -> String {
    let (date, h, mi, s, _) = split(ms);
    format!("{date} {h:02}:{mi:02}:{s:02}")
}

fn split(ms: u64) -> (String, u64, u64, u64, u64) {
    // u64 ms fit i64 days comfortably after dividing.
    let days = (ms / DAY_MS as u64) as i64;
    let rem = ms % DAY_MS as u64;
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    )
}

/// Parse a time: Unix milliseconds (`1764080134000`), an RFC 3339 timestamp
/// (`2026-11-25T14:15:34Z`, `2026-11-25T15:15:34.5+01:00`, a space instead of `T` is fine), or
/// a bare date (`2026-11-25`, meaning midnight UTC).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time; give RFC 3339 (2026-11-25T14:15:34Z) or Unix milliseconds".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is too large for Unix milliseconds"));
    }
    parse_rfc3339(s).map_err(|why| {
        format!("`{s}` is not a time ({why}); give RFC 3339 such as 2026-11-25T14:15:34Z, a date such as 2026-11-25, or Unix milliseconds")
    })
}

fn parse_rfc3339(s: &str) -> Result<u64, &'static str> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<u32, &'static str> {
        let part = b.get(from..from + len).ok_or("too short")?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err("expected digits");
        }
        Ok(part
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err("the date must be YYYY-MM-DD");
    }
    let (month, day) = (num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day == 0 || day > days_in_month(i64::from(year), month) {
        return Err("day out of range");
    }
    let days = days_from_civil(i64::from(year), month, day);
    let mut ms_of_day: i64 = 0;
    let mut offset_ms: i64 = 0;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') {
            return Err("expected `T` between the date and the time");
        }
        let (h, mi) = (num(11, 2)?, num(14, 2)?);
        if b.get(13) != Some(&b':') {
            return Err("the time must be HH:MM:SS");
        }
        let mut i = 16;
        let mut sec = 0;
        if b.get(16) == Some(&b':') {
            sec = num(17, 2)?;
            i = 19;
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err("time of day out of range");
        }
        // A leap second reads as the last millisecond of its minute.
        let leap = sec == 60;
        let sec = sec.min(59);
        let mut frac_ms: i64 = if leap { 999 } else { 0 };
        if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
            i += 1;
            let start = i;
            let mut scale = 100;
            let mut f = 0i64;
            while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                f += i64::from(d - b'0') * scale;
                scale /= 10;
                i += 1;
            }
            if i == start {
                return Err("expected digits after the decimal point");
            }
            if !leap {
                frac_ms = f;
            }
        }
        ms_of_day = (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec)) * 1000 + frac_ms;
        match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(sign @ (b'+' | b'-')) => {
                let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
                if b.get(i + 3) != Some(&b':') || i + 6 != b.len() {
                    return Err("the offset must be +HH:MM");
                }
                if oh > 23 || om > 59 {
                    return Err("offset out of range");
                }
                let off = (i64::from(oh) * 60 + i64::from(om)) * 60_000;
                offset_ms = if *sign == b'+' { off } else { -off };
            }
            None => return Err("missing the offset (`Z` for UTC, or +HH:MM)"),
            Some(_) => return Err("unexpected characters after the time"),
        }
    }
    let ms = days * DAY_MS + ms_of_day - offset_ms;
    u64::try_from(ms).map_err(|_| "before 1970-01-01T00:00:00Z")
}

/// Parse a duration: `90s`, `150m`, `2h30m`, `1d`, `500ms`, or a combination in any order of
/// units. A bare number is minutes.
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
    let b = t.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad("expected a number"));
        }
        let n: u64 = t[start..i].parse().map_err(|_| bad("too large"))?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match t[ustart..i].to_ascii_lowercase().as_str() {
            "ms" => 1,
            "s" | "sec" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad("unknown unit; use ms, s, m, h or d")),
        };
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_human(1_700_000_000_000), "2023-11-14 22:13:20");
        // The largest value still formats (year 584 million or so) without panicking.
        assert!(format_rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [
            0,
            1,
            999,
            86_399_999,
            951_782_400_123,
            1_764_080_134_000,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_time(&format_rfc3339(ms)), Ok(ms), "{ms}");
        }
        for day in (0..200_000i64).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
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
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
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
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20Zjunk",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
            "-5",
            "2023-11-14T22:13:20.Z",
            "é",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("150m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("2h30m"), Ok(9_000_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("30"), Ok(1_800_000));
        for bad in ["", "m", "5x", "h2", "-5m", "99999999999999999999d", "1.5h"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
