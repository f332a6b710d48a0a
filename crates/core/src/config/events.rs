//! `[events]`: how rows of events without data (`space:created`, `file:created`, ...) are
//! grouped into streams.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Parser};

/// Seconds in a day: a window must divide it, so windows start at the same times every day.
const DAY_SECS: u64 = 86_400;

/// How rows of events without data become streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStreams {
    /// Many events per stream: one per topic family (`space`, `file`, ...) and time window,
    /// written by the group writer in batches of many events.
    Grouped,
    /// One stream per event (`events-<event id>`), as flatsync 0.1 wrote them.
    PerEvent,
}

/// `[events]`.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// Grouped or one stream per event.
    pub streams: EventStreams,
    /// The width of a group's time window, by the time flatsync received the event (UTC,
    /// windows aligned to midnight). A stream is closed (its file published) once its window
    /// has ended and every event received in it is written.
    pub group_window: Duration,
    /// Most events in one group stream; a window with more continues in `<stream>-2`, ...
    pub group_max_events: u64,
    /// Most events in one batch: one sink call and one state transaction.
    pub batch_events: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            streams: EventStreams::Grouped,
            group_window: Duration::from_secs(3600),
            group_max_events: 1_000_000,
            batch_events: 1000,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    streams: Option<Spanned<String>>,
    group_window_secs: Option<Spanned<u64>>,
    group_max_events: Option<Spanned<u64>>,
    batch_events: Option<Spanned<u64>>,
}

pub(super) fn parse(raw: RawEvents, p: &Parser<'_>) -> Result<EventsConfig, ConfigError> {
    let defaults = EventsConfig::default();
    let streams = match raw.streams {
        None => defaults.streams,
        Some(v) => match v.get_ref().as_str() {
            "grouped" => EventStreams::Grouped,
            "per_event" => EventStreams::PerEvent,
            other => {
                return Err(p.locate(
                    Some(v.span()),
                    Some("events.streams"),
                    format!("`{other}` is not one of \"grouped\", \"per_event\""),
                ));
            }
        },
    };
    let window = p.within(
        raw.group_window_secs.clone(),
        "events.group_window_secs",
        defaults.group_window.as_secs(),
        (1, DAY_SECS),
    )?;
    if !DAY_SECS.is_multiple_of(window) {
        let span = raw.group_window_secs.map(|v| v.span());
        return Err(p.locate(
            span,
            Some("events.group_window_secs"),
            format!(
                "{window} does not divide a day (86400 s), so windows would not start at the \
                 same times every day; use 60, 300, 3600 or 86400, say"
            ),
        ));
    }
    let batch_events = p.within(
        raw.batch_events,
        "events.batch_events",
        defaults.batch_events,
        (1, 100_000),
    )?;
    let group_max_events = p.positive(
        raw.group_max_events,
        "events.group_max_events",
        defaults.group_max_events,
    )?;
    Ok(EventsConfig {
        streams,
        group_window: Duration::from_secs(window),
        group_max_events,
        batch_events,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::EventStreams;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, Path::new("/etc/flatsync/config.toml"))
    }

    #[test]
    fn events_are_grouped_by_the_hour_unless_told_otherwise() {
        let config = parse("").expect("valid config");
        assert_eq!(config.events.streams, EventStreams::Grouped);
        assert_eq!(config.events.group_window, Duration::from_secs(3600));
        assert_eq!(config.events.batch_events, 1000);
        let config = parse(
            "[events]\nstreams = \"per_event\"\ngroup_window_secs = 300\nbatch_events = 50\n\
             group_max_events = 10\n",
        )
        .expect("valid config");
        assert_eq!(config.events.streams, EventStreams::PerEvent);
        assert_eq!(config.events.group_window, Duration::from_secs(300));
        assert_eq!(
            (config.events.batch_events, config.events.group_max_events),
            (50, 10)
        );
    }

    #[test]
    fn bad_event_keys_are_refused_where_they_are_written() {
        for (text, key, says) in [
            ("streams = \"hourly\"", "events.streams", "not one of"),
            (
                "group_window_secs = 7",
                "events.group_window_secs",
                "divide a day",
            ),
            (
                "group_window_secs = 0",
                "events.group_window_secs",
                "out of range",
            ),
            ("batch_events = 0", "events.batch_events", "out of range"),
            (
                "group_max_events = 0",
                "events.group_max_events",
                "at least 1",
            ),
        ] {
            let err = parse(&format!("[events]\n{text}\n")).expect_err(text);
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert_eq!(err.location.map(|(line, _)| line), Some(2), "{text}: {err}");
            assert!(err.message.contains(says), "{text}: {err}");
        }
    }
}
