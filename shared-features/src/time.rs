//! Time: window lengths, event-time construction and calendar features.
//!
//! All instants are `i64` milliseconds since the Unix epoch, UTC. Both engines call these same
//! functions, so time arithmetic cannot differ between them.

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Timelike,
};
use chrono_tz::Tz;

/// Milliseconds in one minute.
pub const MINUTE_MS: i64 = 60_000;

/// Parse a duration like `24h`, `90m`, `30s`, `7d` or `1h30m` into milliseconds.
///
/// Units are `d`, `h`, `m`, `s`, `ms`; every number needs a unit, and the total must be positive.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a number and a unit (d, h, m, s, ms), e.g. `24h` or `1h30m`"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let bytes = text.as_bytes();
    let mut total: i64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: i64 = text[start..i].parse().map_err(|_| bad())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let scale = match &text[unit_start..i] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => MINUTE_MS,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total <= 0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(total)
}

/// Milliseconds as a duration in the pipeline file's units, largest first: `7d`, `1h30m`,
/// `250ms`, `0ms` (the inverse of [`parse_duration`] for positive durations).
pub fn format_duration(ms: i64) -> String {
    if ms <= 0 {
        return format!("{ms}ms");
    }
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Parse a time zone name from the IANA database (`America/New_York`).
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone name (e.g. `America/New_York`)"))
}

/// Parse an RFC 3339 instant (`2013-01-01T06:00:00Z`) into epoch milliseconds.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    rfc3339(text).map_err(|why| format!("`{text}` is {why}"))
}

/// [`parse_timestamp`], the error saying only what is wrong (to follow the value in a
/// message): the parser's reason, and, for a date and time without a zone, what to write or
/// declare instead.
pub fn rfc3339(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            let zoneless = [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
                "%Y-%m-%dT%H:%M",
            ]
            .iter()
            .any(|f| NaiveDateTime::parse_from_str(text, f).is_ok());
            let hint = if zoneless {
                "; it has no zone or offset: write one (2016-05-07T15:13:19Z), or declare the \
                 field str and read it as local time with `fn = \"local\"`, a `format` and a `tz`"
            } else {
                ""
            };
            format!("not an RFC 3339 timestamp such as 2016-05-07T15:13:19Z ({e}){hint}")
        })
}

/// Parse a date or instant given in a pipeline file: `2013-11-01` (midnight UTC) or RFC 3339.
pub fn parse_date_or_timestamp(text: &str) -> Result<i64, String> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN).and_utc().timestamp_millis());
    }
    parse_timestamp(text)
        .map_err(|_| format!("`{text}` is neither a date (2013-11-01) nor an RFC 3339 timestamp"))
}

/// Format epoch milliseconds as RFC 3339 in UTC, for messages and exports.
pub fn format_timestamp(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// [`format_timestamp`] for many instants, appending to a buffer: the date is formatted once
/// per day, the time of day with integer arithmetic, so a column of event times costs no
/// allocation per value. The text is [`format_timestamp`]'s, byte for byte.
#[derive(Debug, Default)]
pub struct TimestampText {
    /// The day (since the epoch) and its `YYYY-MM-DDT`; empty for a day outside years 0 to
    /// 9999, whose text [`format_timestamp`] gives whole.
    day: Option<(i64, String)>,
}

impl TimestampText {
    /// Append the text of `ms` to `out`.
    pub fn push(&mut self, ms: i64, out: &mut String) {
        let day = ms.div_euclid(86_400_000);
        let prefix = match &self.day {
            Some((d, prefix)) if *d == day => prefix,
            _ => {
                let whole = day.checked_mul(86_400_000).map(format_timestamp);
                let prefix = match whole.as_deref().and_then(|w| w.split_once('T')) {
                    Some((date, _)) if date.len() == 10 => format!("{date}T"),
                    _ => String::new(),
                };
                &self.day.insert((day, prefix)).1
            }
        };
        if prefix.is_empty() {
            out.push_str(&format_timestamp(ms));
            return;
        }
        let of_day = ms.rem_euclid(86_400_000);
        out.push_str(prefix);
        // HH:MM:SS.mmmZ, digit by digit: `write!` with padding took 3% of a raw export.
        let digit = |n: i64| char::from(b'0' + (n % 10) as u8);
        let (h, m, sec, milli) = (
            of_day / 3_600_000,
            of_day / 60_000 % 60,
            of_day / 1000 % 60,
            of_day % 1000,
        );
        for (n, sep) in [(h, ':'), (m, ':'), (sec, '.')] {
            out.push(digit(n / 10));
            out.push(digit(n));
            out.push(sep);
        }
        out.push(digit(milli / 100));
        out.push(digit(milli / 10));
        out.push(digit(milli));
        out.push('Z');
    }
}

/// Which input of [`local_hhmm_to_utc`] made it fail, so that the caller can name the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimePart {
    /// The year: outside the range of dates.
    Year,
    /// The month: not 1 to 12.
    Month,
    /// The day: not a day of that month.
    Day,
    /// The `hhmm` time.
    Hhmm,
    /// The reference `hhmm` time.
    Reference,
    /// All of them together: a valid date and time whose instant is out of range (a time past
    /// midnight of the last representable day, say).
    Instant,
}

/// Whether epoch milliseconds are an instant this crate can compute with: the range of
/// chrono's dates, about 262,000 years either side of year 0. Event times outside it are
/// refused, so that no time arithmetic further on can overflow.
pub fn in_range(ms: i64) -> bool {
    DateTime::from_timestamp_millis(ms).is_some()
}

/// The instant of a local wall-clock time written as `hhmm` on a local date.
///
/// - `hhmm` is hours * 100 + minutes, `0..=2400`; `2400` is midnight at the end of the day.
/// - With a `reference_hhmm` (the scheduled time), a time more than 12 hours before the reference
///   is taken to be on the next day (a departure delayed past midnight) and one more than 12 hours
///   after it on the previous day (an early departure before midnight).
/// - A wall time that occurs twice (the autumn DST change) is the earlier instant; one that does not
///   exist (the spring change) is read with the offset in force before the change.
///
/// Every step is checked: a date at the edge of the calendar whose time crosses midnight is an
/// error naming [`TimePart::Instant`], never an overflow.
pub fn local_hhmm_to_utc(
    tz: Tz,
    (year, month, day): (i64, i64, i64),
    hhmm: i64,
    reference_hhmm: Option<i64>,
) -> Result<i64, (TimePart, String)> {
    let minutes = hhmm_minutes(hhmm).map_err(|m| (TimePart::Hhmm, m))?;
    let date = local_date(year, month, day)?;
    let mut day_shift: i64 = 0;
    if let Some(reference) = reference_hhmm {
        let reference = hhmm_minutes(reference).map_err(|m| (TimePart::Reference, m))?;
        if minutes + 12 * 60 < reference {
            day_shift = 1;
        } else if minutes > reference + 12 * 60 {
            day_shift = -1;
        }
    }
    let out_of_range = || {
        (
            TimePart::Instant,
            format!(
                "{year}-{month:02}-{day:02} at {hhmm:04}{} in {} is outside the supported range of times",
                match day_shift {
                    1 => " (the next day)",
                    -1 => " (the day before)",
                    _ => "",
                },
                tz.name()
            ),
        )
    };
    let local: NaiveDateTime = date
        .and_time(NaiveTime::MIN)
        .checked_add_signed(chrono::Duration::minutes(minutes + day_shift * 24 * 60))
        .ok_or_else(out_of_range)?;
    local_to_utc(tz, local).ok_or_else(out_of_range)
}

/// The instant of a local wall-clock date-time in `tz`, `None` if out of range. A wall time
/// that occurs twice (the autumn DST change) is the earlier instant; one that does not exist
/// (the spring change) is read with the offset in force a day before.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    let instant = match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => t.timestamp_millis(),
        chrono::LocalResult::Ambiguous(earliest, _) => earliest.timestamp_millis(),
        // A gap in local time (or an instant beyond the range, which chrono reports alike).
        chrono::LocalResult::None => {
            let before = local.checked_sub_days(Days::new(1)).unwrap_or(local);
            let offset = tz.offset_from_utc_datetime(&before).fix();
            local
                .checked_sub_offset(offset)?
                .and_utc()
                .timestamp_millis()
        }
    };
    in_range(instant).then_some(instant)
}

/// Check a local date-time format (chrono's strftime syntax) for `fn = "local"`: it must parse,
/// carry no zone (the pipeline's `tz` gives it), and determine a date; a time of day is
/// optional (midnight).
pub fn check_local_format(format: &str) -> Result<(), String> {
    use chrono::format::{Fixed, Item, StrftimeItems};
    for item in StrftimeItems::new(format) {
        match item {
            Item::Error => {
                return Err(format!(
                    "`{format}` is not a strftime format (chrono's syntax, e.g. \
                     \"%Y-%m-%d %H:%M:%S\")"
                ));
            }
            Item::Fixed(
                Fixed::TimezoneName
                | Fixed::TimezoneOffset
                | Fixed::TimezoneOffsetColon
                | Fixed::TimezoneOffsetDoubleColon
                | Fixed::TimezoneOffsetTripleColon
                | Fixed::TimezoneOffsetColonZ
                | Fixed::TimezoneOffsetZ
                | Fixed::RFC2822
                | Fixed::RFC3339,
            ) => {
                return Err(format!(
                    "`{format}` carries a zone or offset: a local time takes its zone from `tz` \
                     (for times with an offset, declare the field a timestamp)"
                ));
            }
            _ => {}
        }
    }
    // A date written in the format must read back: otherwise it lacks year, month or day.
    let probe = NaiveDate::from_ymd_opt(2001, 2, 3)
        .and_then(|d| d.and_hms_opt(4, 5, 6))
        .unwrap_or_default();
    let text = probe.format(format).to_string();
    match parse_local_naive(format, &text) {
        Ok(t) if t.date() == probe.date() => Ok(()),
        _ => Err(format!(
            "`{format}` does not determine a date: it needs a year, month and day (such as \
             %Y, %m and %d)"
        )),
    }
}

/// Read `text` as a local date-time in `format` (checked by [`check_local_format`]).
fn parse_local_naive(format: &str, text: &str) -> Result<NaiveDateTime, String> {
    use chrono::format::{Parsed, StrftimeItems, parse};
    let mut parsed = Parsed::new();
    parse(&mut parsed, text, StrftimeItems::new(format))
        .map_err(|e| format!("`{text}` does not match the format `{format}` ({e})"))?;
    let date = parsed
        .to_naive_date()
        .map_err(|e| format!("`{text}` in the format `{format}` is not a date ({e})"))?;
    let time = if parsed.hour_mod_12().is_none() && parsed.hour_div_12().is_none() {
        NaiveTime::MIN
    } else {
        parsed
            .to_naive_time()
            .map_err(|e| format!("`{text}` in the format `{format}` is not a time ({e})"))?
    };
    Ok(date.and_time(time))
}

/// The instant of local date-time text in `format` in `tz` (as [`local_to_utc`] resolves DST).
pub fn parse_local(tz: Tz, format: &str, text: &str) -> Result<i64, String> {
    let local = parse_local_naive(format, text)?;
    local_to_utc(tz, local).ok_or_else(|| {
        format!(
            "`{text}` in {} is outside the supported range of times",
            tz.name()
        )
    })
}

/// A calendar date, or which of its parts is wrong and why.
fn local_date(year: i64, month: i64, day: i64) -> Result<NaiveDate, (TimePart, String)> {
    let (min, max) = (NaiveDate::MIN.year(), NaiveDate::MAX.year());
    let y = i32::try_from(year)
        .ok()
        .filter(|y| (min..=max).contains(y))
        .ok_or_else(|| {
            (
                TimePart::Year,
                format!("{year} is not a year from {min} to {max}"),
            )
        })?;
    let m = u32::try_from(month)
        .ok()
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| (TimePart::Month, format!("{month} is not a month (1 to 12)")))?;
    let bad_day = || {
        let last = (28..=31)
            .rev()
            .find(|&d| NaiveDate::from_ymd_opt(y, m, d).is_some())
            .unwrap_or(28);
        (
            TimePart::Day,
            format!("{day} is not a day of {year}-{month:02} (1 to {last})"),
        )
    };
    let d = u32::try_from(day).map_err(|_| bad_day())?;
    NaiveDate::from_ymd_opt(y, m, d).ok_or_else(bad_day)
}

fn hhmm_minutes(hhmm: i64) -> Result<i64, String> {
    let (h, m) = (hhmm / 100, hhmm % 100);
    if !(0..=2400).contains(&hhmm) || m >= 60 {
        return Err(format!(
            "{hhmm} is not a time written as hhmm (0000 to 2400)"
        ));
    }
    Ok(h * 60 + m)
}

fn local(ms: i64, tz: Tz) -> Option<DateTime<Tz>> {
    DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&tz))
}

/// Milliseconds that chrono's dates surely hold (year 262,143 is its limit): within them, an
/// instant in UTC has the hour and weekday that plain arithmetic gives.
const UTC_ARITHMETIC_MS: i64 = 8_000_000_000_000_000;

/// `ms` in UTC within [`UTC_ARITHMETIC_MS`]: the zone and range where [`hour_of_day`] and
/// [`day_of_week`] need no calendar (the common case, worth it per event).
fn plain_utc(ms: i64, tz: Tz) -> bool {
    matches!(tz, Tz::UTC | Tz::Etc__UTC) && ms.unsigned_abs() < UTC_ARITHMETIC_MS as u64
}

/// Hour of day (0 to 23) of an instant in a time zone.
pub fn hour_of_day(ms: i64, tz: Tz) -> Option<i64> {
    if plain_utc(ms, tz) {
        return Some(ms.div_euclid(3_600_000).rem_euclid(24));
    }
    local(ms, tz).map(|t| i64::from(t.hour()))
}

/// Day of week (Monday 0 to Sunday 6) of an instant in a time zone.
pub fn day_of_week(ms: i64, tz: Tz) -> Option<i64> {
    if plain_utc(ms, tz) {
        // 1 January 1970 was a Thursday (3).
        return Some((ms.div_euclid(86_400_000) + 3).rem_euclid(7));
    }
    local(ms, tz).map(|t| i64::from(t.weekday().num_days_from_monday()))
}

/// Month (1 to 12) of an instant in a time zone.
pub fn month_of_year(ms: i64, tz: Tz) -> Option<i64> {
    local(ms, tz).map(|t| i64::from(t.month()))
}

/// Local calendar year.
pub fn year(ms: i64, tz: Tz) -> Option<i64> {
    local(ms, tz).map(|t| i64::from(t.year()))
}

/// Local day of month, 1 to 31.
pub fn day_of_month(ms: i64, tz: Tz) -> Option<i64> {
    local(ms, tz).map(|t| i64::from(t.day()))
}

/// Local ISO 8601 week of the year, 1 to 53 (weeks start on Monday; week 1 holds the year's
/// first Thursday, so 1 to 3 January may be in week 52 or 53 of the year before).
pub fn week_of_year(ms: i64, tz: Tz) -> Option<i64> {
    local(ms, tz).map(|t| i64::from(t.iso_week().week()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_they_parse() {
        for (ms, text) in [
            (604_800_000, "7d"),
            (5_400_000, "1h30m"),
            (3_600_000, "1h"),
            (90_061_001, "1d1h1m1s1ms"),
            (250, "250ms"),
        ] {
            assert_eq!(format_duration(ms), text);
            assert_eq!(parse_duration(text), Ok(ms));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(86_400_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        for bad in [
            "",
            "24",
            "24hh",
            "h",
            "-1h",
            "0h",
            "1.5h",
            "99999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn new_york_departures() {
        let ny = chrono_tz::America::New_York;
        // 2013-01-01 05:17 EST is 10:17 UTC.
        let t = local_hhmm_to_utc(ny, (2013, 1, 1), 517, Some(515)).unwrap();
        assert_eq!(format_timestamp(t), "2013-01-01T10:17:00.000Z");
        // Summer: EDT is UTC-4.
        let t = local_hhmm_to_utc(ny, (2013, 7, 1), 1200, None).unwrap();
        assert_eq!(format_timestamp(t), "2013-07-01T16:00:00.000Z");
        // 2400 is midnight at the end of the day.
        let t = local_hhmm_to_utc(ny, (2013, 1, 1), 2400, None).unwrap();
        assert_eq!(format_timestamp(t), "2013-01-02T05:00:00.000Z");
        // Scheduled 23:59, departed 00:10: the next day.
        let t = local_hhmm_to_utc(ny, (2013, 1, 1), 10, Some(2359)).unwrap();
        assert_eq!(format_timestamp(t), "2013-01-02T05:10:00.000Z");
        // Scheduled 00:05, departed 23:55 the evening before.
        let t = local_hhmm_to_utc(ny, (2013, 1, 2), 2355, Some(5)).unwrap();
        assert_eq!(format_timestamp(t), "2013-01-02T04:55:00.000Z");
    }

    #[test]
    fn dst_changes() {
        let ny = chrono_tz::America::New_York;
        // 2013-11-03 01:30 happens twice: the earlier (EDT, UTC-4) is taken.
        let t = local_hhmm_to_utc(ny, (2013, 11, 3), 130, None).unwrap();
        assert_eq!(format_timestamp(t), "2013-11-03T05:30:00.000Z");
        // 2013-03-10 02:30 does not exist: read with EST (UTC-5), the offset before the change.
        let t = local_hhmm_to_utc(ny, (2013, 3, 10), 230, None).unwrap();
        assert_eq!(format_timestamp(t), "2013-03-10T07:30:00.000Z");
    }

    #[test]
    fn bad_times() {
        let ny = chrono_tz::America::New_York;
        assert!(local_hhmm_to_utc(ny, (2013, 1, 1), 1260, None).is_err());
        assert!(local_hhmm_to_utc(ny, (2013, 1, 1), 2401, None).is_err());
        assert!(local_hhmm_to_utc(ny, (2013, 2, 30), 100, None).is_err());
        assert!(local_hhmm_to_utc(ny, (i64::MAX, 1, 1), 100, None).is_err());
        let part =
            |ymd, hhmm, reference| local_hhmm_to_utc(ny, ymd, hhmm, reference).map_err(|e| e.0);
        assert_eq!(part((2013, 0, 2), 100, None), Err(TimePart::Month));
        assert_eq!(part((2013, 2, 29), 100, None), Err(TimePart::Day));
        assert_eq!(part((2013, 1, -1), 100, None), Err(TimePart::Day));
        assert_eq!(part((300_000, 1, 1), 100, None), Err(TimePart::Year));
        assert_eq!(
            part((2013, 1, 1), 100, Some(9999)),
            Err(TimePart::Reference)
        );
        let day = local_hhmm_to_utc(ny, (2013, 2, 30), 100, None)
            .unwrap_err()
            .1;
        assert_eq!(day, "30 is not a day of 2013-02 (1 to 28)");
    }

    /// The poison pills of issue 10: dates at the edges of the calendar whose time crosses
    /// midnight overflowed chrono and panicked the scorer.
    #[test]
    fn edge_of_calendar_dates_are_errors_not_panics() {
        let ny = chrono_tz::America::New_York;
        let (min, max) = (
            i64::from(NaiveDate::MIN.year()),
            i64::from(NaiveDate::MAX.year()),
        );
        for ymd in [
            (max, 12, 31),
            (min, 1, 1),
            (262_142, 12, 31),
            (-262_143, 1, 1),
        ] {
            for (hhmm, reference) in [
                (10, Some(2359)),
                (2355, Some(5)),
                (2400, None),
                (0, None),
                (1200, Some(1200)),
            ] {
                match local_hhmm_to_utc(ny, ymd, hhmm, reference) {
                    Ok(t) => assert!(in_range(t), "{ymd:?} {hhmm}: {t}"),
                    Err((part, m)) => assert_eq!(part, TimePart::Instant, "{ymd:?} {hhmm}: {m}"),
                }
            }
        }
        let e = local_hhmm_to_utc(ny, (max, 12, 31), 10, Some(2359)).unwrap_err();
        assert_eq!(e.0, TimePart::Instant);
        assert!(e.1.contains("the next day"), "{}", e.1);
        assert!(in_range(0) && !in_range(i64::MAX) && !in_range(i64::MIN));
    }

    #[test]
    fn calendar() {
        let ny = chrono_tz::America::New_York;
        let t = parse_timestamp("2013-01-01T10:17:00Z").unwrap();
        assert_eq!(hour_of_day(t, ny), Some(5));
        // 2013-01-01 was a Tuesday.
        assert_eq!(day_of_week(t, ny), Some(1));
        assert_eq!(month_of_year(t, ny), Some(1));
        // 03:00 UTC on Jan 1 is still Dec 31 (a Monday) in New York.
        let t = parse_timestamp("2013-01-01T03:00:00Z").unwrap();
        assert_eq!(
            (hour_of_day(t, ny), day_of_week(t, ny)),
            (Some(22), Some(0))
        );
    }

    proptest::proptest! {
        /// The arithmetic for UTC gives what the calendar gives, at any instant, the edges of
        /// the arithmetic's range and of chrono's included.
        #[test]
        fn utc_arithmetic_is_the_calendar(
            ms in proptest::prop_oneof![
                proptest::num::i64::ANY,
                -UTC_ARITHMETIC_MS - 2..-UTC_ARITHMETIC_MS + 2,
                UTC_ARITHMETIC_MS - 2..UTC_ARITHMETIC_MS + 2,
                -100_000_000_000_000i64..100_000_000_000_000,
            ]
        ) {
            for tz in [Tz::UTC, Tz::Etc__UTC] {
                let calendar = local(ms, tz);
                proptest::prop_assert_eq!(hour_of_day(ms, tz), calendar.map(|t| i64::from(t.hour())));
                proptest::prop_assert_eq!(
                    day_of_week(ms, tz),
                    calendar.map(|t| i64::from(t.weekday().num_days_from_monday()))
                );
            }
        }
    }

    proptest::proptest! {
        /// Appended in runs within a day and across days, the text is format_timestamp's.
        #[test]
        fn timestamp_text_is_format_timestamp(
            start in proptest::prop_oneof![
                proptest::num::i64::ANY,
                proptest::strategy::Just(i64::MIN),
                -70_000_000_000_000i64..260_000_000_000_000,
                253_402_300_700_000i64..253_402_300_900_000,
                -62_167_219_300_000i64..-62_167_219_100_000,
            ],
            steps in proptest::collection::vec(0i64..40_000_000, 1..20),
        ) {
            let mut text = TimestampText::default();
            let mut t = start;
            for step in steps {
                t = t.saturating_add(step);
                let mut out = String::from("x");
                text.push(t, &mut out);
                let whole = format_timestamp(t);
                proptest::prop_assert_eq!(&out[1..], whole.as_str());
            }
        }
    }
}
