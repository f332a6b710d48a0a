//! Helpers shared by the integration tests: building C plugins and finding fixture cdylibs.
#![allow(dead_code, unreachable_pub)] // reason: each test binary uses a different subset

use std::path::{Path, PathBuf};

use flatsync_test_kit::cc::CBuild;

/// `target/<profile>`: integration test binaries run from its `deps` directory, and cargo puts
/// the workspace's cdylibs in it.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary sits in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace fixture cdylib, e.g. `flatsync_fx_wrong_abi`. Fails loudly when it has
/// not been built, rather than letting a test pass without it.
pub fn fixture_library(crate_name_underscored: &str) -> PathBuf {
    let path = profile_dir().join(format!("lib{crate_name_underscored}.so"));
    assert!(
        path.is_file(),
        "fixture plugin {} is missing: run `cargo build --workspace` (or at least \
         `cargo build -p {}`) before `cargo test`",
        path.display(),
        crate_name_underscored.replace('_', "-"),
    );
    path
}

/// Compiles a C file from `tests/c/` into `<dir>/<out_name>` as a shared library, with the
/// given `-D` defines.
pub fn compile_c(source: &str, dir: &Path, out_name: &str, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("c")
        .join(source);
    CBuild::new(source, "c11")
        .arg("-pthread")
        .defines(defines)
        .shared_library(&dir.join(out_name))
}

/// Builds the counter sink (tests/c/counter_sink.c) into a fresh directory.
pub fn counter_sink(dir: &Path) -> PathBuf {
    compile_c("counter_sink.c", dir, "libflatsync_sink_counter.so", &[])
}

/// The lines the counter sink recorded so far.
pub fn recorded(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => panic!("cannot read {}: {err}", path.display()),
    }
}
