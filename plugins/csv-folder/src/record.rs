//! CSV records rendered straight into a byte buffer, byte for byte as the `csv` crate's writer
//! renders them with this sink's settings (quotes only where needed, `\n` after each record),
//! without its per-field state machine: the partial file and its rewrite must agree, and the
//! rewrite still reads and writes through the `csv` crate.

/// Appends records to `out`, one field at a time.
#[derive(Debug)]
pub(crate) struct RecordWriter<'o> {
    out: &'o mut Vec<u8>,
    delimiter: u8,
    /// Where the current record starts in `out`.
    record_start: usize,
    /// Whether the current record has a field yet (the next one needs a delimiter).
    has_field: bool,
}

impl<'o> RecordWriter<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>, delimiter: u8) -> Self {
        let record_start = out.len();
        Self {
            out,
            delimiter,
            record_start,
            has_field: false,
        }
    }

    /// Appends one field, quoted when it holds the delimiter, a quote or a line break.
    pub(crate) fn field(&mut self, text: &[u8]) {
        self.field_with_prefix(b"", text);
    }

    /// Appends one field made of `prefix` then `text`; `prefix` must hold no byte that needs
    /// quoting (the formula guard's `'`).
    pub(crate) fn field_with_prefix(&mut self, prefix: &[u8], text: &[u8]) {
        if self.has_field {
            self.out.push(self.delimiter);
        }
        self.has_field = true;
        if !needs_quotes(text, self.delimiter) {
            // Nearly every field has no prefix; an empty copy still costs a `memcpy` call.
            if !prefix.is_empty() {
                self.out.extend_from_slice(prefix);
            }
            self.out.extend_from_slice(text);
            return;
        }
        self.out.push(b'"');
        self.out.extend_from_slice(prefix);
        for part in text.split_inclusive(|&byte| byte == b'"') {
            self.out.extend_from_slice(part);
            if part.last() == Some(&b'"') {
                self.out.push(b'"');
            }
        }
        self.out.push(b'"');
    }

    /// Ends the record. A record that would be an empty line is written as `""`, so that it
    /// reads back as one empty field rather than as no record.
    pub(crate) fn end(&mut self) {
        if self.out.len() == self.record_start {
            self.out.extend_from_slice(b"\"\"");
        }
        self.out.push(b'\n');
        self.record_start = self.out.len();
        self.has_field = false;
    }
}

/// Whether `text` holds a byte that makes its field quoted: `"`, `\r`, `\n` or the delimiter.
///
/// Eight bytes at a time: a word holds the byte `b` exactly when `word ^ (b in every byte)` has
/// a zero byte, which the usual carry trick tells. The last few bytes are padded to a word with
/// a byte that is none of those.
fn needs_quotes(text: &[u8], delimiter: u8) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word;
    let [quote, cr, lf, delimiter] =
        [b'"', b'\r', b'\n', delimiter].map(|byte| ONES * u64::from(byte));
    let special = |word: u64| {
        (zero_byte(word ^ quote)
            | zero_byte(word ^ cr)
            | zero_byte(word ^ lf)
            | zero_byte(word ^ delimiter))
            & HIGHS
            != 0
    };
    let mut chunks = text.chunks_exact(8);
    for chunk in &mut chunks {
        if <[u8; 8]>::try_from(chunk).is_ok_and(|array| special(u64::from_le_bytes(array))) {
            return true;
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return false;
    }
    let filler = if delimiter == ONES * u64::from(b'a') {
        b'b'
    } else {
        b'a'
    };
    let mut last = [filler; 8];
    last[..rest.len()].copy_from_slice(rest);
    special(u64::from_le_bytes(last))
}

#[cfg(test)]
mod tests {
    use super::{RecordWriter, needs_quotes};

    /// Every field of up to 20 bytes with one or two bytes of interest anywhere in it, on a
    /// background of plain and high bytes, for several delimiters.
    #[test]
    fn needs_quotes_as_a_bytewise_scan_says() {
        let interesting = b"\"\r\n,;\t| ab\x00\x7f\x80\xff";
        for &delimiter in b",;\t| ab\x00\xff" {
            let bytewise = |text: &[u8]| {
                text.iter()
                    .any(|&byte| matches!(byte, b'"' | b'\r' | b'\n') || byte == delimiter)
            };
            for len in 0..=20 {
                for background in [b'x', 0xC3] {
                    let plain = vec![background; len];
                    assert_eq!(needs_quotes(&plain, delimiter), bytewise(&plain));
                    for at in 0..len {
                        for &first in interesting {
                            let mut text = plain.clone();
                            text[at] = first;
                            assert_eq!(needs_quotes(&text, delimiter), bytewise(&text));
                            for &second in interesting {
                                text[len - 1 - at] = second;
                                assert_eq!(needs_quotes(&text, delimiter), bytewise(&text));
                            }
                        }
                    }
                }
            }
        }
    }

    /// What the `csv` crate's writer makes of the same records with the sink's settings.
    fn by_csv_crate(records: &[Vec<&[u8]>], delimiter: u8) -> Vec<u8> {
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .delimiter(delimiter)
            .from_writer(Vec::new());
        for record in records {
            for field in record {
                writer.write_field(field).expect("writes into a Vec");
            }
            writer
                .write_record(None::<&[u8]>)
                .expect("writes into a Vec");
        }
        writer.into_inner().expect("writes into a Vec")
    }

    fn by_record_writer(records: &[Vec<&[u8]>], delimiter: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = RecordWriter::new(&mut out, delimiter);
        for record in records {
            for field in record {
                writer.field(field);
            }
            writer.end();
        }
        out
    }

    #[test]
    fn renders_what_the_csv_crate_renders() {
        let fields: [&[u8]; 14] = [
            b"",
            b"plain",
            b"a,b",
            b"a;b",
            b"a\tb",
            b"say \"hi\"",
            b"\"",
            b"\"\"",
            b"line\nbreak",
            b"cr\rhere",
            b" padded ",
            b"'=1+1",
            "zo\u{eb}".as_bytes(),
            b"#comment",
        ];
        let mut records: Vec<Vec<&[u8]>> = vec![vec![], vec![b""], vec![b"", b""]];
        records.extend(fields.iter().map(|field| vec![*field]));
        records.push(fields.to_vec());
        records.push(fields.iter().rev().copied().collect());
        for delimiter in [b',', b';', b'\t', b'|', b' '] {
            assert_eq!(
                String::from_utf8_lossy(&by_record_writer(&records, delimiter)),
                String::from_utf8_lossy(&by_csv_crate(&records, delimiter)),
                "delimiter {:?}",
                delimiter as char
            );
        }
    }

    #[test]
    fn a_prefix_goes_inside_the_quotes() {
        let mut out = Vec::new();
        let mut writer = RecordWriter::new(&mut out, b',');
        writer.field_with_prefix(b"'", b"=HYPERLINK(\"x\")");
        writer.field_with_prefix(b"'", b"+1");
        writer.end();
        assert_eq!(out, b"\"'=HYPERLINK(\"\"x\"\")\",'+1\n");
    }
}
