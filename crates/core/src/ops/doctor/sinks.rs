//! The doctor's sink check: every configured sink's plugin found and loaded, and (when no
//! daemon owns the sinks' outputs) an instance created and checked.

use std::collections::BTreeMap;

use flatsync_flatfile::error_chain;

use crate::config::Config;

/// One sink checked by the doctor.
#[derive(Clone, Debug)]
pub struct SinkCheck {
    /// Sink name.
    pub sink: String,
    /// The config's `plugin`.
    pub plugin: String,
    /// Whether the plugin was found, loaded, and an instance created and checked.
    pub ok: bool,
    /// What was loaded (plugin, version, ABI, path), or what went wrong.
    pub message: String,
}

/// Loads every configured sink's plugin and, when `create` is true, creates and checks an
/// instance of each on its own (as `flatsync check` does for all at once), then shuts it down.
/// Pass `create = false` while a daemon runs on the same config: creating a second instance
/// of a sink whose outputs the daemon is writing could disturb them (csv-folder clears its
/// stale temporary files on create).
pub async fn check_sinks(config: &Config, create: bool) -> Vec<SinkCheck> {
    let mut checks = Vec::new();
    for (name, sink) in &config.sinks {
        let (ok, message) = if create {
            let mut alone = config.clone();
            alone.sinks = BTreeMap::from([(name.clone(), sink.clone())]);
            match crate::daemon::start_sinks(&alone, &Default::default()).await {
                Ok(workers) => {
                    let mut message = String::new();
                    for worker in workers.values() {
                        message = format!("{}: created and checked", describe(worker.plugin()));
                        worker.shutdown().await;
                    }
                    (true, message)
                }
                Err(error) => (false, error_chain(&error)),
            }
        } else {
            match crate::daemon::load_sink_plugin(config, name, sink, &Default::default()) {
                Ok(plugin) => (
                    true,
                    format!(
                        "{}: loaded; not created, because a running daemon owns this sink's outputs",
                        describe(&plugin)
                    ),
                ),
                Err(error) => (false, error_chain(&error)),
            }
        };
        checks.push(SinkCheck {
            sink: name.clone(),
            plugin: sink.plugin.clone(),
            ok,
            message,
        });
    }
    checks
}

fn describe(plugin: &crate::LoadedPlugin) -> String {
    let (major, minor) = plugin.abi();
    format!(
        "plugin {} {} (ABI {major}.{minor}) from {}",
        plugin.name(),
        plugin.version(),
        plugin.path().display()
    )
}
