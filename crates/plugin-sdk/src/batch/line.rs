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

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, Error as ValueError, MapDeserializer};
use serde_json::value::RawValue;

use super::Row;

/// Arrays and objects nested deeper than this in one value are left to the serde reader.
const MAX_DEPTH: usize = 64;

/// How `serde_json` names a borrowed `RawValue` to a deserializer. Handing it this key and the
/// text makes a `&RawValue` without a second scan; should a `serde_json` release change the
/// name, [`raw_value`] fails and every line takes the serde reader (slower, still right).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Reads `line` into `row`, or returns `None` (with `row` in an unspecified state) when the line
/// is not one this reader can vouch for.
pub(super) fn read<'a>(line: &'a [u8], row: &mut Row<'a>) -> Option<()> {
    // Checking the whole line at once lets every slice below be a `str` without a second check.
    let text = std::str::from_utf8(line).ok()?;
    let mut cursor = Cursor {
        text,
        bytes: line,
        at: 0,
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
    cursor.expect(b"}")?;
    cursor.whitespace();
    if cursor.at != line.len() {
        return None;
    }
    row.id = Cow::Borrowed(id);
    row.valid = valid;
    Some(())
}

/// `json`, already known to be one valid JSON value without surrounding whitespace, as a
/// borrowed `RawValue`, through `serde_json`'s own deserialisation of one.
fn raw_value(json: &str) -> Option<&RawValue> {
    let entry = (
        BorrowedStrDeserializer::<ValueError>::new(RAW_VALUE_TOKEN),
        BorrowedStrDeserializer::<ValueError>::new(json),
    );
    <&RawValue>::deserialize(MapDeserializer::new(std::iter::once(entry))).ok()
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Skips whitespace, then consumes `token` if it comes next.
    fn expect(&mut self, token: &[u8]) -> Option<()> {
        self.whitespace();
        if self.bytes[self.at..].starts_with(token) {
            self.at += token.len();
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes, returned without its quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        if self.next_byte()? != b'"' {
            return None;
        }
        let start = self.at;
        loop {
            match self.next_byte()? {
                b'"' => return Some(&self.text[start..self.at - 1]),
                b'\\' | 0..0x20 => return None,
                _ => {}
            }
        }
    }

    /// The rest of a string after its opening quote, escapes checked as JSON defines them.
    fn string_rest(&mut self) -> Option<()> {
        loop {
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
                0..0x20 => return None,
                _ => {}
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

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Row, parse_row_serde};
    use super::read;

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
        if read(line, &mut fast).is_none() {
            return Ok(false);
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

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
