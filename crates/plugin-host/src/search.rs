//! Finding the shared library a config's `plugin = "..."` names.

use std::path::{Path, PathBuf};

use crate::LoadError;

/// Environment variable with extra plugin directories, colon-separated, searched first.
const PLUGIN_PATH_ENV: &str = "FLATSYNC_PLUGIN_PATH";

/// System-wide plugin directory of a packaged install.
const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/flatsync/plugins";

/// Where to look for a plugin named in the config.
///
/// With `plugin_dir` given, only that directory is searched: a configured directory is a trust
/// decision and must not be widened silently. Otherwise, in order:
/// 1. each directory in `$FLATSYNC_PLUGIN_PATH` (colon-separated, empty entries ignored);
/// 2. the directory of the running executable, where cargo puts cdylibs next to the binaries
///    (and its parent when that directory is cargo's `deps`, as for test binaries);
/// 3. `<exe dir>/../lib/flatsync/plugins`, the layout of a relocatable install;
/// 4. `/usr/lib/flatsync/plugins`.
pub fn default_search_dirs(plugin_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = plugin_dir {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(paths) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.clone());
        if exe_dir.file_name().is_some_and(|name| name == "deps")
            && let Some(profile_dir) = exe_dir.parent()
        {
            dirs.push(profile_dir.to_path_buf());
        }
        dirs.push(
            exe_dir
                .join("..")
                .join("lib")
                .join("flatsync")
                .join("plugins"),
        );
    }
    dirs.push(PathBuf::from(SYSTEM_PLUGIN_DIR));
    dirs
}

/// Finds the file for `plugin`.
///
/// `plugin` is either a name like `csv-folder` or a file:
/// - containing `/`: a path (relative to the working directory or absolute), used as is;
/// - ending in `.so` without `/`: that file name, looked for in each search directory;
/// - otherwise a name `N`, looked for as `libflatsync_sink_<N with - as _>.so`, then
///   `lib<N with - as _>.so`, then `<N>.so`, in each directory in order.
///
/// The first existing regular file wins. When none exists the error lists every path tried.
pub fn resolve_plugin(plugin: &str, search_dirs: &[PathBuf]) -> Result<PathBuf, LoadError> {
    let candidates: Vec<PathBuf> = if plugin.contains('/') {
        vec![PathBuf::from(plugin)]
    } else if plugin.ends_with(".so") {
        search_dirs.iter().map(|dir| dir.join(plugin)).collect()
    } else {
        let underscored = plugin.replace('-', "_");
        let file_names = [
            format!("libflatsync_sink_{underscored}.so"),
            format!("lib{underscored}.so"),
            format!("{plugin}.so"),
        ];
        search_dirs
            .iter()
            .flat_map(|dir| file_names.iter().map(move |name| dir.join(name)))
            .collect()
    };
    match candidates.iter().find(|candidate| candidate.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(LoadError::NotFound {
            plugin: plugin.to_owned(),
            searched: candidates,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, b"").expect("temp dir is writable");
    }

    #[test]
    fn explicit_plugin_dir_is_the_only_dir() {
        let dir = PathBuf::from("/opt/plugins");
        assert_eq!(default_search_dirs(Some(&dir)), vec![dir]);
    }

    #[test]
    fn default_dirs_include_exe_dir_and_system_dir() {
        let dirs = default_search_dirs(None);
        let exe_dir = std::env::current_exe()
            .expect("test binary has a path")
            .parent()
            .expect("test binary sits in a directory")
            .to_path_buf();
        let exe_pos = dirs
            .iter()
            .position(|d| *d == exe_dir)
            .expect("exe dir listed");
        // Test binaries live in target/<profile>/deps; the cdylibs one level up.
        assert_eq!(
            dirs[exe_pos + 1],
            exe_dir.parent().expect("deps has a parent")
        );
        assert_eq!(dirs.last(), Some(&PathBuf::from(SYSTEM_PLUGIN_DIR)));
    }

    #[test]
    fn name_prefers_sink_prefix_then_lib_then_bare() {
        let first = tempfile::tempdir().expect("temp dir");
        let second = tempfile::tempdir().expect("temp dir");
        let dirs = vec![first.path().to_path_buf(), second.path().to_path_buf()];

        touch(&second.path().join("csv-folder.so"));
        assert_eq!(
            resolve_plugin("csv-folder", &dirs).expect("bare name found"),
            second.path().join("csv-folder.so")
        );
        touch(&second.path().join("libcsv_folder.so"));
        assert_eq!(
            resolve_plugin("csv-folder", &dirs).expect("lib name found"),
            second.path().join("libcsv_folder.so")
        );
        touch(&second.path().join("libflatsync_sink_csv_folder.so"));
        assert_eq!(
            resolve_plugin("csv-folder", &dirs).expect("sink name found"),
            second.path().join("libflatsync_sink_csv_folder.so")
        );
        // An earlier directory wins over a better name in a later one.
        touch(&first.path().join("csv-folder.so"));
        assert_eq!(
            resolve_plugin("csv-folder", &dirs).expect("first dir wins"),
            first.path().join("csv-folder.so")
        );
    }

    #[test]
    fn file_name_and_path_forms() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dirs = vec![dir.path().to_path_buf()];
        let file = dir.path().join("custom.so");
        touch(&file);
        assert_eq!(resolve_plugin("custom.so", &dirs).expect("file name"), file);
        let as_path = file.to_str().expect("temp path is UTF-8");
        assert_eq!(resolve_plugin(as_path, &[]).expect("path"), file);
    }

    #[test]
    fn not_found_lists_every_path_tried() {
        let dirs = vec![
            PathBuf::from("/nonexistent/a"),
            PathBuf::from("/nonexistent/b"),
        ];
        let err = resolve_plugin("my-sink", &dirs).expect_err("nothing there");
        let LoadError::NotFound { plugin, searched } = &err else {
            panic!("expected NotFound, got {err:?}");
        };
        assert_eq!(plugin, "my-sink");
        assert_eq!(searched.len(), 6);
        let message = err.to_string();
        for path in [
            "/nonexistent/a/libflatsync_sink_my_sink.so",
            "/nonexistent/a/libmy_sink.so",
            "/nonexistent/a/my-sink.so",
            "/nonexistent/b/libflatsync_sink_my_sink.so",
        ] {
            assert!(message.contains(path), "{message}");
        }
    }
}
