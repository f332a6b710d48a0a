//! `[sinks.NAME]`: which plugin each sink runs, and its `config` table as JSON.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Parser};

/// `[sinks.NAME]`.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Plugin name or path.
    pub plugin: String,
    /// The `config` table as JSON, handed to the plugin's `create`.
    pub config_json: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    plugin: Spanned<String>,
    config: Option<Spanned<toml::Table>>,
}

/// Converts a TOML table to JSON by an explicit walk: the `toml` crate's own serialisation
/// would turn datetimes into a private wrapper table, which plugins must never see.
fn table_to_json(table: &toml::Table) -> Result<serde_json::Value, String> {
    let mut map = serde_json::Map::new();
    for (key, value) in table {
        map.insert(
            key.clone(),
            value_to_json(value).map_err(|m| format!("key `{key}`: {m}"))?,
        );
    }
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(x) => serde_json::Number::from_f64(*x)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{x} cannot be passed to a plugin (not a finite number)"))?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(value_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => table_to_json(t)?,
    })
}

pub(super) fn parse(
    raw: BTreeMap<String, RawSink>,
    p: &Parser<'_>,
) -> Result<BTreeMap<String, SinkConfig>, ConfigError> {
    let mut sinks = BTreeMap::new();
    for (name, sink) in raw {
        let key = format!("sinks.{name}.config");
        let config_json = match &sink.config {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(table) => table_to_json(table.get_ref())
                .map_err(|m| p.locate(Some(table.span()), Some(&key), m))?,
        };
        if sink.plugin.get_ref().trim().is_empty() {
            return Err(p.locate(
                Some(sink.plugin.span()),
                Some(&format!("sinks.{name}.plugin")),
                "names no plugin".to_owned(),
            ));
        }
        sinks.insert(
            name,
            SinkConfig {
                plugin: sink.plugin.into_inner(),
                config_json: config_json.to_string(),
            },
        );
    }
    Ok(sinks)
}
