//! Deterministic data: ids, sheet schemas, cell values, and the JSON of data pages.
//!
//! Every value is a pure function of (seed, batch or sheet id, row index), so any page can be
//! produced without producing the ones before it, and two servers with the same seed serve the
//! same bytes. Pages are written straight into a byte buffer: a 10,000-row page must take
//! milliseconds, and building a `serde_json::Value` tree per row would dominate that.

use std::borrow::Cow;
use std::io::Write as _;

use serde_json::{Value as Json, json};

use crate::{SHEET_SLUGS, SimConfig, clock};

/// Time the generated rows were imported, the fixtures' 2024-05-02T13:58:40.012Z; each batch or
/// sheet is shifted from it by up to a day so timestamps differ between streams.
pub(crate) const IMPORT_EPOCH_MS: u64 = 1_714_658_320_012;
pub(crate) const DAY_MS: u64 = 86_400_000;

/// Ids the simulator uses for everything around the data, which it does not model.
pub(crate) const ACCOUNT_ID: &str = "us_acc_sim";
pub(crate) const ENVIRONMENT_ID: &str = crate::DEFAULT_ENVIRONMENT_ID;
pub(crate) const SPACE_ID: &str = "us_sp_sim";
pub(crate) const ACTOR_ID: &str = "us_usr_sim";

/// The SplitMix64 finaliser: a fast bijective mix with good avalanche, enough for test data.
pub(crate) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Odd multipliers of [`scatter`] and their inverses modulo 2^64.
const SCATTER: [u64; 2] = [0xD6E8_FEB8_6659_FD93, 0xA076_1D64_78BD_642F];
const GATHER: [u64; 2] = [inverse(SCATTER[0]), inverse(SCATTER[1])];

/// The inverse of odd `a` modulo 2^64 (Newton's iteration doubles the correct low bits).
const fn inverse(a: u64) -> u64 {
    let mut x = a;
    let mut round = 0;
    while round < 6 {
        x = x.wrapping_mul(2_u64.wrapping_sub(a.wrapping_mul(x)));
        round += 1;
    }
    x
}

/// A bijection of the u64s chosen by `key` that puts consecutive values far apart: generated
/// ids built on it are unique and unordered, as Flatfile's are, and [`gather`] reads the
/// index back.
pub(crate) fn scatter(value: u64, key: u64) -> u64 {
    let mut x = (value ^ key).wrapping_mul(SCATTER[0]);
    x ^= x >> 32;
    x = x.wrapping_mul(SCATTER[1]);
    x ^ (x >> 32)
}

/// The inverse of [`scatter`] under the same key.
pub(crate) fn gather(value: u64, key: u64) -> u64 {
    let mut x = value ^ (value >> 32);
    x = x.wrapping_mul(GATHER[1]);
    x ^= x >> 32;
    x.wrapping_mul(GATHER[0]) ^ key
}

/// Hash of a string under a seed; `domain` keeps hashes of different kinds of ids apart.
pub(crate) fn hash_str(seed: u64, domain: &str, text: &str) -> u64 {
    // FNV-1a over the bytes, then mixed with the seed: stable across platforms and Rust versions,
    // unlike `std`'s `DefaultHasher`.
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in domain.bytes().chain([0xFF]).chain(text.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(hash ^ mix(seed))
}

/// Small sequential generator for the values of one row.
struct RowRng(u64);

impl RowRng {
    fn new(stream_hash: u64, index: u64) -> RowRng {
        RowRng(stream_hash ^ mix(index))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x6A09_E667_F3BC_C909);
        mix(self.0)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Slot of `index` in a cycle of `len`, rotated per stream and field. Cycling by index (instead of
/// drawing at random) guarantees that any `len` consecutive rows contain every edge case.
fn slot(len: usize, stream_hash: u64, field: u64, index: u64) -> usize {
    let len = len as u64;
    let offset = mix(stream_hash.wrapping_add(field)) % len;
    usize::try_from((index % len + offset) % len).expect("a slot is smaller than its pool")
}

fn pick(pool: &'static [Option<&'static str>], stream_hash: u64, field: u64, index: u64) -> Value {
    match pool[slot(pool.len(), stream_hash, field, index)] {
        Some(text) => Value::Str(Cow::Borrowed(text)),
        None => Value::Null,
    }
}

/// Rows whose index ends in 9 are invalid: about 10%, and countable without generating them.
pub(crate) fn is_invalid_row(index: u64) -> bool {
    index % 10 == 9
}

/// Number of invalid rows among the first `rows`.
pub(crate) fn invalid_rows(rows: u64) -> u64 {
    rows / 10
}

/// A generated cell value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Str(Cow<'static, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    /// The value as a JSON tree, for the few places that keep values around.
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Str(text) => Json::String(text.to_string()),
            Value::Int(number) => Json::from(*number),
            Value::Float(number) => {
                serde_json::Number::from_f64(*number).map_or(Json::Null, Json::Number)
            }
            Value::Bool(flag) => Json::Bool(*flag),
        }
    }

    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Str(text) => put_str(out, text),
            Value::Int(number) => put_display(out, number),
            Value::Float(number) => serde_json::to_writer(&mut *out, number)
                .expect("writing JSON into a Vec cannot fail"),
            Value::Bool(flag) => put_display(out, flag),
        }
    }

    /// The text a user typed into the uploaded file for this value (legacy `raw`).
    fn raw_text(&self) -> Cow<'_, str> {
        match self {
            Value::Null => Cow::Borrowed(""),
            Value::Str(text) => Cow::Borrowed(text),
            Value::Int(number) => Cow::Owned(number.to_string()),
            Value::Float(number) => Cow::Owned(number.to_string()),
            Value::Bool(true) => Cow::Borrowed("yes"),
            Value::Bool(false) => Cow::Borrowed("no"),
        }
    }
}

fn owned(text: String) -> Value {
    Value::Str(Cow::Owned(text))
}

/// Opens a legacy page: its `pagination` object and the start of `data`, for `total` rows read
/// `take` at a time from `skip`.
pub(crate) fn put_legacy_pagination(out: &mut Vec<u8>, total: u64, skip: u64, take: u64) {
    let on_page = skip.saturating_add(take).min(total) - skip.min(total);
    put(out, "{\"pagination\":{\"currentPage\":");
    put_display(out, skip / take + 1);
    put(out, ",\"limit\":");
    put_display(out, take);
    put(out, ",\"offset\":");
    put_display(out, skip);
    put(out, ",\"onPage\":");
    put_display(out, on_page);
    // Always present, as in the one captured response, even past the last page: clients must
    // stop on totalCount/pageCount, not on a missing nextOffset.
    put(out, ",\"nextOffset\":");
    put_display(out, skip.saturating_add(take));
    put(out, ",\"totalCount\":");
    put_display(out, total);
    put(out, ",\"pageCount\":");
    put_display(out, total.div_ceil(take));
    put(out, "},\"data\":[");
}

pub(crate) fn put(out: &mut Vec<u8>, raw: &str) {
    out.extend_from_slice(raw.as_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing JSON into a Vec cannot fail");
}

pub(crate) fn put_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    write!(out, "{value}").expect("writing into a Vec cannot fail");
}

const FIRST_NAMES: &[Option<&str>] = &[
    Some("John"),
    Some("Suzie"),
    Some("José"),
    Some("Ana, María"),
    Some("\"Ace\""),
    Some("日本"),
    Some("=Alice"),
    Some("+Bob"),
    Some("-Carl"),
    Some("@Dana"),
    Some(""),
    None,
    Some("Li\nNa"),
    Some("Zoë"),
];

const LAST_NAMES: &[Option<&str>] = &[
    Some("Smith"),
    Some("O'Brien"),
    Some("Smith, Jr."),
    Some("Müller"),
    Some("Nguyễn"),
    Some("田中"),
    Some("\"The\" Boss"),
    None,
    Some(""),
    Some("van der Berg"),
];

const COMPANY_NAMES: &[Option<&str>] = &[
    Some("Acme, Inc."),
    Some("\"Quoted\" LLC"),
    Some("Société Générale"),
    Some("株式会社 日本"),
    Some("=HYPERLINK(\"http://example.com\")"),
    Some("+Plus Co"),
    Some("-Dash Ltd"),
    Some("@Home"),
    Some(""),
    None,
    Some("Multi\nLine Corp"),
    Some("Globex"),
];

const TEXTS: &[Option<&str>] = &[
    Some("Plain text"),
    Some("Commas, everywhere, here"),
    Some("She said \"hi\""),
    Some("Line one\nLine two"),
    Some("Windows\r\nline end"),
    Some("Crème brûlée, é"),
    Some("日本語のテキスト"),
    Some("=1+2"),
    Some("+44 20 7946 0000"),
    Some("-not a number"),
    Some("@channel"),
    Some(""),
    None,
    Some("  padded  "),
    Some("tab\tinside"),
    Some("Emoji 🎉"),
    Some("back\\slash 'single'"),
];

const PHONES: &[Option<&str>] = &[
    Some("+1 555 0100"),
    Some("555-0101"),
    Some("(555) 010-0102, ext. 7"),
    Some("+33 1 23 45 67 89"),
    Some(""),
    None,
    Some("=2+3"),
];

/// A field's type in the sheet schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldType {
    String,
    Number,
    Boolean,
    Date,
    Enum(&'static [(&'static str, &'static str)]),
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Enum(_) => "enum",
        }
    }
}

/// One field of a sheet schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldDef {
    pub(crate) key: &'static str,
    label: &'static str,
    ty: FieldType,
    required: bool,
}

const fn field(key: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef {
        key,
        label,
        ty,
        required: false,
    }
}

const fn required(key: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef {
        key,
        label,
        ty,
        required: true,
    }
}

const CONTACT_FIELDS: &[FieldDef] = &[
    field("firstName", "First Name", FieldType::String),
    field("lastName", "Last Name", FieldType::String),
    required("email", "Email", FieldType::String),
    field("age", "Age", FieldType::Number),
    field("subscribed", "Subscribed", FieldType::Boolean),
    field(
        "tier",
        "Tier",
        FieldType::Enum(&[("free", "Free"), ("pro", "Pro")]),
    ),
];

const COMPANY_FIELDS: &[FieldDef] = &[
    required("name", "Name", FieldType::String),
    field("domain", "Domain", FieldType::String),
    field("employees", "Employees", FieldType::Number),
];

const DEAL_FIELDS: &[FieldDef] = &[
    field("title", "Title", FieldType::String),
    field("amount", "Amount", FieldType::Number),
    field(
        "stage",
        "Stage",
        FieldType::Enum(&[("lead", "Lead"), ("won", "Won"), ("lost", "Lost")]),
    ),
    field("closeDate", "Close Date", FieldType::Date),
];

const TICKET_FIELDS: &[FieldDef] = &[
    required("subject", "Subject", FieldType::String),
    field("body", "Body", FieldType::String),
    field(
        "priority",
        "Priority",
        FieldType::Enum(&[("low", "Low"), ("medium", "Medium"), ("high", "High")]),
    ),
    field("open", "Open", FieldType::Boolean),
];

/// The four sheet templates, in workbook order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SheetKind {
    Contacts,
    Companies,
    Deals,
    Tickets,
}

impl SheetKind {
    const ALL: [SheetKind; 4] = [
        SheetKind::Contacts,
        SheetKind::Companies,
        SheetKind::Deals,
        SheetKind::Tickets,
    ];

    pub(crate) fn slug(self) -> &'static str {
        SHEET_SLUGS[self as usize]
    }

    fn name(self) -> &'static str {
        match self {
            SheetKind::Contacts => "Contacts",
            SheetKind::Companies => "Companies",
            SheetKind::Deals => "Deals",
            SheetKind::Tickets => "Tickets",
        }
    }

    pub(crate) fn fields(self) -> &'static [FieldDef] {
        match self {
            SheetKind::Contacts => CONTACT_FIELDS,
            SheetKind::Companies => COMPANY_FIELDS,
            SheetKind::Deals => DEAL_FIELDS,
            SheetKind::Tickets => TICKET_FIELDS,
        }
    }

    /// The field that carries the error of an invalid row.
    pub(crate) fn invalid_field(self) -> usize {
        match self {
            SheetKind::Contacts => 2,
            SheetKind::Companies => 1,
            SheetKind::Deals => 1,
            SheetKind::Tickets => 2,
        }
    }
}

/// A generated row: one value per field, and the message of the invalid cell if any.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) cells: Vec<Value>,
    pub(crate) error: Option<(usize, &'static str)>,
}

/// Values of row `index` of a sheet whose id hashes to `stream_hash`.
pub(crate) fn sheet_row(kind: SheetKind, stream_hash: u64, index: u64) -> Row {
    let mut draw = CellDraw {
        rng: RowRng::new(stream_hash, index),
        stream_hash,
        index,
        invalid: is_invalid_row(index),
    };
    let cells = match kind {
        SheetKind::Contacts => contact_cells(&mut draw),
        SheetKind::Companies => company_cells(&mut draw),
        SheetKind::Deals => deal_cells(&mut draw),
        SheetKind::Tickets => ticket_cells(&mut draw),
    };
    let error = draw.invalid.then(|| {
        let message = match kind {
            SheetKind::Contacts => "Invalid email address",
            SheetKind::Companies => "Invalid domain",
            SheetKind::Deals => "Must be a number",
            SheetKind::Tickets => "Invalid option",
        };
        (kind.invalid_field(), message)
    });
    Row { cells, error }
}

/// What the cells of one row are drawn from. Each kind's cells are drawn left to right, so the
/// order of the `rng` calls, and with it every generated value, stays fixed.
struct CellDraw {
    rng: RowRng,
    stream_hash: u64,
    index: u64,
    invalid: bool,
}

impl CellDraw {
    /// The row's place in a cycle of `len` variants of `field`.
    fn cycle(&self, len: usize, field: u64) -> usize {
        slot(len, self.stream_hash, field, self.index)
    }

    fn pick(&self, pool: &'static [Option<&'static str>], field: u64) -> Value {
        pick(pool, self.stream_hash, field, self.index)
    }
}

fn contact_cells(draw: &mut CellDraw) -> Vec<Value> {
    let index = draw.index;
    vec![
        draw.pick(FIRST_NAMES, 0),
        draw.pick(LAST_NAMES, 1),
        email(draw.invalid, draw.cycle(5, 2), index, &mut draw.rng),
        match draw.cycle(8, 3) {
            0 => Value::Null,
            1 => Value::Int(-3),
            2 => Value::Float(33.5),
            3 => Value::Int(0),
            _ => Value::Int(18 + draw.rng.below(70) as i64),
        },
        match draw.cycle(5, 4) {
            0 => Value::Null,
            _ => Value::Bool(draw.rng.coin()),
        },
        match draw.cycle(7, 5) {
            0 => Value::Null,
            _ => Value::Str(Cow::Borrowed(if draw.rng.coin() { "pro" } else { "free" })),
        },
    ]
}

fn company_cells(draw: &mut CellDraw) -> Vec<Value> {
    let index = draw.index;
    vec![
        draw.pick(COMPANY_NAMES, 0),
        if draw.invalid {
            owned(format!("not a domain {index}"))
        } else if draw.cycle(9, 1) == 0 {
            Value::Null
        } else {
            owned(format!("company-{index}.example.com"))
        },
        match draw.cycle(8, 2) {
            0 => Value::Null,
            1 => Value::Int(-5),
            2 => Value::Float(12.5),
            3 => Value::Int(0),
            _ => Value::Int(draw.rng.below(100_000) as i64),
        },
    ]
}

fn deal_cells(draw: &mut CellDraw) -> Vec<Value> {
    let index = draw.index;
    vec![
        draw.pick(TEXTS, 0),
        if draw.invalid {
            owned(format!("{index},50 EUR"))
        } else {
            match draw.cycle(7, 1) {
                0 => Value::Null,
                1 => Value::Float(-99.99),
                2 => Value::Float(1234.56),
                3 => Value::Int(0),
                4 => Value::Float(0.1),
                _ => Value::Float(draw.rng.below(10_000_000) as f64 / 100.0),
            }
        },
        match draw.cycle(6, 2) {
            0 => Value::Null,
            n => Value::Str(Cow::Borrowed(["lead", "won", "lost"][n % 3])),
        },
        match draw.cycle(6, 3) {
            0 => Value::Null,
            _ => owned(format!(
                "2024-{:02}-{:02}",
                1 + draw.rng.below(12),
                1 + draw.rng.below(28)
            )),
        },
    ]
}

fn ticket_cells(draw: &mut CellDraw) -> Vec<Value> {
    vec![
        draw.pick(TEXTS, 0),
        draw.pick(TEXTS, 1),
        if draw.invalid {
            Value::Str(Cow::Borrowed("urgent!!"))
        } else {
            match draw.cycle(5, 2) {
                0 => Value::Null,
                n => Value::Str(Cow::Borrowed(["low", "medium", "high"][n % 3])),
            }
        },
        match draw.cycle(4, 3) {
            0 => Value::Null,
            _ => Value::Bool(draw.rng.coin()),
        },
    ]
}

fn email(invalid: bool, variant: usize, index: u64, rng: &mut RowRng) -> Value {
    if invalid {
        return owned(format!("user{index}@"));
    }
    owned(match variant {
        0 => format!("user{index}@example.com"),
        1 => format!("First.Last+{index}@Example.co.uk"),
        2 => format!("josé{index}@exämple.com"),
        3 => format!("o'hara-{index}@example.org"),
        _ => format!("u{:08x}-{index}@example.net", rng.next() >> 32),
    })
}

/// Legacy columns as (header in the uploaded file, mapped template key).
pub(crate) const LEGACY_COLUMNS: [(&str, &str); 7] = [
    ("First", "name"),
    ("Email Address", "email"),
    ("Age", "age"),
    ("Phone", "phone"),
    ("Note", "note"),
    ("Score", "score"),
    ("Active", "active"),
];

/// Values of row `index` of a legacy batch, in [`LEGACY_COLUMNS`] order.
pub(crate) fn legacy_row(batch_hash: u64, index: u64) -> Vec<Value> {
    let mut rng = RowRng::new(batch_hash, index);
    let cycle = |len: usize, field: u64| slot(len, batch_hash, field, index);
    vec![
        pick(FIRST_NAMES, batch_hash, 0, index),
        email(is_invalid_row(index), cycle(5, 1), index, &mut rng),
        match cycle(8, 2) {
            0 => Value::Null,
            1 => Value::Int(-1),
            2 => Value::Float(27.5),
            _ => Value::Int(18 + rng.below(70) as i64),
        },
        pick(PHONES, batch_hash, 3, index),
        pick(TEXTS, batch_hash, 4, index),
        match cycle(6, 5) {
            0 => Value::Null,
            1 => Value::Float(-0.75),
            2 => Value::Int(-12),
            _ => Value::Float(rng.below(10_000) as f64 / 100.0),
        },
        match cycle(5, 6) {
            0 => Value::Null,
            _ => Value::Bool(rng.coin()),
        },
    ]
}

/// Identity of a legacy batch under a seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchKey {
    hash: u64,
}

impl BatchKey {
    pub(crate) fn new(seed: u64, batch_id: &str) -> BatchKey {
        BatchKey {
            hash: hash_str(seed, "legacy-batch", batch_id),
        }
    }

    /// A version 4 UUID, as Flatfile gives legacy rows: 64 bits scattered from the row index
    /// (unique within the batch by construction, in no order), the rest from the batch.
    pub(crate) fn row_id(self, index: u64) -> String {
        let row = scatter(index, self.hash);
        let batch = mix(self.hash);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            row >> 32,
            (row >> 16) & 0xFFFF,
            row & 0xFFF,
            0x8000 | (((row >> 12) & 0xF) << 10) | (batch & 0x3FF),
            (batch >> 16) & 0xFFFF_FFFF_FFFF
        )
    }

    fn created_at(self) -> String {
        clock::iso_millis(IMPORT_EPOCH_MS + self.hash % DAY_MS)
    }

    fn updated_at(self) -> String {
        clock::iso_millis(IMPORT_EPOCH_MS + self.hash % DAY_MS + 42_591)
    }
}

/// Writes one page of `GET /rest/batch/{batchId}/rows`.
pub(crate) fn write_legacy_page(
    out: &mut Vec<u8>,
    seed: u64,
    batch_id: &str,
    total: u64,
    skip: u64,
    take: u64,
) {
    let batch = BatchKey::new(seed, batch_id);
    let start = skip.min(total);
    let end = skip.saturating_add(take).min(total);
    put_legacy_pagination(out, total, skip, take);
    // Bytes repeated on every row, built once per page.
    let key_prefixes = |keys: &mut dyn Iterator<Item = &str>| -> Vec<Vec<u8>> {
        keys.enumerate()
            .map(|(position, key)| {
                let mut prefix = Vec::new();
                if position > 0 {
                    put(&mut prefix, ",");
                }
                put_str(&mut prefix, key);
                put(&mut prefix, ":");
                prefix
            })
            .collect()
    };
    let raw_prefixes = key_prefixes(&mut LEGACY_COLUMNS.iter().map(|(header, _)| *header));
    let mapped_prefixes = key_prefixes(&mut LEGACY_COLUMNS.iter().map(|(_, key)| *key));
    let mut batch_field = Vec::new();
    put(&mut batch_field, ",\"batchId\":");
    put_str(&mut batch_field, batch_id);
    put(&mut batch_field, ",\"sequence\":");
    let mut row_tail = Vec::new();
    put(&mut row_tail, ",\"deleted\":false,\"createdAt\":");
    put_str(&mut row_tail, &batch.created_at());
    put(&mut row_tail, ",\"updatedAt\":");
    put_str(&mut row_tail, &batch.updated_at());
    put(&mut row_tail, "}");
    for index in start..end {
        if index > start {
            put(out, ",");
        }
        let values = legacy_row(batch.hash, index);
        put(out, "{\"id\":");
        put_str(out, &batch.row_id(index));
        out.extend_from_slice(&batch_field);
        put_display(out, index + 1);
        put(out, ",\"raw\":{");
        for (prefix, value) in raw_prefixes.iter().zip(&values) {
            out.extend_from_slice(prefix);
            put_str(out, &value.raw_text());
        }
        put(out, "},\"mapped\":{");
        for (prefix, value) in mapped_prefixes.iter().zip(&values) {
            out.extend_from_slice(prefix);
            value.write_json(out);
        }
        put(out, "},\"valid\":");
        put_display(out, !is_invalid_row(index));
        out.extend_from_slice(&row_tail);
    }
    put(out, "]}");
}

/// A sheet of a simulated workbook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SheetRef {
    pub(crate) id: String,
    pub(crate) workbook_id: String,
    pub(crate) kind: SheetKind,
    pub(crate) rows: u64,
}

/// The sheets of `us_wb_<x>`, or `None` for an id of another form.
pub(crate) fn workbook_sheet_refs(config: &SimConfig, workbook_id: &str) -> Option<Vec<SheetRef>> {
    split_workbook(workbook_id, config.sheets_per_workbook, config.rows)
}

/// The first `sheets` sheets of workbook `us_wb_<x>`, sharing `rows` rows (the first sheets get
/// one more when they do not divide evenly); `None` for an id of another form.
pub(crate) fn split_workbook(workbook_id: &str, sheets: usize, rows: u64) -> Option<Vec<SheetRef>> {
    let suffix = workbook_id.strip_prefix("us_wb_")?;
    if suffix.is_empty() {
        return None;
    }
    let count = sheets.clamp(1, SheetKind::ALL.len());
    let per_sheet = rows / count as u64;
    let remainder = rows % count as u64;
    Some(
        SheetKind::ALL[..count]
            .iter()
            .enumerate()
            .map(|(position, &kind)| SheetRef {
                id: format!("us_sh_{suffix}-{}", kind.slug()),
                workbook_id: workbook_id.to_owned(),
                kind,
                rows: per_sheet + u64::from((position as u64) < remainder),
            })
            .collect(),
    )
}

/// The sheet `us_sh_<x>-<slug>` of workbook `us_wb_<x>`; `<x>` may itself contain `-`.
pub(crate) fn decode_sheet(config: &SimConfig, sheet_id: &str) -> Option<SheetRef> {
    let (workbook_id, slug) = split_sheet_id(sheet_id)?;
    workbook_sheet_refs(config, &workbook_id)?
        .into_iter()
        .find(|sheet| sheet.kind.slug() == slug)
}

/// `us_sh_<x>-<slug>` as (`us_wb_<x>`, slug).
pub(crate) fn split_sheet_id(sheet_id: &str) -> Option<(String, &str)> {
    let (suffix, slug) = sheet_id.strip_prefix("us_sh_")?.rsplit_once('-')?;
    Some((format!("us_wb_{suffix}"), slug))
}

/// Identity of a sheet under a seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SheetKey {
    hash: u64,
}

impl SheetKey {
    pub(crate) fn new(seed: u64, sheet: &SheetRef) -> SheetKey {
        SheetKey {
            hash: hash_str(seed, "sheet", &sheet.id),
        }
    }

    /// `us_rc_` and 32 hex digits, as Flatfile names records: the row index scattered (so ids
    /// come in no order, like Flatfile's), then the sheet's tag.
    pub(crate) fn record_id(self, index: u64) -> String {
        format!("us_rc_{:016x}{:016x}", scatter(index, self.hash), self.hash)
    }

    /// The row index of a generated record id of this sheet, if it is one and below `rows`.
    pub(crate) fn record_index(self, record_id: &str, rows: u64) -> Option<u64> {
        let hex = record_id.strip_prefix("us_rc_")?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let (row, sheet) = hex.split_at(16);
        if u64::from_str_radix(sheet, 16).ok()? != self.hash {
            return None;
        }
        let index = gather(u64::from_str_radix(row, 16).ok()?, self.hash);
        (index < rows).then_some(index)
    }

    /// Generated row `index` of a sheet of this kind.
    pub(crate) fn row(self, kind: SheetKind, index: u64) -> Row {
        sheet_row(kind, self.hash, index)
    }

    /// The commit that imported the generated rows.
    pub(crate) fn commit_id(self) -> String {
        format!("us_vr_{:08x}", self.hash & 0xFFFF_FFFF)
    }

    fn updated_at(self) -> String {
        clock::iso_millis(IMPORT_EPOCH_MS + self.hash % DAY_MS)
    }
}

/// One value per field in schema order, and the invalid cell's position and message if any.
pub(crate) type CellValues = (Vec<Json>, Option<(usize, &'static str)>);

/// Cells of the `ordinal`-th record generated for `POST /_sim/sheets/{id}/records {count}`, with
/// the message of the invalid cell if any. Drawn from another stream than the imported rows, so
/// added records do not repeat them.
pub(crate) fn added_row(seed: u64, sheet: &SheetRef, ordinal: u64) -> CellValues {
    let row = sheet_row(sheet.kind, hash_str(seed, "added", &sheet.id), ordinal);
    (row.cells.iter().map(Value::to_json).collect(), row.error)
}

/// Record counts of a sheet, as in `counts` of the records and counts endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) error: u64,
}

impl Counts {
    /// Counts of the generated rows of a sheet.
    pub(crate) fn generated(sheet: &SheetRef) -> Counts {
        Counts {
            total: sheet.rows,
            error: invalid_rows(sheet.rows),
        }
    }
}

/// Cells of one record changed through the admin API, by field position.
#[derive(Clone, Debug, Default)]
pub(crate) struct CellEdits {
    pub(crate) cells: Vec<(usize, Json)>,
    pub(crate) updated_ms: u64,
}

impl CellEdits {
    pub(crate) fn get(&self, position: usize) -> Option<&Json> {
        self.cells
            .iter()
            .find(|(at, _)| *at == position)
            .map(|(_, value)| value)
    }

    pub(crate) fn set(&mut self, position: usize, value: Json) {
        match self.cells.iter_mut().find(|(at, _)| *at == position) {
            Some((_, cell)) => *cell = value,
            None => self.cells.push((position, value)),
        }
    }
}

/// Writes a `GET /v1/sheets/{id}/records` body record by record: [`RecordsWriter::start`], any
/// mix of generated and custom records, then [`RecordsWriter::finish`].
pub(crate) struct RecordsWriter {
    kind: SheetKind,
    key: SheetKey,
    updated_at: String,
    /// `"<key>":{"value":` per field, with the leading comma from the second field on.
    cell_prefixes: Vec<Vec<u8>>,
    /// The end of a valid cell that was not edited: the same bytes on every row.
    valid_suffix: Vec<u8>,
    written: u64,
}

impl RecordsWriter {
    pub(crate) fn start(out: &mut Vec<u8>, seed: u64, sheet: &SheetRef) -> RecordsWriter {
        let key = SheetKey::new(seed, sheet);
        let updated_at = key.updated_at();
        // The bytes around each cell value are the same on every row: build them once per page.
        let cell_prefixes = sheet
            .kind
            .fields()
            .iter()
            .enumerate()
            .map(|(position, field)| {
                let mut prefix = Vec::new();
                if position > 0 {
                    put(&mut prefix, ",");
                }
                put_str(&mut prefix, field.key);
                put(&mut prefix, ":{\"value\":");
                prefix
            })
            .collect();
        let mut valid_suffix = Vec::new();
        put(
            &mut valid_suffix,
            ",\"messages\":[],\"valid\":true,\"updatedAt\":",
        );
        put_str(&mut valid_suffix, &updated_at);
        put(&mut valid_suffix, "}");
        put(out, "{\"data\":{\"records\":[");
        RecordsWriter {
            kind: sheet.kind,
            key,
            updated_at,
            cell_prefixes,
            valid_suffix,
            written: 0,
        }
    }

    fn open_record(&mut self, out: &mut Vec<u8>, id: &str) {
        if self.written > 0 {
            put(out, ",");
        }
        self.written += 1;
        put(out, "{\"id\":");
        put_str(out, id);
        put(out, ",\"values\":{");
    }

    /// Ends a cell: its message if invalid, and its `updatedAt` (`None`: the import time).
    fn cell_end(
        &self,
        out: &mut Vec<u8>,
        position: usize,
        error: Option<&str>,
        updated_at: Option<&str>,
    ) {
        match (error, updated_at) {
            (None, None) => out.extend_from_slice(&self.valid_suffix),
            (None, Some(updated_at)) => {
                put(out, ",\"messages\":[],\"valid\":true,\"updatedAt\":");
                put_str(out, updated_at);
                put(out, "}");
            }
            (Some(message), updated_at) => {
                let field = self.kind.fields()[position].key;
                put(out, ",\"messages\":[{\"field\":");
                put_str(out, field);
                put(
                    out,
                    ",\"type\":\"error\",\"source\":\"custom-logic\",\"message\":",
                );
                put_str(out, message);
                put(out, "}],\"valid\":false,\"updatedAt\":");
                put_str(out, updated_at.unwrap_or(&self.updated_at));
                put(out, "}");
            }
        }
    }

    fn close_record(out: &mut Vec<u8>, valid: bool, import_row: Option<u64>) {
        put(out, "},\"valid\":");
        put_display(out, valid);
        match import_row {
            Some(row) => {
                put(out, ",\"metadata\":{\"importRow\":");
                put_display(out, row);
                put(out, "},\"config\":{}}");
            }
            None => put(out, ",\"metadata\":{},\"config\":{}}"),
        }
    }

    /// Generated row `index`, with `edits` applied: an edited cell is valid, so editing the
    /// invalid cell of a row makes the row valid.
    pub(crate) fn generated(&mut self, out: &mut Vec<u8>, index: u64, edits: Option<&CellEdits>) {
        let row = sheet_row(self.kind, self.key.hash, index);
        self.open_record(out, &self.key.record_id(index));
        let edited_at = edits.map(|edits| clock::iso_millis(edits.updated_ms));
        let mut valid = true;
        for (position, value) in row.cells.iter().enumerate() {
            out.extend_from_slice(&self.cell_prefixes[position]);
            if let (Some(edited), Some(edited_at)) =
                (edits.and_then(|edits| edits.get(position)), &edited_at)
            {
                write_json(out, edited);
                self.cell_end(out, position, None, Some(edited_at));
                continue;
            }
            value.write_json(out);
            let error = match row.error {
                Some((field, message)) if field == position => Some(message),
                _ => None,
            };
            valid &= error.is_none();
            self.cell_end(out, position, error, None);
        }
        Self::close_record(out, valid, Some(index + 1));
    }

    /// A record that is not a generated row: one JSON value per field, in schema order.
    pub(crate) fn custom(
        &mut self,
        out: &mut Vec<u8>,
        id: &str,
        cells: &[Json],
        error: Option<(usize, &str)>,
        updated_ms: u64,
    ) {
        self.open_record(out, id);
        let updated_at = clock::iso_millis(updated_ms);
        for (position, value) in cells.iter().enumerate() {
            out.extend_from_slice(&self.cell_prefixes[position]);
            write_json(out, value);
            let message = error
                .filter(|(field, _)| *field == position)
                .map(|(_, message)| message);
            self.cell_end(out, position, message, Some(&updated_at));
        }
        Self::close_record(out, error.is_none(), None);
    }

    pub(crate) fn finish(self, out: &mut Vec<u8>, counts: Counts, commit_id: &str) {
        put(out, "],\"counts\":{\"total\":");
        put_display(out, counts.total);
        put(out, ",\"valid\":");
        put_display(out, counts.total - counts.error);
        put(out, ",\"error\":");
        put_display(out, counts.error);
        put(out, "},\"commitId\":");
        put_str(out, commit_id);
        put(out, ",\"versionId\":");
        put_str(out, commit_id);
        put(out, ",\"success\":true}}");
    }
}

fn write_json(out: &mut Vec<u8>, value: &Json) {
    serde_json::to_writer(&mut *out, value).expect("writing JSON into a Vec cannot fail");
}

/// Writes one page of `GET /v1/sheets/{id}/records` of a sheet nobody changed (`page_number`
/// starts at 1).
pub(crate) fn write_records_page(
    out: &mut Vec<u8>,
    seed: u64,
    sheet: &SheetRef,
    page_number: u64,
    page_size: u64,
) {
    let mut writer = RecordsWriter::start(out, seed, sheet);
    let start = (page_number - 1).saturating_mul(page_size).min(sheet.rows);
    let end = start.saturating_add(page_size).min(sheet.rows);
    for index in start..end {
        writer.generated(out, index, None);
    }
    let commit_id = SheetKey::new(seed, sheet).commit_id();
    writer.finish(out, Counts::generated(sheet), &commit_id);
}

/// `data.counts` of `GET /v1/sheets/{id}/counts`.
pub(crate) fn counts_json(sheet: &SheetRef, counts: Counts) -> Json {
    let invalid_key = sheet.kind.fields()[sheet.kind.invalid_field()].key;
    json!({
        "total": counts.total,
        "valid": counts.total - counts.error,
        "error": counts.error,
        "errorsByField": { invalid_key: counts.error },
    })
}

fn workbook_timestamps(seed: u64, workbook_id: &str) -> (String, String) {
    let created = IMPORT_EPOCH_MS - DAY_MS + hash_str(seed, "workbook", workbook_id) % DAY_MS;
    (
        clock::iso_millis(created),
        clock::iso_millis(created + 2_000),
    )
}

/// A sheet object, as in `GET /v1/sheets/{id}` and inside a workbook.
pub(crate) fn sheet_json(seed: u64, sheet: &SheetRef) -> Json {
    let fields: Vec<Json> = sheet
        .kind
        .fields()
        .iter()
        .map(|field| {
            let mut object = json!({
                "key": field.key,
                "type": field.ty.name(),
                "label": field.label,
            });
            if field.required {
                object["constraints"] = json!([{ "type": "required" }]);
            }
            if let FieldType::Enum(options) = field.ty {
                let options: Vec<Json> = options
                    .iter()
                    .map(|(value, label)| json!({ "value": value, "label": label }))
                    .collect();
                object["config"] = json!({ "options": options });
            }
            object
        })
        .collect();
    let (created_at, updated_at) = workbook_timestamps(seed, &sheet.workbook_id);
    json!({
        "id": sheet.id,
        "workbookId": sheet.workbook_id,
        "name": sheet.kind.name(),
        "slug": sheet.kind.slug(),
        "config": {
            "name": sheet.kind.name(),
            "slug": sheet.kind.slug(),
            "allowAdditionalFields": false,
            "fields": fields,
            "mappingConfidenceThreshold": 0.5,
        },
        "metadata": {},
        "namespace": "portal",
        "updatedAt": updated_at,
        "createdAt": created_at,
    })
}

/// A workbook object with its sheets, as in `GET /v1/workbooks/{id}`.
pub(crate) fn workbook_json(
    seed: u64,
    workbook_id: &str,
    environment_id: &str,
    sheets: &[SheetRef],
) -> Json {
    let (created_at, updated_at) = workbook_timestamps(seed, workbook_id);
    let sheets: Vec<Json> = sheets.iter().map(|sheet| sheet_json(seed, sheet)).collect();
    json!({
        "id": workbook_id,
        "name": format!("Simulated import {workbook_id}"),
        "spaceId": SPACE_ID,
        "environmentId": environment_id,
        "sheets": sheets,
        "labels": ["primary"],
        "actions": [{
            "operation": "submitActionFg",
            "mode": "foreground",
            "label": "Submit",
            "description": "Send data to flatsync",
            "primary": true,
        }],
        "settings": {},
        "metadata": {},
        "namespace": "portal",
        "updatedAt": updated_at,
        "createdAt": created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contacts(rows: u64) -> SheetRef {
        SheetRef {
            id: "us_sh_test-contacts".to_owned(),
            workbook_id: "us_wb_test".to_owned(),
            kind: SheetKind::Contacts,
            rows,
        }
    }

    fn all_strings(page: &Json) -> Vec<String> {
        let mut found = Vec::new();
        for record in page["data"]["records"].as_array().expect("records array") {
            for cell in record["values"]
                .as_object()
                .expect("values object")
                .values()
            {
                if let Some(text) = cell["value"].as_str() {
                    found.push(text.to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_sheet_kind_covers_the_csv_edge_cases_within_a_hundred_rows() {
        let mut strings = Vec::new();
        let mut numbers = Vec::new();
        let mut nulls = 0;
        for kind in SheetKind::ALL {
            let sheet = SheetRef {
                id: format!("us_sh_edge-{}", kind.slug()),
                workbook_id: "us_wb_edge".to_owned(),
                kind,
                rows: 100,
            };
            let mut out = Vec::new();
            write_records_page(&mut out, 7, &sheet, 1, 100);
            let page: Json = serde_json::from_slice(&out).expect("page is valid JSON");
            strings.extend(all_strings(&page));
            for record in page["data"]["records"].as_array().expect("records") {
                for cell in record["values"].as_object().expect("values").values() {
                    if cell["value"].is_null() {
                        nulls += 1;
                    }
                    if let Some(number) = cell["value"].as_f64() {
                        numbers.push(number);
                    }
                }
            }
        }
        let has = |test: &dyn Fn(&str) -> bool| strings.iter().any(|text| test(text));
        assert!(has(&|t| t.contains(',')), "a comma");
        assert!(has(&|t| t.contains('"')), "a double quote");
        assert!(has(&|t| t.contains('\n')), "a newline");
        assert!(has(&|t| t.contains('é')), "an accented letter");
        assert!(has(&|t| t.contains('日')), "CJK text");
        for lead in ['=', '+', '-', '@'] {
            assert!(
                has(&|t| t.starts_with(lead)),
                "a value starting with {lead}"
            );
        }
        assert!(has(&|t| t.is_empty()), "an empty string");
        assert!(nulls > 0, "a null");
        assert!(numbers.iter().any(|n| *n < 0.0), "a negative number");
        assert!(numbers.iter().any(|n| n.fract() != 0.0), "a decimal");
    }

    #[test]
    fn about_one_row_in_ten_is_invalid_with_a_message_on_one_cell() {
        let mut out = Vec::new();
        write_records_page(&mut out, 1, &contacts(200), 1, 200);
        let page: Json = serde_json::from_slice(&out).expect("valid JSON");
        let records = page["data"]["records"].as_array().expect("records");
        let invalid: Vec<&Json> = records
            .iter()
            .filter(|r| r["valid"] == Json::Bool(false))
            .collect();
        assert_eq!(invalid.len(), 20);
        for record in invalid {
            let bad: Vec<_> = record["values"]
                .as_object()
                .expect("values")
                .iter()
                .filter(|(_, cell)| cell["valid"] == Json::Bool(false))
                .collect();
            assert_eq!(bad.len(), 1, "exactly one invalid cell in {record}");
            assert_eq!(bad[0].0, "email");
            assert_eq!(bad[0].1["messages"][0]["message"], "Invalid email address");
        }
        assert_eq!(page["data"]["counts"]["error"], 20);
        assert_eq!(page["data"]["counts"]["valid"], 180);
    }

    #[test]
    fn legacy_page_is_valid_json_with_raw_and_mapped_in_step() {
        let mut out = Vec::new();
        write_legacy_page(&mut out, 3, "batch-1", 30, 0, 30);
        let page: Json = serde_json::from_slice(&out).expect("valid JSON");
        let rows = page["data"].as_array().expect("data");
        assert_eq!(rows.len(), 30);
        for row in rows {
            let mapped = row["mapped"].as_object().expect("mapped");
            let raw = row["raw"].as_object().expect("raw");
            assert_eq!(mapped.len(), raw.len());
            if mapped["name"].is_null() {
                assert_eq!(raw["First"], "");
            } else {
                assert_eq!(raw["First"], mapped["name"]);
            }
        }
        assert_eq!(rows[9]["valid"], false);
        assert_eq!(rows[8]["valid"], true);
    }

    #[test]
    fn a_ten_thousand_row_page_is_one_json_document_with_every_record() {
        // Its speed is a figure of `cargo bench -p flatfile-sim --bench generate`.
        let sheet = contacts(10_000);
        let mut out = Vec::with_capacity(4 << 20);
        write_records_page(&mut out, 0, &sheet, 1, 10_000);
        let page: Json = serde_json::from_slice(&out).expect("valid JSON");
        let served: Vec<&str> = page["data"]["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|record| record["id"].as_str().expect("id"))
            .collect();
        let key = SheetKey::new(0, &sheet);
        let expected: Vec<String> = (0..10_000).map(|index| key.record_id(index)).collect();
        assert_eq!(served, expected);
    }

    #[test]
    fn generated_ids_are_shaped_like_flatfiles_unique_and_in_no_order() {
        let sheet = contacts(10_000);
        let key = SheetKey::new(0, &sheet);
        let records: Vec<String> = (0..10_000).map(|index| key.record_id(index)).collect();
        let batch = BatchKey::new(0, "596c2c5f-2884-4444-9ccb-2f0772877508");
        let rows: Vec<String> = (0..10_000).map(|index| batch.row_id(index)).collect();
        for (ids, shape) in [(&records, "us_rc_ and 32 hex digits"), (&rows, "a v4 UUID")] {
            let distinct: std::collections::HashSet<&String> = ids.iter().collect();
            assert_eq!(distinct.len(), ids.len(), "every {shape} id is unique");
            // Flatfile's ids are random: a table keyed by them takes each row at a random
            // place, and a benchmark on ordered ids would hide what that costs a sink.
            let rising = ids.windows(2).filter(|pair| pair[0] < pair[1]).count();
            assert!(
                (4_000..6_000).contains(&rising),
                "{rising} of 9,999 neighbouring {shape} ids rise: ordered, not random"
            );
        }
        for id in &records {
            let hex = id.strip_prefix("us_rc_").expect("prefix");
            assert!(
                hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
        for id in &rows {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
            assert!(
                matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
                "variant: {id}"
            );
        }
        // The simulator reads an id back to its row, and only its own sheet's ids below rows.
        for index in [0, 1, 4_999, 9_999] {
            assert_eq!(
                key.record_index(&records[index as usize], 10_000),
                Some(index)
            );
        }
        assert_eq!(key.record_index(&records[9_999], 9_999), None);
        let other = SheetKey::new(1, &sheet);
        assert_eq!(other.record_index(&records[0], 10_000), None);
        assert_eq!(key.record_index("us_rc_tag_a1", 10_000), None);
        let upper = format!("us_rc_{}", records[0]["us_rc_".len()..].to_uppercase());
        assert_eq!(key.record_index(&upper, 10_000), None);
    }

    #[test]
    fn scatter_and_gather_undo_each_other() {
        for key in [0, 1, 0xDEAD_BEEF, u64::MAX] {
            for value in [0, 1, 2, 1 << 32, u64::MAX - 1, u64::MAX] {
                assert_eq!(gather(scatter(value, key), key), value);
            }
        }
    }

    #[test]
    fn sheet_ids_decode_even_when_the_workbook_suffix_contains_dashes() {
        let config = SimConfig {
            rows: 10,
            sheets_per_workbook: 3,
            ..SimConfig::default()
        };
        let sheets = workbook_sheet_refs(&config, "us_wb_a-b-c").expect("workbook exists");
        assert_eq!(
            sheets.iter().map(|s| s.rows).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        for sheet in &sheets {
            assert_eq!(decode_sheet(&config, &sheet.id).as_ref(), Some(sheet));
        }
        assert_eq!(decode_sheet(&config, "us_sh_a-b-c-tickets"), None);
        assert_eq!(decode_sheet(&config, "us_sh_-contacts"), None);
        assert_eq!(decode_sheet(&config, "us_sh_nodash"), None);
        assert_eq!(decode_sheet(&config, "contacts"), None);
        assert_eq!(workbook_sheet_refs(&config, "us_wb_"), None);
    }
}
