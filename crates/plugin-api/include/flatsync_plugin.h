/* flatsync sink plugin ABI, major version 1.
 *
 * The Rust mirror is crates/plugin-api/src/lib.rs; both assert the same layout.
 * Rules: every flatsync_str is borrowed for the duration of one call; nothing allocated on one
 * side is freed on the other; the host never calls one instance from two threads at once.
 */
#ifndef FLATSYNC_PLUGIN_H
#define FLATSYNC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define FLATSYNC_MAGIC "FLATSYNC" /* 8 bytes, no NUL in the descriptor */
#define FLATSYNC_ABI_MAJOR 1
#define FLATSYNC_ABI_MINOR 0

typedef int32_t flatsync_status;
#define FLATSYNC_STATUS_OK 0
#define FLATSYNC_STATUS_RETRY 1
#define FLATSYNC_STATUS_FATAL 2

#define FLATSYNC_PLUGIN_FLAG_PANIC_UNWIND 1u
#define FLATSYNC_BATCH_FLAG_LAST 1u

#define FLATSYNC_LOG_ERROR 1u
#define FLATSYNC_LOG_WARN 2u
#define FLATSYNC_LOG_INFO 3u
#define FLATSYNC_LOG_DEBUG 4u

typedef struct {
    const uint8_t *ptr;
    size_t len;
} flatsync_str;

typedef struct {
    void *ctx;
    void (*set)(void *ctx, flatsync_str message);
} flatsync_error;

typedef struct {
    uint32_t struct_size;
    uint32_t reserved;
    void *ctx;
    void (*log)(void *ctx, uint32_t level, flatsync_str message);
} flatsync_host;

typedef struct {
    uint32_t struct_size;
    uint32_t flags;           /* FLATSYNC_BATCH_FLAG_* */
    flatsync_str stream;      /* stable stream id, [A-Za-z0-9_.-] */
    flatsync_str kind;        /* sheet slug or "legacy_batch" */
    flatsync_str event_id;
    flatsync_str fields_json; /* JSON array of field keys in schema order, "[]" if unknown */
    uint64_t seq;             /* from 0 within the stream; identical when re-delivered */
    uint64_t row_count;
    flatsync_str ndjson;      /* row_count lines: {"id":..,"valid":..,"values":{..}}\n */
    int64_t received_at_ms;
} flatsync_batch;

typedef struct flatsync_instance flatsync_instance;

typedef struct {
    uint8_t magic[8];
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t struct_size;
    uint32_t flags;           /* FLATSYNC_PLUGIN_FLAG_* */
    flatsync_str name;
    flatsync_str version;
    flatsync_str build_info;
    flatsync_status (*create)(flatsync_str instance_name, flatsync_str config_json,
                              const flatsync_host *host, flatsync_instance **out,
                              const flatsync_error *err);
    flatsync_status (*write_batch)(flatsync_instance *self, const flatsync_batch *batch,
                                   const flatsync_error *err);
    flatsync_status (*flush)(flatsync_instance *self, const flatsync_error *err);
    void (*destroy)(flatsync_instance *self);
    flatsync_status (*check)(flatsync_instance *self, const flatsync_error *err); /* may be NULL */
} flatsync_plugin;

/* The one export. */
const flatsync_plugin *flatsync_plugin_entry(void);

#if defined(__LP64__) || defined(_LP64)
_Static_assert(sizeof(flatsync_str) == 16, "flatsync_str layout");
_Static_assert(sizeof(flatsync_error) == 16, "flatsync_error layout");
_Static_assert(sizeof(flatsync_host) == 24, "flatsync_host layout");
_Static_assert(offsetof(flatsync_host, log) == 16, "flatsync_host layout");
_Static_assert(sizeof(flatsync_batch) == 112, "flatsync_batch layout");
_Static_assert(offsetof(flatsync_batch, stream) == 8, "flatsync_batch layout");
_Static_assert(offsetof(flatsync_batch, seq) == 72, "flatsync_batch layout");
_Static_assert(offsetof(flatsync_batch, ndjson) == 88, "flatsync_batch layout");
_Static_assert(offsetof(flatsync_batch, received_at_ms) == 104, "flatsync_batch layout");
_Static_assert(sizeof(flatsync_plugin) == 112, "flatsync_plugin layout");
_Static_assert(offsetof(flatsync_plugin, abi_major) == 8, "flatsync_plugin layout");
_Static_assert(offsetof(flatsync_plugin, struct_size) == 16, "flatsync_plugin layout");
_Static_assert(offsetof(flatsync_plugin, name) == 24, "flatsync_plugin layout");
_Static_assert(offsetof(flatsync_plugin, create) == 72, "flatsync_plugin layout");
_Static_assert(offsetof(flatsync_plugin, check) == 104, "flatsync_plugin layout");
#endif

#endif /* FLATSYNC_PLUGIN_H */
