//! Uploads whose rows travel in the webhook bodies (Portal 2.0 `batch.upload`, batches of
//! another flatsync's `http-forward` sink): each request's part is stored before it is
//! answered 2xx, and when the last missing part arrives the upload becomes one inbox event
//! whose single stream delivers the parts in order, one batch per part.
//!
//! Portal 2.0 numbers its requests `sequence {index, count}`; a forwarded stream numbers its
//! batches `seq` and splits each into `parts`, the final one marked `last`. A sender that
//! retries a request sends the same part again, which is stored once.

use flatsync_flatfile::{CarriedOrigin, CarriedPart, portal2_stream};

use crate::state::{InboxWrite, PartHead, PartKey};

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

/// The write that stores one part; when it completes the upload, the upload's event enters
/// the inbox in the same transaction.
pub(crate) fn part_write(part: CarriedPart) -> InboxWrite {
    InboxWrite::Part {
        key: upload_key(&part),
        part,
        complete: delivery_order,
    }
}

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
    use crate::state::{InboxOutcome, PartOutcome, StateDb, StateError, StreamSource};
    use flatsync_flatfile::CarriedEnd;

    /// Stores one part in a group of its own.
    async fn store_part(db: &StateDb, part: CarriedPart) -> Result<PartOutcome, StateError> {
        let mut outcomes = db.write_group(vec![part_write(part)]).await?;
        match outcomes.pop().expect("one outcome per write")? {
            InboxOutcome::Part(outcome) => Ok(outcome),
            other => panic!("a part answered {other:?}"),
        }
    }

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
            store_part(&db, portal2(3, 3)).await.unwrap(),
            stored(1, None)
        );
        assert_eq!(
            store_part(&db, portal2(3, 3)).await.unwrap(),
            PartOutcome::Duplicate
        );
        assert_eq!(
            store_part(&db, portal2(1, 3)).await.unwrap(),
            stored(2, None)
        );
        assert!(
            db.pending_events().await.unwrap().is_empty(),
            "not before every part is in"
        );
        assert!(matches!(
            store_part(&db, portal2(2, 4)).await.unwrap(),
            PartOutcome::Refused(reason) if reason.contains("sequence.count 4")
        ));
        assert_eq!(
            store_part(&db, portal2(2, 3)).await.unwrap(),
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
                store_part(&db, p).await.unwrap(),
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
                store_part(&db, p).await.unwrap(),
                PartOutcome::Stored {
                    completed: None,
                    ..
                }
            ));
        }
        let outcome = store_part(&db, forwarded(1, 1, 3, false)).await.unwrap();
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
            store_part(&db, deletions).await.unwrap(),
            PartOutcome::Refused(_)
        ));
    }
}
