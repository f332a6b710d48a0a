//! Row pages from the API into batch lines: the legacy `GET /rest/batch/{id}/rows` page and the
//! Platform `GET /v1/sheets/{id}/records` page. The first byte picks the converter.
#![no_main]

use flatsync_flatfile::{LegacyPage, RecordsPage};
use flatsync_fuzz::assert_batch_lines;
use libfuzzer_sys::fuzz_target;

const BATCH_ID: &str = "b-fuzz";

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        // Rows without an id are named by their position: keep `skip` near u64::MAX at times
        // so the position arithmetic is exercised at its edge.
        let skip = if selector & 2 == 0 {
            u64::from(selector)
        } else {
            u64::MAX - u64::from(selector)
        };
        let Ok(page) = LegacyPage::parse(body, BATCH_ID, skip) else {
            return;
        };
        assert_eq!(
            page.rows_delivered + page.rows_skipped_deleted,
            page.rows_on_page,
            "every row on the page is delivered or skipped as deleted"
        );
        assert_batch_lines(&page.ndjson, page.rows_delivered, "legacy page");
    } else {
        let Ok(page) = RecordsPage::parse(body) else {
            return;
        };
        assert_batch_lines(&page.ndjson, page.rows, "records page");
    }
});
