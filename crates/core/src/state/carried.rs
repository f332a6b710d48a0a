//! Uploads whose rows travel in webhook bodies: `carried_uploads` (one row per upload: origin,
//! kind, fields, when complete) and `carried_parts` (one row per stored part, numbered in
//! delivery order once the upload is complete). When the last missing part is stored, the
//! upload's event enters the inbox in the same transaction. Which parts make an upload
//! complete is the source's rule, handed in as a [`CompletionRule`].

use super::inbox::{CARRIED_KIND, insert_pending};
use super::sql::{self, Db, OptionalExtension, params};
use super::{StateDb, StateError, StreamPlan, StreamSource, now_ms};
use flatsync_flatfile::{CarriedEnd, CarriedOrigin, CarriedPart};

/// What storing a part did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartOutcome {
    /// The part is stored. `complete` names the inbox event when it was the last one missing.
    Stored {
        /// Parts of the upload stored so far.
        received: u64,
        /// Parts the upload has, once known.
        expected: Option<u64>,
        /// The inbox event, when this part completed the upload.
        completed: Option<String>,
    },
    /// This part was stored before (a retry); nothing changed.
    Duplicate,
    /// The part contradicts the parts stored before it; nothing was stored.
    Refused(String),
}

/// A stored part's place, as the completeness check reads it.
pub(crate) struct PartHead {
    pub(crate) major: u64,
    pub(crate) minor: u64,
    pub(crate) parts_of_batch: u64,
    pub(crate) last: bool,
    pub(crate) part_count: Option<u64>,
    pub(crate) rows: u64,
}

/// A stored part's key: `(position_major, position_minor, parts_of_batch)`.
pub(crate) type PartKey = (u64, u64, u64);

/// Given an upload's stored parts: how many it has (once known) and, when every one is
/// stored, the order to deliver them in.
pub(crate) type CompletionRule =
    fn(CarriedOrigin, &[PartHead]) -> (Option<u64>, Option<Vec<PartKey>>);

/// Stores one part of the upload `key` in the transaction `db` is in; when `complete` says it
/// completes the upload, also numbers the parts in delivery order and puts the upload's event
/// (id `key`) into the inbox. A [`PartOutcome::Refused`] part has written nothing. The caller
/// runs it in a savepoint of a group commit ([`StateDb::write_group`]), so a failure part-way
/// is undone without undoing the group.
///
/// Whether the upload is complete is decided on the parts read here, in the same transaction
/// as the insert: two daemons storing an upload's last two parts at once on PostgreSQL each
/// read the other's insert as missing, which SERIALIZABLE refuses for one of them; its retry
/// then sees both parts and completes the upload, once.
pub(super) fn store_part(
    db: &mut Db,
    key: &str,
    part: &CarriedPart,
    complete: CompletionRule,
) -> sql::Result<PartOutcome> {
    let now = now_ms();
    let existing = match contradiction(db, key, part)? {
        Ok(existing) => existing,
        Err(reason) => return Ok(PartOutcome::Refused(reason)),
    };
    if !existing {
        insert_upload(db, key, part, now)?;
    }
    if !insert_part(db, key, part, now)? {
        return Ok(PartOutcome::Duplicate);
    }
    let completed_at: Option<i64> = db.query_row(
        "SELECT completed_at_ms FROM carried_uploads WHERE upload = ?1",
        params![key],
        |r| r.get(0),
    )?;
    let heads = part_heads(db, key)?;
    let received = heads.len() as u64;
    let (expected, order) = complete(part.origin, &heads);
    let mut completed = None;
    if completed_at.is_none()
        && let Some(order) = order
    {
        complete_upload(db, key, part, &heads, &order, now)?;
        completed = Some(key.to_owned());
    }
    Ok(PartOutcome::Stored {
        received,
        expected,
        completed,
    })
}

impl StateDb {
    /// The stream plan of a completed upload: one stream, one batch per part.
    pub(crate) async fn carried_plan(
        &self,
        upload: &str,
    ) -> Result<Option<StreamPlan>, StateError> {
        let key = upload.to_owned();
        self.call(move |db| {
            let head: Option<(String, String, String, String, bool)> = db
                .query_row(
                    "SELECT origin, upload_id, kind, fields_json, deletions FROM carried_uploads
                     WHERE upload = ?1 AND completed_at_ms IS NOT NULL",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((origin, upload_id, kind, fields_json, deletions)) = head else {
                return Ok(None);
            };
            let parts: u64 = db.query_row(
                "SELECT COUNT(*) FROM carried_parts WHERE upload = ?1 AND ordinal IS NOT NULL",
                params![key],
                |r| r.get(0),
            )?;
            let stream = match CarriedOrigin::parse(&origin) {
                Some(CarriedOrigin::FlatsyncForward) => {
                    flatsync_flatfile::sanitize_stream_component(&upload_id)
                }
                _ => key.clone(),
            };
            Ok(Some(StreamPlan {
                stream,
                kind,
                source_ref: key.clone(),
                fields_json,
                page_size: 1,
                source: StreamSource::Carried { parts, deletions },
                sinks: None,
            }))
        })
        .await
    }

    /// The rows of part `ordinal` (from 0) of a completed upload, and how many there are.
    pub(crate) async fn carried_rows(
        &self,
        upload: &str,
        ordinal: u64,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        let key = upload.to_owned();
        self.call(move |db| {
            db.query_row(
                "SELECT ndjson, rows FROM carried_parts WHERE upload = ?1 AND ordinal = ?2",
                params![key, ordinal as i64],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
        })
        .await
    }
}

/// Whether the upload is known (`Ok(true)`), or why `part` contradicts the parts stored
/// before it (`Err`): another kind, origin or deletions flag, or another Portal 2.0 count.
fn contradiction(db: &mut Db, key: &str, part: &CarriedPart) -> sql::Result<Result<bool, String>> {
    let existing: Option<(String, String, bool)> = db
        .query_row(
            "SELECT kind, origin, deletions FROM carried_uploads WHERE upload = ?1",
            params![key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((kind, origin, deletions)) = &existing
        && (kind != &part.kind || origin != part.origin.as_str() || *deletions != part.deletions)
    {
        return Ok(Err(format!(
            "upload {}: this part says kind `{}`{}, earlier parts said kind `{kind}`{}",
            part.upload,
            part.kind,
            if part.deletions { " (deletions)" } else { "" },
            if *deletions { " (deletions)" } else { "" },
        )));
    }
    if let CarriedEnd::Count(count) = part.end {
        let other: Option<u64> = db
            .query_row(
                "SELECT part_count FROM carried_parts WHERE upload = ?1 AND part_count != ?2 LIMIT 1",
                params![key, count as i64],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )
            .optional()?;
        if let Some(other) = other {
            return Ok(Err(format!(
                "upload {}: this part says sequence.count {count}, earlier parts said {other}",
                part.upload
            )));
        }
    }
    Ok(Ok(existing.is_some()))
}

fn insert_upload(db: &mut Db, key: &str, part: &CarriedPart, now: i64) -> sql::Result<()> {
    db.execute(
        "INSERT INTO carried_uploads
         (upload, origin, upload_id, sender_event_id, kind, fields_json, deletions, first_received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key,
            part.origin.as_str(),
            part.upload,
            part.event_id,
            part.kind,
            serde_json::to_string(&part.fields).unwrap_or_else(|_| "[]".to_owned()),
            part.deletions,
            now
        ],
    )?;
    Ok(())
}

/// Stores the part unless it is there already; whether it was new.
fn insert_part(db: &mut Db, key: &str, part: &CarriedPart, now: i64) -> sql::Result<bool> {
    let (count, parts_of_batch, last) = match part.end {
        CarriedEnd::Count(count) => (Some(count), 0, false),
        CarriedEnd::Batch { parts, last } => (None, parts, last),
    };
    let inserted = db.execute(
        "INSERT INTO carried_parts
         (upload, position_major, position_minor, parts_of_batch, last, part_count, rows, ndjson, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
        params![
            key,
            part.position.0 as i64,
            part.position.1 as i64,
            parts_of_batch as i64,
            last,
            count.map(|c| c as i64),
            part.rows as i64,
            part.ndjson,
            now
        ],
    )?;
    Ok(inserted == 1)
}

fn part_heads(db: &mut Db, key: &str) -> sql::Result<Vec<PartHead>> {
    db.query_map(
        "SELECT position_major, position_minor, parts_of_batch, last, part_count, rows
         FROM carried_parts WHERE upload = ?1",
        params![key],
        |r| {
            Ok(PartHead {
                major: r.get::<_, i64>(0)? as u64,
                minor: r.get::<_, i64>(1)? as u64,
                parts_of_batch: r.get::<_, i64>(2)? as u64,
                last: r.get(3)?,
                part_count: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                rows: r.get::<_, i64>(5)? as u64,
            })
        },
    )
}

/// Numbers an upload's parts in delivery order and puts its event into the inbox, in the
/// transaction that stored its last part.
fn complete_upload(
    db: &mut Db,
    key: &str,
    part: &CarriedPart,
    heads: &[PartHead],
    order: &[PartKey],
    now: i64,
) -> sql::Result<()> {
    let mut rows = 0;
    for (ordinal, &(major, minor, parts_of_batch)) in order.iter().enumerate() {
        db.execute(
            "UPDATE carried_parts SET ordinal = ?5
             WHERE upload = ?1 AND position_major = ?2 AND position_minor = ?3 AND parts_of_batch = ?4",
            params![
                key,
                major as i64,
                minor as i64,
                parts_of_batch as i64,
                ordinal as i64
            ],
        )?;
        rows += heads
            .iter()
            .find(|h| h.major == major && h.minor == minor && h.parts_of_batch == parts_of_batch)
            .map_or(0, |h| h.rows);
    }
    let descriptor = serde_json::json!({
        "upload": {
            "origin": part.origin.as_str(),
            "id": part.upload,
            "eventId": part.event_id,
            "kind": part.kind,
            "deletions": part.deletions,
            "parts": order.len(),
            "rows": rows,
        }
    });
    insert_pending(
        db,
        key,
        CARRIED_KIND,
        part.origin.topic(),
        &serde_json::to_vec(&descriptor).expect("a JSON value serializes"),
        now,
    )?;
    db.execute(
        "UPDATE carried_uploads SET completed_at_ms = ?2 WHERE upload = ?1",
        params![key, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use flatsync_flatfile::{CarriedEnd, CarriedOrigin, CarriedPart};

    use super::{PartHead, PartKey, PartOutcome};
    use crate::state::testing::TestBackend;
    use crate::state::{InboxOutcome, InboxWrite, StateDb, StreamSource};

    /// A completion rule as simple as the sources' own: the parts at positions 1 to the count
    /// a part gave (or the position of the one marked last), in position order.
    fn in_position_order(
        _: CarriedOrigin,
        heads: &[PartHead],
    ) -> (Option<u64>, Option<Vec<PartKey>>) {
        let Some(count) = heads
            .iter()
            .filter_map(|h| h.part_count.or(h.last.then_some(h.major)))
            .max()
        else {
            return (None, None);
        };
        let order = (1..=count)
            .map(|i| {
                heads
                    .iter()
                    .find(|h| h.major == i)
                    .map(|h| (h.major, h.minor, h.parts_of_batch))
            })
            .collect();
        (Some(count), order)
    }

    fn part_write(part: CarriedPart) -> InboxWrite {
        InboxWrite::Part {
            key: format!("upload-{}", part.upload),
            part,
            complete: in_position_order,
        }
    }

    fn portal2(upload: &str, index: u64, count: u64) -> CarriedPart {
        CarriedPart {
            origin: CarriedOrigin::Portal2Upload,
            upload: upload.to_owned(),
            event_id: None,
            position: (index, 0),
            end: CarriedEnd::Count(count),
            kind: flatsync_flatfile::LEGACY_BATCH_KIND.to_owned(),
            fields: Vec::new(),
            deletions: false,
            ndjson: format!("{{\"id\":\"r{index}\",\"valid\":true,\"values\":{{}}}}\n")
                .into_bytes(),
            rows: index,
        }
    }

    /// Stores `parts` in one group; each part's outcome.
    async fn store(db: &StateDb, parts: Vec<CarriedPart>) -> Vec<PartOutcome> {
        let group = db
            .write_group(parts.into_iter().map(part_write).collect())
            .await
            .expect("committed");
        group
            .into_iter()
            .map(|outcome| match outcome.expect("stored") {
                InboxOutcome::Part(outcome) => outcome,
                other => panic!("a part answered {other:?}"),
            })
            .collect()
    }

    fn stored(received: u64, expected: u64, completed: Option<&str>) -> PartOutcome {
        PartOutcome::Stored {
            received,
            expected: Some(expected),
            completed: completed.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn an_upload_completes_once_in_the_group_of_its_last_part() {
        for backend in TestBackend::both("carried_complete") {
            let db = backend.state();
            assert_eq!(
                store(&db, vec![portal2("b1", 3, 3), portal2("b1", 3, 3)]).await,
                [stored(1, 3, None), PartOutcome::Duplicate],
                "{backend:?}"
            );
            let refused = store(&db, vec![portal2("b1", 2, 4)]).await;
            assert!(
                matches!(&refused[..], [PartOutcome::Refused(reason)] if reason.contains("sequence.count 4")),
                "{backend:?}: {refused:?}"
            );
            assert!(
                db.pending_events().await.unwrap().is_empty(),
                "{backend:?}: not before every part is in"
            );
            // The last part reads the one stored before it in the same group.
            assert_eq!(
                store(&db, vec![portal2("b1", 1, 3), portal2("b1", 2, 3)]).await,
                [stored(2, 3, None), stored(3, 3, Some("upload-b1"))],
                "{backend:?}"
            );
            assert_eq!(
                store(&db, vec![portal2("b1", 2, 3)]).await,
                [PartOutcome::Duplicate],
                "{backend:?}: a retry after the completion changes nothing"
            );
            assert_eq!(db.pending_events().await.unwrap(), ["upload-b1"]);
            let event = db
                .event("upload-b1")
                .await
                .unwrap()
                .expect("the upload's event");
            let descriptor: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
            assert_eq!(
                (
                    &descriptor["upload"]["parts"],
                    &descriptor["upload"]["rows"]
                ),
                (&serde_json::json!(3), &serde_json::json!(6)),
                "{backend:?}: {descriptor}"
            );
            let plan = db
                .carried_plan("upload-b1")
                .await
                .unwrap()
                .expect("planned");
            assert_eq!(
                (plan.stream.as_str(), plan.source),
                (
                    "upload-b1",
                    StreamSource::Carried {
                        parts: 3,
                        deletions: false
                    }
                ),
                "{backend:?}"
            );
            for (ordinal, index) in [(0, 1), (1, 2), (2, 3)] {
                let (ndjson, rows) = db
                    .carried_rows("upload-b1", ordinal)
                    .await
                    .unwrap()
                    .expect("a numbered part");
                assert!(
                    String::from_utf8(ndjson)
                        .unwrap()
                        .contains(&format!("r{index}")),
                    "{backend:?}: ordinal {ordinal} delivers part {index}"
                );
                assert_eq!(rows, index, "{backend:?}");
            }
            assert!(db.carried_rows("upload-b1", 3).await.unwrap().is_none());
            assert!(db.carried_plan("upload-b2").await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_forwarded_upload_keeps_its_deletions_flag_and_stream_name() {
        for backend in TestBackend::both("carried_deletions") {
            let db = backend.state();
            let part = CarriedPart {
                origin: CarriedOrigin::FlatsyncForward,
                upload: "contacts-e1".to_owned(),
                event_id: Some("e1".to_owned()),
                position: (1, 0),
                end: CarriedEnd::Batch {
                    parts: 1,
                    last: true,
                },
                kind: "contacts".to_owned(),
                fields: vec!["email".to_owned()],
                deletions: true,
                ndjson: b"{\"id\":\"r\",\"valid\":true,\"values\":{}}\n".to_vec(),
                rows: 1,
            };
            let mut not_deletions = part.clone();
            not_deletions.position = (2, 0);
            not_deletions.deletions = false;
            let outcomes = store(&db, vec![part, not_deletions]).await;
            assert!(
                matches!(
                    &outcomes[..],
                    [
                        PartOutcome::Stored {
                            completed: Some(_),
                            ..
                        },
                        PartOutcome::Refused(_)
                    ]
                ),
                "{backend:?}: {outcomes:?}"
            );
            let plan = db
                .carried_plan("upload-contacts-e1")
                .await
                .unwrap()
                .expect("planned");
            assert_eq!(
                (plan.stream.as_str(), plan.kind.as_str(), plan.source),
                (
                    "contacts-e1",
                    "contacts",
                    StreamSource::Carried {
                        parts: 1,
                        deletions: true
                    }
                ),
                "{backend:?}"
            );
        }
    }

    /// Stores the last two parts of a `count`-part upload at once, through two handles (two
    /// daemons); every part before them first. Checks the upload completed once.
    async fn race(backend: &TestBackend, handles: [&StateDb; 2], upload: &str, count: u64) {
        for index in 1..count - 1 {
            store(handles[0], vec![portal2(upload, index, count)]).await;
        }
        let (a, b) = tokio::join!(
            store(handles[0], vec![portal2(upload, count - 1, count)]),
            store(handles[1], vec![portal2(upload, count, count)]),
        );
        let completed: Vec<_> = a
            .iter()
            .chain(&b)
            .filter_map(|outcome| match outcome {
                PartOutcome::Stored { completed, .. } => completed.clone(),
                other => panic!("{backend:?}: {other:?}"),
            })
            .collect();
        let key = format!("upload-{upload}");
        assert_eq!(completed, [key.as_str()], "{backend:?}: {a:?} {b:?}");
        let plan = handles[1]
            .carried_plan(&key)
            .await
            .unwrap()
            .expect("planned");
        assert_eq!(
            plan.source,
            StreamSource::Carried {
                parts: count,
                deletions: false
            },
            "{backend:?}"
        );
    }

    #[tokio::test]
    async fn two_handles_storing_the_last_two_parts_at_once_complete_the_upload_once() {
        for backend in TestBackend::both("carried_race") {
            let (first, second) = (backend.state(), backend.state());
            for n in 0..12 {
                race(&backend, [&first, &second], &format!("race{n}"), 3).await;
                // Both parts are the upload's first: they race on its row too.
                race(&backend, [&second, &first], &format!("new{n}"), 2).await;
            }
            assert_eq!(first.pending_events().await.unwrap().len(), 24);
        }
    }
}
