//! Routing: which sinks an event goes to.

use crate::config::RouteConfig;

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

/// The sinks every route matching `topic` names, each once, in config order.
pub fn sinks_for_topic(routes: &[RouteConfig], topic: &str) -> Vec<String> {
    let mut sinks: Vec<String> = Vec::new();
    for route in routes
        .iter()
        .filter(|r| r.topics.iter().any(|p| p.matches(topic)))
    {
        for sink in &route.sinks {
            if !sinks.contains(sink) {
                sinks.push(sink.clone());
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

    #[test]
    fn an_event_reaches_each_sink_once() {
        let routes = vec![
            RouteConfig {
                topics: vec![TopicPattern::new("job:*")],
                sinks: vec!["a".into(), "b".into()],
            },
            RouteConfig {
                topics: vec![TopicPattern::new("*")],
                sinks: vec!["b".into(), "c".into()],
            },
        ];
        assert_eq!(sinks_for_topic(&routes, "job:ready"), vec!["a", "b", "c"]);
        assert_eq!(
            sinks_for_topic(&routes, "portalImportSubmitted"),
            vec!["b", "c"]
        );
        assert!(sinks_for_topic(&routes[..1], "records:created").is_empty());
    }
}
