//! Loading plugins: every check of `LoadedPlugin::load`, against real shared libraries.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use flatsync_plugin_host::{LoadError, LoadedPlugin, default_search_dirs, resolve_plugin};

#[test]
fn wrong_abi_fixture_is_refused_with_versions() {
    let path = common::fixture_library("flatsync_fx_wrong_abi");
    let err = LoadedPlugin::load(&path, Some("fx-wrong-abi")).expect_err("ABI 999 must not load");
    let LoadError::AbiMismatch {
        plugin_major,
        plugin_minor,
        host_major,
        host_minor,
        ..
    } = &err
    else {
        panic!("expected AbiMismatch, got {err:?}");
    };
    assert_eq!((*plugin_major, *plugin_minor), (999, 0));
    assert_eq!(
        (*host_major, *host_minor),
        (1, flatsync_plugin_api::ABI_MINOR)
    );
    let message = err.to_string();
    assert!(message.contains("libflatsync_fx_wrong_abi.so"), "{message}");
    assert!(
        message.contains(&format!(
            "built for ABI 999.0; this flatsync speaks 1.{}",
            flatsync_plugin_api::ABI_MINOR
        )),
        "{message}"
    );
    assert!(message.contains("needs a newer flatsync"), "{message}");
}

#[test]
fn garbage_file_fails_to_open_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.so");
    std::fs::write(&path, b"this is not an ELF file").expect("write garbage");
    let err = LoadedPlugin::load(&path, None).expect_err("garbage must not load");
    assert!(matches!(err, LoadError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    // The dlerror text, not libloading's bare "dlopen failed".
    assert!(!message.contains("dlopen failed"), "{message}");
    assert!(
        message.contains("too short") || message.contains("ELF"),
        "{message}"
    );
}

#[test]
fn shared_library_without_entry_is_not_a_plugin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c("no_entry.c", dir.path(), "libnoentry.so", &[]);
    let err = LoadedPlugin::load(&path, None).expect_err("no entry symbol");
    assert!(matches!(err, LoadError::MissingEntry { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("flatsync_plugin_entry"), "{message}");
    assert!(message.contains("not a flatsync plugin?"), "{message}");
    assert!(message.contains("libnoentry.so"), "{message}");
}

#[test]
fn bad_magic_shows_expected_and_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "magic.so",
        &["VARIANT_BAD_MAGIC"],
    );
    let err = LoadedPlugin::load(&path, None).expect_err("bad magic");
    let LoadError::BadMagic { found, .. } = &err else {
        panic!("expected BadMagic, got {err:?}");
    };
    assert_eq!(found, b"NOTFLAT\x01");
    let message = err.to_string();
    assert!(
        message.contains(r#"starts with "NOTFLAT\x01""#),
        "{message}"
    );
    assert!(message.contains(r#"expected "FLATSYNC""#), "{message}");
    assert!(message.contains("magic.so"), "{message}");
}

#[test]
fn null_descriptor_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "null.so",
        &["VARIANT_NULL_DESCRIPTOR"],
    );
    let err = LoadedPlugin::load(&path, None).expect_err("null descriptor");
    assert!(matches!(err, LoadError::NullDescriptor { .. }), "{err:?}");
    assert!(err.to_string().contains("null descriptor"), "{err}");
}

#[test]
fn small_descriptor_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c("counter_sink.c", dir.path(), "small.so", &["VARIANT_SMALL"]);
    let err = LoadedPlugin::load(&path, None).expect_err("descriptor too small");
    let LoadError::DescriptorTooSmall { size, min, .. } = &err else {
        panic!("expected DescriptorTooSmall, got {err:?}");
    };
    assert_eq!((*size, *min), (64, 112));
    assert!(
        err.to_string()
            .contains("is 64 bytes, expected at least 112"),
        "{err}"
    );
}

#[test]
fn null_required_function_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "nowrite.so",
        &["VARIANT_NULL_WRITE"],
    );
    let err = LoadedPlugin::load(&path, None).expect_err("null write_batch");
    let LoadError::MissingFunction { function, .. } = &err else {
        panic!("expected MissingFunction, got {err:?}");
    };
    assert_eq!(*function, "write_batch");
    assert!(
        err.to_string().contains("no `write_batch` function"),
        "{err}"
    );
}

#[test]
fn non_utf8_name_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "badname.so",
        &["VARIANT_BAD_NAME"],
    );
    let err = LoadedPlugin::load(&path, None).expect_err("name is not UTF-8");
    let LoadError::InvalidText { field, .. } = &err else {
        panic!("expected InvalidText, got {err:?}");
    };
    assert_eq!(*field, "name");
}

#[test]
fn group_writable_plugin_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::counter_sink(dir.path());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o775)).expect("chmod g+w");
    let err = LoadedPlugin::load(&path, None).expect_err("group-writable");
    let LoadError::InsecurePermissions { mode, .. } = &err else {
        panic!("expected InsecurePermissions, got {err:?}");
    };
    assert_eq!(*mode, 0o775);
    let message = err.to_string();
    assert!(message.contains("refusing to load plugin"), "{message}");
    assert!(message.contains("libflatsync_sink_counter.so"), "{message}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o757)).expect("chmod o+w");
    let err = LoadedPlugin::load(&path, None).expect_err("world-writable");
    assert!(
        matches!(err, LoadError::InsecurePermissions { mode: 0o757, .. }),
        "{err:?}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    LoadedPlugin::load(&path, None).expect("loads once fixed");
}

#[test]
fn missing_file_is_not_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("libnothing.so");
    let err = LoadedPlugin::load(&path, None).expect_err("no such file");
    assert!(matches!(err, LoadError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("libnothing.so"), "{err}");
}

#[test]
fn c_plugin_loads_with_its_descriptor_and_is_shared() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::counter_sink(dir.path());
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("counter sink loads");
    assert_eq!(plugin.name(), "counter");
    assert_eq!(plugin.version(), "1.2.3");
    assert_eq!(plugin.build_info(), "cc, test fixture");
    assert_eq!(plugin.abi(), (1, flatsync_plugin_api::ABI_MINOR));
    assert!(!plugin.unwinds(), "the C fixture does not set PANIC_UNWIND");
    assert_eq!(
        plugin.path(),
        std::fs::canonicalize(&path).expect("canonical path")
    );

    // Same file by another path: the same loaded plugin.
    let link = dir.path().join("alias.so");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let again = LoadedPlugin::load(&link, None).expect("loads again");
    assert!(Arc::ptr_eq(&plugin, &again));

    let err = LoadedPlugin::load(&path, Some("csv-folder")).expect_err("name mismatch");
    let LoadError::NameMismatch {
        expected, found, ..
    } = &err
    else {
        panic!("expected NameMismatch, got {err:?}");
    };
    assert_eq!(
        (expected.as_str(), found.as_str()),
        ("csv-folder", "counter")
    );
    assert!(
        err.to_string()
            .contains("is plugin `counter`, but the config asked for `csv-folder`"),
        "{err}"
    );
}

#[test]
fn resolve_then_load_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let built = common::counter_sink(dir.path());
    let dirs = default_search_dirs(Some(dir.path()));
    let path = resolve_plugin("counter", &dirs).expect("found by name");
    assert_eq!(path, built);
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("loads");
    assert_eq!(plugin.name(), "counter");
}

#[test]
fn workspace_cdylibs_are_found_from_a_test_binary() {
    // The wrong-ABI fixture is not a sink name, but its file name resolves as `lib<N>.so`.
    common::fixture_library("flatsync_fx_wrong_abi");
    let path = resolve_plugin("flatsync-fx-wrong-abi", &default_search_dirs(None))
        .expect("found next to the test binary");
    // Cargo leaves a copy in target/<profile>/deps as well as in target/<profile>.
    let profile_dir = common::profile_dir();
    assert!(
        path == profile_dir.join("libflatsync_fx_wrong_abi.so")
            || path == profile_dir.join("deps").join("libflatsync_fx_wrong_abi.so"),
        "{}",
        path.display()
    );
}
