use flatsync_test_kit::fs::entries;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use crate::{BatchParts, LogLevel};

fn batch(stream: &str, seq: u64, last: bool) -> Batch<'_> {
    Batch::from_parts(BatchParts {
        stream,
        seq,
        last,
        ..BatchParts::default()
    })
}

fn folder(dir: &Path) -> StreamFolder<StreamFile> {
    StreamFolder::new(dir, "txt", Logger::discard())
}

/// What a sink built on the folder does with one batch: the rule, then `text` appended.
fn write(
    folder: &mut StreamFolder<StreamFile>,
    stream: &str,
    seq: u64,
    text: &str,
    last: bool,
) -> Result<(), SinkError> {
    let batch = batch(stream, seq, last);
    folder.write_batch(
        &batch,
        |found| Ok(found.into_file()),
        |file| file.append(&batch, |partial| partial.write_bytes(text.as_bytes())),
    )
}

/// The stream `name`, which an earlier batch opened in this process.
fn in_progress<'f>(folder: &'f mut StreamFolder<StreamFile>, name: &str) -> &'f mut StreamFile {
    folder
        .open(name, |_| panic!("{name} is opened again"))
        .expect("open")
        .expect("in progress")
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn a_flush_records_the_position_and_publishing_leaves_only_the_final_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    write(&mut folder, "s", 0, "a\n", false).expect("seq 0");
    write(&mut folder, "s", 1, "bc\n", false).expect("seq 1");
    folder.flush().expect("flush");
    assert_eq!(
        entries(dir.path()),
        [".s.txt.partial", ".s.txt.progress", ".s.txt.state"]
    );
    assert_eq!(
        read(dir.path().join(".s.txt.state")),
        r#"{"applied_seq":1,"len":5,"stream_rows":0}"#
    );
    write(&mut folder, "s", 2, "d\n", true).expect("seq 2");
    assert_eq!(read(dir.path().join("s.txt")), "a\nbc\nd\n");
    assert_eq!(entries(dir.path()), ["s.txt"]);
    folder.flush().expect("nothing left to flush");
}

#[test]
fn a_restart_cuts_back_what_was_never_flushed_and_resumes_after_the_recorded_seq() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = folder(dir.path());
    write(&mut first, "s", 0, "zero\n", false).expect("seq 0");
    first.flush().expect("flush");
    write(&mut first, "s", 1, "one, never flushed\n", false).expect("seq 1");
    drop(first);
    // A power cut took the progress record: only the state file vouches for anything.
    fs::remove_file(dir.path().join(".s.txt.progress")).expect("remove the progress record");

    let (logger, lines) = collecting_logger();
    let mut second = StreamFolder::new(dir.path(), "txt", logger);
    let file = second
        .open("s", |found| match found {
            Found::Resumed(file, saved) => {
                assert_eq!(
                    saved,
                    Position {
                        applied_seq: 0,
                        len: 5
                    }
                );
                Ok(file)
            }
            Found::Fresh(_) => panic!("the state file was not found"),
        })
        .expect("open")
        .expect("in progress");
    assert_eq!(file.position(), StreamPosition::Applied(0));
    assert_eq!(
        lines.lock().expect("log lock").as_slice(),
        [(
            LogLevel::Info,
            "Stream resumed: s after seq 0 (5 bytes kept, 19 dropped)".to_owned()
        )]
    );
    for (seq, text) in [(0, "zero again\n"), (1, "one\n"), (2, "two\n")] {
        write(&mut second, "s", seq, text, seq == 2).expect("written");
    }
    assert_eq!(read(dir.path().join("s.txt")), "zero\none\ntwo\n");
}

#[test]
fn a_stream_never_flushed_starts_afresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = folder(dir.path());
    write(&mut first, "s", 0, "lost\n", false).expect("seq 0");
    drop(first);
    fs::remove_file(dir.path().join(".s.txt.progress")).expect("a power cut took the record");
    let mut second = folder(dir.path());
    write(&mut second, "s", 0, "kept\n", true).expect("seq 0 again");
    assert_eq!(read(dir.path().join("s.txt")), "kept\n");
}

#[test]
fn a_failed_write_is_cut_back_so_the_retry_appends_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    write(&mut folder, "s", 0, "a\n", false).expect("seq 0");
    let file = in_progress(&mut folder, "s");
    let error = file
        .append(&batch("s", 1, false), |partial| {
            partial.write_bytes(b"half a ba")?;
            Err(SinkError::retry("disk full"))
        })
        .expect_err("the write fails");
    assert_eq!(error.message(), "disk full");
    assert_eq!(file.position(), StreamPosition::Applied(0));
    assert_eq!(read(dir.path().join(".s.txt.partial")), "a\n");
    write(&mut folder, "s", 1, "b\n", true).expect("retried");
    assert_eq!(read(dir.path().join("s.txt")), "a\nb\n");
}

#[test]
fn append_refuses_a_batch_that_is_not_the_next_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    write(&mut folder, "s", 0, "a\n", false).expect("seq 0");
    let file = in_progress(&mut folder, "s");
    let again = file
        .append(&batch("s", 0, false), |partial| partial.write_bytes(b"a\n"))
        .expect_err("seq 0 is in the partial already");
    assert!(!again.is_retry());
    assert_eq!(
        again.message(),
        "stream s: batch seq 0 is already in the partial; only the next batch is appended"
    );
    let gap = file
        .append(&batch("s", 2, false), |partial| partial.write_bytes(b"c\n"))
        .expect_err("seq 1 is missing");
    assert_eq!(
        gap.message(),
        "stream s: got batch seq 2 but the next expected is 1; batches are missing"
    );
    assert_eq!(read(dir.path().join(".s.txt.partial")), "a\n");
}

#[test]
fn a_failed_publish_is_finished_when_the_last_batch_comes_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    write(&mut folder, "s", 0, "a\n", false).expect("seq 0");
    // A folder under the final name makes the rename fail.
    let blocker = dir.path().join("s.txt");
    fs::create_dir(&blocker).expect("mkdir");
    let error = write(&mut folder, "s", 1, "b\n", true).expect_err("the rename fails");
    assert!(error.is_retry(), "{error}");
    assert!(error.message().starts_with("cannot rename"), "{error}");

    fs::remove_dir(&blocker).expect("rmdir");
    write(&mut folder, "s", 1, "b\n", true).expect("finished");
    assert_eq!(read(dir.path().join("s.txt")), "a\nb\n", "seq 1 once");
    assert_eq!(entries(dir.path()), ["s.txt"]);
}

#[test]
fn a_complete_stream_is_skipped_and_its_leftovers_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    for leftover in [
        "s.txt",
        ".s.txt.partial",
        ".s.txt.state",
        ".s.txt.state.tmp",
        ".s.txt.copy.tmp",
    ] {
        fs::write(dir.path().join(leftover), "x").expect("write");
    }
    let mut folder = folder(dir.path()).with_temporaries(&["copy"]);
    let found = folder
        .open("s", |_| panic!("a complete stream is not opened"))
        .expect("open");
    assert!(found.is_none());
    assert_eq!(entries(dir.path()), ["s.txt"]);
}

#[test]
fn temporaries_of_an_unfinished_stream_are_removed_when_it_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join(".s.txt.state.tmp"), "{").expect("write");
    fs::write(dir.path().join(".s.txt.copy.tmp"), "x").expect("write");
    let mut folder = folder(dir.path()).with_temporaries(&["copy"]);
    let file = folder
        .open("s", |found| Ok(found.into_file()))
        .expect("open")
        .expect("in progress");
    assert_eq!(file.position(), StreamPosition::Start);
    assert_eq!(
        file.temporary_path("copy"),
        dir.path().join(".s.txt.copy.tmp")
    );
    assert_eq!(entries(dir.path()), [".s.txt.partial"]);
}

#[test]
fn stale_temporaries_of_every_stream_go_at_start_up_and_nothing_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in [
        ".a.txt.state.tmp",
        ".b.txt.copy.tmp",
        ".c.txt.state",
        ".c.txt.partial",
        "d.txt",
        ".e.csv.state.tmp",
    ] {
        fs::write(dir.path().join(name), "x").expect("write");
    }
    folder(dir.path())
        .with_temporaries(&["copy"])
        .remove_stale_temporaries();
    assert_eq!(
        entries(dir.path()),
        [
            ".c.txt.partial",
            ".c.txt.state",
            ".e.csv.state.tmp",
            "d.txt"
        ]
    );
}

#[test]
fn check_writable_leaves_no_probe_and_names_a_folder_it_cannot_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    folder(dir.path()).check_writable().expect("writable");
    assert!(entries(dir.path()).is_empty(), "the probe is removed");
    let missing = dir.path().join("missing");
    let error = folder(&missing)
        .check_writable()
        .expect_err("no such folder");
    assert!(error.is_retry());
    assert!(
        error
            .message()
            .starts_with(&format!("{} is not writable: ", missing.display())),
        "{error}"
    );
}

#[test]
fn unsafe_stream_names_are_refused_before_any_file_is_touched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    for name in ["../x", "a/b", "", "..", "sp ace"] {
        let error = write(&mut folder, name, 0, "", true).expect_err("refused");
        assert!(!error.is_retry(), "{name}");
    }
    assert!(entries(dir.path()).is_empty());
}

/// A state file with more in it than the position, as a sink with columns keeps.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Columns {
    applied_seq: u64,
    offset: u64,
    columns: Vec<String>,
}

impl SavedPosition for Columns {
    fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    fn durable_len(&self) -> u64 {
        self.offset
    }

    fn check(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("names no columns".to_owned());
        }
        Ok(())
    }
}

/// A stream that publishes an upper-cased copy of its partial.
#[derive(Debug)]
struct Shouting {
    file: StreamFile,
    columns: Vec<String>,
}

impl FolderStream for Shouting {
    type Saved = Columns;

    fn file(&self) -> &StreamFile {
        &self.file
    }

    fn file_mut(&mut self) -> &mut StreamFile {
        &mut self.file
    }

    fn saved(&self, applied_seq: u64, len: u64) -> Columns {
        Columns {
            applied_seq,
            offset: len,
            columns: self.columns.clone(),
        }
    }

    fn prepare_publish(&mut self) -> Result<Option<PathBuf>, SinkError> {
        let copy = self.file.temporary_path("copy");
        let text = read(self.file.partial_path().to_path_buf());
        fs::write(&copy, text.to_uppercase()).expect("write the copy");
        Ok(Some(copy))
    }
}

fn shouting(found: Found<Columns>) -> Result<Shouting, SinkError> {
    Ok(match found {
        Found::Fresh(file) => Shouting {
            file,
            columns: vec!["a".to_owned()],
        },
        Found::Resumed(file, saved) => Shouting {
            file,
            columns: saved.columns,
        },
    })
}

#[test]
fn a_sink_keeps_its_own_state_beside_the_position_and_can_publish_a_replacement() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = StreamFolder::new(dir.path(), "txt", Logger::discard());
    let stream = first.open("s", shouting).expect("open").expect("fresh");
    stream
        .file_mut()
        .append(&batch("s", 0, false), |partial| partial.write_bytes(b"a\n"))
        .expect("seq 0");
    first.flush().expect("flush");
    assert_eq!(
        read(dir.path().join(".s.txt.state")),
        r#"{"applied_seq":0,"offset":2,"columns":["a"],"stream_rows":0}"#
    );
    drop(first);

    let mut second = StreamFolder::new(dir.path(), "txt", Logger::discard());
    let stream = second.open("s", shouting).expect("open").expect("resumed");
    assert_eq!(stream.columns, ["a"]);
    stream
        .file_mut()
        .append(&batch("s", 1, true), |partial| partial.write_bytes(b"b\n"))
        .expect("seq 1");
    second.publish("s").expect("published");
    assert_eq!(read(dir.path().join("s.txt")), "A\nB\n");
    assert_eq!(entries(dir.path()), ["s.txt"], "the partial went too");
}

#[test]
fn a_state_the_sink_finds_inconsistent_is_fatal_and_leaves_the_partial_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join(".s.txt.partial"), "a\nunflushed").expect("write");
    fs::write(
        dir.path().join(".s.txt.state"),
        r#"{"applied_seq":0,"offset":2,"columns":[]}"#,
    )
    .expect("write");
    let mut folder = StreamFolder::new(dir.path(), "txt", Logger::discard());
    let error = folder.open("s", shouting).expect_err("no columns");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        format!(
            "state file {} names no columns",
            dir.path().join(".s.txt.state").display()
        )
    );
    assert_eq!(read(dir.path().join(".s.txt.partial")), "a\nunflushed");
}

#[test]
fn a_state_file_longer_than_its_partial_is_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join(".s.txt.partial"), "a\n").expect("write");
    fs::write(
        dir.path().join(".s.txt.state"),
        r#"{"applied_seq":3,"len":9}"#,
    )
    .expect("write");
    let error = folder(dir.path())
        .open("s", |found| Ok(found.into_file()))
        .expect_err("the data and the state disagree");
    assert!(!error.is_retry());
    assert!(error.message().contains("records 9 bytes but"), "{error}");
}

type LogLines = std::sync::Arc<std::sync::Mutex<Vec<(LogLevel, String)>>>;

fn collecting_logger() -> (Logger, LogLines) {
    let lines = LogLines::default();
    let sink = std::sync::Arc::clone(&lines);
    let logger = Logger::from_fn(move |level, message| {
        sink.lock()
            .expect("log lock")
            .push((level, message.to_owned()));
    });
    (logger, lines)
}

/// [`write`] with a row count, for the rows `held` reports.
fn write_rows(
    folder: &mut StreamFolder<StreamFile>,
    stream: &str,
    seq: u64,
    text: &str,
    rows: u64,
    last: bool,
) -> Result<(), SinkError> {
    let batch = Batch::from_parts(BatchParts {
        stream,
        seq,
        row_count: rows,
        last,
        ..BatchParts::default()
    });
    folder.write_batch(
        &batch,
        |found| Ok(found.into_file()),
        |file| file.append(&batch, |partial| partial.write_bytes(text.as_bytes())),
    )
}

fn held(folder: &mut StreamFolder<StreamFile>, stream: &str) -> Option<Held> {
    folder
        .held(stream, |found| Ok(found.into_file()))
        .expect("held answers")
}

/// Batch 0 flushed (2 rows), batches 1 and 2 appended (3 rows each), then the process dies
/// without a flush.
fn crashed_after_two_unflushed_batches(dir: &Path) {
    let mut first = folder(dir);
    write_rows(&mut first, "s", 0, "zero\n", 2, false).expect("seq 0");
    first.flush().expect("flush");
    write_rows(&mut first, "s", 1, "one\n", 3, false).expect("seq 1");
    write_rows(&mut first, "s", 2, "two\n", 3, false).expect("seq 2");
    drop(first);
}

#[test]
fn after_a_process_crash_the_batches_appended_since_the_flush_are_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    crashed_after_two_unflushed_batches(dir.path());

    let (logger, lines) = collecting_logger();
    let mut second = StreamFolder::new(dir.path(), "txt", logger);
    assert_eq!(held(&mut second, "s"), Some(Held { seq: 2, rows: 8 }));
    assert_eq!(read(dir.path().join(".s.txt.partial")), "zero\none\ntwo\n");
    assert_eq!(
        lines.lock().expect("log lock").as_slice(),
        [(
            LogLevel::Info,
            "Stream resumed: s after seq 2 (13 bytes kept, 8 of them not yet flushed; 0 dropped)"
                .to_owned()
        )]
    );
    // Asked again: the same answer, from the stream now open.
    assert_eq!(held(&mut second, "s"), Some(Held { seq: 2, rows: 8 }));

    // A held batch sent again is skipped; the next one appends after the held ones.
    write_rows(&mut second, "s", 2, "two again\n", 3, false).expect("re-sent");
    write_rows(&mut second, "s", 3, "three\n", 1, false).expect("seq 3");
    assert_eq!(held(&mut second, "s"), Some(Held { seq: 3, rows: 9 }));
    // The flush makes the held batches durable with the new one.
    second.flush().expect("flush");
    assert_eq!(
        read(dir.path().join(".s.txt.state")),
        r#"{"applied_seq":3,"len":19,"stream_rows":9}"#
    );
    assert_eq!(held(&mut second, "s"), None, "everything is durable");
    write_rows(&mut second, "s", 4, "four\n", 1, true).expect("seq 4");
    assert_eq!(
        read(dir.path().join("s.txt")),
        "zero\none\ntwo\nthree\nfour\n"
    );
    assert_eq!(
        held(&mut second, "s"),
        None,
        "a published stream holds nothing to tell"
    );
    assert_eq!(entries(dir.path()), ["s.txt"]);
}

#[test]
fn a_held_stream_is_made_durable_by_the_next_flush_even_without_a_new_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    crashed_after_two_unflushed_batches(dir.path());
    let mut second = folder(dir.path());
    assert_eq!(held(&mut second, "s"), Some(Held { seq: 2, rows: 8 }));
    second.flush().expect("flush");
    assert_eq!(
        read(dir.path().join(".s.txt.state")),
        r#"{"applied_seq":2,"len":13,"stream_rows":8}"#
    );
}

#[test]
fn a_crash_before_the_first_flush_keeps_the_batches_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = folder(dir.path());
    write_rows(&mut first, "s", 0, "zero\n", 2, false).expect("seq 0");
    write_rows(&mut first, "s", 1, "one\n", 3, false).expect("seq 1");
    drop(first);

    let mut second = folder(dir.path());
    assert_eq!(held(&mut second, "s"), Some(Held { seq: 1, rows: 5 }));
    write_rows(&mut second, "s", 0, "zero\n", 2, false).expect("re-sent: skipped");
    write_rows(&mut second, "s", 2, "two\n", 1, true).expect("seq 2");
    assert_eq!(read(dir.path().join("s.txt")), "zero\none\ntwo\n");
}

#[test]
fn damage_to_the_record_or_the_unflushed_bytes_falls_back_to_the_last_flush() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 6] = [
        ("a flipped byte of an unflushed batch", |dir| {
            let path = dir.join(".s.txt.partial");
            let mut bytes = fs::read(&path).expect("read");
            bytes[7] ^= 0x01; // in "one\n", past the 5 flushed bytes
            fs::write(&path, bytes).expect("write");
        }),
        ("the partial cut short", |dir| {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dir.join(".s.txt.partial"))
                .expect("open");
            file.set_len(11).expect("cut");
        }),
        ("zeros where the unflushed bytes were", |dir| {
            let path = dir.join(".s.txt.partial");
            let mut bytes = fs::read(&path).expect("read");
            bytes[5..].fill(0);
            fs::write(&path, bytes).expect("write");
        }),
        ("a flipped byte of the record", |dir| {
            let path = dir.join(".s.txt.progress");
            let mut bytes = fs::read(&path).expect("read");
            // Inside the body, past the 20-byte header (the file may end with the tail of a
            // longer, older record, which is no part of this one).
            bytes[30] ^= 0x01;
            fs::write(&path, bytes).expect("write");
        }),
        ("a torn record", |dir| {
            let path = dir.join(".s.txt.progress");
            let bytes = fs::read(&path).expect("read");
            fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        }),
        ("an empty record", |dir| {
            fs::write(dir.join(".s.txt.progress"), b"").expect("write");
        }),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().expect("temp dir");
        crashed_after_two_unflushed_batches(dir.path());
        damage(dir.path());
        let mut second = folder(dir.path());
        assert_eq!(held(&mut second, "s"), None, "{what}");
        assert_eq!(
            read(dir.path().join(".s.txt.partial")),
            "zero\n",
            "{what}: cut back to the last flush"
        );
        write_rows(&mut second, "s", 1, "one\n", 3, false).expect("seq 1 again");
        write_rows(&mut second, "s", 2, "two\n", 3, true).expect("seq 2 again");
        assert_eq!(read(dir.path().join("s.txt")), "zero\none\ntwo\n", "{what}");
    }
}

#[test]
fn a_record_older_than_the_last_flush_is_not_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = folder(dir.path());
    write_rows(&mut first, "s", 0, "zero\n", 2, false).expect("seq 0");
    write_rows(&mut first, "s", 1, "one\n", 3, false).expect("seq 1");
    first.flush().expect("flush");
    drop(first);
    // The record says seq 1 on top of nothing; the state file says seq 1 already.
    let mut second = folder(dir.path());
    assert_eq!(held(&mut second, "s"), None);
    assert_eq!(
        in_progress(&mut second, "s").position(),
        StreamPosition::Applied(1)
    );
}

#[test]
fn a_fresh_stream_holds_nothing_and_held_leaves_no_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut folder = folder(dir.path());
    assert_eq!(held(&mut folder, "s"), None);
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn a_state_file_without_rows_still_resumes_but_holds_nothing_to_tell() {
    let dir = tempfile::tempdir().expect("temp dir");
    // As an older SDK wrote it.
    fs::write(dir.path().join(".s.txt.partial"), "zero\n").expect("write");
    fs::write(
        dir.path().join(".s.txt.state"),
        r#"{"applied_seq":0,"len":5}"#,
    )
    .expect("write");
    let mut first = folder(dir.path());
    write_rows(&mut first, "s", 1, "one\n", 3, false).expect("seq 1");
    drop(first);

    let mut second = folder(dir.path());
    assert_eq!(held(&mut second, "s"), None, "the rows are unknown");
    // The bytes are kept all the same: the host's re-sent batch 1 is skipped.
    assert_eq!(
        in_progress(&mut second, "s").position(),
        StreamPosition::Applied(1)
    );
    write_rows(&mut second, "s", 1, "one\n", 3, false).expect("skipped");
    second.flush().expect("flush");
    assert_eq!(
        read(dir.path().join(".s.txt.state")),
        r#"{"applied_seq":1,"len":9}"#,
        "no rows count is made up"
    );
}
