//! glibc's allocator tuned for a daemon that handles page bodies of several megabytes.
//!
//! glibc serves an allocation at or above its mmap threshold (128 KiB at first) with its own
//! mapping and unmaps it on free. But the threshold is dynamic: after the first such block is
//! freed it rises to that block's size (up to 32 MiB), so every later page body and batch of
//! that size comes from the heap arenas instead, and a freed arena chunk stays resident (only
//! the top of the main heap is trimmed). With 6.7 MB Platform pages on two tokio workers the
//! daemon's peak RSS then grew to 64 MiB and stayed there. Setting the threshold explicitly
//! turns the dynamic adjustment off: each large buffer is mapped and returned on free, at the
//! cost of a page fault per 4 KiB it touches (about 2 ms of a 7 MB body).

/// Large buffers from here up are mapped and unmapped on their own: glibc's starting value,
/// kept fixed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's mmap threshold, unless `MALLOC_MMAP_THRESHOLD_` in the environment already
/// set it (glibc reads that at start; the operator's value wins). Call before any thread is
/// started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    #[allow(
        unsafe_code,
        reason = "mallopt is the only way to fix glibc's mmap threshold from inside the process"
    )]
    // SAFETY: mallopt only changes allocator parameters; it takes plain integers, and is called
    // from main before any other thread exists, so no allocation races with the change.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if set == 0 {
        // Nothing changes but memory use; the log is not set up yet.
        eprintln!("warning: could not set glibc's mmap threshold; peak memory may be higher");
    }
}

/// Other allocators (musl, macOS) have no dynamic threshold to turn off.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune() {}
