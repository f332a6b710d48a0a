//! ISO 8601 timestamps (`2024-05-02T13:58:40.012Z`) as the Flatfile APIs write them.

use std::time::{SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Formats milliseconds since the Unix epoch as UTC with millisecond precision. Instants past
/// the year 9999, which `time` does not count, clamp to its last millisecond.
pub(crate) fn iso_millis(ms: u64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Parses an ISO 8601 date-time (`2024-05-02T13:58:40.012Z`, an offset such as `+02:00`
/// instead of `Z`, or a bare date meaning midnight UTC) into milliseconds since the Unix epoch.
///
/// Digits beyond the millisecond round up, so `createdAt >= since` compared in milliseconds keeps
/// the meaning it has with full precision. Instants before 1970 clamp to 0.
pub(crate) fn parse_iso_millis(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let date = Date::from_calendar_date(
        i32::try_from(year).ok()?,
        Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let mut ms = date.midnight().assume_utc().unix_timestamp() * 1000;
    let rest = &bytes[10..];
    if !rest.is_empty() {
        if !matches!(rest[0], b'T' | b't' | b' ')
            || rest.get(3) != Some(&b':')
            || rest.get(6) != Some(&b':')
        {
            return None;
        }
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        ms += ((hour * 60 + minute) * 60 + second) * 1000;
        let mut at = 19;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            let fraction = &bytes[start..at];
            if fraction.is_empty() {
                return None;
            }
            let mut millis = 0;
            for position in 0..3 {
                millis = millis * 10 + fraction.get(position).map_or(0, |d| i64::from(d - b'0'));
            }
            let beyond = fraction.get(3..).unwrap_or_default();
            ms += millis + i64::from(beyond.iter().any(|d| *d != b'0'));
        }
        match bytes.get(at..)? {
            b"Z" | b"z" => {}
            [sign @ (b'+' | b'-'), ..] => {
                if bytes.len() != at + 6 || bytes[at + 3] != b':' {
                    return None;
                }
                let (hours, minutes) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = (hours * 60 + minutes) * 60_000;
                // The local time is ahead of UTC by a positive offset.
                ms += if *sign == b'+' { -offset } else { offset };
            }
            _ => return None,
        }
    }
    Some(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::{iso_millis, parse_iso_millis};

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_714_658_320_012), "2024-05-02T13:58:40.012Z");
        // 2024 is a leap year: the day after Feb 28 is Feb 29.
        assert_eq!(iso_millis(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso_millis(951_868_799_999), "2000-02-29T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_common_variants() {
        for ms in [
            0,
            1_714_658_320_012,
            1_709_164_800_000,
            951_868_799_999,
            4_102_444_800_001,
        ] {
            assert_eq!(parse_iso_millis(&iso_millis(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_iso_millis("2024-05-02T13:58:40Z"),
            Some(1_714_658_320_000)
        );
        assert_eq!(
            parse_iso_millis("2024-05-02T15:58:40.012+02:00"),
            Some(1_714_658_320_012)
        );
        assert_eq!(
            parse_iso_millis("2024-05-02T12:58:40.012-01:00"),
            Some(1_714_658_320_012)
        );
        assert_eq!(parse_iso_millis("2024-05-02"), Some(1_714_608_000_000));
        // Sub-millisecond digits round up, so an event at .012 is not "since" .0121.
        assert_eq!(
            parse_iso_millis("2024-05-02T13:58:40.0121Z"),
            Some(1_714_658_320_013)
        );
        assert_eq!(
            parse_iso_millis("2024-05-02T13:58:40.0120000Z"),
            Some(1_714_658_320_012)
        );
        assert_eq!(parse_iso_millis("1969-12-31T23:59:59.000Z"), Some(0));
    }

    #[test]
    fn calendar_edges_are_read_and_written_as_the_gregorian_calendar_has_them() {
        for (text, ms) in [
            ("2000-02-29", Some(951_782_400_000)),
            ("2400-02-29", Some(13_574_563_200_000)),
            ("1900-02-29", None),
            ("2100-02-29", None),
            ("2024-04-31", None),
            ("2024-00-01", None),
            ("2024-01-00", None),
            ("2024-12-31", Some(1_735_603_200_000)),
            ("9999-12-31T23:59:59.999Z", Some(253_402_300_799_999)),
            ("0000-01-01", Some(0)),
            ("1970-01-01T00:00:00.001Z", Some(1)),
        ] {
            assert_eq!(parse_iso_millis(text), ms, "{text}");
        }
        for (ms, text) in [
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (13_574_563_200_000, "2400-02-29T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(iso_millis(ms), text, "{ms}");
        }
        // Past the year 9999, which no clock reaches, the last millisecond.
        assert_eq!(iso_millis(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn offsets_fractions_and_separators_are_read_as_they_always_were() {
        let at = 1_714_658_320_000; // 2024-05-02T13:58:40Z
        for (text, ms) in [
            ("2024-05-02t13:58:40z", at),
            ("2024-05-02 13:58:40Z", at),
            ("2024-05-02T13:58:40-00:00", at),
            ("2024-05-03T03:58:40+14:00", at),
            ("2024-05-01T13:59:40-23:59", at),
            ("2024-05-02T13:58:40.5Z", at + 500),
            ("2024-05-02T13:58:40.999000001Z", at + 1_000),
            // A leap second counts as the first second of the next minute.
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
            ("2000-01-01T00:30:00+01:00", 946_683_000_000),
        ] {
            assert_eq!(parse_iso_millis(text), Some(ms), "{text}");
        }
        for bad in [
            "2024-05-02T",
            "2024-05-02T13:58Z",
            "2024-05-02T13:60:00Z",
            "2024-05-02T13:58:61Z",
            "2024-05-02T13:58:40+24:00",
            "2024-05-02T13:58:40+02:60",
            "2024-05-02T13:58:40+02",
            "2024-05-02X13:58:40Z",
            "2024-05-02T13:58:40,5Z",
        ] {
            assert_eq!(parse_iso_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_date_time() {
        for text in [
            "",
            "yesterday",
            "2024-5-2",
            "2024-02-30",
            "2023-02-29T00:00:00Z",
            "2024-13-01",
            "2024-05-02T25:00:00Z",
            "2024-05-02T13:58:40",
            "2024-05-02T13:58:40.Z",
            "2024-05-02T13:58:40.012+0200",
            "2024-05-02T13:58:40.012Zjunk",
            "1714658320012",
        ] {
            assert_eq!(parse_iso_millis(text), None, "{text:?}");
        }
    }
}
