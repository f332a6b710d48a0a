//! `Config::parse`, the entry point of `flatsync check` and every start, on arbitrary text.
#![no_main]

use std::path::Path;

use flatsync_core::Config;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/flatsync/fuzz.toml";

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match Config::parse(text, Path::new(PATH)) {
        Ok(config) => {
            // Relative paths are resolved against the config's directory.
            assert!(
                config.daemon.state_dir.is_absolute(),
                "{:?}",
                config.daemon.state_dir
            );
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(
                shown.starts_with(PATH),
                "the error does not name the file: {shown}"
            );
            assert!(
                !error.message.is_empty(),
                "an error without a message: {shown}"
            );
            if let Some((line, column)) = error.location {
                let lines = text.split('\n').count();
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} of {lines}: {shown}"
                );
                assert!(column >= 1, "{shown}");
            }
        }
    }
});
