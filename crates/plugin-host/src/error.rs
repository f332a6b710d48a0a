//! Errors of loading plugins and of calling sink instances.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ALLOW_INSECURE_PLUGINS_ENV;

/// Why a plugin could not be found or loaded.
///
/// Every message names the file, what was expected, what was found, and the likely cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file for the plugin exists in any search directory.
    #[error(
        "plugin `{plugin}` not found; looked for: {}. Build the plugin (e.g. `cargo build --workspace`), \
         install it into one of these directories, or set `plugin_dir` or FLATSYNC_PLUGIN_PATH",
        list_paths(.searched)
    )]
    NotFound {
        /// The plugin name or path from the config.
        plugin: String,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
    },

    /// The plugin file, or the directory holding it, is writable by its group or by everyone:
    /// loading it would run code that anyone in that group could have put there.
    #[error("{}", insecure_mode_message(.plugin, .path, *.mode))]
    InsecurePermissions {
        /// The plugin file (canonical path).
        plugin: PathBuf,
        /// What has the loose mode: the plugin file itself or its directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The plugin file, or the directory holding it, belongs to a user other than root and the
    /// user flatsync runs as, who could replace the code flatsync runs.
    #[error("{}", foreign_owner_message(.plugin, .path, *.owner, *.expected))]
    ForeignOwner {
        /// The plugin file (canonical path).
        plugin: PathBuf,
        /// What has the foreign owner: the plugin file itself or its directory.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The effective uid of this process (root, uid 0, is accepted as well).
        expected: u32,
    },

    /// `dlopen` failed (or the file could not even be inspected).
    #[error(
        "cannot load plugin {}: {message}; expected a shared library (.so) built for this \
         platform: the file may be truncated, not a shared library, or built for another \
         architecture",
        .path.display()
    )]
    Open {
        /// The plugin file.
        path: PathBuf,
        /// The system's explanation (dlerror text).
        message: String,
    },

    /// The library does not export the entry function.
    #[error(
        "{} does not export `{}`: not a flatsync plugin? A plugin exports this one function \
         (the SDK's export_sink! macro does it)",
        .path.display(),
        flatsync_plugin_api::ENTRY_SYMBOL
    )]
    MissingEntry {
        /// The plugin file.
        path: PathBuf,
    },

    /// The entry function returned null.
    #[error(
        "`{}` in {} returned a null descriptor; expected a pointer to the plugin's static \
         descriptor: the plugin is broken",
        flatsync_plugin_api::ENTRY_SYMBOL,
        .path.display()
    )]
    NullDescriptor {
        /// The plugin file.
        path: PathBuf,
    },

    /// The descriptor does not start with the magic bytes.
    #[error(
        "{}: the plugin descriptor starts with \"{}\", expected \"{}\": the entry function does not \
         return a flatsync descriptor (corrupt build, or not a flatsync plugin)",
        .path.display(),
        escape_bytes(.found),
        escape_bytes(&flatsync_plugin_api::MAGIC)
    )]
    BadMagic {
        /// The plugin file.
        path: PathBuf,
        /// The first eight bytes of the descriptor.
        found: [u8; 8],
    },

    /// The plugin was built for another major ABI version. The message says which side is out
    /// of date; its wording is the one `docs/abi-versioning.md` documents.
    #[error("{}", abi_mismatch_message(.path, *.plugin_major, *.plugin_minor, *.host_major, *.host_minor))]
    AbiMismatch {
        /// The plugin file.
        path: PathBuf,
        /// ABI major version the plugin was built against.
        plugin_major: u32,
        /// ABI minor version the plugin was built against.
        plugin_minor: u32,
        /// ABI major version of this host.
        host_major: u32,
        /// ABI minor version of this host.
        host_minor: u32,
    },

    /// The descriptor is smaller than this ABI major requires. Wording documented in
    /// `docs/abi-versioning.md`.
    #[error(
        "{}: the plugin descriptor is {size} bytes, expected at least {min} for ABI {}.x: \
         struct_size must be the size of the whole descriptor (sizeof(flatsync_plugin) in C); \
         the plugin is broken or was built against a damaged header",
        .path.display(),
        flatsync_plugin_api::ABI_MAJOR
    )]
    DescriptorTooSmall {
        /// The plugin file.
        path: PathBuf,
        /// `struct_size` found in the descriptor.
        size: u32,
        /// Smallest size accepted.
        min: u32,
    },

    /// A required function pointer is null.
    #[error(
        "{}: the plugin descriptor has no `{function}` function (null pointer); expected all of \
         create, write_batch, flush and destroy: the plugin is incomplete",
        .path.display()
    )]
    MissingFunction {
        /// The plugin file.
        path: PathBuf,
        /// Name of the missing function.
        function: &'static str,
    },

    /// The plugin calls itself something other than the config asked for.
    #[error(
        "{} is plugin `{found}`, but the config asked for `{expected}`: the wrong file is in the \
         plugin directory, or the config's plugin name is misspelt",
        .path.display()
    )]
    NameMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The name the config used.
        expected: String,
        /// The name in the descriptor.
        found: String,
    },

    /// A text field of the descriptor is not valid UTF-8 (or is a null pointer with a length,
    /// or, for `name`, is empty).
    #[error(
        "{}: the plugin descriptor's `{field}` is not valid text; expected non-null UTF-8{}: the \
         descriptor is corrupt",
        .path.display(),
        if *.field == "name" { ", not empty" } else { "" }
    )]
    InvalidText {
        /// The plugin file.
        path: PathBuf,
        /// `name`, `version` or `build_info`.
        field: &'static str,
    },
}

/// Why a call on a sink instance failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// `create` or `check` did not return OK; the worker thread has ended.
    #[error("sink `{sink}` (plugin `{plugin}`) could not start: {message}")]
    Create {
        /// Instance name.
        sink: String,
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },

    /// The plugin returned FATAL (or a status it has no business returning).
    #[error("sink `{sink}` (plugin `{plugin}`) failed: {message}")]
    Fatal {
        /// Instance name.
        sink: String,
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },

    /// The plugin kept returning RETRY until the attempts ran out.
    #[error(
        "sink `{sink}` (plugin `{plugin}`): retries exhausted, still asking to retry after \
         {attempts} attempts: {message}"
    )]
    RetriesExhausted {
        /// Instance name.
        sink: String,
        /// Plugin name.
        plugin: String,
        /// How many calls were made.
        attempts: u32,
        /// The plugin's message from the last attempt.
        message: String,
    },

    /// A call did not return within the call timeout. The worker refuses further calls: its
    /// thread is still inside the plugin and cannot be stopped.
    #[error(
        "sink `{sink}` (plugin `{plugin}`) did not answer within {after:?}; it is stalled and \
         takes no more calls until flatsync restarts or reloads its config"
    )]
    Stalled {
        /// Instance name.
        sink: String,
        /// Plugin name.
        plugin: String,
        /// The call timeout that elapsed.
        after: Duration,
    },

    /// The worker is gone: shut down, or its thread ended.
    #[error("sink `{sink}` is stopped")]
    Stopped {
        /// Instance name.
        sink: String,
    },
}

/// "the plugin" or "its directory D", for the messages about what a plugin's trust rests on.
fn what_is_loose(plugin: &Path, path: &Path) -> String {
    if plugin == path {
        "the file".to_owned()
    } else {
        format!("its directory {}", path.display())
    }
}

fn insecure_mode_message(plugin: &Path, path: &Path, mode: u32) -> String {
    format!(
        "refusing to load plugin {}: {} has mode {mode:04o}, writable by group or others, and \
         whoever can write there can run code as flatsync; fix it with `chmod go-w {}` (for \
         development only, {ALLOW_INSECURE_PLUGINS_ENV}=1 loads it anyway)",
        plugin.display(),
        what_is_loose(plugin, path),
        path.display()
    )
}

fn foreign_owner_message(plugin: &Path, path: &Path, owner: u32, expected: u32) -> String {
    format!(
        "refusing to load plugin {}: {} is owned by uid {owner}, not by root or the user flatsync \
         runs as (uid {expected}), and its owner can replace the code flatsync runs; fix it with \
         `chown root {}` (for development only, {ALLOW_INSECURE_PLUGINS_ENV}=1 loads it anyway)",
        plugin.display(),
        what_is_loose(plugin, path),
        path.display()
    )
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing (no search directories)".to_owned();
    }
    let mut out = String::new();
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", path.display());
    }
    out
}

/// Shows bytes the way C source would: printable ASCII as is, the rest as `\xNN`.
fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
    }
    out
}

fn abi_mismatch_message(
    path: &Path,
    plugin_major: u32,
    plugin_minor: u32,
    host_major: u32,
    host_minor: u32,
) -> String {
    let path = path.display();
    // Only the major decides who is out of date: minors never make a plugin unloadable.
    if plugin_major < host_major {
        format!(
            "{path} was built for ABI {plugin_major}.{plugin_minor}; this flatsync speaks \
             {host_major}.{host_minor}: rebuild the plugin against a current flatsync-plugin-sdk \
             (a plugin in C: against the flatsync_plugin.h of this flatsync)"
        )
    } else {
        format!(
            "{path} was built for ABI {plugin_major}.{plugin_minor}; this flatsync speaks \
             {host_major}.{host_minor}: the plugin needs a newer flatsync (upgrade flatsync, or \
             use a build of the plugin for ABI {host_major}.x)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_magic_shows_expected_and_escaped_found_bytes() {
        let err = LoadError::BadMagic {
            path: PathBuf::from("/p/x.so"),
            found: *b"NOPE\0\x01\"\xff",
        };
        let message = err.to_string();
        assert!(message.contains("/p/x.so"), "{message}");
        assert!(message.contains(r#""NOPE\x00\x01\"\xff""#), "{message}");
        assert!(message.contains(r#"expected "FLATSYNC""#), "{message}");
    }

    #[test]
    fn abi_mismatch_tells_older_from_newer() {
        let older = LoadError::AbiMismatch {
            path: PathBuf::from("/p/old.so"),
            plugin_major: 0,
            plugin_minor: 9,
            host_major: 1,
            host_minor: 0,
        }
        .to_string();
        assert_eq!(
            older,
            "/p/old.so was built for ABI 0.9; this flatsync speaks 1.0: rebuild the plugin \
             against a current flatsync-plugin-sdk (a plugin in C: against the flatsync_plugin.h \
             of this flatsync)"
        );
        let newer = LoadError::AbiMismatch {
            path: PathBuf::from("/p/new.so"),
            plugin_major: 2,
            plugin_minor: 1,
            host_major: 1,
            host_minor: 0,
        }
        .to_string();
        assert_eq!(
            newer,
            "/p/new.so was built for ABI 2.1; this flatsync speaks 1.0: the plugin needs a newer \
             flatsync (upgrade flatsync, or use a build of the plugin for ABI 1.x)"
        );
    }

    #[test]
    fn a_newer_minor_of_an_older_major_is_still_older() {
        let message = LoadError::AbiMismatch {
            path: PathBuf::from("/p/old.so"),
            plugin_major: 1,
            plugin_minor: 9,
            host_major: 2,
            host_minor: 0,
        }
        .to_string();
        assert!(message.contains("rebuild the plugin"), "{message}");
        assert!(!message.contains("needs a newer flatsync"), "{message}");
    }

    #[test]
    fn too_small_descriptor_names_both_sizes_and_the_fix() {
        let message = LoadError::DescriptorTooSmall {
            path: PathBuf::from("/p/small.so"),
            size: 64,
            min: 112,
        }
        .to_string();
        assert_eq!(
            message,
            "/p/small.so: the plugin descriptor is 64 bytes, expected at least 112 for ABI 1.x: \
             struct_size must be the size of the whole descriptor (sizeof(flatsync_plugin) in \
             C); the plugin is broken or was built against a damaged header"
        );
    }

    #[test]
    fn insecure_permissions_show_octal_mode_and_the_fix() {
        let message = LoadError::InsecurePermissions {
            plugin: PathBuf::from("/p/x.so"),
            path: PathBuf::from("/p/x.so"),
            mode: 0o666,
        }
        .to_string();
        assert!(
            message.starts_with("refusing to load plugin /p/x.so: the file has mode 0666"),
            "{message}"
        );
        assert!(message.contains("chmod go-w /p/x.so"), "{message}");
        assert!(
            message.contains("FLATSYNC_ALLOW_INSECURE_PLUGINS=1"),
            "{message}"
        );

        let message = LoadError::InsecurePermissions {
            plugin: PathBuf::from("/p/x.so"),
            path: PathBuf::from("/p"),
            mode: 0o1777,
        }
        .to_string();
        assert!(
            message.contains("its directory /p has mode 1777"),
            "{message}"
        );
        assert!(message.contains("`chmod go-w /p`"), "{message}");
    }

    #[test]
    fn foreign_owner_names_both_uids_and_the_fix() {
        let message = LoadError::ForeignOwner {
            plugin: PathBuf::from("/p/x.so"),
            path: PathBuf::from("/p"),
            owner: 1234,
            expected: 999,
        }
        .to_string();
        assert!(
            message.contains("/p/x.so: its directory /p is owned by uid 1234"),
            "{message}"
        );
        assert!(message.contains("(uid 999)"), "{message}");
        assert!(message.contains("`chown root /p`"), "{message}");
    }
}
