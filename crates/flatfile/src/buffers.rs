//! Page-sized buffers given back when a page is done with, for the stream's next page.
//!
//! A legacy page is about 500 KB of body and 250 KB of lines. The daemon fixes glibc's mmap
//! threshold at 128 KiB (so freed pages go back to the system and memory stays flat), which
//! maps every such buffer on its own: each 4 KiB written to a fresh one is a page fault and a
//! zeroed page, and each free an unmap. Reusing a stream's buffers removed about 60 % of the
//! daemon's page faults and 7-10 % of its CPU for legacy pages (`BENCHMARKS.md`). A stream's
//! buffers are few (its pages in flight and waiting), so keeping the ones it has finished
//! with, and no more than it held at once, costs little memory, and that memory goes back
//! when the stream ends and its [`Buffers`] is dropped.
//!
//! Platform records pages do not take their lines from here: their 2 MB of lines per
//! 10,000 records, kept, raised peak memory by 2.5 MiB and saved no measurable CPU.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;

/// Buffers smaller than this are left to the allocator, which serves them from its heaps.
const SMALLEST_KEPT: usize = 64 << 10;
/// Buffers larger than this are freed: a rare whole Platform body should not stay behind.
const LARGEST_KEPT: usize = 16 << 20;
/// At most this many buffers are kept: twice the default pages in flight, each page's body
/// and lines.
const KEPT_AT_MOST: usize = 16;

/// A stream's spare buffers. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    spare: Arc<Mutex<Spare>>,
}

#[derive(Debug, Default)]
struct Spare {
    free: Vec<Vec<u8>>,
    /// Buffers [`Buffers::take`] handed out and not given back yet. Only that many are taken
    /// back, so a buffer that never came from here (a Platform page's lines, say) is freed
    /// and the spares never outnumber what the stream held at once.
    lent: usize,
}

impl Buffers {
    /// An empty buffer with room for at least `capacity` bytes: the smallest spare that holds
    /// that much, else the largest spare, grown; a new one only when none is spare. So a
    /// stream never holds more buffers than it had in use at once.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity < SMALLEST_KEPT {
            return Vec::with_capacity(capacity);
        }
        // Rounded up, so the next page, a few bytes longer (its ids count up), still fits.
        let capacity = capacity.next_multiple_of(SMALLEST_KEPT);
        let taken = {
            let mut spare = self.lock();
            spare.lent += 1;
            let fits = spare
                .free
                .iter()
                .enumerate()
                .filter(|(_, buffer)| buffer.capacity() >= capacity)
                .min_by_key(|(_, buffer)| buffer.capacity())
                .map(|(at, _)| at);
            let largest = || {
                spare
                    .free
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, buffer)| buffer.capacity())
                    .map(|(at, _)| at)
            };
            fits.or_else(largest).map(|at| spare.free.swap_remove(at))
        };
        let mut buffer = taken.unwrap_or_default();
        buffer.clear();
        buffer.reserve(capacity);
        buffer
    }

    /// Keeps `buffer` for a later [`take`](Self::take) if it stands for one taken from here,
    /// unless it is small or very large.
    pub fn give(&self, buffer: Vec<u8>) {
        give_to(&self.spare, buffer);
    }

    /// `buffer` as [`Bytes`] that give the buffer back here once their last clone is dropped,
    /// on whichever thread that is; after this `Buffers` and all its clones are gone, the
    /// buffer is simply freed.
    pub fn share(&self, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < SMALLEST_KEPT {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Returning {
            buffer,
            home: Arc::downgrade(&self.spare),
        })
    }

    /// How many buffers are kept now.
    pub fn spare_count(&self) -> usize {
        self.lock().free.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn give_to(spare: &Mutex<Spare>, buffer: Vec<u8>) {
    if !(SMALLEST_KEPT..=LARGEST_KEPT).contains(&buffer.capacity()) {
        return;
    }
    let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
    if spare.lent == 0 {
        return;
    }
    spare.lent -= 1;
    if spare.free.len() < KEPT_AT_MOST {
        spare.free.push(buffer);
    }
}

/// The owner behind [`Buffers::share`]'s bytes.
struct Returning {
    buffer: Vec<u8>,
    home: Weak<Mutex<Spare>>,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            give_to(&home, std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Buffers, KEPT_AT_MOST, SMALLEST_KEPT};

    const PAGE: usize = 500 << 10;

    #[test]
    fn a_shared_buffer_comes_back_when_its_last_clone_is_dropped() {
        let buffers = Buffers::default();
        let mut page = buffers.take(PAGE);
        page.extend_from_slice(b"{\"id\":\"r1\"}\n");
        let address = page.as_ptr();
        let bytes = buffers.share(page);
        let clone = bytes.clone();
        assert_eq!(&clone[..], b"{\"id\":\"r1\"}\n");
        drop(bytes);
        assert_eq!(buffers.spare_count(), 0, "a clone still reads the buffer");
        drop(clone);
        assert_eq!(buffers.spare_count(), 1);
        let again = buffers.take(PAGE - 1);
        assert!(again.is_empty(), "a buffer taken again starts empty");
        assert_eq!(again.as_ptr(), address, "the same allocation is used again");
        assert_eq!(buffers.spare_count(), 0);
    }

    #[test]
    fn take_picks_the_smallest_spare_that_fits_else_grows_the_largest() {
        let buffers = Buffers::default();
        let taken: Vec<Vec<u8>> = [PAGE, 2 * PAGE, 4 * PAGE]
            .into_iter()
            .map(|capacity| buffers.take(capacity))
            .collect();
        for buffer in taken {
            buffers.give(buffer);
        }
        assert_eq!(buffers.spare_count(), 3);
        let lines = buffers.take(PAGE + SMALLEST_KEPT);
        assert!((2 * PAGE..4 * PAGE).contains(&lines.capacity()));
        assert_eq!(buffers.spare_count(), 2);
        let larger = buffers.take(8 * PAGE);
        assert!(larger.capacity() >= 8 * PAGE);
        assert_eq!(buffers.spare_count(), 1, "the largest spare was grown");
    }

    #[test]
    fn only_buffers_lent_from_here_are_kept() {
        let buffers = Buffers::default();
        buffers.give(Vec::with_capacity(PAGE));
        drop(buffers.share(Vec::with_capacity(PAGE)));
        assert_eq!(buffers.spare_count(), 0, "none was lent");
        let small = buffers.take(SMALLEST_KEPT - 1);
        buffers.give(small);
        assert_eq!(
            buffers.spare_count(),
            0,
            "small buffers are the allocator's"
        );
        let lent: Vec<Vec<u8>> = (0..KEPT_AT_MOST + 3).map(|_| buffers.take(PAGE)).collect();
        for buffer in lent {
            buffers.give(buffer);
        }
        assert_eq!(buffers.spare_count(), KEPT_AT_MOST);
    }

    #[test]
    fn bytes_outliving_their_buffers_free_the_buffer() {
        let buffers = Buffers::default();
        let bytes = buffers.share(buffers.take(PAGE));
        drop(buffers);
        assert!(bytes.is_empty());
        drop(bytes);
    }
}
