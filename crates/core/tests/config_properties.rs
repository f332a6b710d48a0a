//! Property tests of `Config::parse`: arbitrary text is refused with an error that names the
//! file, and a syntax error is reported on the line it is on. The fuzz target `config_parse`
//! feeds the same function unstructured bytes.

use std::path::Path;

use flatsync_core::Config;
use proptest::prelude::*;

const PATH: &str = "/etc/flatsync/config.toml";

/// A valid config, one setting per line, so a line can go anywhere between two others.
const GOOD: &str = r#"[daemon]
state_dir = "state"
max_concurrent_events = 2

[webhook]
listen = "127.0.0.1:0"
token_env = "TOKEN"

[sinks.archive]
plugin = "csv-folder"
config = { dir = "/tmp/csv", ratio = 0.5 }

[[routes]]
topics = ["portalImportSubmitted", "job:ready"]
sinks = ["archive"]
"#;

/// Lines TOML cannot read whatever surrounds them, each wrong before its line ends. (An
/// unclosed `{` or `[` is not among them: TOML finds it at the next line's first token.)
const BROKEN: [&str; 6] = [
    "listen =",
    "[unclosed",
    "= 3",
    "token_env = \"unterminated",
    "a = 1 2",
    "plugin = tru",
];

fn check_error(text: &str) -> Result<Option<(usize, usize)>, TestCaseError> {
    match Config::parse(text, Path::new(PATH)) {
        Ok(_) => Ok(None),
        Err(error) => {
            let shown = error.to_string();
            prop_assert!(shown.starts_with(PATH), "the file is not named: {}", shown);
            prop_assert!(!error.message.is_empty(), "no message: {}", shown);
            if let Some((line, column)) = error.location {
                prop_assert!(line >= 1 && line <= text.split('\n').count(), "{}", shown);
                prop_assert!(column >= 1, "{}", shown);
            }
            Ok(error.location)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_the_file(text in any::<String>()) {
        check_error(&text)?;
    }

    #[test]
    fn toml_like_text_never_panics_and_errors_name_the_file(
        text in "([\\[\\]a-z_.=\"' 0-9\n#{},:-]|é|\t){0,160}",
    ) {
        check_error(&text)?;
    }

    #[test]
    fn a_syntax_error_is_reported_on_its_line(
        at in 0usize..=GOOD.lines().count(),
        broken in prop::sample::select(BROKEN.to_vec()),
    ) {
        let mut lines: Vec<&str> = GOOD.lines().collect();
        lines.insert(at, broken);
        let text = lines.join("\n") + "\n";
        let location = check_error(&text)?;
        prop_assert_eq!(location.map(|(line, _)| line), Some(at + 1), "{}", text);
    }
}

#[test]
fn the_config_the_property_breaks_is_valid() {
    Config::parse(GOOD, Path::new(PATH)).expect("GOOD parses");
}
