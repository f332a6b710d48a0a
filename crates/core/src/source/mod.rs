//! Where events enter: the webhook listener's handler and the poller of Platform events. Both
//! commit an event to the inbox (`crate::state`) before they answer or acknowledge it, and then
//! wake the dispatcher; neither delivers anything itself.

pub(crate) mod poll;
pub(crate) mod webhook;
