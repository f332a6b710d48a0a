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
