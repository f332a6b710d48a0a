//! A fast reader for batch lines in the layout the host writes,
//! `{"id":"..","valid":true,"values":{"key":value,..}}`, with no escape in the id or the keys.
//!
//! Every sink reads every row through here, so the common line is read in one pass over its
//! bytes instead of through serde's visitors. The reader is conservative: it accepts a line only
//! when it can tell the row for certain and the line is valid JSON, and returns `None` for
//! anything else (another key order, an unknown key, an escape in a key, invalid JSON), leaving
//! the verdict to the serde reader, which remains the definition. So a line this reader accepts
//! gives the same [`Row`] as the serde reader gives; the property tests check that.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::value::RawValue;

use super::Row;

/// Arrays and objects nested deeper than this in one value are left to the serde reader.
const MAX_DEPTH: usize = 64;

/// How `serde_json` names a borrowed `RawValue` to a deserializer. Handing it this key and the
/// text makes a `&RawValue` without a second scan; should a `serde_json` release change the
/// name, [`raw_value`] fails and every line takes the serde reader (slower, still right).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Where the values object of a line [`read`] accepted lies, when the line is compact: then the
/// line is exactly what [`Row::write_json`] writes for [`RowJson::Full`](super::RowJson::Full)
/// and the span exactly what it writes for [`RowJson::Values`](super::RowJson::Values), since
/// the id and the keys hold nothing `write_json_string` escapes and the values are copied as
/// they are.
pub(super) type CompactValues = Option<(usize, usize)>;

/// Reads `line` into `row`, or returns `None` (with `row` in an unspecified state) when the line
/// is not one this reader can vouch for.
pub(super) fn read<'a>(line: &'a [u8], row: &mut Row<'a>) -> Option<CompactValues> {
    // Checking the whole line at once lets every slice below be a `str` without a second check.
    let text = simdutf8::basic::from_utf8(line).ok()?;
    let mut cursor = Cursor {
        text,
        bytes: line,
        at: 0,
        spaced: false,
    };
    cursor.expect(b"{")?;
    cursor.expect(b"\"id\"")?;
    cursor.expect(b":")?;
    cursor.whitespace();
    let id = cursor.plain_string()?;
    cursor.expect(b",")?;
    cursor.expect(b"\"valid\"")?;
    cursor.expect(b":")?;
    let valid = if cursor.expect(b"true").is_some() {
        true
    } else {
        cursor.expect(b"false")?;
        false
    };
    cursor.expect(b",")?;
    cursor.expect(b"\"values\"")?;
    cursor.expect(b":")?;
    cursor.expect(b"{")?;
    let values_start = cursor.at - 1;
    row.values.clear();
    if cursor.expect(b"}").is_none() {
        loop {
            cursor.whitespace();
            let key = cursor.plain_string()?;
            cursor.expect(b":")?;
            cursor.whitespace();
            let start = cursor.at;
            cursor.value()?;
            row.values
                .push((Cow::Borrowed(key), raw_value(&text[start..cursor.at])?));
            cursor.whitespace();
            match cursor.next_byte()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    let values_end = cursor.at;
    cursor.expect(b"}")?;
    cursor.whitespace();
    if cursor.at != line.len() {
        return None;
    }
    row.id = Cow::Borrowed(id);
    row.valid = valid;
    Some((!cursor.spaced).then_some((values_start, values_end)))
}

/// `json`, already known to be one valid JSON value without surrounding whitespace, as a
/// borrowed `RawValue`, through `serde_json`'s own deserialisation of one.
fn raw_value(json: &str) -> Option<&RawValue> {
    <&RawValue>::deserialize(RawText(json)).ok()
}

/// Hands `serde_json`'s `&RawValue` deserialisation the one-entry map it asks for,
/// `{RAW_VALUE_TOKEN: json}`. Serde's own `MapDeserializer` does the same with a counting
/// iterator and an allocating error type; on the per-value path that difference shows.
struct RawText<'a>(&'a str);

impl<'de> Deserializer<'de> for RawText<'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        visitor.visit_map(RawEntry {
            json: self.0,
            key_taken: false,
        })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct RawEntry<'a> {
    json: &'a str,
    key_taken: bool,
}

impl<'de> MapAccess<'de> for RawEntry<'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        if self.key_taken {
            return Ok(None);
        }
        self.key_taken = true;
        seed.deserialize(BorrowedStrDeserializer::new(RAW_VALUE_TOKEN))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        seed.deserialize(BorrowedStrDeserializer::new(self.json))
    }
}

/// The error of [`RawText`]: whatever went wrong, the line is left to the serde reader, which
/// says what.
#[derive(Debug)]
struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a raw value")
    }
}

impl std::error::Error for Declined {}

impl de::Error for Declined {
    fn custom<T: fmt::Display>(_message: T) -> Self {
        Declined
    }
}

/// Whether a JSON string cannot hold `byte` as itself: a quote, a backslash or a control byte.
fn is_stop(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// The high bit of each byte of `word` (read little-endian) that [`is_stop`], and maybe of
/// bytes above one that is: the usual carry tricks, whose false flags only ever sit above a
/// true one, so the lowest flag is exact.
fn stop_flags(word: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
    (zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word))
        & HIGHS
}

/// Bytes from the start of `bytes` that a JSON string holds as themselves: everything before
/// the first byte that [`is_stop`] (or all of `bytes`), eight bytes at a time.
pub(super) fn plain_len(bytes: &[u8]) -> usize {
    let mut cursor = Cursor {
        text: "",
        bytes,
        at: 0,
        spaced: false,
    };
    cursor.plain_run();
    cursor.at
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    /// Whether any whitespace was skipped.
    spaced: bool,
}

impl<'a> Cursor<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
            self.spaced = true;
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Skips whitespace, then consumes `token` if it comes next.
    fn expect<const N: usize>(&mut self, token: &[u8; N]) -> Option<()> {
        self.whitespace();
        self.literal(token)
    }

    /// Skips the bytes of a string that stand for themselves: up to its closing quote, an
    /// escape, a control byte or the end of the line.
    fn plain_run(&mut self) {
        let bytes = self.bytes;
        let mut at = self.at;
        // A string inside a line is followed by more of the line, so whole words nearly always
        // reach its end.
        while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
            let flags = stop_flags(u64::from_le_bytes(*word));
            if flags != 0 {
                self.at = at + (flags.trailing_zeros() / 8) as usize;
                return;
            }
            at += 8;
        }
        while bytes.get(at).is_some_and(|&byte| !is_stop(byte)) {
            at += 1;
        }
        self.at = at;
    }

    /// A string without escapes, returned without its quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        self.at = start;
        self.plain_run();
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        self.text.get(start..self.at - 1)
    }

    /// The rest of a string after its opening quote, escapes checked as JSON defines them.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            self.plain_run();
            match self.next_byte()? {
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
        // `01` is not a number; a digit right after the number would be its continuation.
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

    /// One JSON value starting at the cursor (no leading whitespace), nested at most
    /// [`MAX_DEPTH`] deep.
    fn value(&mut self) -> Option<()> {
        self.nested_value(0)
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
            open @ (b'[' | b'{') if depth < MAX_DEPTH => {
                self.at += 1;
                let close = if open == b'[' { b']' } else { b'}' };
                if self.expect(&[close]).is_some() {
                    return Some(());
                }
                loop {
                    self.whitespace();
                    if open == b'{' {
                        if self.next_byte()? != b'"' {
                            return None;
                        }
                        self.string_rest()?;
                        self.expect(b":")?;
                        self.whitespace();
                    }
                    self.nested_value(depth + 1)?;
                    self.whitespace();
                    match self.next_byte()? {
                        b',' => {}
                        byte if byte == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// Consumes `word` if it comes next. A fixed length lets the comparison be inlined.
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> Option<()> {
        if self.bytes.get(self.at..self.at + N)? == word {
            self.at += N;
            Some(())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Row, RowJson, parse_row_serde};
    use super::{plain_len, read};

    /// What a row holds, with each value as its JSON text.
    fn seen(row: &Row<'_>) -> (String, bool, Vec<(String, String)>) {
        let values = row
            .values
            .iter()
            .map(|(key, value)| (key.to_string(), value.get().to_owned()))
            .collect();
        (row.id.to_string(), row.valid, values)
    }

    /// The fast reader either declines or agrees with the serde reader, which must accept.
    fn agrees(line: &[u8]) -> Result<bool, String> {
        let mut fast = Row::default();
        let Some(compact) = read(line, &mut fast) else {
            return Ok(false);
        };
        if let Some((start, end)) = compact {
            let mut full = Vec::new();
            fast.write_json(RowJson::Full, &mut full);
            let mut values = Vec::new();
            fast.write_json(RowJson::Values, &mut values);
            if full != line || values != line[start..end] {
                return Err(format!(
                    "compact line {:?} is not what write_json writes",
                    String::from_utf8_lossy(line)
                ));
            }
        }
        let mut slow = Row::default();
        parse_row_serde(line, &mut slow).map_err(|error| {
            format!(
                "fast reader accepted {:?}, serde refused: {error}",
                String::from_utf8_lossy(line)
            )
        })?;
        if seen(&fast) != seen(&slow) {
            return Err(format!(
                "rows differ for {:?}: {:?} vs {:?}",
                String::from_utf8_lossy(line),
                seen(&fast),
                seen(&slow)
            ));
        }
        Ok(true)
    }

    const USUAL: &[&str] = &[
        r#"{"id":"r1","valid":true,"values":{}}"#,
        r#"{"id":"","valid":false,"values":{"a":1}}"#,
        r#"{"id":"r1","valid":true,"values":{"n":-0.5e+10,"s":"x\"y\\u00e9\n","b":false,"z":null}}"#,
        r#"{"id":"r1","valid":true,"values":{"a":[1, {"b": [ ]}, "c"], "d" : { } }}"#,
        "{ \"id\" : \"r1\" , \"valid\" : true , \"values\" : { \"a\" : 1 } } \r",
        r#"{"id":"zoë","valid":true,"values":{"ключ":"значение","a":"a","a":"b"}}"#,
        r#"{"id":"r1","valid":true,"values":{"a":0,"b":10,"c":1.25,"d":1E5,"e":-0}}"#,
    ];

    #[test]
    fn the_usual_lines_take_the_fast_path_and_read_as_serde_reads_them() {
        for line in USUAL {
            assert_eq!(agrees(line.as_bytes()), Ok(true), "{line}");
        }
        for line in &USUAL[..3] {
            let compact = read(line.as_bytes(), &mut Row::default()).flatten();
            assert!(compact.is_some(), "{line}");
        }
        let spaced = read(USUAL[4].as_bytes(), &mut Row::default()).flatten();
        assert_eq!(spaced, None);
    }

    #[test]
    fn lines_it_cannot_vouch_for_are_left_to_serde() {
        let declined: &[&[u8]] = &[
            b"",
            b"{}",
            br#"{"valid":true,"id":"r1","values":{}}"#,
            br#"{"id":"r\u0031","valid":true,"values":{}}"#,
            br#"{"id":"r1","valid":true,"values":{"k\n":1}}"#,
            br#"{"id":"r1","valid":true,"values":{},"extra":1}"#,
            br#"{"id":1,"valid":true,"values":{}}"#,
            br#"{"id":"r1","valid":1,"values":{}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":01}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":1.}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":.5}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":-}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":"\x"}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":"\u12g4"}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":"tab	in"}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":[1,]}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":{"b"}}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":nul}}"#,
            br#"{"id":"r1","valid":true,"values":{"a":1}} x"#,
            br#"{"id":"r1","valid":true,"values":{"a":1}"#,
            b"{\"id\":\"r\xff\",\"valid\":true,\"values\":{}}",
        ];
        for line in declined {
            let mut row = Row::default();
            assert!(
                read(line, &mut row).is_none(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let deep = format!(
            r#"{{"id":"r1","valid":true,"values":{{"a":{}1{}}}}}"#,
            "[".repeat(super::MAX_DEPTH + 1),
            "]".repeat(super::MAX_DEPTH + 1)
        );
        assert_eq!(agrees(deep.as_bytes()), Ok(false));
    }

    /// The definition of [`plain_len`]: one byte at a time.
    fn plain_len_bytewise(bytes: &[u8]) -> usize {
        bytes
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
            .unwrap_or(bytes.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any bytes, stops clustered so that several fall in one word.
        #[test]
        fn plain_len_stops_where_a_bytewise_scan_stops(
            bytes in prop::collection::vec(
                prop_oneof![
                    4 => any::<u8>(),
                    1 => prop::sample::select(&b"\"\\\x00\x01\x1f\x20\x21\x5b\x5d\x7f\x80\xff"[..]),
                ],
                0..40,
            ),
        ) {
            prop_assert_eq!(plain_len(&bytes), plain_len_bytewise(&bytes));
        }

        /// Any byte changed, inserted or removed in a usual line: whatever the fast reader
        /// accepts, serde accepts and reads the same.
        #[test]
        fn a_damaged_line_is_read_as_serde_reads_it_or_declined(
            which in 0..USUAL.len(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(&b"{}[]\",:\\ \tu0123456789.eE+-truefalsnlx\xc3\xa9\x01"[..]),
            edit in 0..3_u8,
        ) {
            let mut line = USUAL[which].as_bytes().to_vec();
            let at = at.index(line.len());
            match edit {
                0 => line[at] = byte,
                1 => line.insert(at, byte),
                _ => {
                    line.remove(at);
                }
            }
            prop_assert!(agrees(&line).is_ok(), "{}", agrees(&line).unwrap_err());
        }
    }
}
