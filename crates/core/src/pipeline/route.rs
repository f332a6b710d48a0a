//! Routing: which sinks an event goes to, by the topic patterns and filters of `[[routes]]`.

pub use crate::config::filter::{RouteFilter, TopicPattern};
use crate::config::{RouteConfig, UnnamedRecords};

/// What routing needs to know about an event.
#[derive(Clone, Copy, Debug)]
pub struct RoutedEvent<'a> {
    /// The topic routes match (`records:created`, `portalImportSubmitted`, ...).
    pub topic: &'a str,
    /// Name of the `[environments.NAME]` the event belongs to, if any.
    pub environment: Option<&'a str>,
    /// The event's JSON body, for filters.
    pub body: &'a serde_json::Value,
}

/// A sink an event goes to, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedSink {
    /// Sink name.
    pub sink: String,
    /// A route asked for the whole sheet instead of the delta.
    pub snapshot: bool,
    /// What an event naming no records delivers to the sink.
    pub unnamed_records: UnnamedRecords,
}

/// The sinks of every route that matches the event, each once, in config order. A sink that
/// two matching routes name gets a snapshot if either asks for one: a snapshot holds every row
/// the delta would; for the same reason an event naming no records is snapshotted for it unless
/// every matching route says `unnamed_records = "fail"`.
pub fn route_event(routes: &[RouteConfig], event: RoutedEvent<'_>) -> Vec<RoutedSink> {
    let mut sinks: Vec<RoutedSink> = Vec::new();
    let matching = routes.iter().filter(|r| {
        r.topics.iter().any(|p| p.matches(event.topic))
            && (r.environments.is_empty()
                || event
                    .environment
                    .is_some_and(|env| r.environments.iter().any(|e| e == env)))
            && r.filter.matches(event.body)
    });
    for route in matching {
        for sink in &route.sinks {
            match sinks.iter_mut().find(|s| &s.sink == sink) {
                Some(existing) => {
                    existing.snapshot |= route.snapshot;
                    if route.unnamed_records == UnnamedRecords::Snapshot {
                        existing.unnamed_records = UnnamedRecords::Snapshot;
                    }
                }
                None => sinks.push(RoutedSink {
                    sink: sink.clone(),
                    snapshot: route.snapshot,
                    unnamed_records: route.unnamed_records,
                }),
            }
        }
    }
    sinks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_domain_and_everything() {
        let p = TopicPattern::new;
        assert!(p("records:created").matches("records:created"));
        assert!(!p("records:created").matches("records:updated"));
        assert!(p("records:*").matches("records:deleted"));
        assert!(!p("records:*").matches("job:ready"));
        assert!(p("*").matches("portalImportSubmitted"));
        assert!(p("workbook:submit*").matches("workbook:submitActionFg"));
        assert!(p("*:ready").matches("job:ready"));
        assert!(!p("job:ready").matches("job:ready2"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
    }

    fn route(topics: &[&str], sinks: &[&str]) -> RouteConfig {
        RouteConfig {
            topics: topics.iter().map(|t| TopicPattern::new(t)).collect(),
            sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
            environments: Vec::new(),
            filter: RouteFilter::default(),
            snapshot: false,
            unnamed_records: UnnamedRecords::Snapshot,
        }
    }

    fn filter(toml_text: &str) -> RouteFilter {
        RouteFilter::from_toml(&toml_text.parse::<toml::Table>().unwrap()).unwrap()
    }

    fn names(sinks: Vec<RoutedSink>) -> Vec<String> {
        sinks.into_iter().map(|s| s.sink).collect()
    }

    #[test]
    fn an_event_reaches_each_sink_once() {
        let routes = vec![route(&["job:*"], &["a", "b"]), route(&["*"], &["b", "c"])];
        let body = serde_json::json!({});
        let event = |topic| RoutedEvent {
            topic,
            environment: None,
            body: &body,
        };
        assert_eq!(
            names(route_event(&routes, event("job:ready"))),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(route_event(&routes, event("portalImportSubmitted"))),
            ["b", "c"]
        );
        assert!(route_event(&routes[..1], event("records:created")).is_empty());
    }

    #[test]
    fn filters_match_fields_anywhere_or_by_path() {
        let body = serde_json::json!({
            "topic": "job:ready",
            "context": {"environmentId": "us_env_prod", "sheetSlug": "contacts", "slugs": {"sheet": "contacts"}},
            "payload": {"job": "workbook:submitActionFg", "isPart": false, "count": 3, "tags": ["a", "b"]},
        });
        assert!(filter(r#"job = "workbook:submitActionFg""#).matches(&body));
        assert!(filter(r#"job = "workbook:*""#).matches(&body));
        assert!(!filter(r#"job = "sheet:*""#).matches(&body));
        assert!(filter(r#"sheetSlug = ["deals", "contacts"]"#).matches(&body));
        assert!(filter(r#"environmentId = "us_env_prod""#).matches(&body));
        assert!(filter("isPart = false").matches(&body));
        assert!(!filter("isPart = true").matches(&body));
        assert!(filter("count = 3").matches(&body));
        assert!(filter(r#"tags = "b""#).matches(&body));
        assert!(filter(r#""context.slugs.sheet" = "contacts""#).matches(&body));
        assert!(!filter(r#""payload.sheetSlug" = "contacts""#).matches(&body));
        assert!(
            !filter(r#"missing = "*""#).matches(&body),
            "an absent field fails"
        );
        assert!(
            !filter(
                r#"job = "workbook:*"
sheetSlug = "deals""#
            )
            .matches(&body),
            "every key must match"
        );
    }

    #[test]
    fn bad_filters_say_which_key() {
        let table: toml::Table = "when = 2024-01-01T00:00:00Z".parse().unwrap();
        let message = RouteFilter::from_toml(&table).unwrap_err();
        assert!(
            message.contains("`when`") && message.contains("datetime"),
            "{message}"
        );
        let table: toml::Table = "job = []".parse().unwrap();
        assert!(
            RouteFilter::from_toml(&table)
                .unwrap_err()
                .contains("empty list")
        );
    }

    #[test]
    fn environments_and_snapshots_are_routed() {
        let mut prod = route(&["records:*"], &["warehouse"]);
        prod.environments = vec!["production".to_owned()];
        let mut snap = route(&["records:created"], &["warehouse", "archive"]);
        snap.snapshot = true;
        snap.filter = filter(r#"sheetSlug = "contacts""#);
        let routes = vec![prod, snap];
        let contacts = serde_json::json!({"context": {"sheetSlug": "contacts"}});
        let routed = route_event(
            &routes,
            RoutedEvent {
                topic: "records:created",
                environment: Some("production"),
                body: &contacts,
            },
        );
        assert_eq!(
            routed,
            [
                RoutedSink {
                    sink: "warehouse".into(),
                    snapshot: true,
                    unnamed_records: UnnamedRecords::Snapshot,
                },
                RoutedSink {
                    sink: "archive".into(),
                    snapshot: true,
                    unnamed_records: UnnamedRecords::Snapshot,
                },
            ]
        );
        let deals = serde_json::json!({"context": {"sheetSlug": "deals"}});
        let routed = route_event(
            &routes,
            RoutedEvent {
                topic: "records:updated",
                environment: Some("test"),
                body: &deals,
            },
        );
        assert!(routed.is_empty(), "another environment: {routed:?}");
    }

    #[test]
    fn an_unnamed_records_event_fails_only_where_every_route_says_so() {
        let mut strict = route(&["records:*"], &["warehouse", "archive"]);
        strict.unnamed_records = UnnamedRecords::Fail;
        let lenient = route(&["records:created"], &["archive"]);
        let body = serde_json::json!({});
        let routed = route_event(
            &[strict, lenient],
            RoutedEvent {
                topic: "records:created",
                environment: None,
                body: &body,
            },
        );
        let choice: Vec<(&str, UnnamedRecords)> = routed
            .iter()
            .map(|r| (r.sink.as_str(), r.unnamed_records))
            .collect();
        assert_eq!(
            choice,
            [
                ("warehouse", UnnamedRecords::Fail),
                ("archive", UnnamedRecords::Snapshot)
            ]
        );
    }
}
