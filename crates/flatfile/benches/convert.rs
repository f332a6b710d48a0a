//! Page-to-batch conversion: a legacy rows page of 1,000 rows and a Platform records page of
//! 10,000 records, 10 fields each, shaped like Flatfile's (and the simulator's) pages.
//!
//! Run with `cargo bench -p flatsync-flatfile --bench convert`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_flatfile::{LegacyPage, RecordsPage};

const LEGACY_ROWS: u64 = 1_000;
const PLATFORM_RECORDS: u64 = 10_000;
/// Bytes per chunk of the streamed records conversion.
const STREAM_CHUNK: usize = 16 * 1024;

/// Ten fields, as the measurements use: key and a value for row `index`.
fn cells(index: u64) -> [(&'static str, String); 10] {
    const NAMES: [&str; 5] = ["Ada", "Grace", "Linus", "Zoë", "Ken"];
    const NOTES: [&str; 4] = ["", "likes \"quotes\"", "a, b and c", "plain note"];
    let name = NAMES[(index % 5) as usize];
    [
        ("first_name", format!("\"{name}\"")),
        ("last_name", format!("\"Smith-{index}\"")),
        (
            "email",
            format!("\"{}.{index}@example.com\"", name.to_lowercase()),
        ),
        (
            "age",
            if index.is_multiple_of(8) {
                "null".to_owned()
            } else {
                (18 + index % 70).to_string()
            },
        ),
        ("phone", format!("\"+1 555 {:04}\"", index % 10_000)),
        ("city", "\"Berlin\"".to_owned()),
        (
            "note",
            format!("\"{}\"", NOTES[(index % 4) as usize].replace('"', "\\\"")),
        ),
        ("score", format!("{}.{:02}", index % 100, index % 97)),
        ("active", (!index.is_multiple_of(3)).to_string()),
        ("signup", "\"2024-05-02\"".to_owned()),
    ]
}

fn legacy_body(rows: u64) -> Vec<u8> {
    let mut out = String::from(
        "{\"pagination\":{\"currentPage\":1,\"limit\":1000,\"offset\":0,\"onPage\":1000,\
         \"nextOffset\":1000,\"totalCount\":1000000,\"pageCount\":1000},\"data\":[",
    );
    for index in 0..rows {
        if index > 0 {
            out.push(',');
        }
        let cells = cells(index);
        let object = |raw: bool| {
            let pairs: Vec<String> = cells
                .iter()
                .map(|(key, value)| {
                    if raw {
                        // `raw` holds the text as typed: every cell a string.
                        let text = value
                            .strip_prefix('"')
                            .and_then(|inner| inner.strip_suffix('"'))
                            .unwrap_or(value);
                        format!("\"{key}\":\"{text}\"")
                    } else {
                        format!("\"{key}\":{value}")
                    }
                })
                .collect();
            format!("{{{}}}", pairs.join(","))
        };
        out.push_str(&format!(
            "{{\"id\":\"3f1c2a9e-6b7d-4e2f-9a10-{index:012x}\",\
             \"batchId\":\"596c2c5f-2884-4444-9ccb-2f0772877508\",\"sequence\":{},\
             \"raw\":{},\"mapped\":{},\"valid\":{},\"deleted\":false,\
             \"createdAt\":\"2022-11-03T10:15:22.418Z\",\"updatedAt\":\"2022-11-03T10:16:05.003Z\"}}",
            index + 1,
            object(true),
            object(false),
            index % 10 != 7,
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

fn records_body(records: u64) -> Vec<u8> {
    let mut out = String::from("{\"data\":{\"records\":[");
    for index in 0..records {
        if index > 0 {
            out.push(',');
        }
        let values: Vec<String> = cells(index)
            .iter()
            .map(|(key, value)| {
                format!(
                    "\"{key}\":{{\"value\":{value},\"messages\":[],\"valid\":true,\
                     \"updatedAt\":\"2024-05-02T13:58:40.012Z\"}}"
                )
            })
            .collect();
        out.push_str(&format!(
            "{{\"id\":\"us_rc_{index:032x}\",\"values\":{{{}}},\"valid\":true,\
             \"metadata\":{{}},\"config\":{{}}}}",
            values.join(",")
        ));
    }
    out.push_str(
        "],\"counts\":{\"total\":10000,\"valid\":10000,\"error\":0},\
         \"commitId\":\"us_vr_Wc9Hx4Ra\",\"versionId\":\"us_vr_Wc9Hx4Ra\",\"success\":true}}",
    );
    out.into_bytes()
}

fn conversion(c: &mut Criterion) {
    let mut group = c.benchmark_group("convert");
    let legacy = legacy_body(LEGACY_ROWS);
    // The generator must produce what the converter accepts, or the figures mean nothing.
    let page = LegacyPage::parse(&legacy, "b", 0).expect("the legacy page converts");
    assert_eq!(page.rows_delivered, LEGACY_ROWS);
    // Rows per second times this is the bytes per second the conversion reads.
    eprintln!("legacy page: {} bytes", legacy.len());
    group.throughput(Throughput::Elements(LEGACY_ROWS));
    group.bench_function(BenchmarkId::new("legacy_page", LEGACY_ROWS), |b| {
        b.iter(|| LegacyPage::parse(black_box(&legacy), "b", 0).expect("converts"));
    });

    let records = records_body(PLATFORM_RECORDS);
    let page = RecordsPage::parse(&records).expect("the records page converts");
    assert_eq!(page.rows, PLATFORM_RECORDS);
    eprintln!("records page: {} bytes", records.len());
    group.throughput(Throughput::Elements(PLATFORM_RECORDS));
    group.bench_function(BenchmarkId::new("records_page", PLATFORM_RECORDS), |b| {
        b.iter(|| RecordsPage::parse(black_box(&records)).expect("converts"));
    });
    // As the client converts a body while it arrives, in chunks of the size a socket read
    // gives.
    let announced = Some(records.len() as u64);
    let streamed = RecordsPage::parse_chunks(announced, records.chunks(STREAM_CHUNK));
    assert_eq!(streamed.and_then(Result::ok), Some(page));
    group.bench_function(
        BenchmarkId::new("records_page_streamed", PLATFORM_RECORDS),
        |b| {
            b.iter(|| {
                RecordsPage::parse_chunks(announced, black_box(&records).chunks(STREAM_CHUNK))
                    .and_then(Result::ok)
                    .expect("converts")
            });
        },
    );
    group.finish();
}

criterion_group!(benches, conversion);
criterion_main!(benches);
