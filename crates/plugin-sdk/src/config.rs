//! Reading a sink's config so that every error names the key at fault.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::SinkError;

/// Takes a sink's JSON config apart key by key.
///
/// Each error is FATAL and names its key, and [`finish`](Self::finish) rejects keys nobody
/// asked for, so a typo in the daemon's config file stops start-up with a clear line.
///
/// ```
/// use flatsync_plugin_sdk::{ConfigReader, serde_json::json};
///
/// let mut config = ConfigReader::new(json!({"path": "/tmp/x.db", "busy_timeout_ms": 100}))?;
/// let path: String = config.required("path")?;
/// let timeout: u64 = config.optional("busy_timeout_ms")?.unwrap_or(5000);
/// config.finish()?;
/// assert_eq!((path.as_str(), timeout), ("/tmp/x.db", 100));
/// # Ok::<(), flatsync_plugin_sdk::SinkError>(())
/// ```
#[derive(Debug)]
pub struct ConfigReader {
    entries: Map<String, Value>,
    known: Vec<String>,
}

impl ConfigReader {
    /// Starts reading `config`, which must be a JSON object (`null` counts as empty).
    pub fn new(config: Value) -> Result<Self, SinkError> {
        let entries = match config {
            Value::Object(entries) => entries,
            Value::Null => Map::new(),
            other => {
                return Err(SinkError::fatal(format!(
                    "config must be a table of keys, got {}",
                    json_type(&other)
                )));
            }
        };
        Ok(Self {
            entries,
            known: Vec::new(),
        })
    }

    /// The value of `key` if present.
    pub fn optional<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, SinkError> {
        self.known.push(key.to_owned());
        match self.entries.remove(key) {
            None => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|error| SinkError::fatal(format!("config key `{key}`: {error}"))),
        }
    }

    /// The value of `key`, which must be present.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, SinkError> {
        self.optional(key)?
            .ok_or_else(|| SinkError::fatal(format!("config key `{key}` is required")))
    }

    /// Fails if the config holds a key that was never asked for.
    pub fn finish(self) -> Result<(), SinkError> {
        let Some(unknown) = self.entries.keys().next() else {
            return Ok(());
        };
        let known = if self.known.is_empty() {
            "this sink takes no config keys".to_owned()
        } else {
            format!("known keys: {}", self.known.join(", "))
        };
        Err(SinkError::fatal(format!(
            "unknown config key `{unknown}` ({known})"
        )))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
