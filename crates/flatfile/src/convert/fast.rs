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
            b"pagination" => pagination = serde_json::from_str(cursor.value()?).ok()?,
            b"data" if rows.is_none() => rows = Some(legacy_rows(cursor, batch_id, skip, out)?),
            b"data" => return None,
            _ => {
                cursor.raw_value()?;
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
                b"id" => cells.id = once(0).and_then(|()| cursor.optional_value())?,
                b"valid" => cells.valid = once(1).and_then(|()| cursor.optional_bool())?,
                b"deleted" => deleted = once(2).and_then(|()| cursor.optional_bool())?,
                b"mapped" => cells.mapped = once(3).and_then(|()| cursor.optional_value())?,
                _ => {
                    cursor.raw_value()?;
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
            b"data" if summary.is_none() => summary = Some(records_data(cursor, out, scratch)?),
            b"data" => return None,
            _ => {
                cursor.raw_value()?;
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
            b"records" if rows.is_none() => rows = Some(records(cursor, out, scratch)?),
            b"records" => return None,
            b"commitId" => commit_id = id(cursor.value()?)?,
            b"versionId" => version_id = id(cursor.value()?)?,
            _ => {
                cursor.raw_value()?;
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
        record(cursor, out, scratch)?;
        rows += 1;
        Some(())
    })?;
    Some(rows)
}

/// One element of `data.records` as one line of `out`.
#[inline(always)]
fn record(cursor: &mut Cursor<'_>, out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> Option<()> {
    let mut id = None;
    let mut valid = None;
    let mut has_values = false;
    scratch.clear();
    cursor.object(|cursor, key| {
        match key {
            b"id" => id = cursor.optional_value()?,
            b"valid" => valid = cursor.optional_bool()?,
            b"values" if !has_values => {
                values(cursor, scratch)?;
                has_values = true;
            }
            b"values" => return None,
            _ => {
                cursor.raw_value()?;
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
    Some(())
}

/// The opening of a records page up to its records' `[`, as the streaming conversion takes it:
/// `{"data":{"records":[`, with any whitespace between the tokens.
const RECORDS_HEAD: [&[u8]; 7] = [b"{", b"\"data\"", b":", b"{", b"\"records\"", b":", b"["];

/// How far `bytes` match [`RECORDS_HEAD`]: `Some(Some(n))` when its first `n` bytes are the
/// whole head, `Some(None)` when they may still become it, `None` when they cannot.
pub(super) fn records_head(bytes: &[u8]) -> Option<Option<usize>> {
    let mut at = 0;
    for token in RECORDS_HEAD {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
            at += 1;
        }
        let rest = &bytes[at..];
        if rest.len() < token.len() {
            return token.starts_with(rest).then_some(None);
        }
        if !rest.starts_with(token) {
            return None;
        }
        at += token.len();
    }
    Some(Some(at))
}

/// What the streaming conversion expects next inside `data.records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// Right after the `[`: a record or the `]` of an empty array.
    FirstOrEnd,
    /// After a `,`: a record.
    Record,
    /// After a record: `,` or `]`.
    CommaOrEnd,
}

/// How far [`records_run`] got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Run {
    /// The first `used` bytes are converted; the rest needs more bytes (or cannot be vouched
    /// for, which only the end of the body tells).
    More { used: usize, expect: Expect },
    /// The array ended: the first `used` bytes are converted, its `]` included.
    End { used: usize },
    /// Bytes no records page of the fast conversion holds.
    Declined,
}

/// Converts the complete records at the start of `bytes`, the part of `data.records` after what
/// was converted before, into `out`, walking them exactly as [`records`] walks a whole page;
/// with `one_record`, stops after the first record converted.
///
/// A record is converted only once its closing `}` is in `bytes`; it then converts as it would
/// in the whole body, because the walk of a record never looks past that `}`. Whatever ends
/// short (a record cut by the chunk, a multi-byte character cut in two) is left for later.
pub(super) fn records_run(
    bytes: &[u8],
    mut expect: Expect,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    rows: &mut u64,
    one_record: bool,
) -> Run {
    let text = match simdutf8::compat::from_utf8(bytes) {
        Ok(text) => text,
        // A chunk that ends inside a character (non-ASCII text cut by the network): the whole
        // characters before it, checked again the same fast way.
        Err(error) => simdutf8::basic::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or_default(),
    };
    let mut cursor = Cursor::from_text(text);
    loop {
        let start = cursor.at;
        match expect {
            Expect::FirstOrEnd | Expect::CommaOrEnd => match cursor.peek() {
                None => {
                    return Run::More {
                        used: start,
                        expect,
                    };
                }
                Some(b']') => {
                    return Run::End {
                        used: cursor.at + 1,
                    };
                }
                Some(b',') if expect == Expect::CommaOrEnd => {
                    cursor.at += 1;
                    expect = Expect::Record;
                }
                Some(_) if expect == Expect::FirstOrEnd => expect = Expect::Record,
                Some(_) => return Run::Declined,
            },
            Expect::Record => {
                let line_start = out.len();
                if record(&mut cursor, out, scratch).is_none() {
                    out.truncate(line_start);
                    return Run::More {
                        used: start,
                        expect,
                    };
                }
                *rows += 1;
                expect = Expect::CommaOrEnd;
                if one_record {
                    return Run::More {
                        used: cursor.at,
                        expect,
                    };
                }
            }
        }
    }
}

/// The rest of a records page once its records are converted: `head` (what
/// [`records_head`] matched) and `tail` (everything after the records' `]`) checked as the
/// whole page would be, its records left out. `None` when the fast conversion would decline.
pub(super) fn records_rest(head: &[u8], tail: &[u8]) -> Option<RecordsSummary> {
    let mut page = Vec::with_capacity(head.len() + 1 + tail.len());
    page.extend_from_slice(head);
    page.push(b']');
    page.extend_from_slice(tail);
    let mut out = Vec::new();
    let summary = records_page(&page, &mut out, &mut Vec::new())?;
    (summary.rows == 0).then_some(summary)
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
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        if cursor.null() {
            out.extend_from_slice(b"null");
            return Some(());
        }
        let mut value = None;
        cursor.object(|cursor, key| {
            if key == b"value" {
                value = if cursor.null() {
                    None
                } else {
                    Some(cursor.raw_value()?)
                };
            } else {
                cursor.raw_value()?;
            }
            Some(())
        })?;
        match value {
            // Only an object or an array can hold a line break (strings hold them escaped).
            Some(raw @ [b'{' | b'[', ..]) => push_single_line(out, raw),
            Some(raw) => out.extend_from_slice(raw),
            None => out.extend_from_slice(b"null"),
        }
        Some(())
    })?;
    out.push(b'}');
    Some(())
}

/// Eight bytes of `0x01`, for the word-at-a-time byte tests in [`specials`].
const ONES: u64 = u64::from_le_bytes([0x01; 8]);
/// The top bit of each byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// Marks (top bit of the byte) the bytes of `word` that end a plain run of string contents: a
/// quote, a backslash or a control character. Bytes above the first marked one may be marked
/// wrongly (a borrow runs upwards), so only the lowest mark counts; it is always right.
#[inline(always)]
fn specials(word: u64) -> u64 {
    // `x - 1` has its top bit set in a byte where `x` was zero (or at least 0x81, ruled out by
    // `!word`: the three bytes sought are ASCII, so `x` and `word` agree on the top bit).
    let quotes = word ^ (ONES * u64::from(b'"'));
    let backslashes = word ^ (ONES * u64::from(b'\\'));
    let below_space = word.wrapping_sub(ONES * 0x20);
    (quotes.wrapping_sub(ONES) | backslashes.wrapping_sub(ONES) | below_space) & !word & HIGHS
}

/// A validating walk over a JSON text already known to be UTF-8.
struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(body: &'a [u8]) -> Option<Self> {
        // The one check of the whole body, SIMD: std's took 5-8 % of the conversion.
        simdutf8::basic::from_utf8(body).ok().map(Self::from_text)
    }

    fn from_text(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    #[inline(always)]
    fn whitespace(&mut self) {
        // Compact bodies have none: one test, then the loop only for pretty-printed ones.
        if self.bytes.get(self.at).is_some_and(|&byte| byte <= b' ') {
            self.whitespace_run();
        }
    }

    #[cold]
    fn whitespace_run(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after any whitespace, not consumed.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        if byte > b' ' {
            return Some(byte);
        }
        self.whitespace_run();
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
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
    #[inline(always)]
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
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
    #[inline(always)]
    fn optional_value(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            return Some(None);
        }
        self.value().map(Some)
    }

    /// A boolean, or `None` inside the option for `null` (as `Option<bool>`).
    #[inline(always)]
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
    #[inline(always)]
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        if self.next_byte()? != b'"' {
            return None;
        }
        let start = self.at;
        let (stop, byte) = self.next_special()?;
        (byte == b'"').then(|| self.bytes.get(start..stop))?
    }

    /// Moves past the next quote or backslash and returns where it was and which it was,
    /// declining a control character before it (JSON strings hold them only escaped).
    #[inline(always)]
    fn next_special(&mut self) -> Option<(usize, u8)> {
        // Most of a page is short strings (keys, names, dates): eight bytes at a time with
        // plain integer arithmetic beats a call into memchr, whose set-up costs more than such
        // a string, and tests for control characters in the same pass.
        let mut at = self.at;
        loop {
            let Some(chunk) = self.bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) else {
                return self.next_special_slowly(at);
            };
            let found = specials(u64::from_le_bytes(*chunk));
            if found != 0 {
                at += (found.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        let byte = *self.bytes.get(at)?;
        if byte < 0x20 {
            return None;
        }
        self.at = at + 1;
        Some((at, byte))
    }

    /// [`Self::next_special`] for the last few bytes of the body.
    #[cold]
    fn next_special_slowly(&mut self, mut at: usize) -> Option<(usize, u8)> {
        loop {
            match *self.bytes.get(at)? {
                byte @ (b'"' | b'\\') => {
                    self.at = at + 1;
                    return Some((at, byte));
                }
                0..0x20 => return None,
                _ => at += 1,
            }
        }
    }

    /// One JSON value's text, without the whitespace around it.
    #[inline(always)]
    fn value(&mut self) -> Option<&'a str> {
        self.whitespace();
        let start = self.at;
        self.scalar_or_skip()?;
        self.text.get(start..self.at)
    }

    /// [`Self::value`] as bytes, sparing the check that its ends are character boundaries
    /// (they are ASCII bytes of the text).
    #[inline(always)]
    fn raw_value(&mut self) -> Option<&'a [u8]> {
        self.whitespace();
        let start = self.at;
        self.scalar_or_skip()?;
        self.bytes.get(start..self.at)
    }

    /// Moves past one value: most are strings, numbers and literals, taken here without the
    /// container machinery of [`Self::skip`].
    #[inline(always)]
    fn scalar_or_skip(&mut self) -> Option<()> {
        match *self.bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                self.string_rest()
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            // `"messages":[]`, `"metadata":{}`: empty containers are common in records.
            b'[' if self.bytes.get(self.at + 1) == Some(&b']') => {
                self.at += 2;
                Some(())
            }
            b'{' if self.bytes.get(self.at + 1) == Some(&b'}') => {
                self.at += 2;
                Some(())
            }
            _ => self.skip(),
        }
    }

    /// Moves past one JSON value that starts right here, checking it as JSON defines it.
    ///
    /// A loop with the open containers in a bit set rather than a recursion: values nest a
    /// little everywhere (`"messages":[]`, a cell's object), and a call per token cost more
    /// than the token.
    fn skip(&mut self) -> Option<()> {
        // Bit `d` is set when the container at depth `d` (0 the outermost) is an object.
        let mut objects = 0_u64;
        let mut depth = 0_usize;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    self.string_rest()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'[' | b'{') if depth < MAX_DEPTH => {
                    self.at += 1;
                    let object = open == b'{';
                    objects = objects & !(1 << depth) | u64::from(object) << depth;
                    depth += 1;
                    if self.peek()? != if object { b'}' } else { b']' } {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                    depth -= 1;
                }
                _ => return None,
            }
            // A value ended: close the containers it ends, up to the next value.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let object = objects >> (depth - 1) & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        self.whitespace();
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.at += 1;
                depth -= 1;
            }
        }
    }

    /// A member's key and colon inside a skipped object, and the whitespace up to its value.
    #[inline(always)]
    fn key(&mut self) -> Option<()> {
        if self.next_byte()? != b'"' {
            return None;
        }
        self.string_rest()?;
        if self.peek()? != b':' {
            return None;
        }
        self.at += 1;
        self.whitespace();
        Some(())
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// The rest of a string after its opening quote, escapes checked as JSON defines them.
    #[inline(always)]
    fn string_rest(&mut self) -> Option<()> {
        loop {
            match self.next_special()?.1 {
                b'"' => return Some(()),
                _ => self.escape()?,
            }
        }
    }

    /// An escape after its backslash.
    fn escape(&mut self) -> Option<()> {
        match self.next_byte()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                let hex = self.bytes.get(self.at..self.at + 4)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                self.at += 4;
                Some(())
            }
            _ => None,
        }
    }

    /// A number, by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    #[inline(always)]
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

    #[inline(always)]
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

    /// Containers nest up to [`super::MAX_DEPTH`] deep in a value the scanner copies or skips.
    #[test]
    fn nesting_is_taken_up_to_the_limit_and_declined_beyond_it() {
        for (depth, taken) in [(super::MAX_DEPTH, true), (super::MAX_DEPTH + 1, false)] {
            // The `mapped` object is the outermost container.
            let inner = depth - 1;
            let nested = format!("{}{}", "[".repeat(inner), "]".repeat(inner));
            for body in [
                format!(r#"{{"data":[{{"mapped":{{"a":{nested}}}}}]}}"#),
                format!(r#"{{"data":[{{"raw":{{"a":{nested}}},"mapped":{{}}}}]}}"#),
            ] {
                let (fast, slow) = legacy_both(body.as_bytes());
                assert_eq!(fast.is_some(), taken, "depth {depth}");
                assert!(slow.is_some(), "depth {depth}");
                if taken {
                    assert_eq!(fast, slow);
                }
            }
        }
    }

    /// Strings ending at every offset from a word boundary, near the end of the body too, with
    /// escapes and multi-byte characters before the quote.
    #[test]
    fn strings_end_wherever_they_end() {
        for length in 0..20 {
            for filler in ["a", "é", "\\n", "\\u00e9", "\\\""] {
                let text = filler.repeat(length);
                let body =
                    format!(r#"{{"data":[{{"mapped":{{"k{text}":"{text}"}},"id":"{text}x"}}]}}"#);
                let (fast, slow) = legacy_both(body.as_bytes());
                assert!(fast.is_some(), "declined {body}");
                assert_eq!(fast, slow, "{body}");
                let body = format!(
                    r#"{{"data":{{"records":[{{"id":"r","values":{{"k":{{"value":"{text}"}}}}}}]}},"x":"{text}"}}"#
                );
                let (fast, slow) = records_both(body.as_bytes());
                assert!(fast.is_some(), "declined {body}");
                assert_eq!(fast, slow, "{body}");
            }
        }
    }

    /// Any JSON value: strings with any characters (written by serde, so escaped where JSON
    /// requires), numbers, nesting, compact or pretty-printed.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn json_text(value: &serde_json::Value, pretty: bool) -> String {
        let text = if pretty {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        };
        text.unwrap_or_default()
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

        /// A lone word of eight bytes: the lowest byte [`super::specials`] marks is the first
        /// quote, backslash or control character.
        #[test]
        fn specials_marks_the_first_byte_that_ends_plain_contents(word in any::<[u8; 8]>()) {
            let first = word.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let found = super::specials(u64::from_le_bytes(word));
            let marked = (found != 0).then(|| (found.trailing_zeros() / 8) as usize);
            prop_assert_eq!(marked, first);
        }

        /// Any values in the skipped and the copied parts of a page: the fast conversion takes
        /// the page (no key escapes where it declines them) and converts it as serde does.
        #[test]
        fn any_values_convert_as_serde_converts_them(
            raw in any_json(),
            mapped in prop::collection::btree_map("[a-z_]{1,8}", any_json(), 0..5),
            cell in any_json(),
            other in any_json(),
            pretty in any::<bool>(),
        ) {
            let mapped = serde_json::Value::Object(mapped.into_iter().collect());
            let body = format!(
                r#"{{"data":[{{"id":"r1","raw":{},"mapped":{},"other":{}}}],"x":{}}}"#,
                json_text(&raw, pretty), json_text(&mapped, pretty), json_text(&other, pretty),
                json_text(&raw, pretty),
            );
            let (fast, slow) = legacy_both(body.as_bytes());
            prop_assert!(fast.is_some(), "declined {}", body);
            prop_assert_eq!(fast, slow, "{}", body);
            let body = format!(
                r#"{{"data":{{"records":[{{"id":"r","meta":{},"values":{{"k":{{"m":{},"value":{}}}}}}}]}}}}"#,
                json_text(&other, pretty), json_text(&raw, pretty), json_text(&cell, pretty),
            );
            let (fast, slow) = records_both(body.as_bytes());
            prop_assert!(fast.is_some(), "declined {}", body);
            prop_assert_eq!(fast, slow, "{}", body);
        }
    }
}
