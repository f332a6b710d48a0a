//! The Prometheus text format (0.0.4) as a scraper reads it, strictly: a test that parses
//! `/metrics` with it fails on any line a real scraper could misread.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format: a line is blank, a `# HELP name ...` or `# TYPE name kind` comment,
/// or `name{label="value",...} value [timestamp]`. Anything else is an error naming the line.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment).map_err(bad)?;
            continue;
        }
        samples.push(parse_sample(line).map_err(bad)?);
    }
    Ok(samples)
}

fn check_comment(comment: &str) -> Result<(), &'static str> {
    let words: Vec<&str> = comment.split_whitespace().collect();
    let known_type =
        |t: &str| matches!(t, "counter" | "gauge" | "histogram" | "summary" | "untyped");
    match words.as_slice() {
        ["HELP", name, ..] if valid_name(name) => Ok(()),
        ["TYPE", name, kind] if valid_name(name) && known_type(kind) => Ok(()),
        _ => Err("unknown comment"),
    }
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value");
    }
    let fields: Vec<&str> = rest.split(' ').filter(|f| !f.is_empty()).collect();
    let value = match fields.as_slice() {
        [value] | [value, _] => match *value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().map_err(|_| "bad value")?,
        },
        _ => return Err("expected a value and at most a timestamp"),
    };
    if let [_, timestamp] = fields.as_slice() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `label="value",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("bad label name");
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in a label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err("repeated label");
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ','");
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The value of the one sample with this name and exactly these labels; panics if there are
/// several.
pub fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    the_one(samples, name, labels, "")
}

fn the_one(samples: &[Sample], name: &str, labels: &[(&str, &str)], context: &str) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{want:?} appears {} times{context}",
        found.len()
    );
    found.first().copied()
}

/// A parsed scrape that keeps its text, so every lookup that fails shows what was served.
#[derive(Clone, Debug)]
pub struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses `text` with [`parse_exposition`].
    pub fn parse(text: String) -> Result<Scrape, String> {
        let samples = parse_exposition(&text)?;
        Ok(Scrape { text, samples })
    }

    /// The text as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every sample, in the order served.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The value of the one series with this name and exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        the_one(&self.samples, name, labels, &format!(" in\n{}", self.text))
    }

    /// Like [`Scrape::value`], but the series must exist.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in the scrape:\n{}", self.text))
    }

    /// Sum over every series with this name whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_rejects_malformed_lines() {
        for bad in [
            "flatsync_x",
            "flatsync_x{a=\"b\"}",
            "flatsync_x{a=b} 1",
            "flatsync_x{a=\"b} 1",
            "flatsync_x one",
            "# NOPE x",
            "9x 1",
            "flatsync_x 1 2 3",
            "flatsync_x{a=\"1\",a=\"2\"} 1",
            "flatsync_x{a=\"1\"b=\"2\"} 1",
            "flatsync_x{a=\"\\t\"} 1",
            "flatsync_x{a=\"1\"}1",
            "# TYPE flatsync_x meter",
            "# TYPE flatsync_x counter extra",
            "# HELP 9x help",
        ] {
            assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_parser_reads_labels_escapes_and_special_values() {
        let text = "# HELP a_b Help text.\n# TYPE a_b gauge\n\
                    a_b{x=\"1\",y=\"q\\\"\\\\\\n\"} 2.5\nc +Inf\nd NaN 1700000000000\n";
        let ok = parse_exposition(text).expect("valid");
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[0].labels["y"], "q\"\\\n");
        assert_eq!(ok[0].value, 2.5);
        assert_eq!(ok[1].value, f64::INFINITY);
        assert!(ok[2].value.is_nan());
    }

    #[test]
    fn lookups_find_one_series_or_sum_a_family() {
        let scrape = Scrape::parse(
            "rows{sink=\"a\",kind=\"x\"} 2\nrows{sink=\"a\",kind=\"y\"} 3\nrows{sink=\"b\"} 7\n"
                .to_owned(),
        )
        .expect("valid");
        assert_eq!(scrape.value("rows", &[("sink", "b")]), Some(7.0));
        assert_eq!(
            scrape.value("rows", &[("sink", "a")]),
            None,
            "labels match exactly"
        );
        assert_eq!(scrape.expect("rows", &[("kind", "y"), ("sink", "a")]), 3.0);
        assert_eq!(scrape.sum("rows", &[("sink", "a")]), 5.0);
        assert_eq!(scrape.sum("rows", &[]), 12.0);
        assert_eq!(
            value_of(scrape.samples(), "rows", &[("sink", "b")]),
            Some(7.0)
        );
    }
}
