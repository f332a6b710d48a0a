//! What happens to an event once it is in the inbox: the dispatcher picks pending events
//! (`dispatch`), the engine routes it to sinks (`route`) and plans its streams (`plan`), reads
//! each stream batch by batch from Flatfile (`fetch`), hands the batches to the sink workers and
//! checkpoints what they made durable (`engine`). Events without data are grouped into
//! streams of many events and written in bulk by the group writer (`group`).

pub(crate) mod dispatch;
pub(crate) mod engine;
pub(crate) mod fetch;
pub(crate) mod group;
pub(crate) mod plan;
pub mod route;
