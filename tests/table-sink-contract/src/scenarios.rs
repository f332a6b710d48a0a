//! The scenarios, one function each; [`table_sink_scenarios!`](crate::table_sink_scenarios)
//! makes a test of every one. Each takes a fixture whose destination is still empty.

use flatsync_plugin_sdk::Sink;

use crate::{
    Delivery, LATER, LATER_MS, RECEIVED, StreamRow, TableSink, count, deleted, deletion, row,
    select, send,
};

/// The sink's own columns, first in every table.
const OWN_COLUMNS: [&str; 4] = ["_record_id", "_event_id", "_valid", "_received_at"];

/// [`OWN_COLUMNS`] followed by `more`.
fn columns_then(more: &[&str]) -> Vec<String> {
    OWN_COLUMNS
        .iter()
        .chain(more)
        .map(|&name| name.to_owned())
        .collect()
}

/// A later event (`ev3`) re-creating one record with a new name, as a complete stream.
fn recreate(sink: &mut impl Sink, id: &str, name: &str) {
    let how = Delivery {
        stream: "contacts-ev3",
        event_id: "ev3",
        last: true,
        ..Delivery::default()
    };
    let values = format!(r#"{{"name":"{name}"}}"#);
    send(sink, how, &[row(id, true, &values)]).expect("re-created");
}

/// Records `r1` "Ada" and `r2` "Bob" (and `r3` "Cy" with `cy`), as one complete stream.
fn create_people(sink: &mut impl Sink, cy: bool) {
    let mut rows = vec![
        row("r1", true, r#"{"name":"Ada"}"#),
        row("r2", true, r#"{"name":"Bob"}"#),
    ];
    if cy {
        rows.push(row("r3", true, r#"{"name":"Cy"}"#));
    }
    let how = Delivery {
        last: true,
        ..Delivery::default()
    };
    send(sink, how, &rows).expect("created");
}

/// The same batch twice is applied once; a later event's row updates the record in place.
pub fn redelivery_upserts_without_duplicates(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let batch0 = [
        row("r1", true, r#"{"name":"Ada"}"#),
        row("r2", false, r#"{"name":"Bob"}"#),
    ];
    send(&mut sink, Delivery::default(), &batch0).expect("batch 0");
    // The same batch again: already applied, skipped.
    send(&mut sink, Delivery::default(), &batch0).expect("skipped");
    let later = Delivery {
        stream: "contacts-ev2",
        event_id: "ev2",
        received_at_ms: LATER_MS,
        ..Delivery::default()
    };
    send(
        &mut sink,
        later,
        &[row("r1", false, r#"{"name":"Ada L."}"#)],
    )
    .expect("ev2");
    let (received, later) = (fx.shown_time(RECEIVED), fx.shown_time(LATER));
    let (received, later) = (received.as_str(), later.as_str());
    let invalid = fx.shown_bool(false);
    assert_eq!(
        select(
            fx,
            "contacts",
            &["_record_id", "_event_id", "_valid", "_received_at", "name"]
        ),
        [
            ["r1", "ev2", invalid, later, "Ada L."],
            ["r2", "ev1", invalid, received, "Bob"],
        ]
    );
}

/// A new instance knows what was applied: a re-sent older batch changes nothing, and once the
/// last batch is in, even the next seq is ignored.
pub fn applied_seq_survives_reopening_and_a_complete_stream_takes_nothing(fx: &impl TableSink) {
    let mut first = fx.sink();
    for seq in 0..3 {
        let rows = [row(&format!("r{seq}"), true, &format!(r#"{{"n":{seq}}}"#))];
        let how = Delivery {
            seq,
            ..Delivery::default()
        };
        send(&mut first, how, &rows).expect("written");
    }
    first.flush().expect("flush is a no-op");
    drop(first);

    let mut second = fx.sink();
    second.check().expect("healthy");
    // The host re-sends from an older checkpoint with different bytes to prove nothing
    // already applied is touched.
    for seq in 0..3 {
        let how = Delivery {
            seq,
            ..Delivery::default()
        };
        send(&mut second, how, &[row("intruder", true, r#"{"n":99}"#)]).expect("skipped");
    }
    let how = Delivery {
        seq: 3,
        last: true,
        ..Delivery::default()
    };
    send(&mut second, how, &[row("r3", true, r#"{"n":3}"#)]).expect("seq 3");
    assert_eq!(
        select(fx, "contacts", &["_record_id", "n"]),
        [["r0", "0"], ["r1", "1"], ["r2", "2"], ["r3", "3"]]
    );
    assert_eq!(
        fx.streams(),
        [StreamRow::new("contacts-ev1", "contacts", 3, true)]
    );
    let more = Delivery {
        seq: 4,
        ..Delivery::default()
    };
    send(&mut second, more, &[row("late", true, "{}")]).expect("skipped");
    assert_eq!(count(fx, "contacts"), 4);
}

/// Columns come from the sheet's fields first, then from keys in the order first seen; a
/// later batch adds its new keys.
pub fn columns_follow_schema_then_first_seen_and_grow_later(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let first = Delivery {
        fields: r#"["email","name"]"#,
        ..Delivery::default()
    };
    let rows = [row("r1", true, r#"{"extra":1,"email":"a@x.io"}"#)];
    send(&mut sink, first, &rows).expect("b0");
    let second = Delivery {
        seq: 1,
        ..Delivery::default()
    };
    let rows = [row("r2", true, r#"{"email":"b@x.io","late":"z"}"#)];
    send(&mut sink, second, &rows).expect("b1");
    assert_eq!(
        fx.columns("contacts"),
        columns_then(&["email", "name", "extra", "late"])
    );
    assert_eq!(
        select(
            fx,
            "contacts",
            &["_record_id", "email", "name", "extra", "late"]
        ),
        [
            ["r1", "a@x.io", "NULL", "1", "NULL"],
            ["r2", "b@x.io", "NULL", "NULL", "z"],
        ]
    );
}

/// New keys become columns in the order the rows came, also when a sink writes the rows of a
/// batch in another order (the sqlite sink sorts them by id).
pub fn new_columns_follow_the_rows_order_not_their_ids(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let rows = [
        row("r9", true, r#"{"zeta":1}"#),
        row("r1", true, r#"{"alpha":2}"#),
        row("r5", true, r#"{"mid":3,"alpha":4}"#),
    ];
    send(&mut sink, Delivery::default(), &rows).expect("b0");
    assert_eq!(
        fx.columns("contacts"),
        columns_then(&["zeta", "alpha", "mid"])
    );
    assert_eq!(
        select(fx, "contacts", &["_record_id", "zeta", "alpha", "mid"]),
        [
            ["r1", "NULL", "2", "NULL"],
            ["r5", "NULL", "4", "3"],
            ["r9", "1", "NULL", "NULL"],
        ]
    );
}

/// An upsert leaves the columns a row does not have alone; rows of one record in a batch
/// apply in order, and a key repeated in a row keeps its last value.
pub fn a_row_updates_only_the_columns_it_has_and_repeated_ids_apply_in_order(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let rows = [row("r1", true, r#"{"a":1,"b":2}"#)];
    send(&mut sink, Delivery::default(), &rows).expect("b0");
    // Three shapes, and r1 twice: the second line's `a` wins, `c` of the first line stays.
    let rows = [
        row("r1", true, r#"{"a":3,"c":"x"}"#),
        row("r2", true, r#"{"b":"only b"}"#),
        row("r1", false, r#"{"a":4}"#),
        row("r3", true, r#"{"a":5,"a":6}"#),
    ];
    let how = Delivery {
        seq: 1,
        ..Delivery::default()
    };
    send(&mut sink, how, &rows).expect("b1");
    let (valid, invalid) = (fx.shown_bool(true), fx.shown_bool(false));
    assert_eq!(
        select(fx, "contacts", &["_record_id", "_valid", "a", "b", "c"]),
        [
            ["r1", invalid, "4", "2", "x"],
            ["r2", valid, "NULL", "only b", "NULL"],
            ["r3", valid, "6", "NULL", "NULL"],
        ]
    );
}

/// Keys naming the sink's own columns (and those the database refuses) are fatal, and
/// nothing of the failed batches stays, not even the table.
pub fn reserved_keys_are_fatal_and_roll_back(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let rows = [
        row("r1", true, r#"{"ok":1}"#),
        row("r2", true, r#"{"_VALID":1}"#),
    ];
    let error = send(&mut sink, Delivery::default(), &rows).expect_err("reserved key");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "table `contacts`: field key `_VALID` clashes with the sink's column of that name"
    );
    let schema = Delivery {
        fields: r#"["_record_id"]"#,
        ..Delivery::default()
    };
    let error = send(&mut sink, schema, &[]).expect_err("reserved schema key");
    assert!(
        error.message().contains("`_record_id`"),
        "{}",
        error.message()
    );
    for (values, message) in fx.refused_keys() {
        let error =
            send(&mut sink, Delivery::default(), &[row("r1", true, &values)]).expect_err(&values);
        assert!(!error.is_retry(), "{values}: {}", error.message());
        message.assert_matches(error.message());
    }

    assert_eq!(fx.table("contacts"), None, "the table was rolled back");
    assert_eq!(fx.streams(), []);
    let rows = [row("r1", true, r#"{"ok":1}"#)];
    send(&mut sink, Delivery::default(), &rows).expect("seq 0 again");
    assert_eq!(select(fx, "contacts", &["_record_id", "ok"]), [["r1", "1"]]);
    assert_eq!(fx.columns("contacts"), columns_then(&["ok"]));
}

/// A batch past the next expected seq, or a new stream not starting at 0, is fatal and
/// applies nothing.
pub fn gap_is_fatal(fx: &impl TableSink) {
    let mut sink = fx.sink();
    send(&mut sink, Delivery::default(), &[]).expect("seq 0");
    let gap = Delivery {
        seq: 2,
        ..Delivery::default()
    };
    let error = send(&mut sink, gap, &[]).expect_err("gap");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "stream contacts-ev1: got batch seq 2 but the next expected is 1; batches are missing"
    );
    let late_start = Delivery {
        stream: "contacts-ev9",
        seq: 1,
        ..Delivery::default()
    };
    let error = send(&mut sink, late_start, &[]).expect_err("a new stream starts at 0");
    assert!(!error.is_retry(), "{}", error.message());
    assert_eq!(
        fx.streams(),
        [StreamRow::new("contacts-ev1", "contacts", 0, false)]
    );
}

/// A stream without rows still creates its table, with the sheet's fields, whatever
/// characters the kind and the fields hold.
pub fn empty_stream_creates_the_table_and_completes(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let kind = "my \"odd\" sheet";
    let how = Delivery {
        kind,
        stream: "odd-ev1",
        fields: r#"["a b","c"]"#,
        last: true,
        ..Delivery::default()
    };
    send(&mut sink, how, &[]).expect("written");
    assert_eq!(fx.columns(kind), columns_then(&["a b", "c"]));
    assert_eq!(fx.streams(), [StreamRow::new("odd-ev1", kind, 0, true)]);
}

/// Kinds that cannot be a table name, or would be the sink's own table, are fatal.
pub fn unusable_table_names_are_fatal(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let mut kinds: Vec<String> = ["", "_flatsync_streams", "_FLATSYNC_x"]
        .map(str::to_owned)
        .into();
    kinds.extend(fx.unusable_kinds());
    for kind in &kinds {
        let how = Delivery {
            kind,
            ..Delivery::default()
        };
        let error = send(&mut sink, how, &[]).expect_err("refused");
        assert!(!error.is_retry(), "{kind}");
        assert!(
            error.message().starts_with("stream kind"),
            "{}",
            error.message()
        );
    }
}

/// A `records:updated` stream after the `records:created` one upserts the record, with the
/// later event's id, validity and time.
pub fn an_update_stream_after_a_create_stream_upserts_the_record(fx: &impl TableSink) {
    let mut sink = fx.sink();
    let created = Delivery {
        fields: r#"["name","age"]"#,
        last: true,
        ..Delivery::default()
    };
    let rows = [
        row("r1", true, r#"{"name":"Ada","age":36}"#),
        row("r2", true, r#"{"name":"Bob","age":40}"#),
    ];
    send(&mut sink, created, &rows).expect("records:created");
    let updated = Delivery {
        stream: "contacts-ev2",
        event_id: "ev2",
        fields: r#"["name","age"]"#,
        last: true,
        received_at_ms: LATER_MS,
        ..Delivery::default()
    };
    let rows = [row("r1", false, r#"{"name":"Ada L.","age":37}"#)];
    send(&mut sink, updated, &rows).expect("records:updated");
    let (received, later) = (fx.shown_time(RECEIVED), fx.shown_time(LATER));
    let (received, later) = (received.as_str(), later.as_str());
    let (valid, invalid) = (fx.shown_bool(true), fx.shown_bool(false));
    assert_eq!(
        select(
            fx,
            "contacts",
            &[
                "_record_id",
                "_event_id",
                "_valid",
                "_received_at",
                "name",
                "age"
            ]
        ),
        [
            ["r1", "ev2", invalid, later, "Ada L.", "37"],
            ["r2", "ev1", valid, received, "Bob", "40"],
        ]
    );
}

/// Deletions remove rows, and a deletion batch re-delivered after a restart does not delete
/// a record re-created since.
pub fn deletions_remove_rows_exactly_once_across_a_restart(fx: &impl TableSink) {
    let mut first = fx.sink();
    create_people(&mut first, true);
    let batch0 = [deleted("r1"), deleted("unknown")];
    let seq0 = deletion("ev2", "contacts-deleted-ev2", 0, false);
    send(&mut first, seq0, &batch0).expect("deletions seq 0");
    drop(first);

    let mut second = fx.sink();
    // r1 is re-created by a later event before the deletion stream is re-delivered: the
    // re-delivered batch must not delete it again.
    recreate(&mut second, "r1", "Ada again");
    send(&mut second, seq0, &batch0).expect("skipped");
    let seq1 = deletion("ev2", "contacts-deleted-ev2", 1, true);
    send(&mut second, seq1, &[deleted("r2")]).expect("deletions seq 1");
    assert_eq!(
        select(fx, "contacts", &["_record_id", "_event_id", "name"]),
        [["r1", "ev3", "Ada again"], ["r3", "ev1", "Cy"]]
    );
    let streams = fx.streams();
    assert!(
        streams.contains(&StreamRow::new("contacts-deleted-ev2", "contacts", 1, true)),
        "{streams:?}"
    );
    assert_eq!(
        fx.columns("contacts"),
        columns_then(&["name"]),
        "delete mode adds no column"
    );
}

/// In mark mode a deletion sets `_deleted_at` and keeps the row; a later upsert of the
/// record clears it, and a complete deletion stream delivered again changes nothing.
pub fn mark_mode_keeps_the_rows_and_an_upsert_clears_the_mark(fx: &impl TableSink) {
    let mut first = fx.marking_sink();
    create_people(&mut first, false);
    assert_eq!(
        fx.columns("contacts"),
        columns_then(&["_deleted_at", "name"])
    );
    let marks = [deleted("r1"), deleted("r2")];
    let deletions = deletion("ev2", "contacts-deleted-ev2", 0, true);
    send(&mut first, deletions, &marks).expect("deleted");
    let later = fx.shown_time(LATER);
    let later = later.as_str();
    assert_eq!(
        select(fx, "contacts", &["_record_id", "name", "_deleted_at"]),
        [["r1", "Ada", later], ["r2", "Bob", later]]
    );
    drop(first);

    let mut second = fx.marking_sink();
    // r1 comes back: alive again, with its new values.
    recreate(&mut second, "r1", "Ada again");
    send(&mut second, deletions, &marks).expect("skipped");
    assert_eq!(
        select(
            fx,
            "contacts",
            &["_record_id", "_event_id", "name", "_deleted_at"]
        ),
        [
            ["r1", "ev3", "Ada again", "NULL"],
            ["r2", "ev1", "Bob", later],
        ]
    );
}

/// Mark mode adds `_deleted_at` to a table made in delete mode; back in delete mode the
/// column stays, an upsert still clears a mark, and the column's name stays reserved.
pub fn mark_mode_adds_deleted_at_to_an_existing_table(fx: &impl TableSink) {
    let mut before = fx.sink();
    create_people(&mut before, false);
    drop(before);
    assert_eq!(fx.columns("contacts"), columns_then(&["name"]));

    let mut after = fx.marking_sink();
    let deletions = deletion("ev2", "contacts-deleted-ev2", 0, true);
    send(&mut after, deletions, &[deleted("r2")]).expect("marked");
    assert_eq!(
        fx.columns("contacts"),
        columns_then(&["name", "_deleted_at"])
    );
    let later = fx.shown_time(LATER);
    let later = later.as_str();
    assert_eq!(
        select(fx, "contacts", &["_record_id", "name", "_deleted_at"]),
        [["r1", "Ada", "NULL"], ["r2", "Bob", later]]
    );

    drop(after);
    let mut delete_mode = fx.sink();
    recreate(&mut delete_mode, "r2", "Bob again");
    assert_eq!(
        select(fx, "contacts", &["_record_id", "name", "_deleted_at"]),
        [["r1", "Ada", "NULL"], ["r2", "Bob again", "NULL"]]
    );
    let how = Delivery {
        stream: "contacts-ev4",
        ..Delivery::default()
    };
    let error = send(
        &mut delete_mode,
        how,
        &[row("r3", true, r#"{"_Deleted_At":"x"}"#)],
    )
    .expect_err("reserved key");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "table `contacts`: field key `_Deleted_At` clashes with the sink's column of that name"
    );
}

/// Deleting records of a kind that has no table yet creates nothing, in either mode, and
/// completes the stream.
pub fn deletions_of_a_kind_without_a_table_create_nothing(fx: &impl TableSink) {
    for (mut sink, stream) in [
        (fx.sink(), "contacts-deleted-ev2"),
        (fx.marking_sink(), "contacts-deleted-ev3"),
    ] {
        send(
            &mut sink,
            deletion("ev2", stream, 0, true),
            &[deleted("r1")],
        )
        .expect("nothing to do");
        assert_eq!(fx.table("contacts"), None);
        let streams = fx.streams();
        assert!(
            streams.contains(&StreamRow::new(stream, "contacts", 0, true)),
            "{streams:?}"
        );
    }
}

/// A deletion batch that fails half-way deletes nothing and adds no column; sent again, it
/// applies.
pub fn a_failed_deletion_batch_deletes_nothing_and_can_be_sent_again(fx: &impl TableSink) {
    let mut before = fx.sink();
    let how = Delivery {
        last: true,
        ..Delivery::default()
    };
    send(
        &mut before,
        how,
        &[row("r1", true, "{}"), row("r2", true, "{}")],
    )
    .expect("created in delete mode");
    drop(before);

    let mut sink = fx.marking_sink();
    let deletions = deletion("ev2", "contacts-deleted-ev2", 0, true);
    let bad = [deleted("r1"), "{\"id\":\"r2\",\"valid\":tru\n".to_owned()];
    let error = send(&mut sink, deletions, &bad).expect_err("malformed line 2");
    assert!(!error.is_retry());
    assert!(error.message().contains("line 2"), "{}", error.message());
    // Not even the column added on the way survived the rollback.
    assert_eq!(fx.columns("contacts"), columns_then(&[]));
    assert!(
        fx.streams()
            .iter()
            .all(|row| row.stream != "contacts-deleted-ev2"),
        "the failed batch is not applied"
    );

    send(&mut sink, deletions, &[deleted("r1"), deleted("r2")]).expect("sent again");
    let later = fx.shown_time(LATER);
    let later = later.as_str();
    assert_eq!(
        select(fx, "contacts", &["_record_id", "_deleted_at"]),
        [["r1", later], ["r2", later]]
    );
}
