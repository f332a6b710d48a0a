//! glibc's allocator tuned for a daemon that handles page bodies of several megabytes.
//!
//! glibc serves an allocation at or above its mmap threshold (128 KiB at first) with its own
//! mapping and unmaps it on free. But the threshold is dynamic: after the first such block is
//! freed it rises to that block's size (up to 32 MiB), so every later page body and batch of
//! that size comes from the heap arenas instead, and a freed arena chunk stays resident (only
//! the top of the main heap is trimmed). With 6.7 MB Platform pages on two tokio workers the
//! daemon's peak RSS then grew to 64 MiB and stayed there. Setting the threshold explicitly
//! turns the dynamic adjustment off: each large buffer is mapped and returned on free, at the
//! cost of a page fault per 4 KiB it touches (about 2 ms of a 7 MB body). Legacy streams,
//! whose pages are smaller and many, reuse their page buffers instead
//! (`flatsync_flatfile::Buffers`); a fixed threshold of 512 KiB would have spared the HTTP
//! client's read buffers too, but it raised Platform peak RSS by 2.5-3 MiB.
//!
//! Those read buffers get a slot of their own instead ([`ReadBufferSlot`], the global
//! allocator): hyper gives a connection a fresh one of its largest size for nearly every page
//! (it looks for the next answer while the last chunk of a body is still being read, so the
//! buffer cannot be reused in place), and each was mapped, faulted in 4 KiB at a time and
//! unmapped. One freed buffer is now kept for the next.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Large buffers from here up are mapped and unmapped on their own: glibc's starting value,
/// kept fixed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Heap arenas at most. glibc gives each new thread an arena of its own, up to eight per core,
/// and the state database's calls run on whichever blocking thread is free: what a batch
/// allocated on one thread and freed on another stays resident in each arena. Draining a
/// backlog of 100,000 events the daemon's peak RSS was 40.7 MiB with the default arenas,
/// 25.3 MiB with two and 22.2 MiB with one (16.1 MiB idle). One arena cost nothing measurable:
/// 1M-row imports, intake at 32 connections and the drain ran as fast as with two.
const ARENA_MAX: i32 = 1;

/// Fixes glibc's mmap threshold and caps its arenas, each unless the environment already set
/// it (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`: glibc reads those at start; the
/// operator's value wins). Call before any thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune() {
    for (variable, parameter, value, what) in [
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
            "mmap threshold",
        ),
        (
            "MALLOC_ARENA_MAX",
            libc::M_ARENA_MAX,
            ARENA_MAX,
            "arena count",
        ),
    ] {
        if std::env::var_os(variable).is_some() {
            continue;
        }
        #[allow(
            unsafe_code,
            reason = "mallopt is the only way to tune glibc's allocator from inside the process"
        )]
        // SAFETY: mallopt only changes allocator parameters; it takes plain integers, and is
        // called from main before any other thread exists, so no allocation races with the
        // change.
        let set = unsafe { libc::mallopt(parameter, value) };
        if set == 0 {
            // Nothing changes but memory use; the log is not set up yet.
            eprintln!("warning: could not set glibc's {what}; peak memory may be higher");
        }
    }
}

/// Other allocators (musl, macOS) have no dynamic threshold to turn off.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune() {}

/// The size hyper gives a connection's read buffer once bodies have filled it (its
/// `DEFAULT_MAX_BUFFER_SIZE`, which reqwest leaves as it is).
const READ_BUFFER: usize = 8192 + 4096 * 100;

/// Allocations from here up to [`READ_BUFFER`] are served as read buffers.
const READ_BUFFER_FROM: usize = READ_BUFFER - 4096;

/// The global allocator: the system's, except that one freed block of the HTTP client's read
/// buffer size is kept and handed to the next allocation of that size.
///
/// In a million-row legacy import hyper allocates such a buffer for 964 pages in 1,000 (counted
/// with `strace -e mmap`), and the kernel faulted each in as the page arrived: a fifth of the
/// daemon's CPU. Kept, the block's pages stay mapped and are written over. The price is memory:
/// a connection waiting for its next answer may hold a reused block, all of it resident, where
/// a fresh one had nothing resident yet (peak RSS 1-2.5 MiB higher in `flatsync-bench`). So one
/// block is kept, not a pool: the connections allocate and free one after another.
pub(crate) struct ReadBufferSlot {
    /// A freed block of layout [`READ_BUFFER_LAYOUT`], or null.
    kept: AtomicPtr<u8>,
}

impl ReadBufferSlot {
    pub(crate) const fn new() -> Self {
        Self {
            kept: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

/// Whether `layout` is served as a read buffer: [`READ_BUFFER_LAYOUT`] fits it.
fn is_read_buffer(layout: Layout) -> bool {
    (READ_BUFFER_FROM..=READ_BUFFER).contains(&layout.size())
        && layout.align() <= READ_BUFFER_LAYOUT.align()
}

/// What every read buffer is allocated as, so that any block kept fits any request. 16 is
/// malloc's own alignment on 64-bit targets, so `System` still calls plain `malloc`.
const READ_BUFFER_LAYOUT: Layout = match Layout::from_size_align(READ_BUFFER, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("READ_BUFFER is a valid size for an alignment of 16"),
};

#[allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; every block still comes from System"
)]
// SAFETY: every block handed out is either fresh from `System` or one `System` allocated with
// `READ_BUFFER_LAYOUT` and that was freed to us, taken out of the slot by an atomic swap, so no
// two callers ever hold it. A read buffer request fits that layout (`is_read_buffer`), and a
// read buffer goes back to `System` with that same layout.
unsafe impl GlobalAlloc for ReadBufferSlot {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_read_buffer(layout) {
            // SAFETY: the caller's contract (a non-zero size) is passed on unchanged.
            return unsafe { System.alloc(layout) };
        }
        let kept = self.kept.swap(ptr::null_mut(), Ordering::Acquire);
        if !kept.is_null() {
            return kept;
        }
        // SAFETY: a constant, non-zero layout.
        unsafe { System.alloc(READ_BUFFER_LAYOUT) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_read_buffer(layout) {
            // SAFETY: as in `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as in `alloc`; a kept block holds its last user's bytes, so it is cleared.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !is_read_buffer(layout) {
            // SAFETY: `block` came from `System` with `layout` (`alloc` and `realloc` below).
            return unsafe { System.dealloc(block, layout) };
        }
        if self
            .kept
            .compare_exchange(ptr::null_mut(), block, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: every read buffer was allocated with `READ_BUFFER_LAYOUT`.
            unsafe { System.dealloc(block, READ_BUFFER_LAYOUT) };
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size`, rounded up to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_read_buffer(layout), is_read_buffer(new_layout)) {
            // SAFETY: `block` came from `System` with `layout`; the rest is the caller's.
            (false, false) => return unsafe { System.realloc(block, layout, new_size) },
            // Every read buffer is `READ_BUFFER_LAYOUT`, which fits the new size too.
            (true, true) => return block,
            _ => {}
        }
        // SAFETY: a block of either kind moves through this allocator's own `alloc` and
        // `dealloc`, which know which layout each came with.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::Ordering;

    use super::{READ_BUFFER, ReadBufferSlot};

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("a valid layout")
    }

    #[allow(
        unsafe_code,
        reason = "the allocator's own calls, as Rust's collections make them"
    )]
    #[test]
    fn a_freed_read_buffer_is_handed_out_again_and_only_one_is_kept() {
        let slot = ReadBufferSlot::new();
        // SAFETY: each block is used within its layout and freed once, with that layout.
        unsafe {
            let first = slot.alloc(layout(READ_BUFFER));
            let second = slot.alloc(layout(READ_BUFFER));
            assert!(!first.is_null() && !second.is_null());
            assert_ne!(first, second, "two live buffers are two blocks");
            slot.dealloc(first, layout(READ_BUFFER));
            assert_eq!(
                slot.kept.load(Ordering::Relaxed),
                first,
                "the freed block is kept"
            );
            // The slot is full: this one goes back to the system.
            slot.dealloc(second, layout(READ_BUFFER));
            assert_eq!(
                slot.kept.load(Ordering::Relaxed),
                first,
                "one block is kept"
            );
            let again = slot.alloc(layout(READ_BUFFER - 100));
            assert_eq!(again, first, "the kept block serves any read buffer size");
            assert!(slot.kept.load(Ordering::Relaxed).is_null());
            let fresh = slot.alloc(layout(READ_BUFFER));
            assert_ne!(fresh, first, "nothing is kept while the block is in use");
            slot.dealloc(again, layout(READ_BUFFER - 100));
            slot.dealloc(fresh, layout(READ_BUFFER));
            // Other sizes neither take the kept block nor are kept.
            assert_eq!(slot.kept.load(Ordering::Relaxed), first);
            let other = slot.alloc(layout(READ_BUFFER + 1));
            assert_ne!(other, first);
            slot.dealloc(other, layout(READ_BUFFER + 1));
            let small = slot.alloc(layout(1000));
            slot.dealloc(small, layout(1000));
            assert_eq!(slot.kept.load(Ordering::Relaxed), first);
        }
    }

    #[allow(
        unsafe_code,
        reason = "the allocator's own calls, as Rust's collections make them"
    )]
    #[test]
    fn a_kept_block_comes_back_zeroed_when_asked_and_realloc_keeps_the_bytes() {
        let slot = ReadBufferSlot::new();
        // SAFETY: as above; every access stays within the block's current layout.
        unsafe {
            let dirty = slot.alloc(layout(READ_BUFFER));
            dirty.write_bytes(0xAB, READ_BUFFER);
            slot.dealloc(dirty, layout(READ_BUFFER));
            assert_eq!(slot.kept.load(Ordering::Relaxed), dirty);
            let zeroed = slot.alloc_zeroed(layout(READ_BUFFER));
            assert_eq!(zeroed, dirty, "the kept block is reused");
            assert!((0..READ_BUFFER).all(|at| *zeroed.add(at) == 0));
            // Into and out of the read buffer size, the bytes follow the block.
            for at in 0..1000 {
                *zeroed.add(at) = (at % 251) as u8;
            }
            let smaller = slot.realloc(zeroed, layout(READ_BUFFER), 1000);
            assert!((0..1000).all(|at| *smaller.add(at) == (at % 251) as u8));
            let larger = slot.realloc(smaller, layout(1000), READ_BUFFER);
            assert_eq!(
                larger, zeroed,
                "the block freed by the shrink is the one kept"
            );
            assert!((0..1000).all(|at| *larger.add(at) == (at % 251) as u8));
            let beyond = slot.realloc(larger, layout(READ_BUFFER), 2 * READ_BUFFER);
            assert!((0..1000).all(|at| *beyond.add(at) == (at % 251) as u8));
            slot.dealloc(beyond, layout(2 * READ_BUFFER));
        }
    }
}
