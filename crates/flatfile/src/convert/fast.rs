//! The usual row pages converted in one pass over their bytes, without serde's visitors.
//!
//! Profiles of the serde conversion showed most of its time in per-string UTF-8 checks and the
//! visitor plumbing around every key and cell. Here the body's UTF-8 is checked once and a small
//! validating scanner walks it, copying the same spans the serde conversion copies. The scanner
//! is conservative: a body it cannot vouch for (invalid JSON, an escape in a key, a duplicate
//! field, a row that is not an object, nesting deeper than [`MAX_DEPTH`]) makes it return
//! `None`, and the caller converts the body with serde instead, which remains the definition
//! and words the errors. So a body converted here gives the same bytes as the serde conversion;
//! the tests check that on the fixtures and on damaged bodies.

use serde_json::Value;

use super::{
    LegacyCells, LegacyRowCounts, LegacySummary, RecordsSummary, count_value, id_text,
    is_empty_string, push_id, push_single_line, push_valid, write_legacy_row,
};

/// Arrays and objects nested deeper than this are left to the serde conversion.
const MAX_DEPTH: usize = 64;

/// Converts a legacy rows page into `out`, or returns `None` (with `out` holding anything).
pub(super) fn legacy_page(
    body: &[u8],
    batch_id: &str,
    skip: u64,
    out: &mut Vec<u8>,
) -> Option<LegacySummary> {
    let mut cursor = Cursor::new(body)?;
    let mut pagination: Option<Value> = None;
    let mut rows = None;
    cursor.object(|cursor, key| {
        match key {
            // Small and once per page: read as the serde conversion reads it.
            "pagination" => pagination = serde_json::from_str(cursor.value()?).ok()?,
            "data" if rows.is_none() => rows = Some(legacy_rows(cursor, batch_id, skip, out)?),
            "data" => return None,
            _ => {
                cursor.value()?;
            }
        }
        Some(())
    })?;
    cursor.end()?;
    let rows = rows?;
    let count = |key: &str| {
        pagination
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(count_value)
    };
    Some(LegacySummary {
        delivered: rows.delivered,
        on_page: rows.on_page,
        skipped: rows.skipped,
        total_count: count("totalCount"),
        limit: count("limit"),
        next_offset: count("nextOffset"),
    })
}

fn legacy_rows(
    cursor: &mut Cursor<'_>,
    batch_id: &str,
    skip: u64,
    out: &mut Vec<u8>,
) -> Option<LegacyRowCounts> {
    let mut counts = LegacyRowCounts {
        delivered: 0,
        on_page: 0,
        skipped: 0,
    };
    cursor.array(|cursor| {
        let mut cells = LegacyCells {
            id: None,
            valid: None,
            mapped: None,
        };
        let mut deleted = None;
        // serde's derive refuses a field given twice.
        let mut seen = [false; 4];
        let mut once = |field: usize| (!std::mem::replace(&mut seen[field], true)).then_some(());
        cursor.object(|cursor, key| {
            match key {
                "id" => cells.id = once(0).and_then(|()| cursor.optional_value())?,
                "valid" => cells.valid = once(1).and_then(|()| cursor.optional_bool())?,
                "deleted" => deleted = once(2).and_then(|()| cursor.optional_bool())?,
                "mapped" => cells.mapped = once(3).and_then(|()| cursor.optional_value())?,
                _ => {
                    cursor.value()?;
                }
            }
            Some(())
        })?;
        let index = counts.on_page;
        counts.on_page += 1;
        if deleted == Some(true) {
            counts.skipped += 1;
            return Some(());
        }
        write_legacy_row(out, &cells, batch_id, skip.saturating_add(index)).ok()?;
        counts.delivered += 1;
        Some(())
    })?;
    Some(counts)
}

/// Converts a Platform records page into `out`, or returns `None` (with `out` holding
/// anything). `scratch` holds a record's values until its id is known.
pub(super) fn records_page(
    body: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<RecordsSummary> {
    let mut cursor = Cursor::new(body)?;
    let mut summary = None;
    cursor.object(|cursor, key| {
        match key {
            "data" if summary.is_none() => summary = Some(records_data(cursor, out, scratch)?),
            "data" => return None,
            _ => {
                cursor.value()?;
            }
        }
        Some(())
    })?;
    cursor.end()?;
    summary
}

fn records_data(
    cursor: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<RecordsSummary> {
    let mut rows = None;
    let (mut commit_id, mut version_id) = (None, None);
    let id = |text: &str| {
        serde_json::from_str::<Option<Value>>(text)
            .ok()
            .map(|value| value.as_ref().and_then(id_text))
    };
    cursor.object(|cursor, key| {
        match key {
            "records" if rows.is_none() => rows = Some(records(cursor, out, scratch)?),
            "records" => return None,
            "commitId" => commit_id = id(cursor.value()?)?,
            "versionId" => version_id = id(cursor.value()?)?,
            _ => {
                cursor.value()?;
            }
        }
        Some(())
    })?;
    Some(RecordsSummary {
        rows: rows?,
        commit_id: commit_id.or(version_id),
    })
}

fn records(cursor: &mut Cursor<'_>, out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> Option<u64> {
    let mut rows = 0_u64;
    cursor.array(|cursor| {
        let mut id = None;
        let mut valid = None;
        let mut has_values = false;
        scratch.clear();
        cursor.object(|cursor, key| {
            match key {
                "id" => id = cursor.optional_value()?,
                "valid" => valid = cursor.optional_bool()?,
                "values" if !has_values => {
                    values(cursor, scratch)?;
                    has_values = true;
                }
                "values" => return None,
                _ => {
                    cursor.value()?;
                }
            }
            Some(())
        })?;
        let id = id.filter(|id| !is_empty_string(id))?;
        out.extend_from_slice(b"{\"id\":");
        push_id(out, id).ok()?;
        push_valid(out, valid.unwrap_or(true));
        if has_values {
            out.extend_from_slice(scratch);
        } else {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"}\n");
        rows += 1;
        Some(())
    })?;
    Some(rows)
}

/// A record's `values` (`{key: cell, …}`, or `null`) as `{key: cell.value, …}`.
fn values(cursor: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()> {
    if cursor.null() {
        out.extend_from_slice(b"{}");
        return Some(());
    }
    out.push(b'{');
    let mut first = true;
    cursor.object(|cursor, key| {
        if !first {
            out.push(b',');
        }
        first = false;
        // `key` has no escape, quote or control character: it is its own JSON text.
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        if cursor.null() {
            out.extend_from_slice(b"null");
            return Some(());
        }
        let mut value = None;
        cursor.object(|cursor, key| {
            if key == "value" {
                value = cursor.optional_value()?;
            } else {
                cursor.value()?;
            }
            Some(())
        })?;
        match value {
            Some(raw) => push_single_line(out, raw.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        Some(())
    })?;
    out.push(b'}');
    Some(())
}

/// A validating walk over a JSON text already known to be UTF-8.
struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(body: &'a [u8]) -> Option<Self> {
        Some(Self {
            text: std::str::from_utf8(body).ok()?,
            bytes: body,
            at: 0,
        })
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.whitespace();
        (self.at == self.bytes.len()).then_some(())
    }

    /// Consumes `null` if it comes next.
    fn null(&mut self) -> bool {
        self.whitespace();
        let found = self.bytes[self.at..].starts_with(b"null") && self.literal_ends(self.at + 4);
        if found {
            self.at += 4;
        }
        found
    }

    /// Whether a literal ending at `end` is not run into the next token (`nullx`).
    fn literal_ends(&self, end: usize) -> bool {
        !self.bytes.get(end).is_some_and(u8::is_ascii_alphanumeric)
    }

    /// The members of an object, each handed to `member` with its key; `member` consumes the
    /// value. Keys with escapes are declined.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.whitespace();
            let key = self.plain_string()?;
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The elements of an array, each consumed by `element`.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.peek()? != b'[' {
            return None;
        }
        self.at += 1;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A value's JSON text, or `None` inside the option for `null` (as `Option<&RawValue>`).
    fn optional_value(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            return Some(None);
        }
        self.value().map(Some)
    }

    /// A boolean, or `None` inside the option for `null` (as `Option<bool>`).
    fn optional_bool(&mut self) -> Option<Option<bool>> {
        if self.null() {
            return Some(None);
        }
        for (word, value) in [(&b"true"[..], true), (&b"false"[..], false)] {
            if self.bytes[self.at..].starts_with(word) && self.literal_ends(self.at + word.len()) {
                self.at += word.len();
                return Some(Some(value));
            }
        }
        None
    }

    /// A string without escapes, returned without its quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        if self.next_byte()? != b'"' {
            return None;
        }
        let start = self.at;
        let (stop, byte) = self.next_special()?;
        (byte == b'"').then(|| &self.text[start..stop])
    }

    /// Moves past the next quote or backslash and returns where it was and which it was,
    /// declining a control character before it (JSON strings hold them only escaped).
    fn next_special(&mut self) -> Option<(usize, u8)> {
        let rest = &self.bytes[self.at..];
        // Most of a page is string contents: memchr jumps to the next byte that matters, and
        // the control-character check is a plain fold the compiler vectorises.
        let stop = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[..stop]
            .iter()
            .fold(false, |bad, &byte| bad | (byte < 0x20))
        {
            return None;
        }
        let at = self.at + stop;
        self.at = at + 1;
        Some((at, rest[stop]))
    }

    /// One JSON value's text, without the whitespace around it.
    fn value(&mut self) -> Option<&'a str> {
        self.whitespace();
        let start = self.at;
        self.nested_value(0)?;
        Some(&self.text[start..self.at])
    }

    fn nested_value(&mut self, depth: usize) -> Option<()> {
        match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                self.string_rest()
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'[' if depth < MAX_DEPTH => self.array(|cursor| {
                cursor.whitespace();
                cursor.nested_value(depth + 1)
            }),
            b'{' if depth < MAX_DEPTH => self.object(|cursor, _| {
                cursor.whitespace();
                cursor.nested_value(depth + 1)
            }),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// The rest of a string after its opening quote, escapes checked as JSON defines them.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            match self.next_special()?.1 {
                b'"' => return Some(()),
                b'\\' => match self.next_byte()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.bytes.get(self.at..self.at + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 4;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A number, by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.next_byte()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // `01` is not a number: a digit right after one is declined.
        if self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{legacy_page_serde, records_page_serde};

    const LEGACY: &str = include_str!("../../testdata/legacy-batch-rows-page.json");
    const RECORDS: &str = include_str!("../../testdata/records-page.json");

    /// What each conversion made of a legacy body: the fast one, when it took the body.
    fn legacy_both(body: &[u8]) -> (Option<String>, Option<String>) {
        let summary = |s: &super::LegacySummary, out: &[u8]| {
            format!(
                "{} {} {} {:?} {:?} {:?}\n{}",
                s.delivered,
                s.on_page,
                s.skipped,
                s.total_count,
                s.limit,
                s.next_offset,
                String::from_utf8_lossy(out)
            )
        };
        let mut out = Vec::new();
        let fast = super::legacy_page(body, "b1", 40, &mut out).map(|s| summary(&s, &out));
        let mut out = Vec::new();
        let slow = legacy_page_serde(body, "b1", 40, &mut out)
            .ok()
            .map(|s| summary(&s, &out));
        (fast, slow)
    }

    fn records_both(body: &[u8]) -> (Option<String>, Option<String>) {
        let summary = |s: &super::RecordsSummary, out: &[u8]| {
            format!(
                "{} {:?}\n{}",
                s.rows,
                s.commit_id,
                String::from_utf8_lossy(out)
            )
        };
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let fast = super::records_page(body, &mut out, &mut scratch).map(|s| summary(&s, &out));
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let slow = records_page_serde(body, &mut out, &mut scratch)
            .ok()
            .map(|s| summary(&s, &out));
        (fast, slow)
    }

    /// Bodies the fast conversion must take, each converted as serde converts it.
    #[test]
    fn the_usual_pages_take_the_fast_path_and_convert_as_serde_does() {
        let legacy: &[&str] = &[
            LEGACY,
            r#"{"data":[]}"#,
            r#"{"pagination":null,"data":[{"id":7,"valid":null,"mapped":null,"deleted":null}]}"#,
            r#"{"data":[{"id":"","mapped":{"a":[1,{"b":"x\"y"}],"c":-1.5e3}},{"deleted":true}]}"#,
            "{\"data\":[{\"mapped\":{\n  \"a\": [1,\n 2]\n}, \"raw\": {\"x\": \"\\u00e9\"}}]}",
            r#"{"pagination":{"totalCount":"12","limit":5},"pagination":{"nextOffset":3},"data":[]}"#,
        ];
        for body in legacy {
            let (fast, slow) = legacy_both(body.as_bytes());
            assert!(fast.is_some(), "declined {body}");
            assert_eq!(fast, slow, "{body}");
        }
        let records: &[&str] = &[
            RECORDS,
            r#"{"data":{"records":[]}}"#,
            r#"{"data":{"records":[{"id":"r","values":null},{"id":3,"values":{"a":null}}]}}"#,
            r#"{"data":{"records":[{"id":"r","values":{"a":{"valid":true},"b":{"value":null}}}]}}"#,
            r#"{"data":{"commitId":5,"records":[{"id":"r","id":"s","valid":false}],"versionId":"v"}}"#,
            "{\"data\":{\"records\":[{\"id\":\"r\",\"values\":{\"a\":{\"value\":{\n\"x\": 1}}}}]}}",
        ];
        for body in records {
            let (fast, slow) = records_both(body.as_bytes());
            assert!(fast.is_some(), "declined {body}");
            assert_eq!(fast, slow, "{body}");
        }
    }

    #[test]
    fn bodies_it_cannot_vouch_for_are_left_to_serde() {
        let legacy: &[&str] = &[
            "",
            "[]",
            r#"{"pagination":{}}"#,
            r#"{"data":[],"data":[]}"#,
            r#"{"data":[{"id":"a","id":"b"}]}"#,
            r#"{"data":[["a",true,false,{}]]}"#,
            r#"{"d\u0061ta":[]}"#,
            r#"{"data":[{"id":true}]}"#,
            r#"{"data":[{"mapped":[1]}]}"#,
            r#"{"data":[{"valid":"yes"}]}"#,
            r#"{"data":[]} x"#,
            r#"{"data":[{"mapped":{"a":01}}]}"#,
        ];
        for body in legacy {
            let (fast, _) = legacy_both(body.as_bytes());
            assert_eq!(fast, None, "{body}");
        }
        let records: &[&str] = &[
            r#"{"data":null}"#,
            r#"{"data":{"records":[{"valid":true}]}}"#,
            r#"{"data":{"records":[{"id":""}]}}"#,
            r#"{"data":{"records":[{"id":"r","values":{"a":1}}]}}"#,
            r#"{"data":{"records":[{"id":"r","values":{},"values":{}}]}}"#,
            r#"{"data":{"records":[{"id":"r","values":{"k\"":{"value":1}}}]}}"#,
        ];
        for body in records {
            let (fast, _) = records_both(body.as_bytes());
            assert_eq!(fast, None, "{body}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Any byte of a fixture changed, inserted or removed: whatever the fast conversion
        /// takes, serde takes too and converts to the same bytes and counts.
        #[test]
        fn a_damaged_page_converts_as_serde_converts_it_or_is_declined(
            records in any::<bool>(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(&b"{}[]\",:\\ \nu0123456789.eE+-truefalsnlx\xc3\x01"[..]),
            edit in 0..3_u8,
        ) {
            let mut body = if records { RECORDS } else { LEGACY }.as_bytes().to_vec();
            let at = at.index(body.len());
            match edit {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => {
                    body.remove(at);
                }
            }
            let (fast, slow) = if records { records_both(&body) } else { legacy_both(&body) };
            if fast.is_some() {
                prop_assert_eq!(fast, slow, "{}", String::from_utf8_lossy(&body));
            }
        }
    }
}
