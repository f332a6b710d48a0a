//! `flatsync top` when stdout is not a terminal (or with `--plain`): one block of plain text
//! per interval, no escape codes, for pipes, logs and scripts.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use flatsync_core::ops;
use flatsync_core::state::{EventStatus, now_ms};

use super::sample::{Sample, Sampler, SortBy, eta_text, percent_text, rate_text, rows_text};
use super::scrape::Scrape;
use crate::ops_cli::{age, short, table};

/// Prints a block every `interval`, `iterations` times or until the reader goes away.
pub(super) fn run(
    sampler: &mut Sampler,
    interval: Duration,
    iterations: Option<u64>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut taken = 0;
    loop {
        let started = Instant::now();
        let sample = sampler.sample(SortBy::Newest)?;
        taken += 1;
        let mut text = render(&sample, now_ms());
        if iterations.is_none_or(|n| taken < n) {
            text.push('\n');
        }
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            // `flatsync top | head` closes the pipe: that is the reader's way to say enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if iterations.is_some_and(|n| taken >= n) {
            return Ok(());
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// One block: the time and database, event totals, the deliveries in flight, the sinks, the
/// poll cursors and what `/metrics` said.
pub(super) fn render(sample: &Sample, now: i64) -> String {
    let mut out = String::new();
    let status = &sample.status;
    let _ = writeln!(
        out,
        "flatsync top at {}: {}",
        ops::format_utc(now),
        status.state_db
    );
    let _ = writeln!(
        out,
        "Events: {}; dead letters: {}",
        event_counts(sample),
        sample.dead_letters()
    );
    out.push('\n');
    out.push_str(&in_flight(sample));
    out.push('\n');
    out.push_str(&sinks(sample, now));
    if !status.polling.is_empty() {
        out.push('\n');
        out.push_str(&polling(sample, now));
    }
    out.push('\n');
    out.push_str(&metrics(&sample.metrics));
    out
}

/// `1 pending, 3 done, 0 failed, 0 skipped, 0 unrouted`.
pub(super) fn event_counts(sample: &Sample) -> String {
    EventStatus::ALL
        .iter()
        .map(|s| {
            let n = sample.status.events.get(s.as_str()).copied().unwrap_or(0);
            format!("{n} {s}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn in_flight(sample: &Sample) -> String {
    if sample.in_flight.is_empty() {
        return "In flight: nothing\n".to_owned();
    }
    let mut out = format!("In flight: {}\n", in_flight_count(sample));
    let rows: Vec<Vec<String>> = sample
        .in_flight
        .iter()
        .map(|p| {
            vec![
                p.event_id.clone(),
                p.sink.clone(),
                rows_text(p.done, p.expected),
                percent_text(p.fraction()),
                rate_text(p.rate),
                eta_text(p.eta),
                p.topic.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["EVENT", "SINK", "ROWS", "DONE", "RATE", "ETA", "TOPIC"],
        &rows,
    ));
    out
}

/// `1 delivery`, `3 deliveries`, or `500 of 2000 deliveries` past the sample's limit.
pub(super) fn in_flight_count(sample: &Sample) -> String {
    let (shown, total) = (sample.in_flight.len() as u64, sample.in_flight_total);
    let noun = if total == 1 { "delivery" } else { "deliveries" };
    if shown < total {
        format!("{shown} of {total} {noun}")
    } else {
        format!("{total} {noun}")
    }
}

fn sinks(sample: &Sample, now: i64) -> String {
    if sample.sinks.is_empty() {
        return "Sinks: none yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = sample
        .sinks
        .iter()
        .map(|row| {
            let s = &row.status;
            vec![
                s.name.clone(),
                rate_text(row.rate),
                s.done.to_string(),
                s.pending.to_string(),
                s.failed.to_string(),
                s.rows_delivered.to_string(),
                s.lag_secs.map_or_else(|| "-".to_owned(), |l| age(l as i64)),
                s.last_error.as_ref().map_or_else(
                    || "-".to_owned(),
                    |e| {
                        format!(
                            "{} ago, event {}: {}",
                            age((now - e.at_ms).max(0) / 1_000),
                            e.event_id,
                            short(&e.error, 80)
                        )
                    },
                ),
            ]
        })
        .collect();
    table(
        &[
            "SINK",
            "RATE",
            "DONE",
            "PENDING",
            "FAILED",
            "ROWS",
            "LAG",
            "LAST ERROR",
        ],
        &rows,
    )
}

fn polling(sample: &Sample, now: i64) -> String {
    let rows: Vec<Vec<String>> = sample
        .status
        .polling
        .iter()
        .map(|p| {
            vec![
                p.environment_id.clone(),
                ops::format_utc(p.cursor_ms),
                age((now - p.cursor_ms).max(0) / 1_000),
                p.unacknowledged.to_string(),
            ]
        })
        .collect();
    table(
        &["POLLED ENVIRONMENT", "CURSOR", "LAG", "UNACKNOWLEDGED"],
        &rows,
    )
}

/// The metrics lines, shared with the terminal view.
pub(super) fn metrics_lines(scrape: &Scrape) -> Vec<String> {
    let metrics = match scrape {
        Scrape::Unavailable(why) => return vec![format!("Metrics: {why}")],
        Scrape::Failed(why) => return vec![format!("Metrics: cannot read: {why}")],
        Scrape::Read(metrics) => metrics,
    };
    let retries = if metrics.retries.is_empty() {
        "none".to_owned()
    } else {
        metrics
            .retries
            .iter()
            .map(|(endpoint, n)| format!("{endpoint} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let failures: Vec<String> = metrics
        .api_failures
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    let failures = if failures.is_empty() {
        "none".to_owned()
    } else {
        failures.join(", ")
    };
    let mut lines = vec![
        format!("API retries: {retries}"),
        format!("API failed answers: {failures}"),
    ];
    let health: Vec<String> = metrics
        .sink_up
        .iter()
        .map(|(sink, up)| {
            let stalled = metrics.sink_stalled.get(sink).copied().unwrap_or(false);
            let state = match (up, stalled) {
                (_, true) => "stalled",
                (true, false) => "up",
                (false, false) => "down",
            };
            let refused = metrics.rows_failed.get(sink).copied().unwrap_or(0.0);
            if refused > 0.0 {
                format!("{sink} {state} ({refused} rows refused)")
            } else {
                format!("{sink} {state}")
            }
        })
        .collect();
    lines.push(if health.is_empty() {
        "Sinks: none started".to_owned()
    } else {
        format!("Sinks: {}", health.join(", "))
    });
    lines
}

fn metrics(scrape: &Scrape) -> String {
    metrics_lines(scrape)
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::fixtures::{NOW, sample};
    use crate::top::scrape::Metrics;

    #[test]
    fn a_block_names_the_event_sink_rows_rate_and_eta_without_escape_codes() {
        let text = render(&sample(&[("evt-1", 5_000)]), NOW);
        assert!(!text.contains('\x1b'), "escape codes in:\n{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("evt-1"))
            .unwrap_or_else(|| panic!("no line for evt-1 in:\n{text}"));
        for figure in ["archive", "5000/20000", "25%", "1000 rows/s", "15s"] {
            assert!(line.contains(figure), "{figure} missing from: {line}");
        }
        for part in [
            "Events: 1 pending, 4 done, 0 failed, 0 skipped, 0 unrouted; dead letters: 1",
            "In flight: 1 delivery",
            "2m ago, event evt-bad: disk full",
            "us_env_1",
            "Metrics: no [admin] listener configured",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
    }

    #[test]
    fn metrics_lines_add_retries_up_and_refused_rows() {
        let metrics = Metrics::parse(
            "flatsync_fetch_retries_total{endpoint=\"records\",reason=\"http_429\"} 4\n\
             flatsync_api_requests_total{endpoint=\"records\",status=\"200\"} 40\n\
             flatsync_api_requests_total{endpoint=\"records\",status=\"429\"} 3\n\
             flatsync_api_requests_total{endpoint=\"counts\",status=\"429\"} 1\n\
             flatsync_api_requests_total{endpoint=\"records\",status=\"transport\"} 2\n\
             flatsync_sink_up{sink=\"archive\"} 1\n\
             flatsync_sink_up{sink=\"warehouse\"} 0\n\
             flatsync_sink_stalled{sink=\"warehouse\"} 1\n\
             flatsync_rows_failed_total{sink=\"warehouse\"} 500\n",
        );
        assert_eq!(
            metrics_lines(&Scrape::Read(metrics)),
            [
                "API retries: records 4",
                "API failed answers: 429 4, transport 2",
                "Sinks: archive up, warehouse stalled (500 rows refused)"
            ]
        );
        assert_eq!(
            metrics_lines(&Scrape::Failed(
                "GET http://127.0.0.1:9/metrics: refused".to_owned()
            )),
            ["Metrics: cannot read: GET http://127.0.0.1:9/metrics: refused"]
        );
    }
}
