//! The admin listener's `/metrics`, read for the panes the state database cannot fill: API
//! retries by endpoint, API answers that were not a success by status, sinks up or stalled,
//! rows the sinks refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use flatsync_core::Config;
use flatsync_core::metrics::{API_REQUESTS, FETCH_RETRIES, ROWS_FAILED, SINK_STALLED, SINK_UP};

/// How long one scrape may take: a daemon that does not answer in time is reported, not
/// waited for, so the view keeps its pace.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where `/metrics` is, as far as the config says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admin {
    /// No config was read (`--state-dir`).
    NoConfig,
    /// The config has no `[admin]` section.
    NotConfigured,
    /// `listen` asks for a port chosen at start, which the config cannot tell.
    EphemeralPort(SocketAddr),
    /// The URL of `/metrics`.
    At(String),
}

impl Admin {
    /// The admin listener of `config`; a wildcard address is reached on loopback.
    pub(crate) fn of(config: Option<&Config>) -> Admin {
        let Some(config) = config else {
            return Admin::NoConfig;
        };
        let Some(admin) = &config.admin else {
            return Admin::NotConfigured;
        };
        let listen = admin.listen;
        if listen.port() == 0 {
            return Admin::EphemeralPort(listen);
        }
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Admin::At(format!(
            "http://{}/metrics",
            SocketAddr::new(ip, listen.port())
        ))
    }

    /// Reads `/metrics` now; what cannot be read says why.
    pub(crate) fn scrape(&self) -> Scrape {
        match self {
            Admin::NoConfig => Scrape::Unavailable(
                "no config read (--state-dir): pass --config to see the admin listener's metrics"
                    .to_owned(),
            ),
            Admin::NotConfigured => Scrape::Unavailable(
                "no [admin] listener configured: retries and sink health need one".to_owned(),
            ),
            Admin::EphemeralPort(listen) => Scrape::Unavailable(format!(
                "[admin] listen = {listen} picks its port at start: set a fixed port to see it"
            )),
            Admin::At(url) => match fetch(url) {
                Ok(text) => Scrape::Read(Metrics::parse(&text)),
                Err(why) => Scrape::Failed(format!("GET {url}: {why}")),
            },
        }
    }
}

fn fetch(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SCRAPE_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())
}

/// The outcome of one scrape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scrape {
    /// There is nothing to scrape; the text says why and what to do.
    Unavailable(String),
    /// The listener did not answer as expected.
    Failed(String),
    /// The figures read.
    Read(Metrics),
}

/// The figures of one scrape that the view shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Metrics {
    /// API requests retried, by endpoint (all reasons added up).
    pub(crate) retries: BTreeMap<String, f64>,
    /// API requests that did not succeed, by status (`429`, `503`, `5xx`, `transport`, ...;
    /// all endpoints added up): tells a slow or refusing Flatfile from a slow sink.
    pub(crate) api_failures: BTreeMap<String, f64>,
    /// Per sink: whether its last call succeeded.
    pub(crate) sink_up: BTreeMap<String, bool>,
    /// Per sink: whether it stalled.
    pub(crate) sink_stalled: BTreeMap<String, bool>,
    /// Per sink: rows of batches it refused.
    pub(crate) rows_failed: BTreeMap<String, f64>,
}

impl Metrics {
    /// Picks the families the view shows out of Prometheus text; other lines are skipped.
    pub(crate) fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for (name, labels, value) in text.lines().filter_map(sample_line) {
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            match name {
                FETCH_RETRIES => *metrics.retries.entry(label("endpoint")).or_default() += value,
                API_REQUESTS => {
                    let status = label("status");
                    if !status.starts_with('2') {
                        *metrics.api_failures.entry(status).or_default() += value;
                    }
                }
                SINK_UP => {
                    metrics.sink_up.insert(label("sink"), value > 0.0);
                }
                SINK_STALLED => {
                    metrics.sink_stalled.insert(label("sink"), value > 0.0);
                }
                ROWS_FAILED => *metrics.rows_failed.entry(label("sink")).or_default() += value,
                _ => {}
            }
        }
        metrics
    }
}

/// A sample's labels, as (name, value) pairs in the order written.
type Labels = Vec<(String, String)>;

/// One sample line of the text format, `name{label="value",...} value [timestamp]`, as name,
/// labels and value; `None` for comments, blank lines and lines that do not parse.
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inside)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Reads `key="value",...}` (after the opening brace) with the format's escapes; returns the
/// pairs and the text after the closing brace.
fn label_set(mut text: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        text = &after[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP flatsync_fetch_retries_total Flatfile API requests repeated.
# TYPE flatsync_fetch_retries_total counter
flatsync_fetch_retries_total{endpoint="legacy_rows",reason="http_503"} 3
flatsync_fetch_retries_total{endpoint="legacy_rows",reason="http_429"} 2
flatsync_fetch_retries_total{endpoint="records",reason="transport"} 1 1714564800000
flatsync_sink_up{sink="archive"} 1
flatsync_sink_up{sink="we \"ird\", name"} 0
flatsync_sink_stalled{sink="archive"} 0
flatsync_rows_failed_total{sink="archive"} 500
flatsync_fetch_seconds_bucket{endpoint="records",le="+Inf"} 7
flatsync_events_pending 4
"#;

    #[test]
    fn the_families_of_the_panes_are_read_and_others_skipped() {
        let metrics = Metrics::parse(TEXT);
        assert_eq!(
            metrics.retries,
            BTreeMap::from([("legacy_rows".to_owned(), 5.0), ("records".to_owned(), 1.0)]),
            "retries are added up over reasons, per endpoint"
        );
        assert_eq!(
            metrics.sink_up,
            BTreeMap::from([
                ("archive".to_owned(), true),
                ("we \"ird\", name".to_owned(), false)
            ]),
            "escaped quotes and commas inside a label value"
        );
        assert_eq!(metrics.sink_stalled.get("archive"), Some(&false));
        assert_eq!(metrics.rows_failed.get("archive"), Some(&500.0));
    }

    #[test]
    fn lines_that_are_not_samples_are_skipped() {
        assert_eq!(sample_line("# TYPE x counter"), None);
        assert_eq!(sample_line("   "), None);
        assert_eq!(sample_line("x{a=\"unterminated} 1"), None);
        assert_eq!(sample_line("x not-a-number"), None);
        assert_eq!(
            sample_line("x{le=\"+Inf\"} +Inf"),
            Some((
                "x",
                vec![("le".to_owned(), "+Inf".to_owned())],
                f64::INFINITY
            ))
        );
    }

    #[test]
    fn the_admin_address_comes_from_the_config_and_a_wildcard_is_reached_on_loopback() {
        let config = |admin: &str| {
            Config::parse(
                &format!("[daemon]\nstate_dir = \"/tmp/x\"\n{admin}"),
                std::path::Path::new("t.toml"),
            )
            .expect("valid config")
        };
        assert_eq!(Admin::of(None), Admin::NoConfig);
        assert_eq!(Admin::of(Some(&config(""))), Admin::NotConfigured);
        assert_eq!(
            Admin::of(Some(&config("[admin]\nlisten = \"0.0.0.0:9101\"\n"))),
            Admin::At("http://127.0.0.1:9101/metrics".to_owned())
        );
        assert!(matches!(
            Admin::of(Some(&config("[admin]\nlisten = \"127.0.0.1:0\"\n"))),
            Admin::EphemeralPort(_)
        ));
        let Scrape::Unavailable(why) = Admin::NotConfigured.scrape() else {
            panic!("no admin listener must not be scraped");
        };
        assert!(why.contains("no [admin] listener"), "{why}");
    }
}
