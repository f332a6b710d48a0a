//! How many bytes of success bodies the client holds at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The body of a success answer, read without its head.
///
/// hyper parses an answer's head in the connection's read buffer, and the header values point
/// into it. While the head lives, the buffer cannot take the body's next bytes in place, so
/// hyper allocates another one, about 400 KiB once a connection has carried large bodies: the
/// allocator maps a block that large afresh, and the kernel faults it in a page at a time as the
/// body arrives. Without the head, the buffer is reused once each chunk has been copied out and
/// dropped. A million legacy rows into CSV: 96,000 page faults in the daemon instead of
/// 127,000. (hyper still allocates afresh when it looks for the next answer while the last
/// chunk is being read: most of the faults left, which `flatsync`'s allocator spares.)
pub(super) struct BodyChunks(reqwest::Body);

impl BodyChunks {
    /// Takes the body and drops the rest of `response`: read what is needed of its head first.
    pub(super) fn new(response: reqwest::Response) -> BodyChunks {
        BodyChunks(reqwest::Body::from(response))
    }

    /// The next chunk of the body, `None` at its end; frames other than data are skipped.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, reqwest::Error> {
        while let Some(frame) = self.0.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// Shares a byte budget among the bodies being read and decoded, in KiB.
#[derive(Debug)]
pub(super) struct BodyGate {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// Bodies below this take no share.
    ungated: u64,
    /// The largest body read so far: the share of a body whose length is not announced.
    largest: AtomicU64,
}

/// A body's share of the budget, given back when the decoded body is dropped.
pub(super) type BodyPermit = Option<OwnedSemaphorePermit>;

impl BodyGate {
    /// A budget of `bytes` (at least 1 KiB), bodies under `ungated` bytes passing freely.
    pub(super) fn new(bytes: u64, ungated: u64) -> BodyGate {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        BodyGate {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            ungated,
            largest: AtomicU64::new(0),
        }
    }

    /// Waits until a body of `announced` bytes (its `Content-Length`, when sent) may be held.
    /// A body larger than the whole budget waits for all of it, so it is alone.
    pub(super) async fn admit(&self, announced: Option<u64>) -> BodyPermit {
        let bytes = announced.unwrap_or_else(|| self.largest.load(Ordering::Relaxed));
        if bytes < self.ungated {
            return None;
        }
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        // The semaphore is never closed, so acquiring only waits.
        Arc::clone(&self.kib).acquire_many_owned(kib).await.ok()
    }

    /// Learns the size of a body read whole.
    pub(super) fn read(&self, bytes: usize) {
        self.largest.fetch_max(bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::BodyGate;

    #[tokio::test]
    async fn bodies_share_the_budget_and_a_larger_one_waits_alone() {
        let gate = BodyGate::new(8 << 20, 256 << 10);
        assert!(gate.admit(Some(1_000)).await.is_none(), "small bodies pass");
        let first = gate.admit(Some(5 << 20)).await;
        assert!(first.is_some());
        let second = gate.admit(Some(5 << 20));
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut second)
                .await
                .is_err(),
            "two 5 MiB bodies do not fit 8 MiB"
        );
        drop(first);
        let second = second.await;
        assert!(second.is_some(), "admitted once the first is dropped");
        drop(second);
        // Larger than the budget: admitted with the whole of it.
        let huge = gate.admit(Some(100 << 20)).await;
        assert!(huge.is_some());
        assert_eq!(gate.kib.available_permits(), 0);
        drop(huge);
        // Not announced: taken at the largest size read so far.
        gate.read(3 << 20);
        let unannounced = gate.admit(None).await;
        assert_eq!(gate.kib.available_permits(), (8 << 10) - (3 << 10));
        drop(unannounced);
    }
}
