//! A records page converted as its body arrives, so a page of 10,000 records is never held
//! whole: only its converted lines and the part of a record cut by the last chunk are.
//!
//! The body is taken in three parts: the head `{"data":{"records":[` (any other opening is
//! held whole and converted at the end, as before), the records, each converted by the fast
//! conversion's own record walk once its closing `}` has arrived, and the tail after the
//! records' `]`, checked at the end together with the head as the whole page would be. So a
//! page converted here gives exactly what [`super::records_page`] gives for the whole body.
//! Where the fast conversion would decline (a record it cannot vouch for, a record longer than
//! [`LONGEST_RECORD`], a tail it refuses, a body that ends early), the records converted so far
//! are gone with their bytes: the caller reads the page again whole and converts it with
//! [`super::records_page`] ([`Finished::ReadAgain`]).

use super::fast::{self, Expect, Run};
use super::{RecordsPage, records_page, replace_lone_surrogates};

/// The longest part of a body held while streaming: a record (or the tail after the records)
/// longer than this makes the page be read again whole.
pub(crate) const LONGEST_RECORD: usize = 1 << 20;

/// Bytes of a chunk first joined to the record the last chunk cut (more if that does not
/// complete it): a few records' worth.
const JOIN_BYTES: usize = 2048;

/// Most bytes reserved for the lines from the body's `Content-Length` before any arrive.
const PREALLOCATE_LIMIT: usize = 16 << 20;

/// Where the conversion of the body is.
#[derive(Debug)]
enum Part {
    /// Before the records' `[`: `pending` holds the opening so far.
    Head,
    /// Inside the records: `pending` holds the start of a record not yet complete.
    Records(Expect),
    /// After the records' `]`: `pending` holds the tail.
    Tail,
    /// The body opened otherwise: `pending` holds the whole body.
    Whole,
    /// The fast conversion declined: nothing is kept, the page must be read again.
    Declined,
}

/// What the caller does with the rest of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Keep feeding.
    Streaming,
    /// The body is held whole from now on, as a body read whole is (and budgeted like one).
    HeldWhole,
    /// Stop reading: the page must be read again whole.
    ReadAgain,
}

/// How a body ended.
#[derive(Debug)]
pub(crate) enum Finished {
    /// The page, as [`super::records_page`] converts the whole body.
    Page(RecordsPage),
    /// The page must be read again whole and given to [`super::records_page`].
    ReadAgain,
}

/// One records page's body, fed chunk by chunk.
#[derive(Debug)]
pub(crate) struct RecordsStream {
    part: Part,
    head: Vec<u8>,
    pending: Vec<u8>,
    out: Vec<u8>,
    scratch: Vec<u8>,
    rows: u64,
}

impl RecordsStream {
    /// A stream for a body of `announced` bytes (its `Content-Length`, if sent).
    pub(crate) fn new(announced: Option<u64>) -> RecordsStream {
        // Cells carry `valid`, `messages` and `updatedAt` beside the value, so the lines are a
        // fraction of the body (as `records_page` reserves).
        let lines = announced
            .and_then(|bytes| usize::try_from(bytes / 3).ok())
            .unwrap_or(0)
            .min(PREALLOCATE_LIMIT);
        RecordsStream {
            part: Part::Head,
            head: Vec::new(),
            pending: Vec::new(),
            out: Vec::with_capacity(lines),
            scratch: Vec::new(),
            rows: 0,
        }
    }

    /// Bytes held: the converted lines and the unconverted rest.
    pub(crate) fn held_bytes(&self) -> usize {
        self.out.capacity() + self.pending.capacity() + self.head.capacity()
    }

    /// Takes the next chunk of the body.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Fed {
        if let Part::Records(expect) = self.part {
            return self.feed_records(chunk, expect);
        }
        self.pending.extend_from_slice(chunk);
        self.go_on()
    }

    /// A chunk inside the records: read in place, apart from the few bytes that complete the
    /// record the last chunk cut (copying every chunk cost more than the record walk's
    /// string scan).
    fn feed_records(&mut self, chunk: &[u8], mut expect: Expect) -> Fed {
        let mut at = 0;
        while !self.pending.is_empty() {
            if at == chunk.len() {
                return self.check_held();
            }
            let cut = self.pending.len();
            let take = (chunk.len() - at).min(cut.max(JOIN_BYTES));
            self.pending.extend_from_slice(&chunk[at..at + take]);
            at += take;
            // Only the cut record: the records after it are read in place.
            let run = fast::records_run(
                &self.pending,
                expect,
                &mut self.out,
                &mut self.scratch,
                &mut self.rows,
                true,
            );
            match run {
                Run::More { used, expect: next } => {
                    expect = next;
                    self.part = Part::Records(expect);
                    if used >= cut {
                        // The cut record is converted; what is left came from this chunk.
                        at -= self.pending.len() - used;
                        self.pending.clear();
                    } else {
                        self.pending.drain(..used);
                    }
                }
                Run::End { used } => {
                    self.pending.drain(..used);
                    self.pending.extend_from_slice(&chunk[at..]);
                    self.part = Part::Tail;
                    return self.check_held();
                }
                Run::Declined => return self.decline(),
            }
        }
        let rest = &chunk[at..];
        let run = fast::records_run(
            rest,
            expect,
            &mut self.out,
            &mut self.scratch,
            &mut self.rows,
            false,
        );
        match run {
            Run::More { used, expect } => {
                self.pending.extend_from_slice(&rest[used..]);
                self.part = Part::Records(expect);
            }
            Run::End { used } => {
                self.pending.extend_from_slice(&rest[used..]);
                self.part = Part::Tail;
            }
            Run::Declined => return self.decline(),
        }
        self.check_held()
    }

    /// Moves on over `pending` from the head.
    fn go_on(&mut self) -> Fed {
        loop {
            match self.part {
                Part::Head => match fast::records_head(&self.pending) {
                    Some(Some(used)) => {
                        self.head = self.pending.drain(..used).collect();
                        self.part = Part::Records(Expect::FirstOrEnd);
                    }
                    Some(None) if self.pending.len() <= LONGEST_RECORD => return Fed::Streaming,
                    Some(None) | None => {
                        self.part = Part::Whole;
                        return Fed::HeldWhole;
                    }
                },
                Part::Records(expect) => {
                    let run = fast::records_run(
                        &self.pending,
                        expect,
                        &mut self.out,
                        &mut self.scratch,
                        &mut self.rows,
                        false,
                    );
                    match run {
                        Run::More { used, expect } => {
                            self.pending.drain(..used);
                            self.part = Part::Records(expect);
                            return self.check_held();
                        }
                        Run::End { used } => {
                            self.pending.drain(..used);
                            self.part = Part::Tail;
                        }
                        Run::Declined => return self.decline(),
                    }
                }
                Part::Tail => return self.check_held(),
                Part::Whole => return Fed::HeldWhole,
                Part::Declined => return Fed::ReadAgain,
            }
        }
    }

    /// The body has ended.
    pub(crate) fn finish(mut self) -> Result<Finished, serde_json::Error> {
        match self.part {
            // Nothing was let go of: the body is all here.
            Part::Head | Part::Whole => records_page(&self.pending).map(Finished::Page),
            Part::Tail => match fast::records_rest(&self.head, &self.pending) {
                Some(rest) => {
                    replace_lone_surrogates(&mut self.out);
                    // The reservation guessed from the body's length is what a batch is
                    // budgeted at downstream (its capacity): give back what the lines left.
                    if self.out.capacity() - self.out.len() > self.out.len() / 16 {
                        self.out.shrink_to_fit();
                    }
                    Ok(Finished::Page(RecordsPage {
                        ndjson: self.out,
                        rows: self.rows,
                        commit_id: rest.commit_id,
                    }))
                }
                None => Ok(Finished::ReadAgain),
            },
            // Cut short, or a body the head promised and the fast conversion cannot vouch for.
            // A valid body closes the records, `data` and the page after the last record
            // converted; a body that cannot is cut short, and reading it again whole would only
            // make serde say so.
            Part::Records(_) if !closes_levels(&self.pending, 3) => {
                Err(serde::de::Error::custom(format_args!(
                    "EOF inside data.records: the body ended after {} records",
                    self.rows
                )))
            }
            Part::Records(_) | Part::Declined => Ok(Finished::ReadAgain),
        }
    }

    fn check_held(&mut self) -> Fed {
        if self.pending.len() > LONGEST_RECORD {
            return self.decline();
        }
        // A record cut by a chunk leaves its start here; memory goes back once it shrank.
        if self.pending.capacity() > 4 * self.pending.len().max(64 << 10) {
            self.pending.shrink_to(self.pending.len().max(64 << 10));
        }
        Fed::Streaming
    }

    fn decline(&mut self) -> Fed {
        self.part = Part::Declined;
        self.pending = Vec::new();
        self.out = Vec::new();
        Fed::ReadAgain
    }
}

/// Whether `bytes`, which start outside any string, close `levels` open arrays or objects:
/// any JSON text ending within them does. Strings are skipped as JSON spells them.
fn closes_levels(bytes: &[u8], levels: usize) -> bool {
    let mut open = levels;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => open += 1,
            b'}' | b']' => {
                open -= 1;
                if open == 0 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Fed, Finished, LONGEST_RECORD, RecordsStream};
    use crate::convert::{RecordsPage, records_page, records_page_serde, replace_lone_surrogates};

    const RECORDS: &[u8] = include_bytes!("../../testdata/records-page.json");

    /// What the stream makes of `body` cut at `cuts` (ascending): `None` when it asks for the
    /// page to be read again whole.
    fn streamed(body: &[u8], cuts: &[usize]) -> Option<Result<RecordsPage, String>> {
        let mut stream = RecordsStream::new(Some(body.len() as u64));
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            if stream.feed(&body[from..cut]) == Fed::ReadAgain {
                return None;
            }
            from = cut;
        }
        match stream.finish() {
            Ok(Finished::Page(page)) => Some(Ok(page)),
            Ok(Finished::ReadAgain) => None,
            Err(error) => Some(Err(error.to_string())),
        }
    }

    /// The serde conversion, the definition, of the whole body.
    fn serde_page(body: &[u8]) -> Option<RecordsPage> {
        let (mut ndjson, mut scratch) = (Vec::new(), Vec::new());
        let summary = records_page_serde(body, &mut ndjson, &mut scratch).ok()?;
        replace_lone_surrogates(&mut ndjson);
        Some(RecordsPage {
            ndjson,
            rows: summary.rows,
            commit_id: summary.commit_id,
        })
    }

    /// The stream gives the page `body` is, whole, or an error where the whole body has one,
    /// or asks for it again; and never asks again for a page the fast conversion takes.
    fn check(body: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
        let whole = records_page(body).ok();
        match streamed(body, cuts) {
            Some(Ok(page)) => {
                prop_assert_eq!(Some(&page), whole.as_ref(), "cuts {:?}", cuts);
                let serde = serde_page(body);
                prop_assert_eq!(Some(&page), serde.as_ref(), "cuts {:?}", cuts);
            }
            Some(Err(error)) => prop_assert!(whole.is_none(), "{} at cuts {:?}", error, cuts),
            None => {
                let mut out = Vec::new();
                let fast = super::fast::records_page(body, &mut out, &mut Vec::new());
                prop_assert!(fast.is_none(), "read again at cuts {:?}", cuts);
            }
        }
        Ok(())
    }

    fn compact(body: &[u8]) -> Vec<u8> {
        let value: serde_json::Value = serde_json::from_slice(body).expect("fixture");
        serde_json::to_vec(&value).expect("to JSON")
    }

    #[test]
    fn the_fixture_converts_as_whole_cut_anywhere_and_byte_by_byte() {
        for body in [RECORDS.to_vec(), compact(RECORDS)] {
            assert!(streamed(&body, &[]).is_some_and(|page| page.is_ok()));
            for cut in 0..=body.len() {
                check(&body, &[cut]).expect("one cut");
            }
            let every_byte: Vec<usize> = (1..body.len()).collect();
            check(&body, &every_byte).expect("byte by byte");
        }
        // Two cuts anywhere in a small page.
        let small =
            br#"{"data":{"records":[{"id":"a","values":{"k":{"value":"\u00e9"}}},{"id":2}],"commitId":"c"}}"#;
        for first in 0..=small.len() {
            for second in first..=small.len() {
                check(small, &[first, second]).expect("two cuts");
            }
        }
    }

    #[test]
    fn a_page_of_many_records_converts_as_whole_in_chunks_of_any_size() {
        let records: Vec<serde_json::Value> = (0..300)
            .map(|index| {
                serde_json::json!({
                    "id": format!("us_rc_{index:08}"),
                    "values": {
                        "name": {"value": format!("n\u{e9}me {index}"), "messages": [], "valid": true},
                        "age": {"value": index, "messages": [{"type": "info"}], "valid": index % 3 == 0},
                    },
                    "valid": index % 7 != 0,
                    "metadata": {},
                })
            })
            .collect();
        let page = serde_json::json!({"data": {"records": records, "commitId": "us_vr_1"}});
        for body in [
            serde_json::to_vec(&page).expect("to JSON"),
            serde_json::to_vec_pretty(&page).expect("to JSON"),
        ] {
            for size in [1, 7, 100, 999, 2048, 2049, 3000, 5000, 16 << 10, body.len()] {
                let cuts: Vec<usize> = (1..body.len().div_ceil(size)).map(|n| n * size).collect();
                check(&body, &cuts).expect("chunks");
                assert!(streamed(&body, &cuts).is_some_and(|page| page.is_ok()));
            }
        }
    }

    #[test]
    fn what_the_fast_conversion_declines_is_read_again_or_fails_as_whole() {
        // The fast conversion declines an escaped key; serde takes it.
        let escaped = br#"{"data":{"records":[{"id":"a"},{"id":"b","v\u0061lues":{}}]}}"#;
        assert_eq!(streamed(escaped, &[]), None);
        assert!(serde_page(escaped).is_some());
        // A second `records` after the first.
        let twice = br#"{"data":{"records":[{"id":"a"}],"records":[]}}"#;
        assert_eq!(streamed(twice, &[]), None);
        // Another opening is held whole and converted as before.
        let other = br#"{"data":{"commitId":"c","records":[{"id":"a"}]}}"#;
        let mut stream = RecordsStream::new(None);
        assert_eq!(stream.feed(other), Fed::HeldWhole);
        assert!(matches!(stream.finish(), Ok(Finished::Page(page)) if page.rows == 1));
        // Cut short inside the records: serde's failure, without reading it again.
        let cut = &RECORDS[..RECORDS.len() / 2];
        let error = streamed(cut, &[100])
            .expect("no second read")
            .expect_err("cut");
        assert!(error.contains("EOF"), "{error}");
        assert!(records_page(cut).is_err());
    }

    #[test]
    fn a_record_longer_than_the_limit_makes_the_page_read_again() {
        let long = "x".repeat(2 * LONGEST_RECORD);
        let body = format!(
            r#"{{"data":{{"records":[{{"id":"a"}},{{"id":"b","values":{{"k":{{"value":"{long}"}}}}}}]}}}}"#
        );
        let cuts: Vec<usize> = (1..body.len() / 4096).map(|n| n * 4096).collect();
        assert!(
            streamed(body.as_bytes(), &cuts).is_none(),
            "converted in the stream"
        );
        assert_eq!(
            records_page(body.as_bytes()).map(|page| page.rows).ok(),
            Some(2)
        );
        // What is held stays near the lines converted, not the body.
        let mut stream = RecordsStream::new(None);
        for chunk in compact(RECORDS).chunks(7) {
            stream.feed(chunk);
        }
        assert!(stream.held_bytes() < 64 << 10, "{}", stream.held_bytes());
    }

    fn any_cell() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z \\\\\"\u{e9}\u{1F600}\n]{0,6}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        });
        (value, any::<bool>()).prop_map(
            |(value, valid)| serde_json::json!({"value": value, "messages": [], "valid": valid}),
        )
    }

    fn any_page() -> impl Strategy<Value = Vec<u8>> {
        let record = (
            "[a-z0-9_]{1,8}",
            prop::option::of(any::<bool>()),
            prop::collection::btree_map("[a-zA-Z]{1,6}", any_cell(), 0..4),
        )
            .prop_map(|(id, valid, values)| {
                let mut record = serde_json::json!({"id": id, "values": values});
                if let Some(valid) = valid {
                    record["valid"] = valid.into();
                }
                record
            });
        (
            prop::collection::vec(record, 0..5),
            prop::option::of("[a-z]{1,4}"),
            any::<bool>(),
        )
            .prop_map(|(records, commit, pretty)| {
                let mut data = serde_json::json!({"records": records});
                if let Some(commit) = commit {
                    data["commitId"] = commit.into();
                }
                let page = serde_json::json!({"data": data});
                if pretty {
                    serde_json::to_vec_pretty(&page).expect("to JSON")
                } else {
                    serde_json::to_vec(&page).expect("to JSON")
                }
            })
    }

    /// A page and where it is cut into chunks.
    fn any_cut_page() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        any_page().prop_flat_map(|body| {
            let len = body.len();
            (
                Just(body),
                prop::collection::vec(0..=len, 0..8).prop_map(|mut cuts| {
                    cuts.sort_unstable();
                    cuts
                }),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_page_cut_anywhere_converts_as_the_whole_page((body, cuts) in any_cut_page()) {
            prop_assert!(streamed(&body, &cuts).is_some_and(|page| page.is_ok()));
            check(&body, &cuts)?;
        }

        #[test]
        fn a_damaged_page_cut_anywhere_converts_as_whole_fails_as_whole_or_is_read_again(
            (body, cuts) in any_cut_page(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
                Just(b','), Just(b':'), Just(b' '), Just(b'0'), Just(0xC3), any::<u8>(),
            ],
            how in 0..3_u8,
        ) {
            let mut damaged = body.clone();
            let at = at.index(damaged.len());
            match how {
                0 => damaged[at] = byte,
                1 => damaged.insert(at, byte),
                _ => {
                    damaged.remove(at);
                }
            }
            let cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(damaged.len())).collect();
            check(&damaged, &cuts)?;
        }
    }
}
