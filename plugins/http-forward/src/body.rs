//! Request bodies and webhook ids. Both are functions of the batch's bytes and the config
//! alone (no clock, no randomness), so a batch sent again after a crash produces the same
//! bytes under the same id.

use std::borrow::Cow;
use std::fmt::Write as _;

use flatsync_plugin_sdk::{Batch, Row, RowJson, write_json_string};
use sha2::{Digest, Sha256};

use crate::config::Format;

/// One request's worth of a batch: rows `first_row..first_row + rows.len()`.
#[derive(Debug)]
pub(crate) struct Part<'b, 'a> {
    pub(crate) batch: &'b Batch<'a>,
    pub(crate) fields: &'b [Cow<'a, str>],
    /// `receivedAt`, already formatted.
    pub(crate) received_at: &'b str,
    pub(crate) index: usize,
    pub(crate) count: usize,
    pub(crate) first_row: usize,
    pub(crate) rows: &'b [Row<'a>],
}

impl Part<'_, '_> {
    /// `"rows"` or `"deletions"`.
    pub(crate) fn body_type(&self) -> &'static str {
        if self.batch.is_deletions() {
            "deletions"
        } else {
            "rows"
        }
    }

    /// Whether this is the stream's very last request: the last part of its last batch.
    pub(crate) fn is_last(&self) -> bool {
        self.batch.is_last() && self.index + 1 == self.count
    }

    /// `msg_` + hex of the first 16 bytes of SHA-256 over what identifies the part's content.
    ///
    /// The row range is part of the input so that changing `batch_size` between a crash and
    /// the re-send gives the re-split parts new ids: otherwise a receiver that already holds
    /// the old part 0 would drop a larger new part 0 as a duplicate and lose its extra rows.
    pub(crate) fn webhook_id(&self) -> String {
        let input = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.batch.stream(),
            self.batch.seq(),
            self.index,
            self.body_type(),
            self.first_row,
            self.rows.len()
        );
        let digest = Sha256::digest(input.as_bytes());
        let mut id = String::with_capacity(4 + 32);
        id.push_str("msg_");
        for byte in &digest[..16] {
            write!(id, "{byte:02x}").expect("writing to a String cannot fail");
        }
        id
    }

    /// The request body in `format`.
    pub(crate) fn render(&self, format: Format) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.rows.len() * 128);
        match format {
            Format::Flatsync => self.render_flatsync(&mut out),
            Format::FlatfileEgress => self.render_egress(&mut out),
        }
        out
    }

    fn render_flatsync(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{");
        self.write_coordinates(out, true);
        out.extend_from_slice(b",\"fields\":");
        write_string_array(out, self.fields);
        out.extend_from_slice(b",\"receivedAt\":");
        write_json_string(out, self.received_at);
        out.extend_from_slice(b",\"rows\":[");
        let shape = if self.batch.is_deletions() {
            RowJson::Id
        } else {
            RowJson::Full
        };
        write_rows(out, self.rows, shape);
        out.extend_from_slice(b"]}");
    }

    fn render_egress(&self, out: &mut Vec<u8>) {
        let kind = self.batch.kind();
        out.extend_from_slice(b"{\"workbook\":{\"metadata\":{\"flatsync\":{");
        self.write_coordinates(out, false);
        out.extend_from_slice(b",\"receivedAt\":");
        write_json_string(out, self.received_at);
        out.extend_from_slice(b"}},\"sheets\":[{\"name\":");
        write_json_string(out, kind);
        out.extend_from_slice(b",\"slug\":");
        write_json_string(out, kind);
        out.extend_from_slice(b",\"config\":{\"name\":");
        write_json_string(out, kind);
        out.extend_from_slice(b",\"slug\":");
        write_json_string(out, kind);
        out.extend_from_slice(b",\"fields\":[");
        for (index, key) in self.fields.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"key\":");
            write_json_string(out, key);
            out.push(b'}');
        }
        out.extend_from_slice(b"]},\"metadata\":{},\"records\":[");
        if self.batch.is_deletions() {
            // Kept out of `records`, so a receiver written for Flatfile's egress (which knows
            // nothing of deletions) sees an empty submit rather than blank records.
            out.extend_from_slice(b"],\"deletedRecords\":[");
            write_rows(out, self.rows, RowJson::Id);
        } else {
            for (index, row) in self.rows.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_egress_record(out, row);
            }
        }
        out.extend_from_slice(b"]}]}}");
    }

    /// `"type":..,"stream":..,"kind":..,"eventId":..,"seq":..,"part":..,"parts":..,"last":..`
    /// (without `kind` when `with_kind` is false, where the sheet carries it).
    fn write_coordinates(&self, out: &mut Vec<u8>, with_kind: bool) {
        out.extend_from_slice(b"\"type\":");
        write_json_string(out, self.body_type());
        out.extend_from_slice(b",\"stream\":");
        write_json_string(out, self.batch.stream());
        if with_kind {
            out.extend_from_slice(b",\"kind\":");
            write_json_string(out, self.batch.kind());
        }
        out.extend_from_slice(b",\"eventId\":");
        write_json_string(out, self.batch.event_id());
        let numbers = format!(
            ",\"seq\":{},\"part\":{},\"parts\":{},\"last\":{}",
            self.batch.seq(),
            self.index,
            self.count,
            self.is_last()
        );
        out.extend_from_slice(numbers.as_bytes());
    }
}

/// A record as the egress plugin sends it. flatsync knows validity per record, not per cell,
/// so each cell repeats the record's `valid` and has no messages.
fn write_egress_record(out: &mut Vec<u8>, row: &Row<'_>) {
    let valid: &[u8] = if row.valid { b"true" } else { b"false" };
    out.extend_from_slice(b"{\"id\":");
    write_json_string(out, &row.id);
    out.extend_from_slice(b",\"values\":{");
    for (index, (key, value)) in row.values.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(out, key);
        out.extend_from_slice(b":{\"value\":");
        out.extend_from_slice(value.get().as_bytes());
        out.extend_from_slice(b",\"valid\":");
        out.extend_from_slice(valid);
        out.extend_from_slice(b",\"messages\":[]}");
    }
    out.extend_from_slice(b"},\"valid\":");
    out.extend_from_slice(valid);
    out.extend_from_slice(b",\"metadata\":{}}");
}

/// The rows as JSON objects of `shape`, separated by commas.
fn write_rows(out: &mut Vec<u8>, rows: &[Row<'_>], shape: RowJson) {
    for (index, row) in rows.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        row.write_json(shape, out);
    }
}

fn write_string_array(out: &mut Vec<u8>, items: &[Cow<'_, str>]) {
    out.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(out, item);
    }
    out.push(b']');
}
