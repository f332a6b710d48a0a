//! `flatsync plugin new`: writes a sink plugin crate that builds and loads as written.
//!
//! The crate's files come from `templates/plugin/`, with `{{name}}`, `{{lib_name}}`,
//! `{{type_name}}` and `{{sdk_path}}` filled in. The SDK is not on crates.io, so the crate
//! depends on it by path: by default the `crates/plugin-sdk` of the source tree this binary was
//! built from.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;

/// `flatsync plugin ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Create a new sink plugin crate: Cargo.toml, src/lib.rs with a working sink, and a test.
    New {
        /// The plugin's name: lowercase letters, digits and `-`, starting with a letter. It is
        /// the crate's name and the name a config's `plugin = "..."` uses.
        name: String,
        /// The folder to create the crate in, as `<DIR>/<NAME>` [default: the current folder].
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// The `crates/plugin-sdk` folder of a flatsync source tree [default: the one this
        /// flatsync was built from].
        #[arg(long, value_name = "PATH")]
        sdk_path: Option<PathBuf>,
    },
}

/// Runs a `flatsync plugin` command.
pub(crate) fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            path,
            sdk_path,
        } => {
            let parent = path.unwrap_or_else(|| PathBuf::from("."));
            let created = new_plugin(&name, &parent, sdk_path.as_deref())?;
            print!("{}", created.next_steps());
            Ok(())
        }
    }
}

/// Where the SDK was when this binary was built.
const BUILT_IN_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../templates/plugin/lib.rs.tmpl");
const GITIGNORE: &str = include_str!("../templates/plugin/gitignore.tmpl");

/// Names cargo refuses or that would clash with a standard crate or cargo's own folders.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "build",
    "const",
    "continue",
    "core",
    "crate",
    "deps",
    "do",
    "dyn",
    "else",
    "enum",
    "examples",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "incremental",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// A plugin crate just written.
#[derive(Debug)]
pub(crate) struct CreatedPlugin {
    /// The plugin's name.
    pub(crate) name: String,
    /// The crate's folder, absolute.
    pub(crate) dir: PathBuf,
    /// The SDK folder the crate depends on.
    pub(crate) sdk: PathBuf,
}

impl CreatedPlugin {
    /// The library `cargo build --release` makes, when `CARGO_TARGET_DIR` is not set.
    pub(crate) fn release_library(&self) -> PathBuf {
        self.dir
            .join("target")
            .join("release")
            .join(format!("lib{}.so", lib_name(&self.name)))
    }

    /// What to do next, for the terminal.
    pub(crate) fn next_steps(&self) -> String {
        let library = self.release_library();
        let config_dir = format!("/var/lib/flatsync/{}", self.name);
        let guide = self.sdk.join("../../docs/writing-a-sink-plugin.md");
        let guide = match fs::canonicalize(&guide) {
            Ok(path) => path.display().to_string(),
            Err(_) => "docs/writing-a-sink-plugin.md in the flatsync source tree".to_owned(),
        };
        format!(
            "Created sink plugin `{name}` in {dir}\n\
             \n\
             Next steps:\n\
             \x20 cd {dir}\n\
             \x20 cargo test\n\
             \x20 cargo build --release\n\
             \n\
             The plugin library is then {library}\n\
             (under $CARGO_TARGET_DIR/release instead if you set CARGO_TARGET_DIR).\n\
             Load it from your flatsync config, and name the sink in a route's `sinks`:\n\
             \n\
             \x20 [sinks.{name}]\n\
             \x20 plugin = {plugin}\n\
             \x20 config = {{ dir = {config_dir} }}\n\
             \n\
             Then check the config: flatsync check --config <your config file>\n\
             The guide: {guide}\n",
            name = self.name,
            dir = self.dir.display(),
            library = library.display(),
            plugin = toml_string(&library.display().to_string()),
            config_dir = toml_string(&config_dir),
        )
    }
}

/// Writes `<parent>/<name>` as a new plugin crate.
pub(crate) fn new_plugin(
    name: &str,
    parent: &Path,
    sdk_path: Option<&Path>,
) -> anyhow::Result<CreatedPlugin> {
    check_name(name)?;
    let sdk = find_sdk(sdk_path)?;
    let sdk_text = sdk
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    let parent = std::path::absolute(parent)
        .with_context(|| format!("cannot resolve {}", parent.display()))?;
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let dir = parent.join(name);
    // `create_dir` fails when anything is already there: nothing of the user's is overwritten.
    if let Err(error) = fs::create_dir(&dir) {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            bail!(
                "{} already exists; choose another name or --path, or remove it first",
                dir.display()
            );
        }
        return Err(error).with_context(|| format!("cannot create {}", dir.display()));
    }
    let files = [
        ("Cargo.toml", fill(CARGO_TOML, name, sdk_text)),
        ("src/lib.rs", fill(LIB_RS, name, sdk_text)),
        (".gitignore", GITIGNORE.to_owned()),
    ];
    let written = (|| -> anyhow::Result<()> {
        fs::create_dir(dir.join("src"))?;
        for (file, text) in &files {
            let path = dir.join(file);
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    })();
    if let Err(error) = written {
        // Half a crate is worse than none: it would block a second attempt.
        let _ = fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(CreatedPlugin {
        name: name.to_owned(),
        dir,
        sdk,
    })
}

/// Checks `name` can be a crate name, a library file name and a plugin name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let well_formed = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !well_formed {
        bail!(
            "plugin name `{name}` is not valid: use 1 to 64 lowercase letters, digits and `-`, \
             starting with a letter and not ending with `-` (e.g. `warehouse-export`)"
        );
    }
    if RESERVED.contains(&name) {
        bail!("plugin name `{name}` is reserved by Rust or Cargo; choose another name");
    }
    Ok(())
}

/// The SDK folder to depend on, absolute, checked to hold the SDK's Cargo.toml.
fn find_sdk(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (candidate, source) = match given {
        Some(path) => (path.to_path_buf(), "--sdk-path"),
        None => (
            PathBuf::from(BUILT_IN_SDK),
            "the source tree this flatsync was built from",
        ),
    };
    let manifest = candidate.join("Cargo.toml");
    let text = match fs::read_to_string(&manifest) {
        Ok(text) => text,
        Err(error) => {
            let hint = match given {
                Some(_) => "pass the crates/plugin-sdk folder of a flatsync source tree",
                None => {
                    "pass --sdk-path with the crates/plugin-sdk folder of a flatsync source \
                     tree (for example a fresh clone of flatsync)"
                }
            };
            bail!(
                "cannot find the flatsync plugin SDK: {} ({source}): {error}; {hint}",
                manifest.display()
            );
        }
    };
    let is_sdk = text
        .lines()
        .any(|line| line.trim() == r#"name = "flatsync-plugin-sdk""#);
    if !is_sdk {
        bail!(
            "{} is not the flatsync plugin SDK's manifest (no `name = \"flatsync-plugin-sdk\"`); \
             pass --sdk-path with the crates/plugin-sdk folder of a flatsync source tree",
            manifest.display()
        );
    }
    fs::canonicalize(&candidate).with_context(|| format!("cannot resolve {}", candidate.display()))
}

/// Fills a template's placeholders.
fn fill(template: &str, name: &str, sdk_path: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{lib_name}}", &lib_name(name))
        .replace("{{type_name}}", &type_name(name))
        .replace("{{sdk_path}}", &toml_string(sdk_path))
}

/// The library's name as cargo derives it from the crate name.
fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `warehouse-export` -> `WarehouseExportSink`, `my-sink` -> `MySink`.
fn type_name(name: &str) -> String {
    let mut type_name: String = name
        .split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect();
    // `Sink` alone would clash with the SDK trait of the same name.
    if type_name == "Sink" {
        type_name.insert_str(0, "Plugin");
    } else if !type_name.ends_with("Sink") {
        type_name.push_str("Sink");
    }
    type_name
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "flatsync-scaffold-{label}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).expect("cannot create a temporary folder");
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "my-sink", "warehouse2", "s3-export-v2"] {
            check_name(good).unwrap_or_else(|error| panic!("{good}: {error}"));
        }
        for bad in ["", "My-sink", "2fast", "-x", "x-", "a_b", "a.b", "a b", "é"] {
            let error = check_name(bad).expect_err(bad).to_string();
            assert!(error.contains("is not valid"), "{bad}: {error}");
        }
        let error = check_name("test").expect_err("reserved").to_string();
        assert_eq!(
            error,
            "plugin name `test` is reserved by Rust or Cargo; choose another name"
        );
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn type_names_are_camel_case_sinks() {
        assert_eq!(type_name("warehouse-export"), "WarehouseExportSink");
        assert_eq!(type_name("my-sink"), "MySink");
        assert_eq!(type_name("sink"), "PluginSink");
        assert_eq!(type_name("s3"), "S3Sink");
    }

    #[test]
    fn templates_are_filled_completely() {
        let sdk = r#"/src/fl"at\sync/crates/plugin-sdk"#;
        let cargo_toml = fill(CARGO_TOML, "my-rows", sdk);
        assert!(cargo_toml.contains("name = \"my-rows\""), "{cargo_toml}");
        assert!(
            cargo_toml.contains(
                r#"flatsync-plugin-sdk = { path = "/src/fl\"at\\sync/crates/plugin-sdk" }"#
            ),
            "{cargo_toml}"
        );
        assert!(cargo_toml.contains("libmy_rows.so"), "{cargo_toml}");
        let lib_rs = fill(LIB_RS, "my-rows", sdk);
        assert!(lib_rs.contains("pub struct MyRowsSink {"));
        assert!(lib_rs.contains(r#"export_sink!(MyRowsSink, name = "my-rows");"#));
        for text in [&cargo_toml, &lib_rs] {
            for placeholder in ["{{name}}", "{{lib_name}}", "{{type_name}}", "{{sdk_path}}"] {
                assert!(!text.contains(placeholder), "{placeholder} left over");
            }
        }
    }

    #[test]
    fn writes_the_crate_and_refuses_to_overwrite() {
        let parent = TempDir::new("write");
        let created = new_plugin("my-rows", parent.path(), None).expect("created");
        assert_eq!(created.dir, parent.path().join("my-rows"));
        for file in ["Cargo.toml", "src/lib.rs", ".gitignore"] {
            assert!(created.dir.join(file).is_file(), "{file}");
        }
        assert_eq!(
            created.release_library(),
            created.dir.join("target/release/libmy_rows.so")
        );
        let steps = created.next_steps();
        assert!(steps.contains("cargo build --release"), "{steps}");
        assert!(
            steps.contains(&format!(
                "plugin = \"{}\"",
                created.release_library().display()
            )),
            "{steps}"
        );

        let before = fs::read(created.dir.join("src/lib.rs")).expect("lib.rs");
        let error = new_plugin("my-rows", parent.path(), None)
            .expect_err("exists")
            .to_string();
        assert!(
            error.ends_with("already exists; choose another name or --path, or remove it first"),
            "{error}"
        );
        assert_eq!(
            fs::read(created.dir.join("src/lib.rs")).expect("lib.rs"),
            before,
            "untouched"
        );
    }

    #[test]
    fn a_missing_sdk_is_a_clear_error() {
        let parent = TempDir::new("missing-sdk");
        let nowhere = parent.path().join("nowhere");
        let error = new_plugin("x", parent.path(), Some(&nowhere))
            .expect_err("no SDK")
            .to_string();
        assert!(
            error.starts_with("cannot find the flatsync plugin SDK:"),
            "{error}"
        );
        assert!(error.contains("(--sdk-path)"), "{error}");
        assert!(!parent.path().join("x").exists(), "nothing written");

        let not_sdk = Path::new(env!("CARGO_MANIFEST_DIR"));
        let error = new_plugin("x", parent.path(), Some(not_sdk))
            .expect_err("not the SDK")
            .to_string();
        assert!(
            error.contains("is not the flatsync plugin SDK's manifest"),
            "{error}"
        );
    }
}
