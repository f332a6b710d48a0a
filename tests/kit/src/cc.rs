//! Compiling C fixtures with the system `cc`, warnings as errors, with the plugin ABI's header
//! (`crates/plugin-api/include/flatsync_plugin.h`) on the include path: the C plugins the
//! tests load, and the program that prints the header's layout.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `crates/plugin-api/include`, where `flatsync_plugin.h` lives.
pub fn plugin_header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("crates")
        .join("plugin-api")
        .join("include")
}

/// One C source file to compile.
#[derive(Debug)]
pub struct CBuild {
    source: PathBuf,
    args: Vec<OsString>,
}

impl CBuild {
    /// `source` as C `standard` (`"c99"`, `"c11"`), with `-Wall -Wextra -Werror` and the plugin
    /// header on the include path.
    pub fn new(source: impl Into<PathBuf>, standard: &str) -> CBuild {
        let mut args: Vec<OsString> = [
            format!("-std={standard}").as_str(),
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ]
        .map(OsString::from)
        .into();
        args.push(plugin_header_dir().into_os_string());
        CBuild {
            source: source.into(),
            args,
        }
    }

    /// `-pedantic-errors`: the standard alone, no compiler extensions.
    pub fn pedantic(self) -> CBuild {
        self.arg("-pedantic-errors")
    }

    /// Any further compiler argument, e.g. `-pthread`.
    pub fn arg(mut self, arg: &str) -> CBuild {
        self.args.push(arg.into());
        self
    }

    /// `-D` for each of `defines` (`NAME` or `NAME=VALUE`).
    pub fn defines(mut self, defines: &[&str]) -> CBuild {
        self.args
            .extend(defines.iter().map(|define| format!("-D{define}").into()));
        self
    }

    /// Builds a shared library at `out` and returns `out`. Mode 0755 whatever the umask:
    /// flatsync refuses a plugin that group or others can write.
    pub fn shared_library(self, out: &Path) -> PathBuf {
        self.arg("-shared").arg("-fPIC").run(out);
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", out.display()));
        out.to_path_buf()
    }

    /// Builds an executable at `out` and returns `out`.
    pub fn program(self, out: &Path) -> PathBuf {
        self.run(out);
        out.to_path_buf()
    }

    fn run(self, out: &Path) {
        let output = Command::new("cc")
            .args(&self.args)
            .arg("-o")
            .arg(out)
            .arg(&self.source)
            .output()
            .expect("cannot run `cc`: these tests need the system C compiler");
        assert!(
            output.status.success(),
            "cc {} failed:\n{}",
            self.source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_header_is_where_the_builds_look() {
        assert!(plugin_header_dir().join("flatsync_plugin.h").is_file());
    }
}
