//! Opening a plugin library and checking its descriptor.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flatsync_plugin_api::{
    ABI_MAJOR, ABI_MINOR, CheckFn, CreateFn, DestroyFn, ENTRY_SYMBOL, EntryFn, FlatsyncPlugin,
    FlatsyncStr, FlushFn, HeldFn, MAGIC, MIN_PLUGIN_STRUCT_SIZE, PLUGIN_FLAG_DELETIONS,
    PLUGIN_FLAG_PANIC_UNWIND, WriteBatchFn,
};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::{ALLOW_INSECURE_PLUGINS_ENV, LoadError};

/// `RTLD_NODELETE`: keeps the library mapped even if something calls `dlclose` on it. libloading
/// does not export it; the value is the platform's (glibc and musl agree on Linux).
#[cfg(target_os = "linux")]
const RTLD_NODELETE: std::ffi::c_int = 0x1000;
#[cfg(target_os = "macos")]
const RTLD_NODELETE: std::ffi::c_int = 0x80;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
const RTLD_NODELETE: std::ffi::c_int = 0;

/// Every plugin loaded by this process, by canonical path. A plugin is loaded once and stays
/// loaded: all instances of it share one `LoadedPlugin`.
static REGISTRY: Mutex<BTreeMap<PathBuf, Arc<LoadedPlugin>>> = Mutex::new(BTreeMap::new());

/// The plugin functions, copied out of a checked descriptor.
#[derive(Clone, Copy)]
pub(crate) struct PluginFunctions {
    pub(crate) create: CreateFn,
    pub(crate) write_batch: WriteBatchFn,
    pub(crate) flush: FlushFn,
    pub(crate) destroy: DestroyFn,
    pub(crate) check: Option<CheckFn>,
    /// ABI 1.2; `None` when the descriptor is too short to hold it or it is null.
    pub(crate) held: Option<HeldFn>,
}

/// A plugin library that passed every check, loaded for the rest of the process.
///
/// Holds copies of the descriptor's fields (text and function pointers), so nothing here points
/// into plugin memory except the function pointers, which stay valid because the library is
/// never unloaded.
pub struct LoadedPlugin {
    path: PathBuf,
    name: String,
    version: String,
    build_info: String,
    abi: (u32, u32),
    flags: u32,
    functions: PluginFunctions,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("build_info", &self.build_info)
            .field("abi", &self.abi)
            .field("flags", &self.flags)
            .field("has_check", &self.functions.check.is_some())
            .field("has_held", &self.functions.held.is_some())
            .finish()
    }
}

impl LoadedPlugin {
    /// Loads the plugin at `path` and checks it.
    ///
    /// `expected_name` (the config's plugin name) must equal the descriptor's name when given.
    /// Checks, in order: the file and the directory holding it (after symlinks are resolved)
    /// are neither group- nor world-writable and belong to root or to this process's effective
    /// user, as sudo and ssh demand of what they trust (unless
    /// [`ALLOW_INSECURE_PLUGINS_ENV`](crate::ALLOW_INSECURE_PLUGINS_ENV) is `1` or `true`,
    /// which loads it with a warning); `dlopen` succeeds; the library
    /// exports `flatsync_plugin_entry`; the entry returns a non-null descriptor; magic; ABI major;
    /// descriptor size; required functions present; name, version and build info are UTF-8; the
    /// name matches. A plugin built without panic unwinding loads with a warning.
    ///
    /// Loading the same file again (same canonical path) returns the same `Arc` without opening
    /// it twice, after checking the permissions again. The library is never unloaded, even when
    /// a check fails.
    pub fn load(path: &Path, expected_name: Option<&str>) -> Result<Arc<LoadedPlugin>, LoadError> {
        let canonical = std::fs::canonicalize(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                LoadError::NotFound {
                    plugin: path.display().to_string(),
                    searched: vec![path.to_path_buf()],
                }
            } else {
                LoadError::Open {
                    path: path.to_path_buf(),
                    message: err.to_string(),
                }
            }
        })?;
        check_trusted(&canonical)?;

        // Held across the load so that two sinks naming the same plugin never dlopen it twice.
        let mut registry = REGISTRY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let plugin = match registry.get(&canonical) {
            Some(plugin) => Arc::clone(plugin),
            None => {
                let plugin = Arc::new(open_and_check(&canonical)?);
                registry.insert(canonical.clone(), Arc::clone(&plugin));
                plugin
            }
        };
        drop(registry);

        if let Some(expected) = expected_name
            && expected != plugin.name
        {
            return Err(LoadError::NameMismatch {
                path: canonical,
                expected: expected.to_owned(),
                found: plugin.name.clone(),
            });
        }
        Ok(plugin)
    }

    /// Canonical path of the library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's name from its descriptor, e.g. `csv-folder`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's own version, informational.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Free text about how the plugin was built; logged, never compared.
    pub fn build_info(&self) -> &str {
        &self.build_info
    }

    /// ABI `(major, minor)` the plugin was built against.
    pub fn abi(&self) -> (u32, u32) {
        self.abi
    }

    /// Whether the plugin was built with `panic = "unwind"`, so that a panic in it becomes a
    /// FATAL status instead of aborting flatsync.
    pub fn unwinds(&self) -> bool {
        self.flags & PLUGIN_FLAG_PANIC_UNWIND != 0
    }

    /// Whether the plugin handles deletion batches (`PLUGIN_FLAG_DELETIONS`, ABI 1.1).
    pub fn handles_deletions(&self) -> bool {
        self.flags & PLUGIN_FLAG_DELETIONS != 0
    }

    /// Accepts a descriptor compiled into this program, for sinks that run in-process without
    /// a shared library (the SDK's `in_process` builds one for any `Sink` type). It passes the
    /// same checks as a loaded file; `origin` stands in for the file path in messages, e.g.
    /// `in-process:my-sink`.
    ///
    /// This is safe for the same reason calling a loaded plugin is: the descriptor's function
    /// pointers are typed `unsafe extern "C" fn`s, and the host upholds the ABI contract when it
    /// calls them, so any undefined behaviour would sit in an `unsafe` block of their author.
    pub fn from_static(
        descriptor: &'static FlatsyncPlugin,
        origin: &str,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        // SAFETY: a `'static` reference is non-null and valid for the rest of the process.
        let plugin = unsafe { check_descriptor(Path::new(origin), descriptor) }?;
        Ok(Arc::new(plugin))
    }

    pub(crate) fn functions(&self) -> PluginFunctions {
        self.functions
    }
}

fn open_and_check(path: &Path) -> Result<LoadedPlugin, LoadError> {
    // SAFETY: opening a library runs its initialisers, arbitrary code we trust because the file
    // passed `check_trusted` and comes from the configured plugin directories. Its
    // termination routines never run: the library is leaked below and opened with NODELETE.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) }
        .map_err(|err| LoadError::Open {
            path: path.to_path_buf(),
            message: dl_message(path, &err),
        })?;
    // Never unloaded, on success or failure. A Rust cdylib registers thread-local destructors
    // that point into its code; after dlclose the next thread exit jumps into unmapped memory
    // (rust-lang/rust#59629). A plugin is replaced by restarting the daemon.
    let library: &'static Library = Box::leak(Box::new(library));

    // SAFETY: the ABI defines the entry symbol as a function of type `EntryFn`. A library that
    // exports a different thing under this name breaks the contract we cannot check further.
    let entry: EntryFn = match unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) } {
        Ok(symbol) => *symbol,
        Err(_) => {
            return Err(LoadError::MissingEntry {
                path: path.to_path_buf(),
            });
        }
    };
    // SAFETY: `entry` has the ABI's entry signature, takes no arguments and returns a pointer
    // to a static descriptor; the library stays loaded for the rest of the process.
    let descriptor: *const FlatsyncPlugin = unsafe { entry() };
    if descriptor.is_null() {
        return Err(LoadError::NullDescriptor {
            path: path.to_path_buf(),
        });
    }

    // SAFETY: non-null, and per the ABI the entry returns a static descriptor of the library,
    // which stays loaded for the rest of the process.
    unsafe { check_descriptor(path, descriptor) }
}

/// Refuses a plugin that someone other than root or this process's user could have written:
/// the file, or the directory holding it (which decides who can replace the file), writable by
/// group or others or owned by another user. `plugin` is the canonical path.
///
/// With [`ALLOW_INSECURE_PLUGINS_ENV`] set to `1` or `true` the plugin loads anyway and the
/// refusal is logged as a warning.
fn check_trusted(plugin: &Path) -> Result<(), LoadError> {
    let Err(refusal) = trust_problem(plugin, effective_uid()) else {
        return Ok(());
    };
    if !matches!(
        refusal,
        LoadError::InsecurePermissions { .. } | LoadError::ForeignOwner { .. }
    ) || !insecure_plugins_allowed()
    {
        return Err(refusal);
    }
    tracing::warn!(
        plugin = %plugin.display(),
        reason = %refusal,
        "Loading an untrusted plugin because {ALLOW_INSECURE_PLUGINS_ENV} is set; never do this in production"
    );
    Ok(())
}

/// Whether the development override is on.
fn insecure_plugins_allowed() -> bool {
    std::env::var(ALLOW_INSECURE_PLUGINS_ENV)
        .is_ok_and(|value| matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true"))
}

/// The checks of [`check_trusted`], for a process whose effective uid is `euid`.
fn trust_problem(plugin: &Path, euid: u32) -> Result<(), LoadError> {
    let directory = plugin.parent().unwrap_or(Path::new("/"));
    for path in [plugin, directory] {
        let metadata = std::fs::metadata(path).map_err(|err| LoadError::Open {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(LoadError::InsecurePermissions {
                plugin: plugin.to_path_buf(),
                path: path.to_path_buf(),
                mode,
            });
        }
        let owner = metadata.uid();
        if owner != 0 && owner != euid {
            return Err(LoadError::ForeignOwner {
                plugin: plugin.to_path_buf(),
                path: path.to_path_buf(),
                owner,
                expected: euid,
            });
        }
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Checks a descriptor and copies what flatsync needs out of it.
///
/// # Safety
/// `descriptor` is non-null and points to memory that holds a descriptor header and stays
/// valid for the rest of the process, with function pointers honouring the ABI.
unsafe fn check_descriptor(
    path: &Path,
    descriptor: *const FlatsyncPlugin,
) -> Result<LoadedPlugin, LoadError> {
    // Read only the fixed header until `struct_size` says how much more exists: a descriptor
    // from another ABI version may be shorter than ours. Unaligned reads, because a broken
    // plugin may hand back any address and we only want to report it, not trust it.
    // SAFETY: the pointer is non-null and, per the ABI, points to a descriptor whose header
    // (magic, versions, size) is at the same offsets in every ABI version.
    let (magic, abi_major, abi_minor, struct_size) = unsafe {
        (
            (&raw const (*descriptor).magic).read_unaligned(),
            (&raw const (*descriptor).abi_major).read_unaligned(),
            (&raw const (*descriptor).abi_minor).read_unaligned(),
            (&raw const (*descriptor).struct_size).read_unaligned(),
        )
    };
    if magic != MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    if abi_major != ABI_MAJOR {
        return Err(LoadError::AbiMismatch {
            path: path.to_path_buf(),
            plugin_major: abi_major,
            plugin_minor: abi_minor,
            host_major: ABI_MAJOR,
            host_minor: ABI_MINOR,
        });
    }
    if struct_size < MIN_PLUGIN_STRUCT_SIZE {
        return Err(LoadError::DescriptorTooSmall {
            path: path.to_path_buf(),
            size: struct_size,
            min: MIN_PLUGIN_STRUCT_SIZE,
        });
    }
    // SAFETY: the descriptor declares `struct_size` bytes, at least `MIN_PLUGIN_STRUCT_SIZE`.
    let descriptor = unsafe { copy_descriptor(descriptor, struct_size) };

    let missing = |function: &'static str| LoadError::MissingFunction {
        path: path.to_path_buf(),
        function,
    };
    let functions = PluginFunctions {
        create: descriptor.create.ok_or_else(|| missing("create"))?,
        write_batch: descriptor
            .write_batch
            .ok_or_else(|| missing("write_batch"))?,
        flush: descriptor.flush.ok_or_else(|| missing("flush"))?,
        destroy: descriptor.destroy.ok_or_else(|| missing("destroy"))?,
        check: descriptor.check,
        held: descriptor.held,
    };

    let invalid = |field: &'static str| LoadError::InvalidText {
        path: path.to_path_buf(),
        field,
    };
    let name = descriptor_text(descriptor.name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| invalid("name"))?;
    let version = descriptor_text(descriptor.version).ok_or_else(|| invalid("version"))?;
    let build_info = descriptor_text(descriptor.build_info).ok_or_else(|| invalid("build_info"))?;

    let plugin = LoadedPlugin {
        path: path.to_path_buf(),
        name,
        version,
        build_info,
        abi: (abi_major, abi_minor),
        flags: descriptor.flags,
        functions,
    };
    // Debug only: the daemon logs each sink's plugin at info, naming the sink too.
    tracing::debug!(
        plugin = %plugin.name,
        version = %plugin.version,
        abi = %format_args!("{abi_major}.{abi_minor}"),
        build_info = %plugin.build_info,
        path = %plugin.path.display(),
        "Plugin loaded"
    );
    if !plugin.unwinds() {
        tracing::warn!(
            plugin = %plugin.name,
            path = %plugin.path.display(),
            "Plugin does not declare that its panics are caught (PLUGIN_FLAG_PANIC_UNWIND); a panic in it aborts flatsync"
        );
    }
    Ok(plugin)
}

/// Copies the first `struct_size` bytes of a descriptor into a zeroed one: fields a shorter
/// (older minor) descriptor does not have read as null, which means "not implemented" (ABI rule
/// 1), and nothing past the plugin's `struct_size` is read.
///
/// # Safety
/// `descriptor` points to at least `struct_size` readable bytes, `struct_size` is at least
/// `MIN_PLUGIN_STRUCT_SIZE`, and the bytes are a descriptor's: plain data (integers, pointers,
/// optional fn pointers), for which any bit pattern of a nullable pointer is valid.
unsafe fn copy_descriptor(descriptor: *const FlatsyncPlugin, struct_size: u32) -> FlatsyncPlugin {
    let len = (struct_size as usize).min(size_of::<FlatsyncPlugin>());
    let mut copy = std::mem::MaybeUninit::<FlatsyncPlugin>::zeroed();
    // SAFETY: `len` bytes are readable at `descriptor` (the caller's contract) and writable in
    // `copy`, which is as large as `FlatsyncPlugin`; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(descriptor.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), len);
    }
    // SAFETY: every field is plain data for which all-zero and any copied bit pattern is a
    // valid value (null pointers, `None` fn pointers).
    unsafe { copy.assume_init() }
}

/// Copies a descriptor string. `None` when it is a null pointer with a length or not UTF-8.
fn descriptor_text(text: FlatsyncStr) -> Option<String> {
    if text.len == 0 {
        return Some(String::new());
    }
    if text.ptr.is_null() || text.len > isize::MAX as usize {
        return None;
    }
    // SAFETY: per the ABI, descriptor strings point to `len` bytes that live as long as the
    // library, which is never unloaded.
    let bytes = unsafe { std::slice::from_raw_parts(text.ptr, text.len) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// libloading's own message is just "dlopen failed"; the useful dlerror text is its source.
/// dlerror usually starts with the path, which our message already names.
fn dl_message(path: &Path, err: &libloading::Error) -> String {
    let text = match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => err.to_string(),
    };
    let prefix = format!("{}: ", path.display());
    match text.strip_prefix(&prefix) {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A plugin file (its content does not matter to the checks) in a fresh private directory.
    fn plugin_in_private_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let plugin = dir.path().join("libflatsync_sink_x.so");
        std::fs::write(&plugin, b"not really a library").expect("write plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))
            .expect("chmod plugin");
        let canonical = std::fs::canonicalize(&plugin).expect("canonical");
        (dir, canonical)
    }

    #[test]
    fn a_private_file_in_a_private_directory_is_trusted() {
        let (_dir, plugin) = plugin_in_private_dir();
        trust_problem(&plugin, effective_uid()).expect("0755 file in a 0755 dir, owned by us");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o644))
            .expect("chmod 644");
        trust_problem(&plugin, effective_uid()).expect("0644 is fine too");
    }

    #[test]
    fn a_world_writable_file_is_refused_with_its_octal_mode() {
        let (_dir, plugin) = plugin_in_private_dir();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o666))
            .expect("chmod 666");
        let err = trust_problem(&plugin, effective_uid()).expect_err("0666 refused");
        let LoadError::InsecurePermissions { path, mode, .. } = &err else {
            panic!("expected InsecurePermissions, got {err:?}");
        };
        assert_eq!((path, *mode), (&plugin, 0o666));
        let message = err.to_string();
        assert!(message.contains("mode 0666"), "{message}");
        assert!(
            message.contains(&format!("chmod go-w {}", plugin.display())),
            "{message}"
        );
    }

    #[test]
    fn a_world_writable_directory_is_refused_naming_the_directory() {
        let (dir, plugin) = plugin_in_private_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod 777");
        let err = trust_problem(&plugin, effective_uid()).expect_err("0777 dir refused");
        let LoadError::InsecurePermissions {
            plugin: named,
            path,
            mode,
        } = &err
        else {
            panic!("expected InsecurePermissions, got {err:?}");
        };
        let canonical_dir = std::fs::canonicalize(dir.path()).expect("canonical dir");
        assert_eq!((named, path, *mode), (&plugin, &canonical_dir, 0o777));
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "its directory {} has mode 0777",
                canonical_dir.display()
            )),
            "{message}"
        );

        // Group-writable alone is as bad; the sticky bit (as on /tmp) does not make it safe.
        for mode in [0o775, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod dir");
            let err = trust_problem(&plugin, effective_uid()).expect_err("loose dir refused");
            assert!(
                matches!(err, LoadError::InsecurePermissions { mode: found, .. } if found == mode),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_file_or_directory_of_another_user_is_refused() {
        let (dir, plugin) = plugin_in_private_dir();
        // Owned by us (root in CI): trusted whatever euid is compared, since root always is.
        let ours = effective_uid();
        trust_problem(&plugin, ours).expect("ours");

        if ours != 0 {
            // Without root nothing can be given away; a file of ours seen by another uid
            // stands in for a file of another user.
            let err = trust_problem(&plugin, ours + 1).expect_err("someone else's file");
            assert!(
                matches!(&err, LoadError::ForeignOwner { owner, .. } if *owner == ours),
                "{err:?}"
            );
            return;
        }
        let stranger = 54_321;
        std::os::unix::fs::chown(&plugin, Some(stranger), None).expect("chown file");
        let err = trust_problem(&plugin, ours).expect_err("foreign file");
        let LoadError::ForeignOwner {
            path,
            owner,
            expected,
            ..
        } = &err
        else {
            panic!("expected ForeignOwner, got {err:?}");
        };
        assert_eq!((path, *owner, *expected), (&plugin, stranger, 0));
        let message = err.to_string();
        assert!(message.contains("owned by uid 54321"), "{message}");
        assert!(
            message.contains(&format!("chown root {}", plugin.display())),
            "{message}"
        );
        // The same file is trusted by a process running as its owner.
        trust_problem(&plugin, stranger).expect("its owner may load it; the directory is root's");

        std::os::unix::fs::chown(&plugin, Some(0), None).expect("chown file back");
        std::os::unix::fs::chown(dir.path(), Some(stranger), None).expect("chown dir");
        let err = trust_problem(&plugin, ours).expect_err("foreign directory");
        let canonical_dir = std::fs::canonicalize(dir.path()).expect("canonical dir");
        assert!(
            matches!(&err, LoadError::ForeignOwner { path, owner, .. } if *path == canonical_dir && *owner == stranger),
            "{err:?}"
        );
    }
}
