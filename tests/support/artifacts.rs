//! Locating the binaries and plugin libraries cargo built next to the test executable.

use std::path::PathBuf;

/// Paths of the built artifacts the tests run.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// The profile directory, e.g. `target/debug`.
    pub dir: PathBuf,
}

impl Artifacts {
    /// Finds the profile directory from the running test executable
    /// (`target/debug/deps/e2e-<hash>` -> `target/debug`).
    pub fn locate() -> Artifacts {
        let exe = std::env::current_exe().expect("the test executable has a path");
        let mut dir = exe
            .parent()
            .expect("the test executable is in a directory")
            .to_path_buf();
        if dir.file_name().is_some_and(|name| name == "deps") {
            dir.pop();
        }
        Artifacts { dir }
    }

    fn required(&self, file: &str) -> PathBuf {
        let path = self.dir.join(file);
        assert!(
            path.is_file(),
            "run `cargo build --workspace` first: {} is missing",
            path.display()
        );
        path
    }

    /// The `flatsync` binary.
    pub fn flatsync(&self) -> PathBuf {
        self.required("flatsync")
    }

    /// The `flatfile-sim` binary.
    pub fn flatfile_sim(&self) -> PathBuf {
        self.required("flatfile-sim")
    }

    /// The csv-folder sink plugin.
    pub fn csv_folder_plugin(&self) -> PathBuf {
        self.required("libflatsync_sink_csv_folder.so")
    }

    /// The sqlite sink plugin.
    pub fn sqlite_plugin(&self) -> PathBuf {
        self.required("libflatsync_sink_sqlite.so")
    }

    /// The http-forward sink plugin.
    pub fn http_forward_plugin(&self) -> PathBuf {
        self.required("libflatsync_sink_http_forward.so")
    }

    /// The jsonl-folder sink plugin.
    pub fn jsonl_folder_plugin(&self) -> PathBuf {
        self.required("libflatsync_sink_jsonl_folder.so")
    }

    /// The test plugin that panics where its config says.
    pub fn fx_panic_plugin(&self) -> PathBuf {
        self.required("libflatsync_fx_panic.so")
    }

    /// The test plugin that hangs, retries forever or panics, as its config says.
    pub fn fx_misbehave_plugin(&self) -> PathBuf {
        self.required("libflatsync_fx_misbehave.so")
    }

    /// The test plugin that claims ABI major 999.
    pub fn fx_wrong_abi_plugin(&self) -> PathBuf {
        self.required("libflatsync_fx_wrong_abi.so")
    }

    /// Checks every artifact the daemon tests need is there, so a missing build fails with
    /// one clear message instead of an obscure plugin error later.
    pub fn require_daemon_and_sinks(&self) {
        self.flatsync();
        self.csv_folder_plugin();
        self.sqlite_plugin();
        self.jsonl_folder_plugin();
        self.http_forward_plugin();
    }
}
