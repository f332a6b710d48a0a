//! Helpers shared by the test modules.

use std::time::Duration;

use flatsync_tests::sim::SourceRow;

/// Generous limit for an event of a few thousand rows in a debug build on 2 busy cores.
pub(crate) const EVENT_DEADLINE: Duration = Duration::from_secs(180);

/// Asserts the source data exercises what breaks naive CSV writers, so that a test reading the
/// values back proves quoting works rather than passing on tame data.
pub(crate) fn assert_has_csv_edge_cases(rows: &[SourceRow]) {
    let strings: Vec<String> = rows
        .iter()
        .flat_map(|row| row.values.iter())
        .filter_map(|(_, raw)| serde_json::from_str::<String>(raw.get()).ok())
        .collect();
    for (what, found) in [
        ("a comma", strings.iter().any(|s| s.contains(','))),
        ("a double quote", strings.iter().any(|s| s.contains('"'))),
        ("a newline", strings.iter().any(|s| s.contains('\n'))),
        ("non-ASCII text", strings.iter().any(|s| !s.is_ascii())),
    ] {
        assert!(
            found,
            "the simulator's data has no string with {what}: the test would prove nothing"
        );
    }
    assert!(
        rows.iter().any(|r| !r.valid) && rows.iter().any(|r| r.valid),
        "the simulator's data should mix valid and invalid rows"
    );
}
