//! The plugin ABI: the C header says exactly what the Rust definitions say, and plugins built
//! for another ABI version get the messages `docs/abi-versioning.md` documents, through
//! `flatsync check` like a user would see them.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::Path;
use std::process::Command;

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_plugin_api as api;
use flatsync_plugin_api::{
    FlatsyncBatch, FlatsyncError, FlatsyncHeld, FlatsyncHost, FlatsyncPlugin, FlatsyncStr,
};
use flatsync_test_kit::cc::{CBuild, plugin_header_dir};
use flatsync_tests::{Artifacts, Daemon, Sim, TestDir};

use crate::c_plugin::{build_c_sink, c_fixture};
use crate::common::EVENT_DEADLINE;

// ---- the header and the Rust definitions agree ----

/// One struct field as the Rust compiler lays it out.
struct RustField {
    name: &'static str,
    offset: usize,
    size: usize,
    align: usize,
    kind: &'static str,
}

/// Size, alignment and integer kind of a field's type, taken from an accessor so the type need
/// not be spelt out.
fn layout_of<S, F: 'static>(_field: fn(&S) -> &F) -> (usize, usize, &'static str) {
    let id = TypeId::of::<F>();
    let kind = if id == TypeId::of::<u32>() {
        "u32"
    } else if id == TypeId::of::<i32>() {
        "i32"
    } else if id == TypeId::of::<u64>() {
        "u64"
    } else if id == TypeId::of::<i64>() {
        "i64"
    } else if id == TypeId::of::<usize>() && size_of::<usize>() == 8 {
        "u64"
    } else if id == TypeId::of::<usize>() {
        "u32"
    } else {
        "other"
    };
    (size_of::<F>(), align_of::<F>(), kind)
}

/// `rust_fields!(Type, [field, ...])`: every listed field's layout.
macro_rules! rust_fields {
    ($struct_type:ty, [$($field:ident),* $(,)?]) => {
        vec![$({
            let (size, align, kind) = layout_of(|s: &$struct_type| &s.$field);
            RustField {
                name: stringify!($field),
                offset: offset_of!($struct_type, $field),
                size,
                align,
                kind,
            }
        }),*]
    };
}

/// A Rust struct of the ABI with its C name and the fields the test compares.
struct RustStruct {
    c_name: &'static str,
    rust_name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<RustField>,
}

fn rust_structs() -> Vec<RustStruct> {
    vec![
        RustStruct {
            c_name: "flatsync_str",
            rust_name: "FlatsyncStr",
            size: size_of::<FlatsyncStr>(),
            align: align_of::<FlatsyncStr>(),
            fields: rust_fields!(FlatsyncStr, [ptr, len]),
        },
        RustStruct {
            c_name: "flatsync_error",
            rust_name: "FlatsyncError",
            size: size_of::<FlatsyncError>(),
            align: align_of::<FlatsyncError>(),
            fields: rust_fields!(FlatsyncError, [ctx, set]),
        },
        RustStruct {
            c_name: "flatsync_host",
            rust_name: "FlatsyncHost",
            size: size_of::<FlatsyncHost>(),
            align: align_of::<FlatsyncHost>(),
            fields: rust_fields!(FlatsyncHost, [struct_size, reserved, ctx, log]),
        },
        RustStruct {
            c_name: "flatsync_batch",
            rust_name: "FlatsyncBatch",
            size: size_of::<FlatsyncBatch>(),
            align: align_of::<FlatsyncBatch>(),
            fields: rust_fields!(
                FlatsyncBatch,
                [
                    struct_size,
                    flags,
                    stream,
                    kind,
                    event_id,
                    fields_json,
                    seq,
                    row_count,
                    ndjson,
                    received_at_ms,
                ]
            ),
        },
        RustStruct {
            c_name: "flatsync_plugin",
            rust_name: "FlatsyncPlugin",
            size: size_of::<FlatsyncPlugin>(),
            align: align_of::<FlatsyncPlugin>(),
            fields: rust_fields!(
                FlatsyncPlugin,
                [
                    magic,
                    abi_major,
                    abi_minor,
                    struct_size,
                    flags,
                    name,
                    version,
                    build_info,
                    create,
                    write_batch,
                    flush,
                    destroy,
                    check,
                    held,
                ]
            ),
        },
        RustStruct {
            c_name: "flatsync_held",
            rust_name: "FlatsyncHeld",
            size: size_of::<FlatsyncHeld>(),
            align: align_of::<FlatsyncHeld>(),
            fields: rust_fields!(FlatsyncHeld, [struct_size, holds, seq, rows]),
        },
    ]
}

/// Asserts the listed fields tile the struct, leaving only alignment padding: a field added to
/// the Rust struct but missing from the list above would otherwise go unchecked.
fn assert_lists_every_field(layout: &RustStruct) {
    let mut fields: Vec<&RustField> = layout.fields.iter().collect();
    fields.sort_by_key(|f| f.offset);
    let mut end = 0;
    let mut previous = "the start";
    for field in &fields {
        assert!(
            field.offset >= end && field.offset - end < field.align,
            "{}: the bytes between {previous} and `{}` are not padding; this test's list (and \
             tests/fixtures/c-plugin/layout.c) misses a field",
            layout.rust_name,
            field.name
        );
        end = field.offset + field.size;
        previous = field.name;
    }
    assert!(
        layout.size - end < layout.align,
        "{}: {} bytes follow `{previous}`; this test's list (and layout.c) misses a field",
        layout.rust_name,
        layout.size - end
    );
}

/// What the Rust side says, in the line format layout.c prints, keyed by `<kind> <name>`.
fn rust_facts() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    // Signedness of the status type without naming it: an unsigned type's MIN is 0.
    let signed = if api::FlatsyncStatus::MIN < 0 {
        "signed"
    } else {
        "unsigned"
    };
    facts.insert(
        "type flatsync_status".to_owned(),
        format!(
            "{} {} {signed}",
            size_of::<api::FlatsyncStatus>(),
            align_of::<api::FlatsyncStatus>()
        ),
    );
    for layout in rust_structs() {
        assert_lists_every_field(&layout);
        facts.insert(
            format!("type {}", layout.c_name),
            format!("{} {} aggregate", layout.size, layout.align),
        );
        for field in &layout.fields {
            facts.insert(
                format!("field {}.{}", layout.c_name, field.name),
                format!("{} {} {}", field.offset, field.size, field.kind),
            );
        }
    }
    let magic = std::str::from_utf8(&api::MAGIC).expect("the magic is ASCII");
    facts.insert(
        "text FLATSYNC_MAGIC".to_owned(),
        format!("{magic} {}", api::MAGIC.len()),
    );
    facts.insert(
        "text FLATSYNC_ENTRY_SYMBOL".to_owned(),
        format!("{} {}", api::ENTRY_SYMBOL, api::ENTRY_SYMBOL.len()),
    );
    let numbers: [(&str, i64); 16] = [
        ("FLATSYNC_ABI_MAJOR", api::ABI_MAJOR.into()),
        ("FLATSYNC_ABI_MINOR", api::ABI_MINOR.into()),
        (
            "FLATSYNC_MIN_PLUGIN_STRUCT_SIZE",
            api::MIN_PLUGIN_STRUCT_SIZE.into(),
        ),
        ("FLATSYNC_STATUS_OK", api::STATUS_OK.into()),
        ("FLATSYNC_STATUS_RETRY", api::STATUS_RETRY.into()),
        ("FLATSYNC_STATUS_FATAL", api::STATUS_FATAL.into()),
        (
            "FLATSYNC_PLUGIN_FLAG_PANIC_UNWIND",
            api::PLUGIN_FLAG_PANIC_UNWIND.into(),
        ),
        ("FLATSYNC_BATCH_FLAG_LAST", api::BATCH_FLAG_LAST.into()),
        (
            "FLATSYNC_BATCH_FLAG_DELETIONS",
            api::BATCH_FLAG_DELETIONS.into(),
        ),
        (
            "FLATSYNC_PLUGIN_FLAG_DELETIONS",
            api::PLUGIN_FLAG_DELETIONS.into(),
        ),
        ("FLATSYNC_HELD_NOTHING", api::HELD_NOTHING.into()),
        ("FLATSYNC_HELD_BATCHES", api::HELD_BATCHES.into()),
        ("FLATSYNC_LOG_ERROR", api::LOG_ERROR.into()),
        ("FLATSYNC_LOG_WARN", api::LOG_WARN.into()),
        ("FLATSYNC_LOG_INFO", api::LOG_INFO.into()),
        ("FLATSYNC_LOG_DEBUG", api::LOG_DEBUG.into()),
    ];
    for (name, value) in numbers {
        facts.insert(format!("number {name}"), value.to_string());
    }
    facts
}

/// What the header says: layout.c compiled with the system `cc` and run.
fn header_facts(dir: &Path) -> BTreeMap<String, String> {
    let program = CBuild::new(c_fixture("layout.c"), "c11")
        .pedantic()
        .program(&dir.join("layout"));
    let output = Command::new(&program)
        .output()
        .expect("cannot run the compiled layout program");
    assert!(output.status.success(), "layout program failed: {output:?}");
    let text = String::from_utf8(output.stdout).expect("layout prints ASCII");
    let mut facts = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(kind), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        else {
            panic!("layout printed a line this test cannot read: {line:?}");
        };
        let previous = facts.insert(format!("{kind} {name}"), value.to_owned());
        assert!(previous.is_none(), "layout printed {kind} {name} twice");
    }
    facts
}

#[test]
fn the_c_header_says_what_the_rust_definitions_say() {
    let dir = TestDir::new("abi-header");
    let header = header_facts(dir.path());
    let rust = rust_facts();
    let mut problems = Vec::new();
    for (key, rust_value) in &rust {
        match header.get(key) {
            Some(c_value) if c_value == rust_value => {}
            Some(c_value) => problems.push(format!(
                "{key}: the header says `{c_value}`, Rust says `{rust_value}`"
            )),
            None => problems.push(format!(
                "{key}: in Rust but not printed from the header (add it to layout.c)"
            )),
        }
    }
    for key in header.keys().filter(|key| !rust.contains_key(*key)) {
        problems.push(format!(
            "{key}: printed from the header but not compared with Rust (add it to abi.rs)"
        ));
    }
    assert!(
        problems.is_empty(),
        "flatsync_plugin.h and flatsync-plugin-api disagree (type: size align kind; field: \
         offset size kind; number: value; text: bytes length):\n{}",
        problems.join("\n")
    );
    // Not vacuous: every struct, field and constant was compared.
    assert_eq!(header.len(), rust.len());
    assert!(header.len() > 40, "only {} facts compared", header.len());
}

#[test]
fn the_header_is_plain_c99_and_cplusplus() {
    // A plugin author may compile with any standard; the layout checks must not need C11.
    let dir = TestDir::new("abi-header-standards");
    let source = dir.path().join("empty_plugin.c");
    std::fs::write(
        &source,
        "#include \"flatsync_plugin.h\"\nint unused_by_design;\n",
    )
    .expect("write the probe source");
    for (compiler, standard) in [
        ("cc", "-std=c99"),
        ("cc", "-std=c11"),
        ("c++", "-std=c++11"),
    ] {
        let mut command = Command::new(compiler);
        if compiler == "c++" {
            command.args(["-x", "c++"]);
        }
        let output = command
            .args([
                standard,
                "-pedantic-errors",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-c",
            ])
            .arg("-I")
            .arg(plugin_header_dir())
            .arg("-o")
            .arg(dir.path().join("probe.o"))
            .arg(&source)
            .output();
        let output = match output {
            Ok(output) => output,
            // A C++ compiler is optional on a build machine; C is not.
            Err(err) if compiler == "c++" && err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("cannot run {compiler}: {err}"),
        };
        assert!(
            output.status.success(),
            "flatsync_plugin.h does not compile as {standard}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---- the versioning policy, as a user meets it ----

/// The message `docs/abi-versioning.md` documents under `<!-- message: {id} -->`, with its
/// `{placeholders}` filled in.
fn documented_message(id: &str, values: &[(&str, String)]) -> String {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("abi-versioning.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path.display()));
    let marker = format!("<!-- message: {id} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{} has no {marker}", doc_path.display()))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```text\n")
        .unwrap_or_else(|| panic!("{marker} is not followed by a ```text block"));
    let template = block
        .split_once("\n```")
        .unwrap_or_else(|| panic!("the block after {marker} is not closed"))
        .0;
    let mut message = template.to_owned();
    for (name, value) in values {
        message = message.replace(&format!("{{{name}}}"), value);
    }
    assert!(
        !message.contains('{'),
        "{marker}: a placeholder was left unfilled: {message}"
    );
    message
}

/// The host's own ABI, as the messages print it.
fn host_values() -> Vec<(&'static str, String)> {
    vec![
        ("host_major", api::ABI_MAJOR.to_string()),
        ("host_minor", api::ABI_MINOR.to_string()),
    ]
}

/// Runs `flatsync check` on a config with one sink `sink` using `plugin`, and asserts it is
/// refused with exactly `message`, the way the documentation says users see it.
fn assert_check_refuses(dir: &Path, sink: &str, plugin: &Path, message: &str) {
    let plugin_text = plugin.to_str().expect("test paths are UTF-8");
    let output = Daemon::new(dir)
        .sink(sink, plugin_text, "{}")
        .route(&["*"], &[sink])
        .check();
    assert_eq!(
        output.code,
        Some(1),
        "flatsync check must refuse: {output:?}"
    );
    let expected = format!("error: sink `{sink}`: {message}");
    assert!(
        output.stderr.contains(&expected),
        "flatsync check should print the documented message\n  {expected}\nbut printed\n  {}",
        output.stderr
    );
}

#[test]
fn a_plugin_for_an_older_major_is_told_to_rebuild() {
    let dir = TestDir::new("abi-older-major");
    let plugin = build_c_sink(
        dir.path(),
        "libold.so",
        &["SINK_ABI_MAJOR=0", "SINK_ABI_MINOR=9"],
    );
    let mut values = host_values();
    values.extend([
        ("path", plugin.display().to_string()),
        ("plugin_major", "0".to_owned()),
        ("plugin_minor", "9".to_owned()),
    ]);
    let message = documented_message("older-major", &values);
    assert!(message.contains("rebuild the plugin"), "{message}");
    assert_check_refuses(dir.path(), "old", &plugin, &message);
}

#[test]
fn a_plugin_for_a_newer_major_is_told_it_needs_a_newer_flatsync() {
    let dir = TestDir::new("abi-newer-major");
    // A 2.x descriptor may be shaped differently; the major is checked before the size, so a
    // small one still gets the version message rather than a confusing size complaint.
    let plugin = build_c_sink(
        dir.path(),
        "libnew.so",
        &[
            "SINK_ABI_MAJOR=2",
            "SINK_ABI_MINOR=0",
            "SINK_STRUCT_SIZE=64",
        ],
    );
    let mut values = host_values();
    values.extend([
        ("path", plugin.display().to_string()),
        ("plugin_major", "2".to_owned()),
        ("plugin_minor", "0".to_owned()),
    ]);
    let message = documented_message("newer-major", &values);
    assert!(message.contains("needs a newer flatsync"), "{message}");
    assert_check_refuses(dir.path(), "new", &plugin, &message);
}

#[test]
fn the_rust_fixture_for_abi_999_gets_the_newer_major_message() {
    let dir = TestDir::new("abi-999");
    let plugin = std::fs::canonicalize(Artifacts::locate().fx_wrong_abi_plugin())
        .expect("the fixture exists");
    let mut values = host_values();
    values.extend([
        ("path", plugin.display().to_string()),
        ("plugin_major", "999".to_owned()),
        ("plugin_minor", "0".to_owned()),
    ]);
    let message = documented_message("newer-major", &values);
    assert_check_refuses(dir.path(), "future", &plugin, &message);
}

#[test]
fn a_descriptor_smaller_than_the_major_requires_is_refused() {
    let dir = TestDir::new("abi-too-small");
    let plugin = build_c_sink(dir.path(), "libsmall.so", &["SINK_STRUCT_SIZE=64"]);
    let mut values = host_values();
    values.extend([
        ("path", plugin.display().to_string()),
        ("size", "64".to_owned()),
        ("min", api::MIN_PLUGIN_STRUCT_SIZE.to_string()),
    ]);
    let message = documented_message("too-small", &values);
    assert_check_refuses(dir.path(), "small", &plugin, &message);
}

#[test]
fn a_plugin_for_a_newer_minor_loads_and_delivers_ignoring_what_it_appended() {
    // A 1.7 plugin has a longer descriptor: two functions a 1.0 host does not know, which abort
    // the process if called. The host must load it, never call them, and deliver every row.
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("abi-newer-minor");
    let plugin = build_c_sink(
        dir.path(),
        "libnewer_minor.so",
        &["SINK_ABI_MINOR=7", "SINK_APPENDED_FIELDS=2"],
    );
    let out = dir.path().join("out");
    let config = format!("{{ dir = {} }}", flatsync_tests::daemon::toml_string(&out));
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .page_size(100)
        .sink("minor", plugin.to_str().expect("UTF-8 path"), &config)
        .route(&["portalImportSubmitted"], &["minor"]);

    let check = settings.check();
    assert_eq!(check.code, Some(0), "a newer minor must load: {check:?}");
    let loaded = format!(
        "sink `minor`: plugin c-ndjson 1.0.0 (ABI 1.7) from {}: created and checked",
        plugin.display()
    );
    assert!(
        check.stdout.contains(&loaded),
        "check should report the plugin's ABI:\n  {loaded}\nbut printed\n  {}",
        check.stdout
    );

    let mut daemon = settings.start();
    let (batch, event) = ("b-minor", "evt-minor");
    let reply = daemon.post(&legacy_webhook_body(batch, event, rows));
    assert!(reply.is_success(), "webhook: {}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);
    let text = std::fs::read_to_string(out.join(format!("legacy-{batch}.ndjson")))
        .expect("the sink wrote its file");
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
            row["id"].as_str().expect("a string id").to_owned()
        })
        .collect();
    assert_eq!(ids, legacy_row_ids(sim.config(), batch));
    let status = daemon.stop();
    assert!(status.success(), "flatsync should stop cleanly: {status}");
}
