//! The rule that makes a sink exactly-once: per stream, skip what is held, apply the next
//! batch, refuse a gap.

use crate::{Batch, SinkError};

/// How far a sink holds one stream: what it made durable, or for a sink without a durable
/// position of its own, what it accepted in this process.
///
/// Build it from what the sink stored (a state file, a bookkeeping row) and ask
/// [`step`](Self::step) what to do with each batch. The position lives with the sink's data,
/// not here: after applying a batch, store its seq the same way the rows are stored.
///
/// ```
/// use flatsync_plugin_sdk::{Batch, BatchParts, BatchStep, StreamPosition};
///
/// let batch = |seq, last| Batch::from_parts(BatchParts {
///     stream: "contacts-ev1",
///     seq,
///     last,
///     ..BatchParts::default()
/// });
/// // Batches 0 and 1 are stored.
/// let held = StreamPosition::Applied(1);
/// assert_eq!(held.step(&batch(1, false))?, BatchStep::Skip); // a re-delivery
/// assert_eq!(held.step(&batch(2, false))?, BatchStep::Apply); // the next one
/// assert_eq!(held.step(&batch(1, true))?, BatchStep::Finish); // the last, sent again
///
/// let gap = held.step(&batch(3, false)).unwrap_err();
/// assert!(!gap.is_retry());
/// assert_eq!(
///     gap.message(),
///     "stream contacts-ev1: got batch seq 3 but the next expected is 2; batches are missing"
/// );
/// assert_eq!(StreamPosition::Complete.step(&batch(0, false))?, BatchStep::Skip);
/// # Ok::<(), flatsync_plugin_sdk::SinkError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamPosition {
    /// Nothing of the stream is held: it starts at seq 0.
    #[default]
    Start,
    /// Batches 0 to this seq are held, and the stream is not known to be finished.
    Applied(u64),
    /// Every batch is held and the stream's end is done (its file published, its completion
    /// committed): whatever comes is a re-delivery.
    Complete,
}

/// What a sink does with a batch, as [`StreamPosition::step`] decides.
#[must_use = "a batch is applied only on `Apply`; anything else must leave the destination alone"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStep {
    /// The sink holds this batch already: a re-delivery. Return `Ok` without touching the
    /// destination.
    Skip,
    /// The stream's last batch, which the sink holds, came again while the stream is not
    /// complete: the step after applying it (publishing a file, say) failed and the host is
    /// retrying. Finish the stream again; the rows are already in.
    Finish,
    /// The next batch: apply it, and record its seq with the rows.
    Apply,
}

impl StreamPosition {
    /// The position after the batches up to `applied_seq`, or the start for `None`.
    pub fn after(applied_seq: Option<u64>) -> Self {
        applied_seq.map_or(Self::Start, Self::Applied)
    }

    /// The seq of the next batch to apply; `None` once the stream is complete.
    pub fn next_seq(self) -> Option<u64> {
        match self {
            Self::Start => Some(0),
            // A position at the very last seq there is (only a damaged record holds one)
            // leaves nothing to apply.
            Self::Applied(seq) => seq.checked_add(1),
            Self::Complete => None,
        }
    }

    /// Decides what to do with `batch`. A seq beyond the next one is a gap, which the host
    /// never causes: a FATAL error naming the stream and both seqs.
    pub fn step(self, batch: &Batch<'_>) -> Result<BatchStep, SinkError> {
        let Some(next) = self.next_seq() else {
            return Ok(BatchStep::Skip);
        };
        let seq = batch.seq();
        if seq > next {
            return Err(SinkError::fatal(format!(
                "stream {}: got batch seq {seq} but the next expected is {next}; batches are missing",
                batch.stream()
            )));
        }
        if seq == next {
            return Ok(BatchStep::Apply);
        }
        if batch.is_last() && seq + 1 == next {
            return Ok(BatchStep::Finish);
        }
        Ok(BatchStep::Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchParts;

    fn step(position: StreamPosition, seq: u64, last: bool) -> Result<BatchStep, SinkError> {
        position.step(&Batch::from_parts(BatchParts {
            stream: "s",
            seq,
            last,
            ..BatchParts::default()
        }))
    }

    #[test]
    fn each_position_skips_what_it_holds_and_applies_the_next_batch() {
        use BatchStep::{Apply, Finish, Skip};
        let cases = [
            (StreamPosition::Start, 0, false, Apply),
            (StreamPosition::Start, 0, true, Apply),
            (StreamPosition::Applied(0), 0, false, Skip),
            (StreamPosition::Applied(0), 0, true, Finish),
            (StreamPosition::Applied(0), 1, true, Apply),
            (StreamPosition::Applied(4), 2, false, Skip),
            // Only the batch just applied can be the last one still to finish.
            (StreamPosition::Applied(4), 2, true, Skip),
            (StreamPosition::Applied(4), 4, true, Finish),
            (StreamPosition::Applied(4), 5, false, Apply),
            (StreamPosition::Complete, 0, false, Skip),
            (StreamPosition::Complete, 9, true, Skip),
            (StreamPosition::Applied(u64::MAX), u64::MAX, false, Skip),
        ];
        for (position, seq, last, want) in cases {
            assert_eq!(
                step(position, seq, last).expect("no gap"),
                want,
                "{position:?}, seq {seq}, last {last}"
            );
        }
    }

    #[test]
    fn a_gap_is_fatal_and_names_the_stream_and_both_seqs() {
        for (position, seq, next) in [
            (StreamPosition::Start, 1, 0),
            (StreamPosition::Applied(0), 2, 1),
        ] {
            let error = step(position, seq, false).expect_err("a gap");
            assert!(!error.is_retry());
            assert_eq!(
                error.message(),
                format!(
                    "stream s: got batch seq {seq} but the next expected is {next}; batches are missing"
                )
            );
        }
    }

    #[test]
    fn the_position_after_nothing_is_the_start() {
        assert_eq!(StreamPosition::after(None), StreamPosition::Start);
        assert_eq!(StreamPosition::after(Some(3)), StreamPosition::Applied(3));
        assert_eq!(StreamPosition::Applied(3).next_seq(), Some(4));
        assert_eq!(StreamPosition::Complete.next_seq(), None);
    }
}
