//! Loading sink plugins and starting their workers, for the daemon and for `flatsync check`.

use std::collections::BTreeMap;
use std::sync::Arc;

use flatsync_plugin_host::{LoadedPlugin, SinkOptions, SinkWorker};

use super::StartError;
use crate::config::{self, Config};
use crate::metrics;
use flatsync_plugin_api::FlatsyncPlugin;

/// Plugins compiled into the embedding program, by the name a config's `plugin = "..."` uses.
pub type InProcessPlugins = BTreeMap<String, &'static FlatsyncPlugin>;

/// Finds and loads one sink's plugin (registered in-process, or on the search path) and checks
/// its descriptor, without creating an instance: what an operator command may do while a daemon
/// owns the sink's outputs.
pub fn load_sink_plugin(
    config: &Config,
    name: &str,
    sink: &config::SinkConfig,
    in_process: &InProcessPlugins,
) -> Result<Arc<LoadedPlugin>, StartError> {
    let plugin_error = |error| StartError::Plugin {
        sink: name.to_owned(),
        error,
    };
    let plugin = match in_process.get(&sink.plugin) {
        Some(descriptor) => {
            LoadedPlugin::from_static(descriptor, &format!("in-process:{}", sink.plugin))
                .map_err(plugin_error)?
        }
        None => {
            let dirs =
                flatsync_plugin_host::default_search_dirs(config.daemon.plugin_dir.as_deref());
            let path =
                flatsync_plugin_host::resolve_plugin(&sink.plugin, &dirs).map_err(plugin_error)?;
            let expected = (!sink.plugin.contains('/') && !sink.plugin.ends_with(".so"))
                .then_some(sink.plugin.as_str());
            LoadedPlugin::load(&path, expected).map_err(plugin_error)?
        }
    };
    Ok(plugin)
}

/// Loads one sink's plugin and creates its instance on its own thread.
async fn start_sink(
    config: &Config,
    name: &str,
    sink: &config::SinkConfig,
    in_process: &InProcessPlugins,
) -> Result<SinkWorker, StartError> {
    let plugin = load_sink_plugin(config, name, sink, in_process)?;
    tracing::info!(
        sink = %name,
        plugin = %plugin.name(),
        version = %plugin.version(),
        path = %plugin.path().display(),
        "Plugin loaded"
    );
    let options = SinkOptions {
        call_timeout: config.daemon.sink_call_timeout,
        max_attempts: config.daemon.sink_retry_attempts,
        retry_max: config.daemon.sink_retry_backoff_max,
        ..SinkOptions::default()
    };
    let worker = SinkWorker::spawn(plugin, name, sink.config_json.clone(), options).await?;
    metrics::sink_started(name);
    Ok(worker)
}

/// Starts every sink of `config` except those in `reuse`, which are taken as they are.
/// On any failure the sinks started here are shut down again and nothing else changes.
pub(crate) async fn start_sinks_reusing(
    config: &Config,
    in_process: &InProcessPlugins,
    mut reuse: BTreeMap<String, SinkWorker>,
) -> Result<BTreeMap<String, SinkWorker>, StartError> {
    let mut workers = BTreeMap::new();
    let mut started = Vec::new();
    for (name, sink) in &config.sinks {
        if let Some(worker) = reuse.remove(name) {
            workers.insert(name.clone(), worker);
            continue;
        }
        match start_sink(config, name, sink, in_process).await {
            Ok(worker) => {
                started.push(worker.clone());
                workers.insert(name.clone(), worker);
            }
            Err(e) => {
                for worker in &started {
                    worker.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    Ok(workers)
}

/// Loads every configured sink's plugin and creates its instance on its own thread, as
/// `flatsync check` does. In-process plugins are looked up by name before the search path.
pub async fn start_sinks(
    config: &Config,
    in_process: &InProcessPlugins,
) -> Result<BTreeMap<String, SinkWorker>, StartError> {
    start_sinks_reusing(config, in_process, BTreeMap::new()).await
}
