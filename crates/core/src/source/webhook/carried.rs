//! Uploads whose rows travel in the webhook bodies (Portal 2.0 `batch.upload`, batches of
//! another flatsync's `http-forward` sink): each request's part is stored before it is
//! answered 2xx, and when the last missing part arrives the upload becomes one inbox event
//! whose single stream delivers the parts in order, one batch per part.
//!
//! Portal 2.0 numbers its requests `sequence {index, count}`; a forwarded stream numbers its
//! batches `seq` and splits each into `parts`, the final one marked `last`. A sender that
//! retries a request sends the same part again, which is stored once.

use flatsync_flatfile::{CarriedEnd, CarriedOrigin, CarriedPart, portal2_stream};
use rusqlite::{OptionalExtension, params};

use crate::state::{CARRIED_KIND, StateDb, StateError, StreamPlan, StreamSource, now_ms};

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

/// The key of an upload in the state database, and the id of its inbox event.
pub(crate) fn upload_key(part: &CarriedPart) -> String {
    match part.origin {
        CarriedOrigin::Portal2Upload => portal2_stream(&part.upload),
        CarriedOrigin::FlatsyncForward => format!(
            "forwarded-{}",
            flatsync_flatfile::sanitize_stream_component(&part.upload)
        ),
    }
}

/// A stored part's place, as the completeness check reads it.
struct PartHead {
    major: u64,
    minor: u64,
    parts_of_batch: u64,
    last: bool,
    part_count: Option<u64>,
    rows: u64,
}

impl StateDb {
    /// Stores one part in one transaction; when it completes the upload, also numbers the parts
    /// in delivery order and puts the upload's event into the inbox.
    pub(crate) async fn store_carried_part(
        &self,
        part: CarriedPart,
    ) -> Result<PartOutcome, StateError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let key = upload_key(&part);
            let now = now_ms();
            let existing: Option<(String, String, bool)> = tx
                .query_row(
                    "SELECT kind, origin, deletions FROM carried_uploads WHERE upload = ?1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((kind, origin, deletions)) = &existing
                && (kind != &part.kind
                    || origin != part.origin.as_str()
                    || *deletions != part.deletions)
            {
                return Ok(PartOutcome::Refused(format!(
                    "upload {}: this part says kind `{}`{}, earlier parts said kind `{kind}`{}",
                    part.upload,
                    part.kind,
                    if part.deletions { " (deletions)" } else { "" },
                    if *deletions { " (deletions)" } else { "" },
                )));
            }
            let (count, parts_of_batch, last) = match part.end {
                CarriedEnd::Count(count) => (Some(count), 0, false),
                CarriedEnd::Batch { parts, last } => (None, parts, last),
            };
            if let Some(count) = count {
                let other: Option<u64> = tx
                    .query_row(
                        "SELECT part_count FROM carried_parts WHERE upload = ?1 AND part_count != ?2 LIMIT 1",
                        params![key, count as i64],
                        |r| r.get::<_, i64>(0).map(|n| n as u64),
                    )
                    .optional()?;
                if let Some(other) = other {
                    return Ok(PartOutcome::Refused(format!(
                        "upload {}: this part says sequence.count {count}, earlier parts said {other}",
                        part.upload
                    )));
                }
            }
            if existing.is_none() {
                tx.execute(
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
            }
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO carried_parts
                 (upload, position_major, position_minor, parts_of_batch, last, part_count, rows, ndjson, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
            if inserted == 0 {
                tx.commit()?;
                return Ok(PartOutcome::Duplicate);
            }
            let completed_before: bool = tx.query_row(
                "SELECT completed_at_ms IS NOT NULL FROM carried_uploads WHERE upload = ?1",
                [&key],
                |r| r.get(0),
            )?;
            let heads: Vec<PartHead> = {
                let mut stmt = tx.prepare(
                    "SELECT position_major, position_minor, parts_of_batch, last, part_count, rows
                     FROM carried_parts WHERE upload = ?1",
                )?;
                stmt.query_map([&key], |r| {
                    Ok(PartHead {
                        major: r.get::<_, i64>(0)? as u64,
                        minor: r.get::<_, i64>(1)? as u64,
                        parts_of_batch: r.get::<_, i64>(2)? as u64,
                        last: r.get(3)?,
                        part_count: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                        rows: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            let received = heads.len() as u64;
            let (expected, order) = delivery_order(part.origin, &heads);
            let mut completed = None;
            if !completed_before && let Some(order) = order {
                complete_upload(&tx, &key, &part, &heads, &order, now)?;
                completed = Some(key.clone());
            }
            tx.commit()?;
            Ok(PartOutcome::Stored {
                received,
                expected,
                completed,
            })
        })
        .await
    }

    /// The stream plan of a completed upload: one stream, one batch per part.
    pub(crate) async fn carried_plan(
        &self,
        upload: &str,
    ) -> Result<Option<StreamPlan>, StateError> {
        let key = upload.to_owned();
        self.call(move |c| {
            let head: Option<(String, String, String, String, bool)> = c
                .query_row(
                    "SELECT origin, upload_id, kind, fields_json, deletions FROM carried_uploads
                     WHERE upload = ?1 AND completed_at_ms IS NOT NULL",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((origin, upload_id, kind, fields_json, deletions)) = head else {
                return Ok(None);
            };
            let parts: i64 = c.query_row(
                "SELECT COUNT(*) FROM carried_parts WHERE upload = ?1 AND ordinal IS NOT NULL",
                [&key],
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
                source: StreamSource::Carried {
                    parts: parts as u64,
                    deletions,
                },
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
        self.call(move |c| {
            c.query_row(
                "SELECT ndjson, rows FROM carried_parts WHERE upload = ?1 AND ordinal = ?2",
                params![key, ordinal as i64],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
        })
        .await
    }
}

/// Numbers an upload's parts in delivery order and puts its event into the inbox, in the
/// transaction that stored its last part.
fn complete_upload(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    part: &CarriedPart,
    heads: &[PartHead],
    order: &[PartKey],
    now: i64,
) -> rusqlite::Result<()> {
    let mut rows = 0;
    for (ordinal, &(major, minor, parts_of_batch)) in order.iter().enumerate() {
        tx.execute(
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
    tx.execute(
        "INSERT OR IGNORE INTO inbox
         (event_id, kind, topic, body, received_at_ms, status, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?5)",
        params![
            key,
            CARRIED_KIND,
            part.origin.topic(),
            serde_json::to_vec(&descriptor).expect("a JSON value serializes"),
            now
        ],
    )?;
    tx.execute(
        "UPDATE carried_uploads SET completed_at_ms = ?2 WHERE upload = ?1",
        params![key, now],
    )?;
    Ok(())
}

/// A stored part's key: `(position_major, position_minor, parts_of_batch)`.
type PartKey = (u64, u64, u64);

/// The parts an upload has (once known) and, when every one of them is stored, the order to
/// deliver them in.
///
/// A forwarded batch that was re-sent after the sender changed its `batch_size` may be stored
/// split two ways; each batch is delivered from one complete split (the finer one), so a
/// change of numbering can repeat rows but never lose or mix them.
fn delivery_order(
    origin: CarriedOrigin,
    heads: &[PartHead],
) -> (Option<u64>, Option<Vec<PartKey>>) {
    match origin {
        CarriedOrigin::Portal2Upload => {
            let Some(count) = heads.iter().filter_map(|h| h.part_count).max() else {
                return (None, None);
            };
            let complete = (1..=count).all(|i| heads.iter().any(|h| h.major == i));
            let order = complete.then(|| (1..=count).map(|i| (i, 0, 0)).collect());
            (Some(count), order)
        }
        CarriedOrigin::FlatsyncForward => {
            let Some(last_seq) = heads.iter().filter(|h| h.last).map(|h| h.major).max() else {
                return (None, None);
            };
            let mut order = Vec::new();
            for seq in 0..=last_seq {
                let mut splits: Vec<u64> = heads
                    .iter()
                    .filter(|h| h.major == seq)
                    .map(|h| h.parts_of_batch)
                    .collect();
                splits.sort_unstable();
                splits.dedup();
                let complete_split = splits.into_iter().rev().find(|&parts| {
                    (0..parts).all(|p| {
                        heads
                            .iter()
                            .any(|h| h.major == seq && h.parts_of_batch == parts && h.minor == p)
                    })
                });
                match complete_split {
                    Some(parts) => order.extend((0..parts).map(|p| (seq, p, parts))),
                    None => return (None, None),
                }
            }
            (Some(order.len() as u64), Some(order))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(seq: u64, part: u64, parts: u64, last: bool) -> CarriedPart {
        CarriedPart {
            origin: CarriedOrigin::FlatsyncForward,
            upload: "contacts-e1".to_owned(),
            event_id: Some("e1".to_owned()),
            position: (seq, part),
            end: CarriedEnd::Batch { parts, last },
            kind: "contacts".to_owned(),
            fields: vec!["email".to_owned()],
            deletions: false,
            ndjson: format!("{{\"id\":\"r{seq}.{part}\",\"valid\":true,\"values\":{{}}}}\n")
                .into_bytes(),
            rows: 1,
        }
    }

    fn portal2(index: u64, count: u64) -> CarriedPart {
        CarriedPart {
            origin: CarriedOrigin::Portal2Upload,
            upload: "b1".to_owned(),
            event_id: None,
            position: (index, 0),
            end: CarriedEnd::Count(count),
            kind: flatsync_flatfile::LEGACY_BATCH_KIND.to_owned(),
            fields: Vec::new(),
            deletions: false,
            ndjson: b"{\"id\":\"x\",\"valid\":true,\"values\":{}}\n".to_vec(),
            rows: 1,
        }
    }

    #[tokio::test]
    async fn portal_2_parts_complete_in_any_order_and_repeat_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        let stored = |received, completed: Option<&str>| PartOutcome::Stored {
            received,
            expected: Some(3),
            completed: completed.map(str::to_owned),
        };
        assert_eq!(
            db.store_carried_part(portal2(3, 3)).await.unwrap(),
            stored(1, None)
        );
        assert_eq!(
            db.store_carried_part(portal2(3, 3)).await.unwrap(),
            PartOutcome::Duplicate
        );
        assert_eq!(
            db.store_carried_part(portal2(1, 3)).await.unwrap(),
            stored(2, None)
        );
        assert!(
            db.pending_events().await.unwrap().is_empty(),
            "not before every part is in"
        );
        assert!(matches!(
            db.store_carried_part(portal2(2, 4)).await.unwrap(),
            PartOutcome::Refused(reason) if reason.contains("sequence.count 4")
        ));
        assert_eq!(
            db.store_carried_part(portal2(2, 3)).await.unwrap(),
            stored(3, Some("upload-b1"))
        );
        assert_eq!(
            db.pending_events().await.unwrap(),
            vec!["upload-b1".to_owned()]
        );
        let plan = db
            .carried_plan("upload-b1")
            .await
            .unwrap()
            .expect("planned");
        assert_eq!(
            plan.source,
            StreamSource::Carried {
                parts: 3,
                deletions: false
            }
        );
        assert_eq!(plan.stream, "upload-b1");
        for ordinal in 0..3 {
            assert!(
                db.carried_rows("upload-b1", ordinal)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(db.carried_rows("upload-b1", 3).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_forwarded_stream_completes_with_its_last_part_and_every_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        for p in [forwarded(1, 1, 2, true), forwarded(0, 0, 1, false)] {
            assert!(matches!(
                db.store_carried_part(p).await.unwrap(),
                PartOutcome::Stored {
                    completed: None,
                    ..
                }
            ));
        }
        // Batch 1 re-sent split in three after a batch_size change: the finer split is used
        // once complete.
        for p in [forwarded(1, 0, 3, false), forwarded(1, 2, 3, true)] {
            assert!(matches!(
                db.store_carried_part(p).await.unwrap(),
                PartOutcome::Stored {
                    completed: None,
                    ..
                }
            ));
        }
        let outcome = db
            .store_carried_part(forwarded(1, 1, 3, false))
            .await
            .unwrap();
        assert!(
            matches!(&outcome, PartOutcome::Stored { completed: Some(id), expected: Some(4), .. } if id == "forwarded-contacts-e1"),
            "{outcome:?}"
        );
        let plan = db
            .carried_plan("forwarded-contacts-e1")
            .await
            .unwrap()
            .expect("planned");
        assert_eq!(plan.stream, "contacts-e1");
        assert_eq!(plan.kind, "contacts");
        let mut ids = Vec::new();
        for ordinal in 0..4 {
            let (rows, _) = db
                .carried_rows("forwarded-contacts-e1", ordinal)
                .await
                .unwrap()
                .expect("part");
            ids.push(String::from_utf8(rows).unwrap());
        }
        assert!(
            ids[0].contains("r0.0") && ids[1].contains("r1.0") && ids[3].contains("r1.2"),
            "{ids:?}"
        );
        let mut deletions = forwarded(2, 0, 1, true);
        deletions.deletions = true;
        assert!(matches!(
            db.store_carried_part(deletions).await.unwrap(),
            PartOutcome::Refused(_)
        ));
    }
}
