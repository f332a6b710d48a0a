//! The C side of a Rust sink: the descriptor and the generic trampolines it points to.
//!
//! Every trampoline turns raw host pointers into safe values (null or non-UTF-8 input becomes a
//! FATAL status, never undefined behaviour), runs the trait method under `catch_unwind`, and
//! reports the outcome through the host's error callback.

use std::any::Any;
use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};

use flatsync_plugin_api::{
    self as abi, FlatsyncBatch, FlatsyncError, FlatsyncHeld, FlatsyncHost, FlatsyncPlugin,
    FlatsyncStatus, FlatsyncStr,
};

use crate::batch::{Batch, BatchParts};
use crate::host::{CreateContext, Logger};
use crate::{Sink, SinkError};

/// Free text the host logs next to the plugin's version.
const BUILD_INFO: &str = concat!("flatsync-plugin-sdk ", env!("CARGO_PKG_VERSION"));

/// A plugin descriptor that can live in a `static`. Built by [`export_sink!`](crate::export_sink).
#[repr(transparent)]
#[derive(Debug)]
pub struct PluginDescriptor(FlatsyncPlugin);

// SAFETY: the descriptor is never mutated after construction; its pointers refer to `'static`
// string data and its function pointers to code, all of which any thread may read.
unsafe impl Sync for PluginDescriptor {}

impl PluginDescriptor {
    /// The descriptor of sink type `S`. `panic_unwind` must be `cfg!(panic = "unwind")` as
    /// seen by the plugin crate, which is what the macro passes.
    pub const fn new<S: Sink>(
        name: &'static str,
        version: &'static str,
        panic_unwind: bool,
    ) -> Self {
        Self(FlatsyncPlugin {
            magic: abi::MAGIC,
            abi_major: abi::ABI_MAJOR,
            abi_minor: abi::ABI_MINOR,
            struct_size: size_of::<FlatsyncPlugin>() as u32,
            flags: if panic_unwind {
                abi::PLUGIN_FLAG_PANIC_UNWIND
            } else {
                0
            } | if S::HANDLES_DELETIONS {
                abi::PLUGIN_FLAG_DELETIONS
            } else {
                0
            },
            name: static_str(name),
            version: static_str(version),
            build_info: static_str(BUILD_INFO),
            create: Some(create::<S> as abi::CreateFn),
            write_batch: Some(write_batch::<S> as abi::WriteBatchFn),
            flush: Some(flush::<S> as abi::FlushFn),
            destroy: Some(destroy::<S> as abi::DestroyFn),
            check: Some(check::<S> as abi::CheckFn),
            held: Some(held::<S> as abi::HeldFn),
        })
    }

    /// The ABI view of the descriptor.
    pub fn get(&self) -> &FlatsyncPlugin {
        &self.0
    }

    /// The pointer the entry function returns.
    pub fn as_ptr(&'static self) -> *const FlatsyncPlugin {
        &self.0
    }
}

const fn static_str(text: &'static str) -> FlatsyncStr {
    FlatsyncStr {
        ptr: text.as_ptr(),
        len: text.len(),
    }
}

/// What the host's `instance` pointer points to.
struct Instance<S> {
    sink: S,
    logger: Logger,
    /// The payload of the panic that left `sink` in an unknown state.
    poisoned: Option<String>,
}

impl<S: Sink> Instance<S> {
    fn call(
        &mut self,
        method: impl FnOnce(&mut S) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        if let Some(payload) = &self.poisoned {
            return Err(SinkError::fatal(format!(
                "instance is poisoned by an earlier panic: {payload}"
            )));
        }
        let sink = &mut self.sink;
        match catch_unwind(AssertUnwindSafe(move || method(sink))) {
            Ok(result) => result,
            Err(payload) => {
                let payload = panic_message(payload);
                let error = SinkError::fatal(format!("plugin panicked: {payload}"));
                self.poisoned = Some(payload);
                Err(error)
            }
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        return (*text).to_owned();
    }
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(other) => {
            // Dropping an unknown payload runs foreign code that could panic again, outside
            // any guard; leaking one box per panic is the safer trade.
            std::mem::forget(other);
            "a panic payload that is not a string".to_owned()
        }
    }
}

/// Runs a trampoline body, turning its outcome (including a panic outside the sink's own
/// methods) into a status and an error message for the host.
fn guard(
    err: *const FlatsyncError,
    body: impl FnOnce() -> Result<(), SinkError>,
) -> FlatsyncStatus {
    let result = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(SinkError::fatal(format!(
            "plugin panicked: {}",
            panic_message(payload)
        ))),
    };
    match result {
        Ok(()) => abi::STATUS_OK,
        Err(error) => {
            // SAFETY: the host passes either null or an error sink valid for this call.
            unsafe { set_error(err, error.message()) };
            if error.is_retry() {
                abi::STATUS_RETRY
            } else {
                abi::STATUS_FATAL
            }
        }
    }
}

/// # Safety
/// `err` is null or points to a `FlatsyncError` valid for the current call.
unsafe fn set_error(err: *const FlatsyncError, message: &str) {
    if err.is_null() {
        return;
    }
    // SAFETY: non-null, and valid for the call per this function's contract.
    let err = unsafe { &*err };
    if let Some(set) = err.set {
        let message = FlatsyncStr {
            ptr: message.as_ptr(),
            len: message.len(),
        };
        // SAFETY: `set` and `ctx` come from the host together; the message is borrowed for
        // the call, and the host copies it.
        unsafe { set(err.ctx, message) };
    }
}

/// # Safety
/// Unless `value.ptr` is null, it points to `value.len` readable bytes that stay valid for `'a`.
unsafe fn bytes_from_abi<'a>(value: FlatsyncStr, what: &str) -> Result<&'a [u8], SinkError> {
    if value.len == 0 {
        return Ok(&[]);
    }
    if value.ptr.is_null() {
        return Err(SinkError::fatal(format!(
            "{what} is a null pointer with length {}",
            value.len
        )));
    }
    if value.len > isize::MAX as usize {
        return Err(SinkError::fatal(format!(
            "{what} has an impossible length {}",
            value.len
        )));
    }
    // SAFETY: non-null, length checked against isize::MAX, readable for `'a` per the contract.
    Ok(unsafe { std::slice::from_raw_parts(value.ptr, value.len) })
}

/// # Safety
/// As for [`bytes_from_abi`].
unsafe fn str_from_abi<'a>(value: FlatsyncStr, what: &str) -> Result<&'a str, SinkError> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { bytes_from_abi(value, what) }?;
    std::str::from_utf8(bytes)
        .map_err(|error| SinkError::fatal(format!("{what} is not UTF-8: {error}")))
}

/// # Safety
/// `instance` is null or a pointer returned by `create::<S>` and not yet destroyed, and no
/// other reference to it is live (the host calls one instance from one thread at a time).
unsafe fn instance_mut<'a, S>(instance: *mut c_void) -> Result<&'a mut Instance<S>, SinkError> {
    if instance.is_null() {
        return Err(SinkError::fatal("the host passed a null instance pointer"));
    }
    // SAFETY: per the contract, the pointer came from `Box::into_raw` in `create::<S>` and is
    // exclusively ours for this call.
    Ok(unsafe { &mut *instance.cast::<Instance<S>>() })
}

/// # Safety
/// `batch` is null or points to a batch whose strings stay valid for `'a`.
unsafe fn batch_from_abi<'a>(batch: *const FlatsyncBatch) -> Result<Batch<'a>, SinkError> {
    if batch.is_null() {
        return Err(SinkError::fatal("the host passed a null batch pointer"));
    }
    // SAFETY: non-null; `struct_size` is the first field, present in any version of the struct.
    let struct_size = unsafe { (*batch).struct_size };
    if (struct_size as usize) < size_of::<FlatsyncBatch>() {
        return Err(SinkError::fatal(format!(
            "the host's batch struct has {struct_size} bytes, this SDK needs {}",
            size_of::<FlatsyncBatch>()
        )));
    }
    // SAFETY: the host's struct is at least as large as ours, so every field is readable, and
    // the host keeps the strings it points to valid for the call.
    let (stream, kind, event_id, fields_json, ndjson, raw) = unsafe {
        let raw = &*batch;
        (
            str_from_abi(raw.stream, "batch stream")?,
            str_from_abi(raw.kind, "batch kind")?,
            str_from_abi(raw.event_id, "batch event_id")?,
            str_from_abi(raw.fields_json, "batch fields_json")?,
            bytes_from_abi(raw.ndjson, "batch ndjson")?,
            raw,
        )
    };
    Ok(Batch::from_parts(BatchParts {
        stream,
        kind,
        event_id,
        fields_json,
        seq: raw.seq,
        row_count: raw.row_count,
        ndjson,
        received_at_ms: raw.received_at_ms,
        last: raw.flags & abi::BATCH_FLAG_LAST != 0,
        deletions: raw.flags & abi::BATCH_FLAG_DELETIONS != 0,
    }))
}

unsafe extern "C" fn create<S: Sink>(
    instance_name: FlatsyncStr,
    config_json: FlatsyncStr,
    host: *const FlatsyncHost,
    out: *mut *mut c_void,
    err: *const FlatsyncError,
) -> FlatsyncStatus {
    guard(err, || {
        if out.is_null() {
            return Err(SinkError::fatal("the host passed a null output pointer"));
        }
        // SAFETY: `out` is non-null and points to a pointer slot the host owns for this call.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the host keeps the name valid for the call.
        let name = unsafe { str_from_abi(instance_name, "instance name") }?;
        if host.is_null() {
            return Err(SinkError::fatal(format!(
                "sink {name}: the host passed a null host pointer"
            )));
        }
        // SAFETY: non-null; `struct_size` is the first field of every version.
        let host_size = unsafe { (*host).struct_size };
        if (host_size as usize) < size_of::<FlatsyncHost>() {
            return Err(SinkError::fatal(format!(
                "sink {name}: the host struct has {host_size} bytes, this SDK needs {}",
                size_of::<FlatsyncHost>()
            )));
        }
        // SAFETY: large enough, and the ABI keeps it valid from `create` until `destroy`
        // returns; the logger is owned by the instance, which `destroy` drops.
        let logger = unsafe { Logger::from_host(&*host) };
        // SAFETY: the host keeps the config valid for the call.
        let config_text = unsafe { str_from_abi(config_json, "config") }
            .map_err(|error| error.context(format!("sink {name}")))?;
        let config = if config_text.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(config_text).map_err(|error| {
                SinkError::fatal(format!("sink {name}: config is not valid JSON: {error}"))
            })?
        };
        let context = CreateContext::new(name, logger.clone());
        // A failed create is fatal whatever the sink said: there is no instance to retry on.
        // A panic here is caught by `guard`; nothing exists yet that could be poisoned.
        let sink =
            S::create(&context, config).map_err(|error| SinkError::fatal(error.message()))?;
        let instance = Box::new(Instance {
            sink,
            logger,
            poisoned: None,
        });
        // SAFETY: checked non-null above; ownership of the box passes to the host until
        // `destroy`.
        unsafe { out.write(Box::into_raw(instance).cast::<c_void>()) };
        Ok(())
    })
}

unsafe extern "C" fn write_batch<S: Sink>(
    instance: *mut c_void,
    batch: *const FlatsyncBatch,
    err: *const FlatsyncError,
) -> FlatsyncStatus {
    guard(err, || {
        // SAFETY: the host passes back the pointer `create::<S>` produced, one call at a time.
        let instance = unsafe { instance_mut::<S>(instance) }?;
        // SAFETY: the host keeps the batch valid for the call.
        let batch = unsafe { batch_from_abi(batch) }?;
        instance.call(|sink| sink.write_batch(&batch))
    })
}

unsafe extern "C" fn flush<S: Sink>(
    instance: *mut c_void,
    err: *const FlatsyncError,
) -> FlatsyncStatus {
    guard(err, || {
        // SAFETY: the host passes back the pointer `create::<S>` produced, one call at a time.
        let instance = unsafe { instance_mut::<S>(instance) }?;
        instance.call(S::flush)
    })
}

unsafe extern "C" fn check<S: Sink>(
    instance: *mut c_void,
    err: *const FlatsyncError,
) -> FlatsyncStatus {
    guard(err, || {
        // SAFETY: the host passes back the pointer `create::<S>` produced, one call at a time.
        let instance = unsafe { instance_mut::<S>(instance) }?;
        instance.call(S::check)
    })
}

unsafe extern "C" fn held<S: Sink>(
    instance: *mut c_void,
    stream: FlatsyncStr,
    out: *mut FlatsyncHeld,
    err: *const FlatsyncError,
) -> FlatsyncStatus {
    guard(err, || {
        // SAFETY: the host passes back the pointer `create::<S>` produced, one call at a time.
        let instance = unsafe { instance_mut::<S>(instance) }?;
        // SAFETY: the host keeps the stream valid for the call.
        let stream = unsafe { str_from_abi(stream, "held stream") }?;
        if out.is_null() {
            return Err(SinkError::fatal("the host passed a null held pointer"));
        }
        // SAFETY: non-null; `struct_size` is the first field of every version.
        let out_size = unsafe { (*out).struct_size };
        if (out_size as usize) < size_of::<FlatsyncHeld>() {
            return Err(SinkError::fatal(format!(
                "the host's held struct has {out_size} bytes, this SDK needs {}",
                size_of::<FlatsyncHeld>()
            )));
        }
        let mut answer = None;
        instance.call(|sink| {
            answer = sink.held(stream)?;
            Ok(())
        })?;
        if let Some(held) = answer {
            // SAFETY: non-null, at least as large as ours, and the host's to write for the call.
            unsafe {
                (*out).holds = abi::HELD_BATCHES;
                (*out).seq = held.seq;
                (*out).rows = held.rows;
            }
        }
        Ok(())
    })
}

unsafe extern "C" fn destroy<S: Sink>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the pointer came from `Box::into_raw` in `create::<S>`, and the host calls
    // `destroy` once, after every other call on the instance returned.
    let instance = unsafe { Box::from_raw(instance.cast::<Instance<S>>()) };
    let logger = instance.logger.clone();
    // A sink poisoned by a panic may be half-updated, so its `Drop` may panic too; that must
    // not unwind into the host.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(instance))) {
        let message = format!(
            "Sink panicked while being destroyed: {}",
            panic_message(payload)
        );
        // The logging itself is guarded: a panic escaping an `extern "C"` fn aborts the host.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| logger.error(&message))) {
            std::mem::forget(payload);
        }
    }
}
