//! Times as operators type and read them: RFC 3339 in UTC, and durations like `2h` or `7d`.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

const MS_PER_SECOND: i64 = 1_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Turns `--since` text into milliseconds since the Unix epoch: an RFC 3339 time
/// (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`) or a duration back from `now_ms`
/// made of numbers with units `s`, `m`, `h`, `d`, `w` (`30m`, `2h`, `7d`, `1h30m`).
/// `None` when the text is neither.
pub(crate) fn parse_since(text: &str, now_ms: i64) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.as_bytes()[0].is_ascii_digit() && text.len() >= 10 && text.as_bytes()[4] == b'-' {
        return parse_rfc3339(text);
    }
    let back = parse_duration_ms(text)?;
    Some(now_ms.saturating_sub(back))
}

fn parse_duration_ms(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut number = String::new();
    let mut any_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit_seconds = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => SECONDS_PER_DAY,
            'w' => 7 * SECONDS_PER_DAY,
            _ => return None,
        };
        let value: i64 = number.parse().ok()?;
        number.clear();
        total = total.checked_add(value.checked_mul(unit_seconds * MS_PER_SECOND)?)?;
        any_unit = true;
    }
    (number.is_empty() && any_unit).then_some(total)
}

/// `YYYY-MM-DD(T| )HH:MM:SS(.fraction)?(Z|±HH:MM)`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..end.min(3)]);
        millis = padded.parse().ok()?;
        rest = &fraction[end..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3_600 + minutes * 60)
        }
        _ => return None,
    };
    let midnight = calendar_date(year, month, day)?
        .midnight()
        .assume_utc()
        .unix_timestamp();
    let seconds = midnight + hour * 3_600 + minute * 60 + second.min(59) - offset_seconds;
    Some(seconds * MS_PER_SECOND + millis)
}

/// The Gregorian date, if there is one with these numbers.
fn calendar_date(year: i64, month: i64, day: i64) -> Option<Date> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()
}

/// The UTC time `ms` milliseconds after the Unix epoch. `time` counts years -9999 to 9999;
/// instants beyond them, which no clock or stored timestamp comes near, clamp to those ends.
fn utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or_else(|_| {
        let end = if ms < 0 {
            PrimitiveDateTime::MIN
        } else {
            PrimitiveDateTime::MAX
        };
        end.assume_utc()
    })
}

/// `2024-05-01T12:00:00`: an RFC 3339 time up to its fraction and offset.
fn date_and_time(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, to the second:
/// `2024-05-01T12:00:00Z`.
pub fn format_utc(ms: i64) -> String {
    format!("{}Z", date_and_time(utc(ms)))
}

/// Formats milliseconds since the Unix epoch the way JavaScript's `toISOString()` does, which
/// is how Flatfile's own clients send `since`: `2024-05-01T12:00:00.250Z`.
pub(crate) fn format_utc_millis(ms: i64) -> String {
    let at = utc(ms);
    format!("{}.{:03}Z", date_and_time(at), at.millisecond())
}

/// A compact UTC timestamp for directory names: `20240501T120000Z`.
pub(crate) fn compact_utc(ms: i64) -> String {
    format_utc(ms).replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_formatted_like_to_iso_string() {
        assert_eq!(
            format_utc_millis(1_714_564_800_250),
            "2024-05-01T12:00:00.250Z"
        );
        assert_eq!(format_utc_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339(&format_utc_millis(1_714_564_800_007)),
            Some(1_714_564_800_007)
        );
    }

    #[test]
    fn rfc3339_times_are_read_with_their_offset() {
        assert_eq!(parse_since("1970-01-01T00:00:00Z", 0).unwrap(), 0);
        assert_eq!(
            parse_since("2024-05-01T12:00:00Z", 0).unwrap(),
            1_714_564_800_000
        );
        assert_eq!(
            parse_since("2024-05-01T14:00:00.250+02:00", 0).unwrap(),
            1_714_564_800_250
        );
        assert_eq!(
            parse_since("2024-02-29 23:59:59.9-00:30", 0).unwrap(),
            parse_since("2024-03-01T00:29:59.900Z", 0).unwrap()
        );
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00.Z",
        ] {
            assert!(parse_since(bad, 0).is_none(), "{bad}");
        }
    }

    #[test]
    fn calendar_edges_are_read_and_written_as_the_gregorian_calendar_has_them() {
        // Leap years: every fourth, but not every hundredth, but every four hundredth.
        for (text, accepted) in [
            ("2024-02-29T00:00:00Z", true),
            ("2023-02-29T00:00:00Z", false),
            ("1900-02-29T00:00:00Z", false),
            ("2000-02-29T00:00:00Z", true),
            ("2100-02-29T00:00:00Z", false),
            ("2400-02-29T00:00:00Z", true),
            ("2024-04-31T00:00:00Z", false),
            ("2024-12-31T00:00:00Z", true),
            ("2024-00-10T00:00:00Z", false),
            ("2024-05-00T00:00:00Z", false),
            ("2024-05-32T00:00:00Z", false),
        ] {
            assert_eq!(parse_rfc3339(text).is_some(), accepted, "{text}");
        }
        for (text, ms) in [
            ("0000-01-01T00:00:00Z", -62_167_219_200_000),
            ("0001-01-01T00:00:00Z", -62_135_596_800_000),
            ("1900-03-01T00:00:00Z", -2_203_891_200_000),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2400-02-29T00:00:00Z", 13_574_563_200_000),
            ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
        ] {
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
        for (ms, text) in [
            (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
            (-2_203_891_200_001, "1900-02-28T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (13_574_563_200_000, "2400-02-29T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_utc_millis(ms), text, "{ms}");
        }
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(compact_utc(-1), "19691231T235959Z");
    }

    #[test]
    fn offsets_fractions_and_separators_are_read_as_they_always_were() {
        let noon = 1_714_564_800_000; // 2024-05-01T12:00:00Z
        for (text, ms) in [
            ("2024-05-01t12:00:00z", noon),
            ("2024-05-01 12:00:00Z", noon),
            ("2024-05-01T12:00:00-00:00", noon),
            ("2024-05-02T02:00:00+14:00", noon),
            ("2024-04-30T12:01:00-23:59", noon),
            // Fractions of any length, cut to the millisecond.
            ("2024-05-01T12:00:00.5Z", noon + 500),
            ("2024-05-01T12:00:00.05Z", noon + 50),
            ("2024-05-01T12:00:00.123999999999Z", noon + 123),
            // A leap second reads as the second before it.
            ("2024-05-01T12:00:60Z", noon + 59_000),
            // An offset can move the instant into the previous year.
            ("2000-01-01T00:30:00+01:00", 946_683_000_000),
        ] {
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
        for bad in [
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:00:61Z",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+02:60",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00+02",
            "2024-05-01T12:00:00Zjunk",
            "2024-05-01X12:00:00Z",
            "2024-05-01T12:00Z",
            "+024-05-01T12:00:00Z",
            "2024-5-01T12:00:00Z",
            "2024-05-01T12:00:00,5Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("1h30m", now).unwrap(), now - 5_400_000);
        for bad in ["", "h", "5", "5x", "-5m", "2h5"] {
            assert!(parse_since(bad, now).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn utc_formatting_round_trips() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2024-05-01T12:00:00Z",
            "2100-12-31T00:00:01Z",
        ] {
            let ms = parse_since(text, 0).unwrap();
            assert_eq!(format_utc(ms), text);
        }
        assert_eq!(format_utc(1_714_564_800_999), "2024-05-01T12:00:00Z");
        assert_eq!(compact_utc(1_714_564_800_000), "20240501T120000Z");
    }

    #[test]
    fn instants_beyond_the_calendar_clamp_to_its_ends() {
        assert_eq!(format_utc_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_utc(i64::MIN), "-9999-01-01T00:00:00Z");
    }
}
