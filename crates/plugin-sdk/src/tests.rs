//! Drives the trampolines the way the host does: through the exported descriptor's function
//! pointers, with a host log and an error sink that record what they receive.

use std::borrow::Cow;
use std::ffi::c_void;
use std::sync::Mutex;

use serde_json::json;
use serde_json::value::RawValue;

use crate::abi::{
    self, FlatsyncBatch, FlatsyncError, FlatsyncHeld, FlatsyncHost, FlatsyncPlugin, FlatsyncStr,
};
use crate::{
    Batch, BatchParts, CellValue, ConfigReader, CreateContext, Held, Logger, Row, Sink, SinkError,
    compact_json,
};

/// A sink whose behaviour the test chooses: by config at creation, by batch kind afterwards.
struct Probe {
    logger: Logger,
    panic_on_drop: bool,
    flushes: u32,
}

impl Sink for Probe {
    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        let mut config = ConfigReader::new(config)?;
        let fail: Option<String> = config.optional("fail")?;
        let panic_in_create: bool = config.optional("panic")?.unwrap_or(false);
        let panic_on_drop: bool = config.optional("panic_on_drop")?.unwrap_or(false);
        config.finish()?;
        if let Some(message) = fail {
            return Err(SinkError::retry(message));
        }
        if panic_in_create {
            panic!("create exploded");
        }
        ctx.logger()
            .info(&format!("created {}", ctx.instance_name()));
        Ok(Self {
            logger: ctx.logger().clone(),
            panic_on_drop,
            flushes: 0,
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        match batch.kind() {
            "retry" => Err(SinkError::retry("destination busy")),
            "fatal" => Err(SinkError::fatal("destination gone")),
            "panic" => panic!("boom at seq {}", batch.seq()),
            _ => {
                let mut ids = Vec::new();
                for row in batch.rows() {
                    ids.push(row?.id.into_owned());
                }
                self.logger.debug(&format!(
                    "{} seq={} last={} ids={}",
                    batch.stream(),
                    batch.seq(),
                    batch.is_last(),
                    ids.join(",")
                ));
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.flushes += 1;
        self.logger.info(&format!("flush {}", self.flushes));
        Ok(())
    }

    fn check(&mut self) -> Result<(), SinkError> {
        Err(SinkError::retry("not ready yet"))
    }

    fn held(&mut self, stream: &str) -> Result<Option<Held>, SinkError> {
        match stream {
            "holding" => Ok(Some(Held { seq: 4, rows: 40 })),
            "busy" => Err(SinkError::retry("state file locked")),
            "panicking" => panic!("held exploded"),
            _ => Ok(None),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.logger.info("dropped");
        if self.panic_on_drop {
            panic!("drop exploded");
        }
    }
}

crate::export_sink!(Probe, name = "probe");

fn descriptor() -> &'static FlatsyncPlugin {
    // SAFETY: the entry function returns a pointer to a `static`.
    unsafe { &*flatsync_plugin_entry() }
}

fn abi_str(text: &[u8]) -> FlatsyncStr {
    FlatsyncStr {
        ptr: text.as_ptr(),
        len: text.len(),
    }
}

#[derive(Default)]
struct RecordedLog {
    lines: Mutex<Vec<(u32, String)>>,
}

unsafe extern "C" fn record_log(ctx: *mut c_void, level: u32, message: FlatsyncStr) {
    // SAFETY: the tests pass a `RecordedLog` as ctx and a valid message.
    let (log, bytes) = unsafe {
        (
            &*ctx.cast::<RecordedLog>(),
            std::slice::from_raw_parts(message.ptr, message.len),
        )
    };
    let text = String::from_utf8(bytes.to_vec()).expect("the SDK logs UTF-8");
    log.lines
        .lock()
        .expect("no panics while locked")
        .push((level, text));
}

#[derive(Default)]
struct RecordedError {
    message: Mutex<Option<String>>,
}

unsafe extern "C" fn record_error(ctx: *mut c_void, message: FlatsyncStr) {
    // SAFETY: the tests pass a `RecordedError` as ctx and a valid message.
    let (slot, bytes) = unsafe {
        (
            &*ctx.cast::<RecordedError>(),
            std::slice::from_raw_parts(message.ptr, message.len),
        )
    };
    let text = String::from_utf8(bytes.to_vec()).expect("the SDK reports UTF-8");
    *slot.message.lock().expect("no panics while locked") = Some(text);
}

/// A host side for one instance: its log, its host struct and the instance pointer.
struct TestHost {
    log: Box<RecordedLog>,
    host: Box<FlatsyncHost>,
    instance: *mut c_void,
}

/// The status of a call and the error message it set, if any.
type Outcome = (i32, Option<String>);

fn call_with_error(call: impl FnOnce(*const FlatsyncError) -> i32) -> Outcome {
    let slot = RecordedError::default();
    let err = FlatsyncError {
        ctx: (&raw const slot).cast_mut().cast::<c_void>(),
        set: Some(record_error),
    };
    let status = call(&err);
    let message = slot.message.lock().expect("no panics while locked").take();
    (status, message)
}

impl TestHost {
    fn new() -> Self {
        let log = Box::new(RecordedLog::default());
        let host = Box::new(FlatsyncHost {
            struct_size: size_of::<FlatsyncHost>() as u32,
            reserved: 0,
            ctx: (&raw const *log).cast_mut().cast::<c_void>(),
            log: Some(record_log),
        });
        Self {
            log,
            host,
            instance: std::ptr::null_mut(),
        }
    }

    fn create(&mut self, name: &str, config: &str) -> Outcome {
        let create = descriptor().create.expect("create is set");
        let host: *const FlatsyncHost = &*self.host;
        let out: *mut *mut c_void = &mut self.instance;
        call_with_error(|err| {
            // SAFETY: every pointer is valid for the call.
            unsafe {
                create(
                    abi_str(name.as_bytes()),
                    abi_str(config.as_bytes()),
                    host,
                    out,
                    err,
                )
            }
        })
    }

    fn created(name: &str, config: &str) -> Self {
        let mut host = Self::new();
        assert_eq!(host.create(name, config), (abi::STATUS_OK, None));
        assert!(!host.instance.is_null());
        host
    }

    fn write_raw(&self, batch: &FlatsyncBatch) -> Outcome {
        let write = descriptor().write_batch.expect("write_batch is set");
        let instance = self.instance;
        // SAFETY: the instance came from `create` and the batch is valid for the call.
        call_with_error(|err| unsafe { write(instance, batch, err) })
    }

    fn write(&self, kind: &str, seq: u64, ndjson: &str, row_count: u64, last: bool) -> Outcome {
        let fields = b"[]";
        self.write_raw(&FlatsyncBatch {
            struct_size: size_of::<FlatsyncBatch>() as u32,
            flags: if last { abi::BATCH_FLAG_LAST } else { 0 },
            stream: abi_str(b"contacts-ev1"),
            kind: abi_str(kind.as_bytes()),
            event_id: abi_str(b"ev1"),
            fields_json: abi_str(fields),
            seq,
            row_count,
            ndjson: abi_str(ndjson.as_bytes()),
            received_at_ms: 1_714_658_591_517,
        })
    }

    fn flush(&self) -> Outcome {
        let flush = descriptor().flush.expect("flush is set");
        let instance = self.instance;
        // SAFETY: the instance came from `create`.
        call_with_error(|err| unsafe { flush(instance, err) })
    }

    fn check(&self) -> Outcome {
        let check = descriptor().check.expect("check is set");
        let instance = self.instance;
        // SAFETY: the instance came from `create`.
        call_with_error(|err| unsafe { check(instance, err) })
    }

    /// `held` through the descriptor: the outcome and what the sink filled in.
    fn held(&self, stream: &str) -> (Outcome, FlatsyncHeld) {
        let held = descriptor().held.expect("held is set");
        let instance = self.instance;
        let mut out = FlatsyncHeld {
            struct_size: size_of::<FlatsyncHeld>() as u32,
            holds: abi::HELD_NOTHING,
            seq: 0,
            rows: 0,
        };
        let out_ptr: *mut FlatsyncHeld = &mut out;
        // SAFETY: the instance came from `create`; the stream and `out` outlive the call.
        let outcome = call_with_error(|err| unsafe {
            held(instance, abi_str(stream.as_bytes()), out_ptr, err)
        });
        (outcome, out)
    }

    fn destroy(&mut self) {
        let destroy = descriptor().destroy.expect("destroy is set");
        // SAFETY: the instance came from `create` and is not used afterwards.
        unsafe { destroy(self.instance) };
        self.instance = std::ptr::null_mut();
    }

    fn lines(&self) -> Vec<(u32, String)> {
        self.log
            .lines
            .lock()
            .expect("no panics while locked")
            .clone()
    }
}

const TWO_ROWS: &str = concat!(
    r#"{"id":"r1","valid":true,"values":{"name":"Ada"}}"#,
    "\n",
    r#"{"id":"r2","valid":false,"values":{"name":"Bob"}}"#,
    "\n"
);

#[test]
fn descriptor_identifies_the_plugin_and_sdk() {
    let plugin = descriptor();
    assert_eq!(plugin.magic, abi::MAGIC);
    assert_eq!(plugin.abi_major, abi::ABI_MAJOR);
    assert_eq!(plugin.abi_minor, abi::ABI_MINOR);
    assert_eq!(
        plugin.abi_minor, 2,
        "the SDK speaks ABI 1.2: it offers `held`"
    );
    assert_eq!(plugin.struct_size as usize, size_of::<FlatsyncPlugin>());
    assert!(plugin.struct_size > abi::MIN_PLUGIN_STRUCT_SIZE);
    assert!(plugin.held.is_some());
    assert_eq!(
        plugin.flags & abi::PLUGIN_FLAG_PANIC_UNWIND,
        abi::PLUGIN_FLAG_PANIC_UNWIND
    );
    let text = |value: FlatsyncStr| {
        // SAFETY: the descriptor's strings are `'static`.
        let bytes = unsafe { std::slice::from_raw_parts(value.ptr, value.len) };
        std::str::from_utf8(bytes).expect("UTF-8").to_owned()
    };
    assert_eq!(text(plugin.name), "probe");
    assert_eq!(text(plugin.version), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        text(plugin.build_info),
        format!("flatsync-plugin-sdk {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(plugin.check.is_some());
}

#[test]
fn ok_path_delivers_rows_logs_and_flushes() {
    let mut host = TestHost::created("probe-1", r#"{}"#);
    assert_eq!(
        host.write("contacts", 0, TWO_ROWS, 2, true),
        (abi::STATUS_OK, None)
    );
    assert_eq!(host.flush(), (abi::STATUS_OK, None));
    host.destroy();
    let lines = host.lines();
    assert_eq!(
        lines,
        vec![
            (abi::LOG_INFO, "created probe-1".to_owned()),
            (
                abi::LOG_DEBUG,
                "contacts-ev1 seq=0 last=true ids=r1,r2".to_owned()
            ),
            (abi::LOG_INFO, "flush 1".to_owned()),
            (abi::LOG_INFO, "dropped".to_owned()),
        ]
    );
}

#[test]
fn retry_and_fatal_errors_carry_status_and_message() {
    let mut host = TestHost::created("probe", "{}");
    assert_eq!(
        host.write("retry", 0, "", 0, true),
        (abi::STATUS_RETRY, Some("destination busy".to_owned()))
    );
    assert_eq!(
        host.write("fatal", 0, "", 0, true),
        (abi::STATUS_FATAL, Some("destination gone".to_owned()))
    );
    assert_eq!(
        host.check(),
        (abi::STATUS_RETRY, Some("not ready yet".to_owned()))
    );
    // Errors do not poison: the instance keeps working.
    assert_eq!(
        host.write("contacts", 0, TWO_ROWS, 2, true),
        (abi::STATUS_OK, None)
    );
    host.destroy();
}

#[test]
fn panic_is_fatal_poisons_the_instance_and_destroy_is_safe() {
    let mut host = TestHost::created("probe", "{}");
    assert_eq!(
        host.write("panic", 3, "", 0, false),
        (
            abi::STATUS_FATAL,
            Some("plugin panicked: boom at seq 3".to_owned())
        )
    );
    let poisoned = Some("instance is poisoned by an earlier panic: boom at seq 3".to_owned());
    assert_eq!(
        host.write("contacts", 0, TWO_ROWS, 2, true),
        (abi::STATUS_FATAL, poisoned.clone())
    );
    assert_eq!(host.flush(), (abi::STATUS_FATAL, poisoned.clone()));
    assert_eq!(host.check(), (abi::STATUS_FATAL, poisoned));
    host.destroy();
    // The poisoned calls never reached the sink; its Drop still ran.
    let lines = host.lines();
    assert!(
        !lines
            .iter()
            .any(|(_, line)| line.starts_with("contacts-ev1") || line.starts_with("flush"))
    );
    assert_eq!(lines.last(), Some(&(abi::LOG_INFO, "dropped".to_owned())));
}

#[test]
fn panic_in_drop_is_contained_and_logged() {
    let mut host = TestHost::created("probe", r#"{"panic_on_drop":true}"#);
    host.destroy();
    let lines = host.lines();
    assert_eq!(
        lines.last(),
        Some(&(
            abi::LOG_ERROR,
            "Sink panicked while being destroyed: drop exploded".to_owned()
        ))
    );
}

#[test]
fn create_failures_are_fatal_and_leave_no_instance() {
    let mut host = TestHost::new();
    let (status, message) = host.create("orders", "{not json");
    assert_eq!(status, abi::STATUS_FATAL);
    let message = message.expect("a message");
    assert!(
        message.starts_with("sink orders: config is not valid JSON"),
        "{message}"
    );
    assert!(host.instance.is_null());

    // The sink's own error is passed through, as FATAL even when the sink said retry.
    assert_eq!(
        host.create("orders", r#"{"fail":"cannot open /x"}"#),
        (abi::STATUS_FATAL, Some("cannot open /x".to_owned()))
    );
    assert_eq!(
        host.create("orders", r#"{"colour":"red"}"#),
        (
            abi::STATUS_FATAL,
            Some("unknown config key `colour` (known keys: fail, panic, panic_on_drop)".to_owned())
        )
    );
    assert_eq!(
        host.create("orders", r#"{"panic":true}"#),
        (
            abi::STATUS_FATAL,
            Some("plugin panicked: create exploded".to_owned())
        )
    );
    assert!(host.instance.is_null());

    // An empty config means "no keys".
    assert_eq!(host.create("orders", ""), (abi::STATUS_OK, None));
    host.destroy();
}

#[test]
fn null_and_malformed_host_input_is_fatal_not_undefined() {
    let create = descriptor().create.expect("create is set");
    let host = TestHost::new();
    let mut out: *mut c_void = std::ptr::null_mut();

    let outcome = call_with_error(|err| {
        // SAFETY: null pointers are what is under test; the rest is valid.
        unsafe {
            create(
                abi_str(b"x"),
                abi_str(b"{}"),
                std::ptr::null(),
                &mut out,
                err,
            )
        }
    });
    assert_eq!(
        outcome,
        (
            abi::STATUS_FATAL,
            Some("sink x: the host passed a null host pointer".to_owned())
        )
    );

    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe {
            create(
                abi_str(b"x"),
                abi_str(b"{}"),
                &*host.host,
                std::ptr::null_mut(),
                err,
            )
        }
    });
    assert_eq!(
        outcome,
        (
            abi::STATUS_FATAL,
            Some("the host passed a null output pointer".to_owned())
        )
    );

    let bad_name = FlatsyncStr {
        ptr: std::ptr::null(),
        len: 4,
    };
    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe { create(bad_name, abi_str(b"{}"), &*host.host, &mut out, err) }
    });
    assert_eq!(
        outcome,
        (
            abi::STATUS_FATAL,
            Some("instance name is a null pointer with length 4".to_owned())
        )
    );

    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe {
            create(
                abi_str(b"x\xff"),
                abi_str(b"{}"),
                &*host.host,
                &mut out,
                err,
            )
        }
    });
    assert_eq!(outcome.0, abi::STATUS_FATAL);
    assert!(
        outcome
            .1
            .expect("a message")
            .starts_with("instance name is not UTF-8")
    );

    let small = FlatsyncHost {
        struct_size: 8,
        ..*host.host
    };
    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe { create(abi_str(b"x"), abi_str(b"{}"), &small, &mut out, err) }
    });
    assert_eq!(outcome.0, abi::STATUS_FATAL);
    assert!(out.is_null());

    // A null error sink still gets a status back.
    // SAFETY: null pointers are what is under test.
    let status = unsafe {
        create(
            abi_str(b"x"),
            abi_str(b"{}"),
            std::ptr::null(),
            &mut out,
            std::ptr::null(),
        )
    };
    assert_eq!(status, abi::STATUS_FATAL);

    let write = descriptor().write_batch.expect("write_batch is set");
    let flush = descriptor().flush.expect("flush is set");
    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe { write(std::ptr::null_mut(), std::ptr::null(), err) }
    });
    assert_eq!(
        outcome,
        (
            abi::STATUS_FATAL,
            Some("the host passed a null instance pointer".to_owned())
        )
    );
    let outcome = call_with_error(|err| {
        // SAFETY: as above.
        unsafe { flush(std::ptr::null_mut(), err) }
    });
    assert_eq!(outcome.0, abi::STATUS_FATAL);
    // SAFETY: destroy accepts null.
    unsafe { descriptor().destroy.expect("destroy is set")(std::ptr::null_mut()) };
}

#[test]
fn bad_batches_are_fatal_and_do_not_poison() {
    let mut host = TestHost::created("probe", "{}");
    let write = descriptor().write_batch.expect("write_batch is set");
    let instance = host.instance;
    let outcome = call_with_error(|err| {
        // SAFETY: a null batch is what is under test.
        unsafe { write(instance, std::ptr::null(), err) }
    });
    assert_eq!(
        outcome,
        (
            abi::STATUS_FATAL,
            Some("the host passed a null batch pointer".to_owned())
        )
    );

    let batch = FlatsyncBatch {
        struct_size: size_of::<FlatsyncBatch>() as u32,
        flags: 0,
        stream: abi_str(b"s\xc3"),
        kind: abi_str(b"contacts"),
        event_id: abi_str(b"ev"),
        fields_json: abi_str(b"[]"),
        seq: 0,
        row_count: 0,
        ndjson: abi_str(b""),
        received_at_ms: 0,
    };
    let (status, message) = host.write_raw(&batch);
    assert_eq!(status, abi::STATUS_FATAL);
    assert!(
        message
            .expect("a message")
            .starts_with("batch stream is not UTF-8")
    );

    let small = FlatsyncBatch {
        struct_size: 16,
        stream: abi_str(b"s"),
        ..batch
    };
    assert_eq!(
        host.write_raw(&small),
        (
            abi::STATUS_FATAL,
            Some("the host's batch struct has 16 bytes, this SDK needs 112".to_owned())
        )
    );

    let (status, message) = host.write("contacts", 0, "{\"id\":\"r1\"\n", 1, false);
    assert_eq!(status, abi::STATUS_FATAL);
    let message = message.expect("a message");
    assert!(
        message.starts_with("stream contacts-ev1, batch seq 0: malformed row on line 1:"),
        "{message}"
    );
    assert_eq!(
        host.write("contacts", 0, TWO_ROWS, 2, false),
        (abi::STATUS_OK, None)
    );
    host.destroy();
}

fn batch(ndjson: &str, row_count: u64) -> Batch<'_> {
    Batch::from_parts(BatchParts {
        stream: "legacy-42",
        kind: "legacy_batch",
        event_id: "ev",
        fields_json: "[]",
        seq: 7,
        row_count,
        ndjson: ndjson.as_bytes(),
        received_at_ms: 0,
        last: false,
        deletions: false,
    })
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

#[test]
fn rows_borrow_unescape_and_keep_order() {
    let ndjson = concat!(
        r#"{"id":"plain","valid":true,"values":{"b":1,"a":"x","c":null}}"#,
        "\n",
        r#"{"valid":false,"extra":[1,{"x":2}],"id":"with \"quote\" \u00e9","values":{"k\"ey":"v\\w","ünï😀":"日本"}}"#,
        "\n"
    );
    let rows: Vec<Row<'_>> = batch(ndjson, 2)
        .rows()
        .collect::<Result<_, _>>()
        .expect("valid rows");
    assert_eq!(rows.len(), 2);

    assert_eq!(rows[0].id, "plain");
    assert!(
        matches!(rows[0].id, Cow::Borrowed(_)),
        "no escapes: borrowed"
    );
    assert!(rows[0].valid);
    let keys: Vec<&str> = rows[0].values.iter().map(|(key, _)| key.as_ref()).collect();
    assert_eq!(keys, ["b", "a", "c"]);
    assert_eq!(rows[0].get("a").map(RawValue::get), Some(r#""x""#));

    assert_eq!(rows[1].id, "with \"quote\" é");
    assert!(!rows[1].valid);
    assert_eq!(rows[1].values[0].0, "k\"ey");
    assert_eq!(
        CellValue::parse(rows[1].values[0].1),
        Ok(CellValue::String("v\\w".into()))
    );
    assert_eq!(rows[1].values[1].0, "ünï😀");
    assert_eq!(
        CellValue::parse(rows[1].values[1].1),
        Ok(CellValue::String(Cow::Borrowed("日本")))
    );
}

/// Two rows: one in flatsync's compact layout (the fast reader's), one in another key order
/// (the serde reader's), the second ended by CRLF.
const MIXED_LAYOUT_ROWS: &str = concat!(
    r#"{"id":"b","valid":true,"values":{"x":1,"y":"\u00e9"}}"#,
    "\n",
    r#"{"valid":false,"id":"a","values":{"z":[3]}}"#,
    "\r\n",
);

#[test]
fn read_into_reuses_the_row() {
    let batch = batch(MIXED_LAYOUT_ROWS, 2);
    let mut rows = batch.rows();
    let mut row = Row::default();
    assert_eq!(rows.read_into(&mut row), Ok(true));
    assert_eq!(row.values.len(), 2);
    assert_eq!(rows.read_into(&mut row), Ok(true));
    assert_eq!(row.id, "a");
    assert_eq!(
        row.values.len(),
        1,
        "values of the previous row are cleared"
    );
    assert_eq!(rows.read_into(&mut row), Ok(false));
}

#[test]
fn a_row_read_again_at_its_mark_is_the_row_read_there() {
    let batch = batch(MIXED_LAYOUT_ROWS, 2);
    let mut rows = batch.rows();
    let mut row = Row::default();
    assert_eq!(rows.mark(), None, "no row read yet");
    let mut read = Vec::new();
    while rows.read_into(&mut row).expect("valid rows") {
        read.push((row.clone(), rows.mark().expect("a row was read")));
    }
    assert_eq!(rows.mark(), None, "past the last row");
    // Read again backwards, into one reused row, as a sink writing in id order would.
    for (expected, mark) in read.iter().rev() {
        rows.read_at(*mark, &mut row).expect("read again");
        assert_eq!(row.id, expected.id);
        assert_eq!(row.valid, expected.valid);
        let values = |row: &Row<'_>| -> Vec<(String, String)> {
            let pairs = row.values.iter();
            pairs
                .map(|(k, v)| (k.to_string(), v.get().to_owned()))
                .collect()
        };
        assert_eq!(values(&row), values(expected));
    }
}

#[test]
fn malformed_rows_name_line_and_stream() {
    let ndjson = concat!(
        r#"{"id":"a","valid":true,"values":{}}"#,
        "\n",
        r#"{"id":"b","valid":"yes","values":{}}"#,
        "\n",
    );
    let results: Vec<_> = batch(ndjson, 2).rows().collect();
    assert_eq!(results.len(), 2, "the iterator stops after the error");
    let error = results[1].as_ref().expect_err("line 2 is malformed");
    assert!(!error.is_retry());
    assert!(
        error
            .message()
            .starts_with("stream legacy-42, batch seq 7: malformed row on line 2: invalid type"),
        "{}",
        error.message()
    );

    for (line, what) in [
        (r#"{"id":"a","valid":true}"#, "missing field `values`"),
        (r#"{"id":5,"valid":true,"values":{}}"#, "invalid type"),
        (
            r#"{"id":"a","valid":true,"values":{}} x"#,
            "trailing characters",
        ),
        ("", "EOF while parsing"),
    ] {
        let ndjson = format!("{line}\n");
        let error = batch(&ndjson, 1)
            .rows()
            .next()
            .expect("one item")
            .expect_err("malformed");
        assert!(error.message().contains("line 1"), "{}", error.message());
        assert!(
            error.message().contains(what),
            "{what}: {}",
            error.message()
        );
    }
}

#[test]
fn row_count_must_match_the_lines() {
    let one = "{\"id\":\"a\",\"valid\":true,\"values\":{}}\n";
    let error = batch(one, 2)
        .rows()
        .nth(1)
        .expect("an item")
        .expect_err("too few");
    assert_eq!(
        error.message(),
        "stream legacy-42, batch seq 7: the batch holds 1 rows but row_count says 2"
    );
    let two = one.repeat(2);
    let error = batch(&two, 1)
        .rows()
        .nth(1)
        .expect("an item")
        .expect_err("too many");
    assert_eq!(
        error.message(),
        "stream legacy-42, batch seq 7: line 2 is beyond row_count 1"
    );
    assert_eq!(batch("", 0).rows().count(), 0);
}

#[test]
fn cell_values_keep_numbers_exact() {
    let cases: [(&str, CellValue<'_>); 9] = [
        ("null", CellValue::Null),
        ("true", CellValue::Bool(true)),
        ("false", CellValue::Bool(false)),
        (
            "12345678901234567890123",
            CellValue::Number("12345678901234567890123"),
        ),
        ("-0.10", CellValue::Number("-0.10")),
        ("1e400", CellValue::Number("1e400")),
        (r#""plain""#, CellValue::String(Cow::Borrowed("plain"))),
        (
            r#""tab\there""#,
            CellValue::String(Cow::Owned("tab\there".to_owned())),
        ),
        (
            r#"{"a":[1,2]}"#,
            CellValue::Json(Cow::Borrowed(r#"{"a":[1,2]}"#)),
        ),
    ];
    for (text, expected) in cases {
        let value = raw(text);
        assert_eq!(CellValue::parse(&value), Ok(expected), "{text}");
    }
    let spaced = raw(r#"[ 1, {"k": "a b\" c"} ]"#);
    assert_eq!(
        CellValue::parse(&spaced),
        Ok(CellValue::Json(Cow::Owned(
            r#"[1,{"k":"a b\" c"}]"#.to_owned()
        )))
    );
}

#[test]
fn compact_json_only_touches_whitespace_outside_strings() {
    assert!(matches!(compact_json(r#"{"a":"x y"}"#), Cow::Borrowed(_)));
    assert_eq!(
        compact_json("{ \"a\\\\\" : [ \"\\\" \" ] }\n"),
        r#"{"a\\":["\" "]}"#
    );
}

#[test]
fn fields_parse_schema_order() {
    let mut parts = BatchParts {
        fields_json: r#"["email","first name","caf\u00e9"]"#,
        ..BatchParts::default()
    };
    let fields = Batch::from_parts(parts).fields().expect("valid");
    assert_eq!(fields, ["email", "first name", "café"]);
    parts.fields_json = "";
    assert!(Batch::from_parts(parts).fields().expect("empty").is_empty());
    parts.fields_json = "[]";
    assert!(Batch::from_parts(parts).fields().expect("empty").is_empty());
    parts.fields_json = r#"["a",1]"#;
    parts.stream = "s";
    let error = Batch::from_parts(parts).fields().expect_err("not strings");
    assert!(
        error
            .message()
            .starts_with("stream s, batch seq 0: fields_json is not a JSON array of strings")
    );
}

#[test]
fn config_reader_names_the_key() {
    let mut config = ConfigReader::new(json!({"dir": 5})).expect("an object");
    let error = config.required::<String>("dir").expect_err("wrong type");
    assert_eq!(
        error.message(),
        "config key `dir`: invalid type: integer `5`, expected a string"
    );

    let mut config = ConfigReader::new(json!(null)).expect("null is empty");
    let error = config.required::<String>("dir").expect_err("missing");
    assert_eq!(error.message(), "config key `dir` is required");

    let error = ConfigReader::new(json!([1])).expect_err("not an object");
    assert_eq!(
        error.message(),
        "config must be a table of keys, got an array"
    );

    let error = ConfigReader::new(json!({"x": 1}))
        .expect("object")
        .finish()
        .expect_err("unknown");
    assert_eq!(
        error.message(),
        "unknown config key `x` (this sink takes no config keys)"
    );
}

#[test]
fn sink_error_context_keeps_kind() {
    let error = SinkError::retry("busy").context("table `t`");
    assert!(error.is_retry());
    assert_eq!(error.to_string(), "table `t`: busy");
    assert_eq!(error.kind(), crate::ErrorKind::Retry);
    assert_eq!(SinkError::fatal("x").kind(), crate::ErrorKind::Fatal);
}

#[test]
fn logger_from_fn_receives_lines() {
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    let logger = Logger::from_fn(move |level, line| {
        sink.lock()
            .expect("no panics while locked")
            .push((level, line.to_owned()));
    });
    logger.warn("careful");
    Logger::discard().error("nobody hears this");
    assert_eq!(
        *seen.lock().expect("no panics while locked"),
        [(crate::LogLevel::Warn, "careful".to_owned())]
    );
}

/// Found by the `sdk_rows` fuzz target (its input is kept in the corpus): a cell holding an
/// escaped half of a surrogate pair, which JSON allows and JavaScript writes for a string cut
/// inside an emoji, failed `CellValue::parse` and so the whole batch.
#[test]
fn a_cell_with_half_a_surrogate_pair_types_as_a_string_with_a_replacement_character() {
    let input = include_bytes!("../../../fuzz/corpus/sdk_rows/regression-lone-surrogate");
    let nul = input
        .iter()
        .position(|&b| b == 0)
        .expect("fields, NUL, rows");
    let ndjson = &input[nul + 1..];
    let batch = Batch::from_parts(BatchParts {
        row_count: 1,
        ndjson,
        ..BatchParts::default()
    });
    let row = batch
        .rows()
        .next()
        .expect("one row")
        .expect("the row reads");
    let (_, cell) = row.values[0];
    assert_eq!(
        CellValue::parse(cell).expect("the cell types"),
        CellValue::String(Cow::Owned("\u{e83d}\u{fffd}".to_owned()))
    );

    let cases = [
        (r#""\ud83d""#, "\u{fffd}"),
        (r#""a\udE00b""#, "a\u{fffd}b"),
        (r#""\ud83d\ude00""#, "😀"),
        (r#""\ud83d\ud83d\ude00""#, "\u{fffd}😀"),
        (r#""\\ud83d""#, "\\ud83d"),
        (r#""\"\ud800\n""#, "\"\u{fffd}\n"),
    ];
    for (text, want) in cases {
        let raw = RawValue::from_string(text.to_owned()).expect("JSON");
        assert_eq!(
            CellValue::parse(&raw).expect(text),
            CellValue::String(Cow::Owned(want.to_owned())),
            "{text}"
        );
    }
}

#[test]
fn held_answers_through_the_descriptor_and_a_panic_in_it_poisons() {
    let mut host = TestHost::created("probe-held", r#"{}"#);
    let ((status, message), out) = host.held("holding");
    assert_eq!((status, message), (abi::STATUS_OK, None));
    assert_eq!((out.holds, out.seq, out.rows), (abi::HELD_BATCHES, 4, 40));

    let ((status, _), out) = host.held("fresh");
    assert_eq!(status, abi::STATUS_OK);
    assert_eq!(out.holds, abi::HELD_NOTHING, "nothing to tell");

    let ((status, message), out) = host.held("busy");
    assert_eq!(
        (status, message.as_deref()),
        (abi::STATUS_RETRY, Some("state file locked"))
    );
    assert_eq!(out.holds, abi::HELD_NOTHING);

    let ((status, message), _) = host.held("panicking");
    assert_eq!(status, abi::STATUS_FATAL);
    assert_eq!(message.as_deref(), Some("plugin panicked: held exploded"));
    let ((status, message), _) = host.held("holding");
    assert_eq!(status, abi::STATUS_FATAL, "poisoned");
    assert!(
        message.is_some_and(|m| m.starts_with("instance is poisoned")),
        "the poisoned instance says why"
    );
    host.destroy();
}

#[test]
fn a_sink_without_held_has_nothing_to_tell() {
    struct Plain;
    impl Sink for Plain {
        fn create(_: &CreateContext<'_>, _: serde_json::Value) -> Result<Self, SinkError> {
            Ok(Plain)
        }
        fn write_batch(&mut self, _: &Batch<'_>) -> Result<(), SinkError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }
    assert_eq!(Plain.held("any").expect("the default answers"), None);
}
