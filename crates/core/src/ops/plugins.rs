//! `flatsync plugins`: what is installed on the plugin search path, with ABI versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flatsync_plugin_host::{LoadedPlugin, default_search_dirs, resolve_plugin};
use serde::Serialize;

use crate::config::SinkConfig;

/// What `flatsync plugins --json` prints.
///
/// ```json
/// {"search_dirs": ["/usr/lib/flatsync/plugins"],
///  "plugins": [{"path": "/usr/lib/flatsync/plugins/libflatsync_sink_csv_folder.so",
///               "name": "csv-folder", "version": "0.1.0", "abi_major": 1, "abi_minor": 0,
///               "build_info": "...", "used_by": ["archive"], "error": null}],
///  "sinks": [{"sink": "archive", "plugin": "csv-folder",
///             "path": "/usr/lib/flatsync/plugins/libflatsync_sink_csv_folder.so",
///             "error": null}]}
/// ```
///
/// A library that fails to load has `name`, `version`, `abi_*` and `build_info` null and the
/// reason in `error`. `sinks` is empty without a config; a sink whose plugin cannot be found
/// has `path` null and the reason in `error`.
#[derive(Clone, Debug, Serialize)]
pub struct PluginScan {
    /// The directories searched, in order.
    pub search_dirs: Vec<PathBuf>,
    /// Every `.so` found there (and every file a sink names by path), in search order.
    pub plugins: Vec<InstalledPlugin>,
    /// Which file each configured sink uses.
    pub sinks: Vec<SinkPlugin>,
}

/// One library in a [`PluginScan`].
#[derive(Clone, Debug, Serialize)]
pub struct InstalledPlugin {
    /// The file.
    pub path: PathBuf,
    /// The plugin's name from its descriptor.
    pub name: Option<String>,
    /// The plugin's own version.
    pub version: Option<String>,
    /// ABI major version it was built against.
    pub abi_major: Option<u32>,
    /// ABI minor version it was built against.
    pub abi_minor: Option<u32>,
    /// How it was built, free text.
    pub build_info: Option<String>,
    /// Configured sinks that use this file.
    pub used_by: Vec<String>,
    /// Why it cannot be loaded.
    pub error: Option<String>,
}

/// A configured sink in a [`PluginScan`].
#[derive(Clone, Debug, Serialize)]
pub struct SinkPlugin {
    /// Sink name.
    pub sink: String,
    /// The config's `plugin`.
    pub plugin: String,
    /// The file it resolves to.
    pub path: Option<PathBuf>,
    /// Why it does not resolve.
    pub error: Option<String>,
}

/// Lists every `.so` in the plugin search path for `plugin_dir` (see
/// [`flatsync_plugin_host::default_search_dirs`]), loading each with [`LoadedPlugin::load`] to
/// read its descriptor. A file that fails to load is listed with its error. `sinks` (from a
/// config) are resolved as the daemon resolves them, and each file notes the sinks using it.
pub fn scan_plugins(plugin_dir: Option<&Path>, sinks: &BTreeMap<String, SinkConfig>) -> PluginScan {
    let search_dirs = default_search_dirs(plugin_dir);
    let mut files = PluginFiles::default();
    for dir in &search_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "so") && path.is_file())
            .collect();
        found.sort();
        for path in found {
            files.add(path);
        }
    }
    let sink_plugins: Vec<SinkPlugin> = sinks
        .iter()
        .map(|(name, sink)| {
            let resolved = resolve_plugin(&sink.plugin, &search_dirs);
            if let Ok(path) = &resolved {
                files.add(path.clone());
            }
            SinkPlugin {
                sink: name.clone(),
                plugin: sink.plugin.clone(),
                path: resolved.as_ref().ok().cloned(),
                error: resolved.err().map(|e| e.to_string()),
            }
        })
        .collect();
    let plugins = files
        .files
        .into_iter()
        .map(|path| describe_file(path, &sink_plugins))
        .collect();
    PluginScan {
        search_dirs,
        plugins,
        sinks: sink_plugins,
    }
}

/// Library files in search order, each once however it is reached (a link, a path a sink
/// names).
#[derive(Default)]
struct PluginFiles {
    files: Vec<PathBuf>,
    seen: Vec<PathBuf>,
}

impl PluginFiles {
    fn add(&mut self, path: PathBuf) {
        let canonical = canonical(&path);
        if !self.seen.contains(&canonical) {
            self.seen.push(canonical);
            self.files.push(path);
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Loads `path` to read its descriptor, and notes the sinks that use it.
fn describe_file(path: PathBuf, sinks: &[SinkPlugin]) -> InstalledPlugin {
    let used_by: Vec<String> = sinks
        .iter()
        .filter(|s| {
            s.path
                .as_deref()
                .is_some_and(|p| canonical(p) == canonical(&path))
        })
        .map(|s| s.sink.clone())
        .collect();
    match LoadedPlugin::load(&path, None) {
        Ok(plugin) => {
            let (major, minor) = plugin.abi();
            InstalledPlugin {
                path,
                name: Some(plugin.name().to_owned()),
                version: Some(plugin.version().to_owned()),
                abi_major: Some(major),
                abi_minor: Some(minor),
                build_info: Some(plugin.build_info().to_owned()),
                used_by,
                error: None,
            }
        }
        Err(error) => InstalledPlugin {
            path,
            name: None,
            version: None,
            abi_major: None,
            abi_minor: None,
            build_info: None,
            used_by,
            error: Some(error.to_string()),
        },
    }
}
