/* Test plugin for flatsync-plugin-host, written in C against flatsync_plugin.h only.
 *
 * Built default: a "counter" sink that writes nothing but records every call it receives, one
 * line each, to the file named by the config's "record" key, so tests can see exactly what
 * crossed the ABI. Its behaviour is chosen by integer config keys:
 *   retries        RETRY this many times per batch before OK
 *   flush_retries  RETRY this many times per flush before OK
 *   status         write_batch returns this status, without a message
 *   fatal          write_batch returns FATAL with the message "disk full"
 *   fail_create    create returns FATAL with a message
 *   create_status  create returns this status, without a message
 *   fail_check     check returns FATAL with a message
 *   held           held (ABI 1.2) reports batches 0..=held_seq, held_rows rows in all
 *   held_retries   held returns RETRY this many times before answering
 * and by path keys naming gates, files the test creates to let a call go on:
 *   gate           write_batch records "enter seq=N", then waits until this file exists
 *   destroy_gate   destroy records "enter destroy", then waits until this file exists
 * A gated call is one a test knows to be running inside the plugin, for as long as it likes,
 * without timing anything.
 *
 * Broken variants for the loader tests are selected with -D: VARIANT_BAD_MAGIC,
 * VARIANT_NULL_WRITE, VARIANT_SMALL, VARIANT_NULL_DESCRIPTOR, VARIANT_BAD_NAME. VARIANT_ABI_1_1
 * declares ABI 1.1 with the struct_size of 1.1 (without `held`) while its `held` pointer is still
 * set: the host must not read past struct_size, so it never calls it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "flatsync_plugin.h"

typedef struct {
    const flatsync_host *host;
    char name[64];
    char record[1024];
    char gate[1024];
    char destroy_gate[1024];
    long retries, flush_retries, status, fatal, fail_check;
    long held, held_seq, held_rows, held_retries;
    long pending, flush_pending, held_pending;
} counter;

static flatsync_str text(const char *s) {
    flatsync_str out = {(const uint8_t *)s, strlen(s)};
    return out;
}

static void set_error(const flatsync_error *err, const char *message) {
    if (err && err->set) err->set(err->ctx, text(message));
}

static void host_log(const flatsync_host *host, uint32_t level, const char *message) {
    if (host && host->log) host->log(host->ctx, level, text(message));
}

/* Returns once the file at `path` exists; an empty path is an open gate. */
static void wait_for_gate(const char *path) {
    if (!path[0]) return;
    while (access(path, F_OK) != 0) {
        struct timespec ts = {0, 2 * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
}

/* Finds "key": in a NUL-terminated JSON object; returns the position after the colon. */
static const char *config_value(const char *cfg, const char *key) {
    char needle[80];
    snprintf(needle, sizeof needle, "\"%s\"", key);
    const char *at = strstr(cfg, needle);
    if (!at) return NULL;
    at = strchr(at + strlen(needle), ':');
    if (!at) return NULL;
    at++;
    while (*at == ' ') at++;
    return at;
}

static long config_int(const char *cfg, const char *key) {
    const char *at = config_value(cfg, key);
    return at ? strtol(at, NULL, 10) : 0;
}

static void config_string(const char *cfg, const char *key, char *out, size_t cap) {
    out[0] = '\0';
    const char *at = config_value(cfg, key);
    if (!at || *at != '"') return;
    at++;
    size_t n = 0;
    while (at[n] && at[n] != '"' && n + 1 < cap) n++;
    memcpy(out, at, n);
    out[n] = '\0';
}

__attribute__((format(printf, 2, 3))) static void record(const counter *self, const char *format, ...) {
    if (!self->record[0]) return;
    FILE *f = fopen(self->record, "a");
    if (!f) return;
    va_list args;
    va_start(args, format);
    vfprintf(f, format, args);
    va_end(args);
    fputc('\n', f);
    fclose(f);
}

static void *log_from_other_thread(void *arg) {
    const counter *self = arg;
    host_log(self->host, FLATSYNC_LOG_WARN, "hello from a plugin thread");
    return NULL;
}

static flatsync_status counter_create(flatsync_str instance_name, flatsync_str config_json,
                                      const flatsync_host *host, flatsync_instance **out,
                                      const flatsync_error *err) {
    char *cfg = malloc(config_json.len + 1);
    if (!cfg) {
        set_error(err, "out of memory");
        return FLATSYNC_STATUS_FATAL;
    }
    memcpy(cfg, config_json.ptr, config_json.len);
    cfg[config_json.len] = '\0';

    long create_status = config_int(cfg, "create_status");
    if (config_int(cfg, "fail_create")) {
        free(cfg);
        set_error(err, "bad config: fail_create is set");
        return FLATSYNC_STATUS_FATAL;
    }
    if (create_status) {
        free(cfg);
        return (flatsync_status)create_status;
    }

    counter *self = calloc(1, sizeof *self);
    if (!self) {
        free(cfg);
        set_error(err, "out of memory");
        return FLATSYNC_STATUS_FATAL;
    }
    self->host = host;
    size_t name_len = instance_name.len < sizeof self->name - 1 ? instance_name.len : sizeof self->name - 1;
    memcpy(self->name, instance_name.ptr, name_len);
    config_string(cfg, "record", self->record, sizeof self->record);
    self->retries = config_int(cfg, "retries");
    self->flush_retries = config_int(cfg, "flush_retries");
    self->status = config_int(cfg, "status");
    self->fatal = config_int(cfg, "fatal");
    config_string(cfg, "gate", self->gate, sizeof self->gate);
    config_string(cfg, "destroy_gate", self->destroy_gate, sizeof self->destroy_gate);
    self->fail_check = config_int(cfg, "fail_check");
    self->held = config_int(cfg, "held");
    self->held_seq = config_int(cfg, "held_seq");
    self->held_rows = config_int(cfg, "held_rows");
    self->held_retries = config_int(cfg, "held_retries");
    free(cfg);

    char thread_name[32] = "";
    pthread_getname_np(pthread_self(), thread_name, sizeof thread_name);
    record(self, "create name=%s thread=%s host_size=%u", self->name, thread_name, host->struct_size);

    char message[128];
    snprintf(message, sizeof message, "counter %s created", self->name);
    host_log(host, FLATSYNC_LOG_INFO, message);
    pthread_t other;
    if (pthread_create(&other, NULL, log_from_other_thread, self) == 0) pthread_join(other, NULL);

    *out = (flatsync_instance *)self;
    return FLATSYNC_STATUS_OK;
}

static flatsync_status counter_check(flatsync_instance *instance, const flatsync_error *err) {
    counter *self = (counter *)instance;
    record(self, "check");
    if (self->fail_check) {
        set_error(err, "check failed: target unreachable");
        return FLATSYNC_STATUS_FATAL;
    }
    return FLATSYNC_STATUS_OK;
}

/* unused in VARIANT_NULL_WRITE */
__attribute__((unused)) static flatsync_status counter_write_batch(flatsync_instance *instance, const flatsync_batch *b,
                                           const flatsync_error *err) {
    counter *self = (counter *)instance;
    if (self->gate[0]) {
        record(self, "enter seq=%llu", (unsigned long long)b->seq);
        wait_for_gate(self->gate);
    }

    unsigned long sum = 0;
    for (size_t i = 0; i < b->ndjson.len; i++) sum += b->ndjson.ptr[i];
    char thread_name[32] = "";
    pthread_getname_np(pthread_self(), thread_name, sizeof thread_name);
    record(self,
           "write thread=%s size=%u flags=%u stream=%.*s kind=%.*s event=%.*s fields=%.*s "
           "seq=%llu rows=%llu received=%lld bytes=%zu sum=%lu",
           thread_name, b->struct_size, b->flags, (int)b->stream.len, (const char *)b->stream.ptr,
           (int)b->kind.len, (const char *)b->kind.ptr, (int)b->event_id.len,
           (const char *)b->event_id.ptr, (int)b->fields_json.len,
           (const char *)b->fields_json.ptr, (unsigned long long)b->seq,
           (unsigned long long)b->row_count, (long long)b->received_at_ms, b->ndjson.len, sum);

    if (self->status) return (flatsync_status)self->status;
    if (self->fatal) {
        set_error(err, "disk full");
        return FLATSYNC_STATUS_FATAL;
    }
    if (self->pending < self->retries) {
        self->pending++;
        char message[64];
        snprintf(message, sizeof message, "busy, attempt %ld", self->pending);
        set_error(err, "ignored: only the last message counts");
        set_error(err, message);
        return FLATSYNC_STATUS_RETRY;
    }
    self->pending = 0;
    return FLATSYNC_STATUS_OK;
}

static flatsync_status counter_flush(flatsync_instance *instance, const flatsync_error *err) {
    counter *self = (counter *)instance;
    record(self, "flush");
    if (self->flush_pending < self->flush_retries) {
        self->flush_pending++;
        set_error(err, "flush busy");
        return FLATSYNC_STATUS_RETRY;
    }
    self->flush_pending = 0;
    return FLATSYNC_STATUS_OK;
}

static flatsync_status counter_held(flatsync_instance *instance, flatsync_str stream,
                                    flatsync_held *out, const flatsync_error *err) {
    counter *self = (counter *)instance;
    char thread_name[32] = "";
    pthread_getname_np(pthread_self(), thread_name, sizeof thread_name);
    record(self, "held thread=%s size=%u holds=%u stream=%.*s", thread_name, out->struct_size,
           out->holds, (int)stream.len, (const char *)stream.ptr);
    if (self->held_pending < self->held_retries) {
        self->held_pending++;
        set_error(err, "held busy");
        return FLATSYNC_STATUS_RETRY;
    }
    if (self->held) {
        out->holds = FLATSYNC_HELD_BATCHES;
        out->seq = (uint64_t)self->held_seq;
        out->rows = (uint64_t)self->held_rows;
    }
    return FLATSYNC_STATUS_OK;
}

static void counter_destroy(flatsync_instance *instance) {
    counter *self = (counter *)instance;
    if (self->destroy_gate[0]) {
        record(self, "enter destroy");
        wait_for_gate(self->destroy_gate);
    }
    record(self, "destroy");
    free(self);
}

#ifdef VARIANT_BAD_NAME
#define PLUGIN_NAME "\xff\xfe"
#else
#define PLUGIN_NAME "counter"
#endif

/* unused in VARIANT_NULL_DESCRIPTOR */
__attribute__((unused)) static const flatsync_plugin descriptor = {
#ifdef VARIANT_BAD_MAGIC
    .magic = {'N', 'O', 'T', 'F', 'L', 'A', 'T', 0x01},
#else
    .magic = {'F', 'L', 'A', 'T', 'S', 'Y', 'N', 'C'},
#endif
    .abi_major = FLATSYNC_ABI_MAJOR,
#ifdef VARIANT_ABI_1_1
    .abi_minor = 1,
#else
    .abi_minor = FLATSYNC_ABI_MINOR,
#endif
#ifdef VARIANT_SMALL
    .struct_size = 64,
#elif defined(VARIANT_ABI_1_1)
    .struct_size = offsetof(flatsync_plugin, held),
#else
    .struct_size = sizeof(flatsync_plugin),
#endif
#ifdef VARIANT_DELETIONS
    .flags = FLATSYNC_PLUGIN_FLAG_DELETIONS,
#else
    .flags = 0,
#endif
    .name = {(const uint8_t *)PLUGIN_NAME, sizeof PLUGIN_NAME - 1},
    .version = {(const uint8_t *)"1.2.3", 5},
    .build_info = {(const uint8_t *)"cc, test fixture", 16},
    .create = counter_create,
#ifdef VARIANT_NULL_WRITE
    .write_batch = NULL,
#else
    .write_batch = counter_write_batch,
#endif
    .flush = counter_flush,
    .destroy = counter_destroy,
    .check = counter_check,
    .held = counter_held,
};

const flatsync_plugin *flatsync_plugin_entry(void) {
#ifdef VARIANT_NULL_DESCRIPTOR
    return NULL;
#else
    return &descriptor;
#endif
}
