/* flatsync sink plugin ABI, version 1.2.
 *
 * Everything a sink plugin written in C (or any language that can export a C function) needs.
 * The Rust mirror is crates/plugin-api/src/lib.rs; both assert the same layout, and a test
 * compiles this header and compares every size, offset and constant with the Rust side.
 *
 * Rules of the boundary:
 * - The plugin exports one function, flatsync_plugin_entry, returning a pointer to a static
 *   flatsync_plugin descriptor that lives as long as the library.
 * - Every flatsync_str is borrowed for the duration of the one call that received it (descriptor
 *   strings: as long as the library). Whoever wants to keep bytes copies them.
 * - Nothing allocated on one side is freed on the other; the one plugin-owned object, the
 *   instance, is freed by the plugin's destroy.
 * - The host never calls one instance from two threads at once, and all calls on an instance come
 *   from the same thread. Different instances run in parallel, so plugin globals must be
 *   thread-safe.
 * - Errors: call err->set(err->ctx, message) (any number of times, the last wins; the host
 *   copies the bytes) and return FLATSYNC_STATUS_RETRY or FLATSYNC_STATUS_FATAL.
 *
 * Versioning (docs/abi-versioning.md has the whole policy and the messages a user sees):
 * - The host loads a plugin only if its abi_major equals the host's, whatever the minors.
 * - Within a major version structs only grow at the end, and each carries struct_size so the
 *   reader can tell which fields exist. Before reading a field added in a later minor version,
 *   compare the struct_size the other side wrote with the field's end offset.
 * - Set struct_size to sizeof(flatsync_plugin) and the versions to FLATSYNC_ABI_MAJOR and
 *   FLATSYNC_ABI_MINOR of the header you compile against.
 * - Ignore flag bits you do not know, in flatsync_batch.flags and anywhere else.
 */
#ifndef FLATSYNC_PLUGIN_H
#define FLATSYNC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLATSYNC_MAGIC "FLATSYNC" /* 8 bytes, no NUL in the descriptor */
#define FLATSYNC_ABI_MAJOR 1
#define FLATSYNC_ABI_MINOR 2

/* Name of the one function a plugin exports. */
#define FLATSYNC_ENTRY_SYMBOL "flatsync_plugin_entry"

/* Smallest descriptor (struct_size) a host of this major accepts: every field up to and
 * including check. It never grows within a major version. */
#define FLATSYNC_MIN_PLUGIN_STRUCT_SIZE 112u

typedef int32_t flatsync_status;
#define FLATSYNC_STATUS_OK 0
/* Transient failure: the host backs off and repeats the same call with the same bytes. */
#define FLATSYNC_STATUS_RETRY 1
/* Permanent failure: the host stops using the instance. Any unknown status counts as FATAL. */
#define FLATSYNC_STATUS_FATAL 2

/* Descriptor flag: no panic or exception can escape any of the plugin's functions.
 * A Rust plugin sets it when it is built with panic = "unwind" (the SDK then catches every panic
 * and turns it into FATAL); a plugin in a language without unwinding (C, Zig, ...) or in C++
 * with every entry point catching all exceptions sets it too, because nothing can unwind out of
 * it. Leave it clear only when an unwind could cross the boundary: the host then warns that a
 * panic in the plugin aborts flatsync. */
#define FLATSYNC_PLUGIN_FLAG_PANIC_UNWIND 1u

/* Descriptor flag (ABI 1.1): the plugin handles deletion batches (FLATSYNC_BATCH_FLAG_DELETIONS).
 * Without it the host hands deletions over as ordinary rows of kind "<kind>_deleted", so they
 * land apart from the live rows. */
#define FLATSYNC_PLUGIN_FLAG_DELETIONS 2u

/* Batch flag: this batch is the last of its stream; after it the stream is complete. */
#define FLATSYNC_BATCH_FLAG_LAST 1u

/* Batch flag (ABI 1.1): every row names a deleted record of `kind`, as
 * {"id":"<record id>","valid":true,"values":{}}; the sink removes or marks it. Set only for
 * plugins declaring FLATSYNC_PLUGIN_FLAG_DELETIONS. */
#define FLATSYNC_BATCH_FLAG_DELETIONS 2u

/* Values of flatsync_held.holds (ABI 1.2). NOTHING: nothing to tell (a fresh or complete stream,
 * nothing held beyond the last flush, or unknown). BATCHES: batches 0..=seq are held, rows rows
 * in all, and they survive a restart of the host process. Any other value means NOTHING. */
#define FLATSYNC_HELD_NOTHING 0u
#define FLATSYNC_HELD_BATCHES 1u

/* Levels for flatsync_host.log. A host shows an unknown level at its lowest (trace) level. */
#define FLATSYNC_LOG_ERROR 1u
#define FLATSYNC_LOG_WARN 2u
#define FLATSYNC_LOG_INFO 3u
#define FLATSYNC_LOG_DEBUG 4u

/* Borrowed UTF-8 (for ndjson: bytes) of len bytes, no terminating NUL. ptr may be anything
 * (even NULL) when len is 0. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} flatsync_str;

/* Host-owned sink for the error message of the current call, passed to every fallible call. */
typedef struct {
    void *ctx;                                    /* pass back unchanged */
    void (*set)(void *ctx, flatsync_str message); /* the host copies; the last message wins */
} flatsync_error;

/* Services the host offers an instance; valid from create until destroy returns. */
typedef struct {
    uint32_t struct_size; /* sizeof as the host compiled it: fields added later exist only if
                             it covers them */
    uint32_t reserved;    /* zero */
    void *ctx;            /* pass back unchanged */
    void (*log)(void *ctx, uint32_t level, flatsync_str message); /* thread-safe */
} flatsync_host;

/* One batch of rows of one stream (one legacy batch, or one Platform sheet within one event).
 * Batches of a stream arrive in seq order from 0. A batch delivered again (after a retry or a
 * restart) has the same seq and the same bytes, so a sink keeps its own durable "applied seq"
 * per stream and skips what it already holds. */
typedef struct {
    uint32_t struct_size;     /* sizeof as the host compiled it */
    uint32_t flags;           /* FLATSYNC_BATCH_FLAG_*; ignore unknown bits */
    flatsync_str stream;      /* stable stream id, [A-Za-z0-9_.-] */
    flatsync_str kind;        /* sheet slug or "legacy_batch" */
    flatsync_str event_id;
    flatsync_str fields_json; /* JSON array of field keys in schema order, "[]" if unknown */
    uint64_t seq;             /* from 0 within the stream; identical when re-delivered */
    uint64_t row_count;
    flatsync_str ndjson;      /* row_count lines: {"id":..,"valid":..,"values":{..}}\n */
    int64_t received_at_ms;   /* when flatsync received the event, ms since the Unix epoch */
} flatsync_batch;

/* What a sink holds of one stream, filled in by flatsync_plugin.held (ABI 1.2). The host sets
 * struct_size and holds = FLATSYNC_HELD_NOTHING before the call. */
typedef struct {
    uint32_t struct_size; /* sizeof as the host compiled it */
    uint32_t holds;       /* FLATSYNC_HELD_* */
    uint64_t seq;         /* with BATCHES: the last batch held; every batch before it is held */
    uint64_t rows;        /* with BATCHES: rows of batches 0..=seq in all */
} flatsync_held;

/* The plugin's instance, opaque to the host. */
typedef struct flatsync_instance flatsync_instance;

typedef struct {
    uint8_t magic[8];         /* FLATSYNC_MAGIC without its NUL */
    uint32_t abi_major;       /* FLATSYNC_ABI_MAJOR */
    uint32_t abi_minor;       /* FLATSYNC_ABI_MINOR */
    uint32_t struct_size;     /* sizeof(flatsync_plugin) */
    uint32_t flags;           /* FLATSYNC_PLUGIN_FLAG_* */
    flatsync_str name;        /* e.g. "csv-folder": the name a config's plugin = "..." uses */
    flatsync_str version;     /* the plugin's own version, informational */
    flatsync_str build_info;  /* free text (compiler, SDK): logged, never compared */
    /* Creates an instance from its name and JSON config and stores it in *out. */
    flatsync_status (*create)(flatsync_str instance_name, flatsync_str config_json,
                              const flatsync_host *host, flatsync_instance **out,
                              const flatsync_error *err);
    /* Accepts a batch; OK means accepted, not necessarily durable. */
    flatsync_status (*write_batch)(flatsync_instance *self, const flatsync_batch *batch,
                                   const flatsync_error *err);
    /* Makes every accepted batch durable; the host advances its checkpoint only after OK. */
    flatsync_status (*flush)(flatsync_instance *self, const flatsync_error *err);
    /* Frees the instance; cannot fail. */
    void (*destroy)(flatsync_instance *self);
    /* Optional start-up health check; may be NULL. */
    flatsync_status (*check)(flatsync_instance *self, const flatsync_error *err);
    /* Optional (ABI 1.2), may be NULL: which batches of `stream` the instance holds beyond what
     * its last flush made durable, in a form that survives a restart of the host process (written
     * to the OS, not yet synced). Asked before the host resumes a stream; the host then sends only
     * the batches after out->seq and checkpoints them only after the next successful flush. A
     * sink given the stream's last batch, or holding nothing beyond its durable position, leaves
     * out->holds at FLATSYNC_HELD_NOTHING. */
    flatsync_status (*held)(flatsync_instance *self, flatsync_str stream, flatsync_held *out,
                            const flatsync_error *err);
} flatsync_plugin;

/* The one export. */
const flatsync_plugin *flatsync_plugin_entry(void);

/* Compile-time layout checks. C11 and C++11 have static assertions; C99 gets an array type whose
 * size is negative when the condition fails. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define FLATSYNC_STATIC_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define FLATSYNC_STATIC_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#define FLATSYNC_STATIC_ASSERT(cond, name) typedef char flatsync_assert_##name[(cond) ? 1 : -1]
#endif

#if defined(__LP64__) || defined(_LP64)
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_str) == 16, str_size);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_error) == 16, error_size);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_host) == 24, host_size);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_host, log) == 16, host_log_offset);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_batch) == 112, batch_size);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_batch, stream) == 8, batch_stream_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_batch, seq) == 72, batch_seq_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_batch, ndjson) == 88, batch_ndjson_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_batch, received_at_ms) == 104, batch_received_offset);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_held) == 24, held_size);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_held, seq) == 8, held_seq_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_held, rows) == 16, held_rows_offset);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_plugin) == 120, plugin_size);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, abi_major) == 8, plugin_abi_major_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, struct_size) == 16, plugin_struct_size_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, name) == 24, plugin_name_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, create) == 72, plugin_create_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, check) == 104, plugin_check_offset);
FLATSYNC_STATIC_ASSERT(offsetof(flatsync_plugin, held) == 112, plugin_held_offset);
FLATSYNC_STATIC_ASSERT(sizeof(flatsync_plugin) >= FLATSYNC_MIN_PLUGIN_STRUCT_SIZE,
                       plugin_min_size);
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLATSYNC_PLUGIN_H */
