//! What the criterion benchmarks of the hot path share: batches in flatsync's line layout, and
//! the timing of a sink's `write_batch` over one long stream.

use std::time::{Duration, Instant};

/// One line per row, 10 fields of mixed types (escapes, nulls, numbers, booleans), as the
/// converter writes them. `first` offsets the record ids, so each batch holds new records.
/// The ids are UUID-shaped and in no order, like Flatfile's: a sink keyed by them pays for
/// writes all over its index, which ids in order would hide.
pub fn ndjson_rows(first: u64, rows: u64) -> Vec<u8> {
    const NAMES: [&str; 5] = ["Ada", "Grace", "Linus", "Zo\\u00eb", "Ken"];
    const NOTES: [&str; 4] = ["", "likes \\\"quotes\\\"", "a, b and c", "plain note"];
    let mut out = String::new();
    for index in first..first + rows {
        let name = NAMES[(index % 5) as usize];
        let age = if index.is_multiple_of(8) {
            "null".to_owned()
        } else {
            (18 + index % 70).to_string()
        };
        let id = scatter(index);
        out.push_str(&format!(
            "{{\"id\":\"{:08x}-{:04x}-4e2f-9a10-{:012x}\",\"valid\":{},\"values\":{{\
             \"first_name\":\"{name}\",\"last_name\":\"Smith-{index}\",\
             \"email\":\"user.{index}@example.com\",\"age\":{age},\
             \"phone\":\"+1 555 {:04}\",\"city\":\"Berlin\",\"note\":\"{}\",\
             \"score\":{}.{:02},\"active\":{},\"signup\":\"2024-05-02\"}}}}\n",
            id >> 32,
            (id >> 16) & 0xFFFF,
            id & 0xFFFF,
            index % 10 != 7,
            index % 10_000,
            NOTES[(index % 4) as usize],
            index % 100,
            index % 97,
            !index.is_multiple_of(3),
        ));
    }
    out.into_bytes()
}

/// splitmix64's finaliser: a bijection of the u64s, so distinct indexes give distinct ids.
fn scatter(index: u64) -> u64 {
    let mut z = index;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Times `iters` batches of `rows` rows handed to `write` as batches `1..=iters` of one
/// stream, after an untimed batch 0 (which opens the stream and writes any header). The
/// batches are made before the clock starts; each holds new record ids, since a sink that
/// upserts pays more for updates than for inserts.
pub fn time_batches(iters: u64, rows: u64, mut write: impl FnMut(&[u8], u64)) -> Duration {
    let pages: Vec<Vec<u8>> = (0..=iters)
        .map(|page| ndjson_rows(page * rows, rows))
        .collect();
    write(&pages[0], 0);
    let start = Instant::now();
    for (seq, lines) in (0_u64..).zip(&pages).skip(1) {
        write(std::hint::black_box(lines), seq);
    }
    start.elapsed()
}
