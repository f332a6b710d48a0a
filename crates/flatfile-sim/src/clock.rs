//! ISO 8601 timestamps (`2024-05-02T13:58:40.012Z`) as the Flatfile APIs write them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Formats milliseconds since the Unix epoch as UTC with millisecond precision.
pub(crate) fn iso_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the usual era-based conversion:
/// eras of 400 years are 146,097 days long, and counting years from March puts the leap day last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).expect("a month is between 1 and 12"),
        u32::try_from(day).expect("a day is between 1 and 31"),
    )
}

#[cfg(test)]
mod tests {
    use super::iso_millis;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_714_658_320_012), "2024-05-02T13:58:40.012Z");
        // 2024 is a leap year: the day after Feb 28 is Feb 29.
        assert_eq!(iso_millis(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso_millis(951_868_799_999), "2000-02-29T23:59:59.999Z");
    }
}
