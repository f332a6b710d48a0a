//! Batches and their rows, parsed lazily and borrowing from the host's bytes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::SinkError;

mod line;

/// One batch of rows of one stream, borrowed from the host for the duration of
/// [`Sink::write_batch`](crate::Sink::write_batch).
///
/// Everything returned by its methods borrows from the host's buffers (lifetime `'a`): copy
/// what must outlive the call.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    stream: &'a str,
    kind: &'a str,
    event_id: &'a str,
    fields_json: &'a str,
    seq: u64,
    row_count: u64,
    ndjson: &'a [u8],
    received_at_ms: i64,
    last: bool,
    deletions: bool,
}

/// The fields of a [`Batch`], to build one without the host (tests, tools).
///
/// `Default` gives an empty first-and-only-not batch; an empty `fields_json` means "no schema",
/// like `[]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchParts<'a> {
    /// Stream id.
    pub stream: &'a str,
    /// Sheet slug or `legacy_batch`.
    pub kind: &'a str,
    /// Flatfile event id.
    pub event_id: &'a str,
    /// JSON array of field keys in schema order.
    pub fields_json: &'a str,
    /// Position in the stream, from 0.
    pub seq: u64,
    /// Number of lines in `ndjson`.
    pub row_count: u64,
    /// The rows, one JSON object per line, each followed by `\n`.
    pub ndjson: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Whether this is the last batch of the stream.
    pub last: bool,
    /// Whether the rows are deletions (see [`Batch::is_deletions`]).
    pub deletions: bool,
}

impl<'a> Batch<'a> {
    /// Builds a batch from its parts.
    pub fn from_parts(parts: BatchParts<'a>) -> Self {
        Self {
            stream: parts.stream,
            kind: parts.kind,
            event_id: parts.event_id,
            fields_json: parts.fields_json,
            seq: parts.seq,
            row_count: parts.row_count,
            ndjson: parts.ndjson,
            received_at_ms: parts.received_at_ms,
            last: parts.last,
            deletions: parts.deletions,
        }
    }

    /// Stable stream id, made of `[A-Za-z0-9_.-]`: one legacy batch (`legacy-<batchId>`) or one
    /// sheet within one event (`<sheetSlug>-<eventId>`).
    pub fn stream(&self) -> &'a str {
        self.stream
    }

    /// What the rows are: a sheet slug or `legacy_batch`.
    pub fn kind(&self) -> &'a str {
        self.kind
    }

    /// The Flatfile event the stream belongs to.
    pub fn event_id(&self) -> &'a str {
        self.event_id
    }

    /// The raw `fields_json` text.
    pub fn fields_json(&self) -> &'a str {
        self.fields_json
    }

    /// The field keys in schema order; empty when the source has no schema.
    pub fn fields(&self) -> Result<Vec<Cow<'a, str>>, SinkError> {
        let text = self.fields_json.trim();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<CowStr<'a>> = serde_json::from_str(text).map_err(|error| {
            SinkError::fatal(format!(
                "stream {}, batch seq {}: fields_json is not a JSON array of strings: {error}",
                self.stream, self.seq
            ))
        })?;
        Ok(keys.into_iter().map(|key| key.0).collect())
    }

    /// Position of the batch in its stream, from 0.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of rows in the batch.
    pub fn row_count(&self) -> u64 {
        self.row_count
    }

    /// The rows as NDJSON bytes.
    pub fn ndjson(&self) -> &'a [u8] {
        self.ndjson
    }

    /// When flatsync received the event, in milliseconds since the Unix epoch.
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }

    /// [`received_at_ms`](Self::received_at_ms) as RFC 3339 UTC with milliseconds,
    /// `2024-05-02T14:03:11.517Z`.
    pub fn received_at_rfc3339(&self) -> String {
        crate::time::rfc3339_millis(self.received_at_ms)
    }

    /// Whether this is the last batch of its stream.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// Whether every row names a record of [`kind`](Self::kind) deleted in Flatfile, as
    /// `{"id":"<record id>","valid":true,"values":{}}`: the sink removes or marks the record.
    ///
    /// Only sinks that set [`Sink::HANDLES_DELETIONS`](crate::Sink::HANDLES_DELETIONS) see
    /// such batches; the others get the same rows as ordinary rows of kind `<kind>_deleted`.
    pub fn is_deletions(&self) -> bool {
        self.deletions
    }

    /// The rows, parsed one line at a time as the iterator advances.
    pub fn rows(&self) -> Rows<'a> {
        Rows {
            rest: self.ndjson,
            line: 0,
            row_count: self.row_count,
            stream: self.stream,
            seq: self.seq,
            done: false,
            compact: None,
            last: None,
        }
    }
}

/// One row: a record id, its validity and its values in the order of the source line.
#[derive(Debug, Clone, Default)]
pub struct Row<'a> {
    /// Flatfile record id.
    pub id: Cow<'a, str>,
    /// Whether Flatfile considered the record valid.
    pub valid: bool,
    /// `(field key, JSON value)` pairs in line order. Parse a value with [`CellValue::parse`].
    pub values: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Row<'a> {
    /// The value of `key`, if the row has one (the last one if the line repeats the key).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.values
            .iter()
            .rev()
            .find(|(candidate, _)| candidate.as_ref() == key)
            .map(|(_, value)| *value)
    }

    /// Appends the row as one JSON object of the given shape, without a line break. The id is
    /// escaped as JSON requires; the values are written as [`write_values_json`] does.
    ///
    /// ```
    /// use flatsync_plugin_sdk::{Batch, BatchParts, RowJson};
    ///
    /// let line = br#"{"id":"r1","valid":false,"values":{"n":1.50,"tags":["a"]}}"#;
    /// let batch = Batch::from_parts(BatchParts {
    ///     row_count: 1,
    ///     ndjson: line,
    ///     ..BatchParts::default()
    /// });
    /// let row = batch.rows().next().expect("one row")?;
    /// let written = |shape| {
    ///     let mut out = Vec::new();
    ///     row.write_json(shape, &mut out);
    ///     String::from_utf8(out).expect("JSON is UTF-8")
    /// };
    /// // A line in flatsync's own layout comes out as it went in, byte for byte.
    /// assert_eq!(written(RowJson::Full).as_bytes(), line);
    /// assert_eq!(
    ///     written(RowJson::IdAndValues),
    ///     r#"{"id":"r1","values":{"n":1.50,"tags":["a"]}}"#
    /// );
    /// assert_eq!(written(RowJson::Values), r#"{"n":1.50,"tags":["a"]}"#);
    /// assert_eq!(written(RowJson::Id), r#"{"id":"r1"}"#);
    /// # Ok::<(), flatsync_plugin_sdk::SinkError>(())
    /// ```
    ///
    /// [`write_values_json`]: Self::write_values_json
    pub fn write_json(&self, shape: RowJson, out: &mut Vec<u8>) {
        let after_id: &[u8] = match shape {
            RowJson::Values => return self.write_values_json(out),
            RowJson::Full if self.valid => b",\"valid\":true,\"values\":",
            RowJson::Full => b",\"valid\":false,\"values\":",
            RowJson::IdAndValues => b",\"values\":",
            RowJson::Id => b"",
        };
        out.extend_from_slice(b"{\"id\":");
        write_json_string(out, &self.id);
        out.extend_from_slice(after_id);
        if shape != RowJson::Id {
            self.write_values_json(out);
        }
        out.push(b'}');
    }

    /// Appends the values as one JSON object, `{"key":value,...}`, in line order, each value's
    /// JSON text copied exactly as the batch has it (numbers keep their spelling). A batch line
    /// holds no raw line break, so neither does the output.
    pub fn write_values_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (index, (key, value)) in self.values.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
    }
}

/// Which keys [`Row::write_json`] writes. Every shape keeps the values' key order and JSON text
/// exactly as the batch has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowJson {
    /// `{"id":"..","valid":true,"values":{..}}`: the row as flatsync delivers it.
    Full,
    /// `{"id":"..","values":{..}}`.
    IdAndValues,
    /// `{..}`: the values object alone.
    Values,
    /// `{"id":".."}`: the record id alone, as for a deleted record.
    Id,
}

/// Appends `text` as a JSON string.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // `serde_json` escapes exactly the quote, the backslash and the control bytes; a key or an
    // id nearly never holds one, and then the text goes out as it is.
    if line::plain_len(text.as_bytes()) == text.len() {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(&mut *out, text).expect("writing JSON into a Vec cannot fail");
}

/// Iterator over the rows of a [`Batch`].
///
/// Yields `Err` once (a FATAL error naming the line and the stream) for a malformed line or a
/// line count that disagrees with `row_count`, then ends.
#[derive(Debug, Clone)]
pub struct Rows<'a> {
    rest: &'a [u8],
    line: u64,
    row_count: u64,
    stream: &'a str,
    seq: u64,
    done: bool,
    /// The line of the row read last and where its values object lies, when the line is
    /// compact (see [`line::CompactValues`]).
    compact: Option<(&'a [u8], usize, usize)>,
    /// The row read last: its line and line number.
    last: Option<LineMark<'a>>,
}

/// Where a row lies in its batch, to read it again out of order: see [`Rows::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMark<'a> {
    line: &'a [u8],
    number: u64,
}

impl<'a> Rows<'a> {
    /// What [`Row::write_json`] appends for the row [`read_into`](Self::read_into) (or `next`)
    /// gave last, as a slice of the batch, when the batch line already holds exactly that text:
    /// a line in flatsync's own compact layout does, for [`RowJson::Full`] (the whole line,
    /// without its line break) and [`RowJson::Values`]. Copying it saves rendering the row
    /// again. `None` when the line is not such a line, for the other shapes, and after the
    /// last row.
    ///
    /// ```
    /// use flatsync_plugin_sdk::{Batch, BatchParts, Row, RowJson};
    ///
    /// let lines = b"{\"id\":\"r1\",\"valid\":true,\"values\":{\"a\":1}}\n";
    /// let batch = Batch::from_parts(BatchParts {
    ///     row_count: 1,
    ///     ndjson: lines,
    ///     ..BatchParts::default()
    /// });
    /// let (mut rows, mut row) = (batch.rows(), Row::default());
    /// assert!(rows.read_into(&mut row)?);
    /// let mut out = Vec::new();
    /// match rows.written_json(RowJson::Values) {
    ///     Some(json) => out.extend_from_slice(json),
    ///     None => row.write_json(RowJson::Values, &mut out),
    /// }
    /// assert_eq!(out, br#"{"a":1}"#);
    /// # Ok::<(), flatsync_plugin_sdk::SinkError>(())
    /// ```
    pub fn written_json(&self, shape: RowJson) -> Option<&'a [u8]> {
        let (line, start, end) = self.compact?;
        match shape {
            RowJson::Full => Some(line),
            RowJson::Values => line.get(start..end),
            RowJson::IdAndValues | RowJson::Id => None,
        }
    }

    /// Where the row [`read_into`](Self::read_into) (or `next`) gave last lies in the batch;
    /// `None` before the first row and after the last. A sink that writes rows in another
    /// order than they came (sorted by id, say) reads them once to keep marks, then each
    /// again with [`read_at`](Self::read_at), instead of holding every parsed row at once.
    pub fn mark(&self) -> Option<LineMark<'a>> {
        self.last
    }

    /// Parses the row at `mark` (of this batch) into `row`, as
    /// [`read_into`](Self::read_into) did when it passed there.
    pub fn read_at(&self, mark: LineMark<'a>, row: &mut Row<'a>) -> Result<(), SinkError> {
        parse_row(mark.line, row)
            .map(|_| ())
            .map_err(|error| self.error(format!("malformed row on line {}: {error}", mark.number)))
    }

    /// Parses the next row into `row`, reusing its allocation. Returns `Ok(false)` at the end.
    pub fn read_into(&mut self, row: &mut Row<'a>) -> Result<bool, SinkError> {
        if self.done {
            return Ok(false);
        }
        match self.advance(row) {
            Ok(true) => Ok(true),
            other => {
                self.done = true;
                other
            }
        }
    }

    fn advance(&mut self, row: &mut Row<'a>) -> Result<bool, SinkError> {
        self.compact = None;
        self.last = None;
        if self.rest.is_empty() {
            if self.line != self.row_count {
                return Err(self.error(format!(
                    "the batch holds {} rows but row_count says {}",
                    self.line, self.row_count
                )));
            }
            return Ok(false);
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(end) => (&self.rest[..end], &self.rest[end + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        self.line += 1;
        if self.line > self.row_count {
            return Err(self.error(format!(
                "line {} is beyond row_count {}",
                self.line, self.row_count
            )));
        }
        let compact = parse_row(line, row)
            .map_err(|error| self.error(format!("malformed row on line {}: {error}", self.line)))?;
        self.compact = compact.map(|(start, end)| (line, start, end));
        self.last = Some(LineMark {
            line,
            number: self.line,
        });
        Ok(true)
    }

    fn error(&self, message: String) -> SinkError {
        SinkError::fatal(format!(
            "stream {}, batch seq {}: {message}",
            self.stream, self.seq
        ))
    }
}

impl<'a> Iterator for Rows<'a> {
    type Item = Result<Row<'a>, SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut row = Row::default();
        match self.read_into(&mut row) {
            Ok(true) => Some(Ok(row)),
            Ok(false) => None,
            Err(error) => Some(Err(error)),
        }
    }
}

impl std::iter::FusedIterator for Rows<'_> {}

fn parse_row<'a>(
    line: &'a [u8],
    row: &mut Row<'a>,
) -> Result<line::CompactValues, serde_json::Error> {
    if let Some(compact) = line::read(line, row) {
        return Ok(compact);
    }
    parse_row_serde(line, row).map(|()| None)
}

/// The definition of a batch line's reading: what [`line::read`] does quickly for the usual
/// line, this does for every line, and says what is wrong with a malformed one.
fn parse_row_serde<'a>(line: &'a [u8], row: &mut Row<'a>) -> Result<(), serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(line);
    RowSeed { row }.deserialize(&mut deserializer)?;
    deserializer.end()
}

/// A value of a row, typed by its JSON form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellValue<'a> {
    /// JSON `null`.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number, as its exact source text (no rounding through `f64`).
    Number(&'a str),
    /// A JSON string, unescaped; borrowed when the source had no escapes. An escaped half of a
    /// surrogate pair (`\ud83d` alone), which no Rust string can hold, becomes U+FFFD.
    String(Cow<'a, str>),
    /// An array or object as compact JSON text; borrowed when the source was already compact.
    Json(Cow<'a, str>),
}

impl<'a> CellValue<'a> {
    /// Types a raw JSON value. Fails only on text that is not JSON, which a `RawValue` from
    /// [`Batch::rows`] never is.
    pub fn parse(raw: &'a RawValue) -> Result<Self, SinkError> {
        let text = trim_json_whitespace(raw.get());
        let invalid = || SinkError::fatal(format!("not a JSON value: {text}"));
        match text.as_bytes().first().copied().ok_or_else(invalid)? {
            b'n' if text == "null" => Ok(CellValue::Null),
            b't' if text == "true" => Ok(CellValue::Bool(true)),
            b'f' if text == "false" => Ok(CellValue::Bool(false)),
            b'-' | b'0'..=b'9' => Ok(CellValue::Number(text)),
            b'"' => {
                let inner = text
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .ok_or_else(invalid)?;
                if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
                    return Ok(CellValue::String(Cow::Borrowed(inner)));
                }
                match unescape(inner) {
                    Some(unescaped) => Ok(CellValue::String(Cow::Owned(unescaped))),
                    None => unescape_serde(text).map(|text| CellValue::String(Cow::Owned(text))),
                }
            }
            b'[' | b'{' => Ok(CellValue::Json(compact_json(text))),
            _ => Err(invalid()),
        }
    }
}

/// `text` without leading and trailing JSON whitespace. A value from a batch has none, so the
/// usual case costs two byte comparisons.
fn trim_json_whitespace(text: &str) -> &str {
    let is_space = |byte: Option<&u8>| matches!(byte, Some(b' ' | b'\t' | b'\n' | b'\r'));
    let bytes = text.as_bytes();
    if is_space(bytes.first()) || is_space(bytes.last()) {
        text.trim_matches(JSON_WHITESPACE)
    } else {
        text
    }
}

/// The definition of a JSON string's reading, `text` with its quotes: what [`unescape`] does
/// quickly, this does through `serde_json`.
fn unescape_serde(text: &str) -> Result<String, SinkError> {
    serde_json::from_str(text)
        .or_else(|_| serde_json::from_str(&replace_lone_surrogates(text)))
        .map_err(|error| SinkError::fatal(format!("bad JSON string: {error}")))
}

/// The contents of a valid JSON string (`inner`, without its quotes) unescaped, with each half
/// of a surrogate pair that lacks its other half as U+FFFD, as [`unescape_serde`] reads it.
/// `None` for anything it does not expect, which is then left to [`unescape_serde`].
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    unescape_json_string(inner, &mut out).then_some(out)
}

/// Unescapes the contents of a JSON string (`inner`: the text of a valid JSON string value
/// without its quotes) into `out`, as [`CellValue::parse`] reads it: each half of a surrogate
/// pair that lacks its other half becomes U+FFFD. A sink typing many values reuses one `out`
/// instead of a new `String` per value. Returns `false`, with `out` in any state, for anything
/// it does not expect; [`CellValue::parse`] then gives the answer.
pub fn unescape_json_string(inner: &str, out: &mut String) -> bool {
    out.clear();
    let mut rest = inner;
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        let Some(plain) = rest.get(..at) else {
            return false;
        };
        out.push_str(plain);
        let bytes = &rest.as_bytes()[at..];
        let Some(&escape) = bytes.get(1) else {
            return false;
        };
        let (ch, used) = match escape {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => match unicode_escape(bytes) {
                Some(found) => found,
                None => return false,
            },
            _ => return false,
        };
        out.push(ch);
        match rest.get(at + used..) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    out.push_str(rest);
    true
}

/// The character of the `\uXXXX` escape (or escaped surrogate pair) `bytes` starts with, and
/// how many bytes it took.
fn unicode_escape(bytes: &[u8]) -> Option<(char, usize)> {
    let unit = hex_escape(bytes)?;
    if (0xD800..0xDC00).contains(&unit) {
        if let Some(low) = bytes.get(6..).and_then(hex_escape)
            && (0xDC00..0xE000).contains(&low)
        {
            let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
            return Some((char::from_u32(code)?, 12));
        }
        return Some(('\u{FFFD}', 6));
    }
    Some((char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'), 6))
}

/// The code unit of the `\uXXXX` escape `bytes` starts with.
fn hex_escape(bytes: &[u8]) -> Option<u16> {
    let [b'\\', b'u', digits @ ..] = bytes.get(..6)? else {
        return None;
    };
    digits.iter().try_fold(0_u16, |unit, &digit| {
        let value = char::from(digit).to_digit(16)?;
        Some(unit << 4 | u16::try_from(value).ok()?)
    })
}

const JSON_WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// JSON text with each `\uXXXX` escape of half a surrogate pair (one without its other half)
/// replaced by `\uFFFD`. JSON allows such escapes and JavaScript writes one for a string cut
/// inside an emoji, but no Rust string holds one; U+FFFD is what JavaScript's own UTF-8
/// encoder puts in its place. Whole pairs and every other escape are left as they are.
fn replace_lone_surrogates(text: &str) -> String {
    fn escape_at(bytes: &[u8], at: usize) -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        let Some(unit) = escape_at(bytes, at) else {
            // Another escape (`\\`, `\"`, …): skip both bytes so an escaped backslash is not
            // read as the start of the next escape.
            at += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&unit)
            && escape_at(bytes, at + 6).is_some_and(|low| (0xDC00..0xE000).contains(&low));
        if paired {
            at += 12;
        } else if (0xD800..0xE000).contains(&unit) {
            out.push_str(&text[copied..at]);
            out.push_str("\\uFFFD");
            at += 6;
            copied = at;
        } else {
            at += 6;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Removes the insignificant whitespace of valid JSON text, leaving strings untouched.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut first_space = None;
    for (index, &byte) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            first_space = Some(index);
            break;
        }
    }
    let Some(start) = first_space else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    // `start` is outside any string, so the scan state there is "not in a string".
    let mut in_string = false;
    let mut escaped = false;
    for ch in text[start..].chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            out.push(ch);
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !JSON_WHITESPACE.contains(&ch) {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// A string that borrows from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> de::Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CowStrSeed(PhantomData)
            .deserialize(deserializer)
            .map(CowStr)
    }
}

struct CowStrSeed<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for CowStrSeed<'a> {
    type Value = Cow<'a, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for CowStrSeed<'a> {
    type Value = Cow<'a, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// Fills a [`Row`] in place so its `values` allocation is reused from line to line.
struct RowSeed<'r, 'a> {
    row: &'r mut Row<'a>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for RowSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for RowSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a row object {"id":..,"valid":..,"values":{..}}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.row.values.clear();
        let (mut seen_id, mut seen_valid, mut seen_values) = (false, false, false);
        while let Some(key) = map.next_key::<RowKey>()? {
            match key {
                RowKey::Id => {
                    self.row.id = map.next_value_seed(CowStrSeed(PhantomData))?;
                    seen_id = true;
                }
                RowKey::Valid => {
                    self.row.valid = map.next_value()?;
                    seen_valid = true;
                }
                RowKey::Values => {
                    self.row.values.clear();
                    map.next_value_seed(ValuesSeed {
                        values: &mut self.row.values,
                    })?;
                    seen_values = true;
                }
                // Unknown keys are skipped so the host can add row metadata later.
                RowKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !seen_id {
            return Err(de::Error::missing_field("id"));
        }
        if !seen_valid {
            return Err(de::Error::missing_field("valid"));
        }
        if !seen_values {
            return Err(de::Error::missing_field("values"));
        }
        Ok(())
    }
}

enum RowKey {
    Id,
    Valid,
    Values,
    Other,
}

impl<'de> de::Deserialize<'de> for RowKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(RowKeyVisitor)
    }
}

struct RowKeyVisitor;

impl Visitor<'_> for RowKeyVisitor {
    type Value = RowKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row key")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RowKey, E> {
        Ok(match value {
            "id" => RowKey::Id,
            "valid" => RowKey::Valid,
            "values" => RowKey::Values,
            _ => RowKey::Other,
        })
    }
}

struct ValuesSeed<'r, 'a> {
    values: &'r mut Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for ValuesSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ValuesSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of field values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(CowStrSeed(PhantomData))? {
            let value: &'de RawValue = map.next_value()?;
            self.values.push((key, value));
        }
        Ok(())
    }
}

#[cfg(test)]
mod unescape_tests {
    use proptest::prelude::*;

    use super::{unescape, unescape_serde};

    /// Pieces of string contents, weighted towards escapes and surrogate halves.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z é日🦀]{0,3}",
            prop::sample::select(
                &[
                    r#"\""#,
                    r"\\",
                    r"\/",
                    r"\b",
                    r"\f",
                    r"\n",
                    r"\r",
                    r"\t",
                    r"\u00e9",
                    r"\u00E9",
                    r"\u0000",
                    r"\u001f",
                    r"\ud83d",
                    r"\uD83D",
                    r"\ude00",
                    r"\uDE00",
                    r"\udbff",
                    r"\udfff",
                    r"\uffff",
                    r"\ufffd",
                    r"\u0041",
                    r"\uDBFF\uDFFF",
                ][..]
            )
            .prop_map(str::to_owned),
        ]
    }

    #[test]
    fn reads_the_escapes_as_serde_does() {
        let cases = [
            r"plain",
            r#"say \"hi\""#,
            r"\ud83d\ude00 pair, \ud83d alone, \ude00 alone, \ud83d\ud83d\ude00 high high low",
            r"\ud83d\u0041 high then another escape, and a high at the end \ud83d",
            r"\\ud83d is no escape",
        ];
        for inner in cases {
            let serde = unescape_serde(&format!("\"{inner}\""));
            assert_eq!(unescape(inner).ok_or(()), serde.map_err(|_| ()), "{inner}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn unescaping_agrees_with_serde(pieces in prop::collection::vec(piece(), 0..8)) {
            let inner = pieces.concat();
            let serde = unescape_serde(&format!("\"{inner}\"")).map_err(|error| error.to_string());
            prop_assert_eq!(unescape(&inner).ok_or_else(String::new), serde);
        }
    }
}
