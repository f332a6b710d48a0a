//! Reading the state (and `/metrics`) once per interval, and what the difference between
//! samples tells: rows per second and the time left. The arithmetic is pure and tested here;
//! the views only lay it out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use flatsync_core::Config;
use flatsync_core::ops::{EventDetail, LiveReport, OpsDb, SinkStatus, StatusReport};

use super::scrape::{Admin, Scrape};

/// Deliveries in flight read per sample: the view shows a screenful, and the reading stays
/// the same size however large the backlog.
const IN_FLIGHT_LIMIT: usize = 500;

/// How far back a rate looks. Checkpoints land in steps (one per flush), so a rate over a
/// single interval would jump between zero and a burst; a window of several smooths it.
const RATE_SPAN_SECS: f64 = 10.0;

/// At most this many points per rate, whatever the interval.
const RATE_POINTS: usize = 64;

/// Rows counted at successive samples of one delivery or sink, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RateWindow {
    points: VecDeque<(f64, u64)>,
}

impl RateWindow {
    /// Records `rows` counted at `at_secs` (seconds since any fixed start). A count lower than
    /// the last (a sink's deliveries dropped or replayed) starts the window again.
    pub(crate) fn push(&mut self, at_secs: f64, rows: u64) {
        if self.points.back().is_some_and(|&(_, last)| rows < last) {
            self.points.clear();
        }
        self.points.push_back((at_secs, rows));
        while self.points.len() > RATE_POINTS
            || (self.points.len() > 2
                && self
                    .points
                    .front()
                    .is_some_and(|&(t, _)| at_secs - t > RATE_SPAN_SECS))
        {
            self.points.pop_front();
        }
    }

    /// Rows per second over the window; `None` until two samples apart in time.
    pub(crate) fn rate(&self) -> Option<f64> {
        let (&(t0, r0), &(t1, r1)) = (self.points.front()?, self.points.back()?);
        let elapsed = t1 - t0;
        (elapsed > 0.0).then(|| r1.saturating_sub(r0) as f64 / elapsed)
    }
}

/// The time left to reach `expected` rows from `done` at `rate` rows per second: zero once
/// there, `None` when the total or a rate above zero is not known.
pub(crate) fn eta(done: u64, expected: Option<u64>, rate: Option<f64>) -> Option<Duration> {
    let remaining = expected?.saturating_sub(done);
    if remaining == 0 {
        return Some(Duration::ZERO);
    }
    let rate = rate.filter(|r| *r > 0.0)?;
    Some(Duration::from_secs((remaining as f64 / rate).ceil() as u64))
}

/// One progress bar: a sink's delivery of one event.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Progress {
    /// The event.
    pub(crate) event_id: String,
    /// Its topic.
    pub(crate) topic: String,
    /// The sink.
    pub(crate) sink: String,
    /// Receipt time of the event, ms since the Unix epoch.
    pub(crate) received_at_ms: i64,
    /// Rows checkpointed.
    pub(crate) done: u64,
    /// Rows in all, once every stream's total is known.
    pub(crate) expected: Option<u64>,
    /// Rows per second, once two samples saw it.
    pub(crate) rate: Option<f64>,
    /// Time left.
    pub(crate) eta: Option<Duration>,
}

impl Progress {
    /// Done as a fraction of expected, between 0 and 1.
    pub(crate) fn fraction(&self) -> Option<f64> {
        let expected = self.expected?;
        Some(if expected == 0 {
            1.0
        } else {
            (self.done as f64 / expected as f64).clamp(0.0, 1.0)
        })
    }
}

/// The order of the bars; `s` cycles through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SortBy {
    /// Newest event first.
    #[default]
    Newest,
    /// Lowest rows per second first (no rate yet counts as none).
    Slowest,
    /// Most rows expected first (rows done when the total is unknown).
    MostRows,
}

impl SortBy {
    /// The next order.
    pub(crate) fn next(self) -> SortBy {
        match self {
            SortBy::Newest => SortBy::Slowest,
            SortBy::Slowest => SortBy::MostRows,
            SortBy::MostRows => SortBy::Newest,
        }
    }

    /// Its name on screen.
    pub(crate) fn label(self) -> &'static str {
        match self {
            SortBy::Newest => "newest",
            SortBy::Slowest => "slowest",
            SortBy::MostRows => "most rows",
        }
    }

    /// Sorts `bars` in this order; ties keep the newest event first, then the sink name.
    pub(crate) fn sort(self, bars: &mut [Progress]) {
        let newest = |a: &Progress, b: &Progress| {
            b.received_at_ms
                .cmp(&a.received_at_ms)
                .then_with(|| b.event_id.cmp(&a.event_id))
                .then_with(|| a.sink.cmp(&b.sink))
        };
        match self {
            SortBy::Newest => bars.sort_by(newest),
            SortBy::Slowest => bars.sort_by(|a, b| {
                let (ra, rb) = (a.rate.unwrap_or(0.0), b.rate.unwrap_or(0.0));
                ra.total_cmp(&rb).then_with(|| newest(a, b))
            }),
            SortBy::MostRows => bars.sort_by(|a, b| {
                let size = |p: &Progress| p.expected.unwrap_or(p.done);
                size(b).cmp(&size(a)).then_with(|| newest(a, b))
            }),
        }
    }
}

/// A sink's row in the view: its status and its throughput.
#[derive(Clone, Debug)]
pub(crate) struct SinkRow {
    /// What `flatsync status` says of it.
    pub(crate) status: SinkStatus,
    /// Rows made durable per second, over the rate window.
    pub(crate) rate: Option<f64>,
}

/// Everything one screen or one plain block shows.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// The status overview.
    pub(crate) status: StatusReport,
    /// The bars, in the order asked for.
    pub(crate) in_flight: Vec<Progress>,
    /// Pending deliveries in all (the bars stop at a limit).
    pub(crate) in_flight_total: u64,
    /// Per sink, by name.
    pub(crate) sinks: Vec<SinkRow>,
    /// What `/metrics` said.
    pub(crate) metrics: Scrape,
}

impl Sample {
    /// Dead letters of every sink.
    pub(crate) fn dead_letters(&self) -> u64 {
        self.status.sinks.iter().map(|s| s.failed).sum()
    }
}

/// The rate windows of the deliveries and sinks seen in the last sample; the others are
/// forgotten, so the memory follows what is on screen.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    deliveries: BTreeMap<(String, String), RateWindow>,
    sinks: BTreeMap<String, RateWindow>,
}

impl Rates {
    /// Turns one reading into bars and sink rows, updating the windows with it.
    pub(crate) fn apply(&mut self, at_secs: f64, report: LiveReport, scrape: Scrape) -> Sample {
        let mut deliveries = BTreeMap::new();
        let in_flight = report
            .in_flight
            .iter()
            .map(|d| {
                let key = (d.event_id.clone(), d.sink.clone());
                let mut window = self.deliveries.remove(&key).unwrap_or_default();
                let done = d.rows_done();
                window.push(at_secs, done);
                let (expected, rate) = (d.rows_expected(), window.rate());
                deliveries.insert(key, window);
                Progress {
                    event_id: d.event_id.clone(),
                    topic: d.topic.clone(),
                    sink: d.sink.clone(),
                    received_at_ms: d.received_at_ms,
                    done,
                    expected,
                    rate,
                    eta: eta(done, expected, rate),
                }
            })
            .collect();
        self.deliveries = deliveries;
        let mut sinks = BTreeMap::new();
        let sink_rows = report
            .status
            .sinks
            .iter()
            .map(|s| {
                let mut window = self.sinks.remove(&s.name).unwrap_or_default();
                window.push(at_secs, s.rows_delivered);
                let rate = window.rate();
                sinks.insert(s.name.clone(), window);
                SinkRow {
                    status: s.clone(),
                    rate,
                }
            })
            .collect();
        self.sinks = sinks;
        Sample {
            in_flight_total: report.in_flight_total,
            status: report.status,
            in_flight,
            sinks: sink_rows,
            metrics: scrape,
        }
    }
}

/// Reads the state database read-only, and `/metrics` when there is an admin listener.
#[derive(Debug)]
pub(crate) struct Sampler {
    db: OpsDb,
    config: Option<Config>,
    admin: Admin,
    rates: Rates,
    started: Instant,
}

impl Sampler {
    /// A sampler of the state database `db`; `config`, when read, names the sinks and routes
    /// and says where the admin listener is.
    pub(crate) fn open(db: OpsDb, config: Option<Config>) -> anyhow::Result<Sampler> {
        Ok(Sampler {
            db,
            admin: Admin::of(config.as_ref()),
            config,
            rates: Rates::default(),
            started: Instant::now(),
        })
    }

    /// Takes a sample now, its bars in `sort` order.
    pub(crate) fn sample(&mut self, sort: SortBy) -> anyhow::Result<Sample> {
        let report = self.db.live(self.config.as_ref(), IN_FLIGHT_LIMIT)?;
        let scrape = self.admin.scrape();
        let at = self.started.elapsed().as_secs_f64();
        let mut sample = self.rates.apply(at, report, scrape);
        sort.sort(&mut sample.in_flight);
        Ok(sample)
    }

    /// One event as `events show` reads it; `None` when it is not in the inbox.
    pub(crate) fn detail(&self, event_id: &str) -> anyhow::Result<Option<EventDetail>> {
        Ok(self.db.show_event(event_id)?)
    }
}

/// `3000/20000`, or `3000/?` while the total is unknown.
pub(crate) fn rows_text(done: u64, expected: Option<u64>) -> String {
    match expected {
        Some(expected) => format!("{done}/{expected}"),
        None => format!("{done}/?"),
    }
}

/// `1520 rows/s`, or `-` without a rate.
pub(crate) fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(
        || "-".to_owned(),
        |r| format!("{} rows/s", r.round() as u64),
    )
}

/// `17s`, `2m05s`, `1h02m`, or `-` when unknown.
pub(crate) fn eta_text(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "-".to_owned();
    };
    let s = eta.as_secs();
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
    }
}

/// `15%`, or `-` while the total is unknown.
pub(crate) fn percent_text(fraction: Option<f64>) -> String {
    fraction.map_or_else(
        || "-".to_owned(),
        |f| format!("{}%", (f * 100.0).floor() as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_two_samples_apart_in_time() {
        let mut window = RateWindow::default();
        assert_eq!(window.rate(), None, "no sample");
        window.push(1.0, 500);
        assert_eq!(window.rate(), None, "one sample");
        window.push(1.0, 900);
        assert_eq!(window.rate(), None, "two samples at the same instant");
        window.push(3.0, 2_500);
        assert_eq!(window.rate(), Some(1_000.0), "2,000 rows in 2 s");
    }

    #[test]
    fn a_rate_looks_back_over_the_window_only() {
        let mut window = RateWindow::default();
        // Slow at first, then 100 rows per second from t = 20.
        window.push(0.0, 0);
        window.push(10.0, 10);
        for t in 20..=40 {
            window.push(f64::from(t), 10 + (t as u64 - 20) * 100);
        }
        let rate = window.rate().expect("a rate");
        assert!(
            (rate - 100.0).abs() < 1e-9,
            "the early slow samples are out of the 10 s window: {rate}"
        );
    }

    #[test]
    fn a_window_keeps_a_bounded_number_of_points() {
        let mut window = RateWindow::default();
        for i in 0..10_000 {
            window.push(f64::from(i) * 0.001, u64::from(i as u32));
        }
        assert!(
            window.points.len() <= RATE_POINTS,
            "{} points",
            window.points.len()
        );
        let rate = window.rate().expect("a rate");
        assert!((rate - 1_000.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_count_going_down_starts_the_window_again() {
        let mut window = RateWindow::default();
        window.push(0.0, 5_000);
        window.push(1.0, 6_000);
        window.push(2.0, 100);
        assert_eq!(
            window.rate(),
            None,
            "a replay started from 0: no negative rate"
        );
        window.push(4.0, 500);
        assert_eq!(window.rate(), Some(200.0));
    }

    #[test]
    fn eta_is_the_remaining_rows_over_the_rate() {
        assert_eq!(
            eta(3_000, Some(20_000), Some(1_000.0)),
            Some(Duration::from_secs(17))
        );
        assert_eq!(
            eta(3_000, Some(20_000), Some(3_000.0)),
            Some(Duration::from_secs(6)),
            "17,000 rows at 3,000/s is 5.67 s, rounded up"
        );
        assert_eq!(
            eta(20_000, Some(20_000), None),
            Some(Duration::ZERO),
            "done"
        );
        assert_eq!(eta(3_000, None, Some(1_000.0)), None, "total unknown");
        assert_eq!(eta(3_000, Some(20_000), None), None, "no rate yet");
        assert_eq!(eta(3_000, Some(20_000), Some(0.0)), None, "stalled");
    }

    fn bar(
        event: &str,
        sink: &str,
        received: i64,
        done: u64,
        expected: Option<u64>,
        rate: Option<f64>,
    ) -> Progress {
        Progress {
            event_id: event.to_owned(),
            topic: "t".to_owned(),
            sink: sink.to_owned(),
            received_at_ms: received,
            done,
            expected,
            rate,
            eta: eta(done, expected, rate),
        }
    }

    #[test]
    fn each_sort_puts_the_right_bar_first() {
        let mut bars = vec![
            bar("old-big", "a", 1, 100, Some(90_000), Some(5_000.0)),
            bar("new-small", "a", 3, 10, Some(1_000), Some(2_000.0)),
            bar("mid-stuck", "a", 2, 0, None, None),
        ];
        fn order(bars: &[Progress]) -> Vec<&str> {
            bars.iter().map(|b| b.event_id.as_str()).collect()
        }
        SortBy::Newest.sort(&mut bars);
        assert_eq!(order(&bars), ["new-small", "mid-stuck", "old-big"]);
        SortBy::Slowest.sort(&mut bars);
        assert_eq!(order(&bars), ["mid-stuck", "new-small", "old-big"]);
        SortBy::MostRows.sort(&mut bars);
        assert_eq!(order(&bars), ["old-big", "new-small", "mid-stuck"]);
        assert_eq!(
            SortBy::Newest.next().next().next(),
            SortBy::Newest,
            "s cycles through three"
        );
    }

    #[test]
    fn a_bar_fraction_is_clamped_and_an_empty_stream_is_full() {
        assert_eq!(
            bar("e", "s", 0, 5_000, Some(20_000), None).fraction(),
            Some(0.25)
        );
        assert_eq!(bar("e", "s", 0, 0, Some(0), None).fraction(), Some(1.0));
        assert_eq!(bar("e", "s", 0, 30, Some(20), None).fraction(), Some(1.0));
        assert_eq!(bar("e", "s", 0, 30, None, None).fraction(), None);
    }

    #[test]
    fn figures_read_as_an_operator_expects() {
        assert_eq!(rows_text(3_000, Some(20_000)), "3000/20000");
        assert_eq!(rows_text(3_000, None), "3000/?");
        assert_eq!(rate_text(Some(1_519.6)), "1520 rows/s");
        assert_eq!(rate_text(None), "-");
        assert_eq!(eta_text(Some(Duration::from_secs(17))), "17s");
        assert_eq!(eta_text(Some(Duration::from_secs(125))), "2m05s");
        assert_eq!(eta_text(Some(Duration::from_secs(3_720))), "1h02m");
        assert_eq!(eta_text(None), "-");
        assert_eq!(percent_text(Some(0.159)), "15%");
        assert_eq!(percent_text(None), "-");
    }

    #[test]
    fn rates_come_from_the_difference_between_samples_and_gone_bars_are_forgotten() {
        use crate::top::fixtures::report;
        use crate::top::scrape::Scrape;
        let none = || Scrape::Unavailable(String::new());
        let mut rates = Rates::default();
        let first = rates.apply(0.0, report(&[("evt-1", 3_000)]), none());
        assert_eq!(first.in_flight[0].rate, None, "one sample has no rate");
        assert_eq!(first.in_flight[0].eta, None);
        assert_eq!(first.in_flight[0].expected, Some(20_000));

        let second = rates.apply(2.0, report(&[("evt-1", 5_000)]), none());
        let bar = &second.in_flight[0];
        assert_eq!((bar.done, bar.rate), (5_000, Some(1_000.0)));
        assert_eq!(
            bar.eta,
            Some(Duration::from_secs(15)),
            "15,000 rows left at 1,000/s"
        );
        assert_eq!(second.sinks[0].status.name, "archive");
        assert_eq!(
            second.sinks[0].rate,
            Some(1_000.0),
            "the sink's rows grew as much"
        );
        assert_eq!(
            second.sinks[1].rate,
            Some(0.0),
            "warehouse delivered nothing"
        );

        rates.apply(3.0, report(&[]), none());
        assert!(
            rates.deliveries.is_empty(),
            "a finished delivery's window is dropped"
        );
        let again = rates.apply(4.0, report(&[("evt-1", 6_000)]), none());
        assert_eq!(
            again.in_flight[0].rate, None,
            "a bar back on screen starts afresh"
        );
    }
}
