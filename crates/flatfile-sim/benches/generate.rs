//! How fast the simulator serves generated pages, in rows per second. It prints figures and
//! asserts nothing about speed, which a loaded machine would make flaky; the tests check what the
//! pages hold. Run it with `cargo bench -p flatfile-sim --bench generate`.
//!
//! Pages are fetched over HTTP from an in-process simulator on 127.0.0.1, as a client sees them:
//! the figures include the loopback transfer, not only the generator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flatfile_sim::{
    DEFAULT_LEGACY_API_KEY, DEFAULT_SECRET_KEY, NewRecords, RunningSim, SimConfig, record_ids,
};

/// Timed requests per page shape, after one untimed warm-up request.
const ROUNDS: u32 = 20;
/// Rows of every legacy batch and workbook; each of a workbook's two sheets has half.
const ROWS: u64 = 200_000;

/// One page shape to time.
struct Case {
    name: &'static str,
    path: String,
    /// Rows each answer carries.
    rows: u64,
    legacy: bool,
}

/// What the timed rounds of one case measured.
struct Figures {
    rows_per_sec: f64,
    mib_per_sec: f64,
    fastest: Duration,
    slowest: Duration,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let config = SimConfig {
        rows: ROWS,
        ..SimConfig::default()
    };
    let sim = RunningSim::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the simulator starts");
    let changed = change_a_sheet(&sim, "us_sh_changed-contacts");
    let cases = [
        Case {
            name: "records, unchanged sheet",
            path: "/v1/sheets/us_sh_bench-contacts/records?pageSize=10000".to_owned(),
            rows: 10_000,
            legacy: false,
        },
        Case {
            name: "records, changed sheet, page 90",
            path: format!("/v1/sheets/{changed}/records?pageSize=1000&pageNumber=90"),
            rows: 1_000,
            legacy: false,
        },
        Case {
            name: "legacy batch rows",
            path: "/rest/batch/bench/rows?skip=0&take=10000".to_owned(),
            rows: 10_000,
            legacy: true,
        },
        Case {
            name: "legacy Workspaces records",
            path: "/workspace/ws-bench/sheet/sh-bench/records?skip=0&take=10000".to_owned(),
            rows: 10_000,
            legacy: true,
        },
    ];
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    println!(
        "{:<34} {:>9} {:>12} {:>9} {:>11} {:>11}",
        "page", "rows", "rows/s", "MiB/s", "fastest", "slowest"
    );
    for case in &cases {
        let figures = measure(&http, &sim.base_url(), case).await;
        println!(
            "{:<34} {:>9} {:>12.0} {:>9.1} {:>11.2?} {:>11.2?}",
            case.name,
            case.rows,
            figures.rows_per_sec,
            figures.mib_per_sec,
            figures.fastest,
            figures.slowest
        );
    }
    sim.shutdown().await;
}

/// Deletes every 997th record of a 100,000-row sheet and adds three, so its pages are served
/// through the record overlay rather than straight from the generator.
fn change_a_sheet(sim: &RunningSim, sheet_id: &str) -> String {
    let ids = record_ids(sim.config(), sheet_id);
    let doomed: Vec<String> = ids.iter().step_by(997).take(100).cloned().collect();
    sim.delete_records(sheet_id, &doomed)
        .expect("records deleted");
    sim.add_records(sheet_id, &NewRecords::Count(3))
        .expect("records added");
    sheet_id.to_owned()
}

async fn measure(http: &reqwest::Client, base_url: &str, case: &Case) -> Figures {
    let url = format!("{base_url}{}", case.path);
    fetch(http, &url, case).await;
    let mut total = Duration::ZERO;
    let mut bytes = 0;
    let mut fastest = Duration::MAX;
    let mut slowest = Duration::ZERO;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        bytes += fetch(http, &url, case).await;
        let took = started.elapsed();
        total += took;
        fastest = fastest.min(took);
        slowest = slowest.max(took);
    }
    let seconds = total.as_secs_f64();
    Figures {
        rows_per_sec: (case.rows * u64::from(ROUNDS)) as f64 / seconds,
        mib_per_sec: bytes as f64 / f64::from(1 << 20) / seconds,
        fastest,
        slowest,
    }
}

/// GETs one page and returns its size; a refused request stops the benchmark.
async fn fetch(http: &reqwest::Client, url: &str, case: &Case) -> usize {
    let request = if case.legacy {
        http.get(url).header("X-Api-Key", DEFAULT_LEGACY_API_KEY)
    } else {
        http.get(url).bearer_auth(DEFAULT_SECRET_KEY)
    };
    let response = request.send().await.expect("the page is answered");
    assert_eq!(response.status(), 200, "GET {url}");
    response
        .bytes()
        .await
        .expect("the page arrives whole")
        .len()
}
