//! The topic patterns and field filters of `[[routes]]`, parsed with the config and matched
//! against each event by `crate::pipeline::route`.

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
