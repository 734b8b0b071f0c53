//! UTC calendar arithmetic for timestamps shown to people and written into HL7 messages:
//! milliseconds since the Unix epoch to a civil date and time, and back (for times people
//! type on the command line). Pure; no clock is read here.

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's days-from-civil), the
/// inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a UTC time as people type it: milliseconds since the Unix epoch (digits only),
/// `YYYY-MM-DD` (midnight), or `YYYY-MM-DDTHH:MM[:SS[.mmm]]` with an optional `Z`.
pub fn parse_utc(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| format!("{s:?} is too large"));
    }
    let bad = || {
        format!(
            "{s:?} is not a time: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.mmm]]Z (UTC) or \
             milliseconds since the Unix epoch"
        )
    };
    let s2 = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s2.split_once('T').unwrap_or((s2, ""));
    let num = |v: &str, len: usize| -> Result<u64, String> {
        if v.len() != len || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        v.parse().map_err(|_| bad())
    };
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    let (y, mo, da) = (num(y, 4)?, num(mo, 2)?, num(da, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || y < 1970 {
        return Err(bad());
    }
    let days = days_from_civil(y as i64, mo as u32, da as u32);
    if civil_from_days(days) != (y as i64, mo as u32, da as u32) {
        return Err(format!("{s:?} is not a date in the calendar"));
    }
    let mut ms = days as u64 * 86_400_000;
    if !time.is_empty() {
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut t = hms.split(':');
        let (Some(h), Some(mi)) = (t.next(), t.next()) else {
            return Err(bad());
        };
        let sec = t.next().map(|v| num(v, 2)).transpose()?.unwrap_or(0);
        if t.next().is_some() {
            return Err(bad());
        }
        let (h, mi) = (num(h, 2)?, num(mi, 2)?);
        let millis = if frac.is_empty() { 0 } else { num(frac, 3)? };
        if h > 23 || mi > 59 || sec > 59 {
            return Err(bad());
        }
        ms += ((h * 60 + mi) * 60 + sec) * 1000 + millis;
    }
    Ok(ms)
}

/// A UTC instant broken into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcParts {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub millis: u64,
}

/// Milliseconds since the Unix epoch as UTC date and time parts.
pub fn utc_parts(ms: u64) -> UtcParts {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    UtcParts {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        millis: ms % 1000,
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), for people.
pub fn utc_iso(ms: u64) -> String {
    let p = utc_parts(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Typed times round-trip through the readable form; nonsense is refused by name.
    #[test]
    fn typed_times_parse() {
        for ms in [0u64, 951_782_400_000, 1_764_115_200_123, 1_795_679_772_930] {
            assert_eq!(parse_utc(&utc_iso(ms)), Ok(ms));
            assert_eq!(parse_utc(&ms.to_string()), Ok(ms));
        }
        assert_eq!(parse_utc("2000-02-29"), Ok(951_782_400_000));
        assert_eq!(parse_utc("2026-11-26T08:05Z"), Ok(1_795_680_300_000));
        for bad in [
            "",
            "2026-02-30",
            "2026-13-01",
            "26-11-26",
            "2026-11-26T25:00",
            "soon",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_dates_are_right_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let p = utc_parts(1_764_115_200_123 + 3_723_000);
        assert_eq!(
            (p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis),
            (2025, 11, 26, 1, 2, 3, 123)
        );
    }
}
