//! Routing: which sinks an event goes to.

use crate::config::{RouteConfig, UnnamedRecords};

/// A topic or job-name pattern: an exact name, or a glob where `*` matches any run of
/// characters (`records:*`, `*`, `workbook:submit*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern(String);

impl TopicPattern {
    /// Builds a pattern from its text.
    pub fn new(pattern: &str) -> TopicPattern {
        TopicPattern(pattern.to_owned())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

// Iterative glob with one backtrack point: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `[routes.filter]`, in the spirit of Flatfile's listener filters: every key must match.
///
/// A plain key (`job`, `sheetSlug`, `environmentId`) matches a field of that name anywhere in
/// the event (`payload.job`, `context.sheetSlug`, ...), as Flatfile's `**.<key>` globs do; a
/// dotted key (`payload.isPart`, `context.slugs.sheet`) is a path from the event's root. A string
/// value is a glob (`sheet:*`); a list accepts any of its values; numbers and booleans match
/// their JSON text (`isPart = false`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFilter {
    conditions: Vec<(String, Vec<TopicPattern>)>,
}

/// How deep a plain filter key is looked for: event bodies are small, but a sender chooses them.
const FILTER_SEARCH_DEPTH: usize = 8;

impl RouteFilter {
    /// Builds a filter from its TOML table; the error says which key is wrong and why.
    pub fn from_toml(table: &toml::Table) -> Result<RouteFilter, String> {
        let mut conditions = Vec::new();
        for (key, value) in table {
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(format!("`{key}` is not a field name or a dotted path"));
            }
            let scalar = |v: &toml::Value| -> Result<TopicPattern, String> {
                match v {
                    toml::Value::String(s) => Ok(TopicPattern::new(s)),
                    toml::Value::Integer(i) => Ok(TopicPattern::new(&i.to_string())),
                    toml::Value::Boolean(b) => Ok(TopicPattern::new(&b.to_string())),
                    other => Err(format!(
                        "key `{key}`: a {} cannot be matched; use a string, number, boolean or a list of them",
                        other.type_str()
                    )),
                }
            };
            let values = match value {
                toml::Value::Array(items) if items.is_empty() => {
                    return Err(format!("key `{key}`: an empty list matches nothing"));
                }
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_, _>>()?,
                other => vec![scalar(other)?],
            };
            conditions.push((key.clone(), values));
        }
        Ok(RouteFilter { conditions })
    }

    /// Whether the filter has no condition (matches every event).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Whether `event` (the event's JSON body) satisfies every condition.
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        self.conditions.iter().all(|(key, patterns)| {
            let mut found = Vec::new();
            if key.contains('.') {
                if let Some(v) = key.split('.').try_fold(event, |v, part| v.get(part)) {
                    found.push(v);
                }
            } else {
                collect_named(event, key, FILTER_SEARCH_DEPTH, &mut found);
            }
            found
                .into_iter()
                .any(|value| value_matches(value, patterns))
        })
    }
}

fn collect_named<'a>(
    value: &'a serde_json::Value,
    key: &str,
    depth: usize,
    found: &mut Vec<&'a serde_json::Value>,
) {
    if depth == 0 {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            for (name, child) in map {
                if name == key {
                    found.push(child);
                }
                collect_named(child, key, depth - 1, found);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_named(item, key, depth - 1, found);
            }
        }
        _ => {}
    }
}

fn value_matches(value: &serde_json::Value, patterns: &[TopicPattern]) -> bool {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Array(items) => {
            return items.iter().any(|item| value_matches(item, patterns));
        }
        serde_json::Value::Null | serde_json::Value::Object(_) => return false,
    };
    patterns.iter().any(|p| p.matches(&text))
}

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
