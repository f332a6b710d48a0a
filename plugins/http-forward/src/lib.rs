//! The `http-forward` sink: POSTs every batch as JSON to one URL, signed the
//! [Standard Webhooks](https://www.standardwebhooks.com/) way, under ids that stay the same
//! when a batch is sent again, so a receiver that dedupes by id gets every row exactly once.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `url` | required | where to POST, `http://` or `https://`; no `user:password@` (use `headers`) |
//! | `batch_size` | `500` | rows per request; a batch of R rows is sent as ceil(R / batch_size) *parts* |
//! | `timeout_secs` | `30` | longest single request, connect to last body byte (never beyond what is left of `retry_budget_secs`) |
//! | `headers` | none | table of extra headers, e.g. `{ Authorization = "Bearer ..." }`; `content-type`, `content-length`, `host`, `transfer-encoding`, `idempotency-key` and `webhook-*` are refused |
//! | `format` | `"flatsync"` | body layout: `"flatsync"` or `"flatfile-egress"` (below) |
//! | `secret_env` | | name of an environment variable holding one or more whitespace-separated `whsec_...` secrets |
//! | `secret_file` | | file with one `whsec_...` secret per line; blank lines and `#` comments skipped |
//! | `secret_credential` | | a file name in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), same format as `secret_file` |
//! | `secrets` | | the secrets inline: `["whsec_..."]` (keep the config file private) |
//! | `retry_initial_ms` | `500` | first backoff cap; doubles per attempt |
//! | `retry_max_ms` | `30000` | largest backoff cap |
//! | `retry_budget_secs` | `60` | longest one write may take, sending and retrying, before it gives the host a RETRY; 1 to 100 |
//!
//! Exactly one of `secret_env`, `secret_file`, `secret_credential` and `secrets` must be set:
//! requests are always signed. A secret is `whsec_` followed by the padded base64 of 24 to 64
//! bytes. Secrets are read once, at start-up. With several secrets every request carries one
//! signature per secret, so a key can be rotated: add the new secret, update the receiver,
//! then drop the old one. Secrets and header values never appear in logs or errors, and the
//! URL is only ever printed without its query string.
//!
//! `retry_budget_secs` is capped at 100 because the daemon marks a sink *stalled*, and stops
//! it, when one call runs longer than `sink_call_timeout_secs` (120 by default); keep the
//! budget well below that setting if you lower it.
//!
//! # Requests
//!
//! Every part is one `POST url` with these headers:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `webhook-id` | the part's id (below) |
//! | `webhook-timestamp` | Unix seconds when this attempt was sent |
//! | `webhook-signature` | `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret, space-separated |
//! | `Idempotency-Key` | the same value as `webhook-id` |
//! | your `headers` | as configured |
//!
//! ## Format `"flatsync"`
//!
//! ```json
//! {"type":"rows","stream":"contacts-us_evt_1","kind":"contacts","eventId":"us_evt_1",
//!  "seq":0,"part":0,"parts":2,"last":false,"fields":["email","age"],
//!  "receivedAt":"2024-05-02T13:58:40.012Z",
//!  "rows":[{"id":"us_rc_1","valid":true,"values":{"email":"a@example.com","age":41}}]}
//! ```
//!
//! `seq` is the batch's position in its stream, `part` the request's position within the
//! batch (of `parts`), and `last` is true only on the last part of the stream's last batch. An
//! empty batch is still sent, as one part with `"rows":[]`, so the receiver sees every
//! stream end. `rows` holds the rows as flatsync delivers them, values copied byte for byte in
//! the source's key order. A deletion batch has `"type":"deletions"` and rows `{"id":".."}`
//! naming records of `kind` deleted in Flatfile.
//!
//! ## Format `"flatfile-egress"`
//!
//! The shape Flatfile's webhook-egress plugin posts, so a receiver written for it keeps
//! working; unlike the plugin, every page of every sheet is sent, one request per part:
//!
//! ```json
//! {"workbook":{"metadata":{"flatsync":{"type":"rows","stream":"contacts-us_evt_1",
//!    "eventId":"us_evt_1","seq":0,"part":0,"parts":1,"last":true,
//!    "receivedAt":"2024-05-02T13:58:40.012Z"}},
//!  "sheets":[{"name":"contacts","slug":"contacts",
//!    "config":{"name":"contacts","slug":"contacts","fields":[{"key":"email"}]},
//!    "metadata":{},
//!    "records":[{"id":"us_rc_1","values":{"email":{"value":"a@example.com","valid":true,
//!      "messages":[]}},"valid":true,"metadata":{}}]}]}}
//! ```
//!
//! What a batch cannot fill in is left out: the workbook's id, name, space, environment,
//! labels and actions; the sheet's id, real name, field types and labels, commit and version
//! ids; per-cell messages and `updatedAt`. flatsync knows validity per record, so every cell
//! repeats its record's `valid`. The event id and the stream coordinates are in
//! `workbook.metadata.flatsync`. A deletion batch has `"type":"deletions"` there, an empty
//! `records` array and the deleted ids in the sheet's `deletedRecords: [{"id":".."}]`: a
//! receiver that knows nothing of deletions sees an empty submission, not blank records.
//!
//! # Idempotency
//!
//! The webhook id is `msg_` followed by the hex of the first 16 bytes of the SHA-256 of
//! `"<stream>\n<seq>\n<part>\n<type>\n<first row index>\n<row count>"`, where `type` is
//! `rows` or `deletions` and the row range is the part's place within the batch. The body
//! holds no clock: a batch the daemon sends again (after a retry, a crash or a restart) goes
//! out with the same id, `Idempotency-Key` and body bytes. Only `webhook-timestamp` and the
//! signature change. Changing `batch_size` re-splits batches into parts with new ids, so a
//! receiver may then get some rows twice, never miss one.
//!
//! # Delivery and retries
//!
//! A write sends its parts in order and returns once every part got a 2xx. Then it is durable
//! on the receiver's side, so `flush` has nothing to do.
//!
//! - Connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
//!   full jitter (`retry_initial_ms` doubling up to `retry_max_ms`). A `Retry-After` (seconds
//!   or an HTTP date) is honoured: no request goes out before it, even across calls.
//! - When the next attempt would fall past `retry_budget_secs`, the write returns RETRY: the
//!   daemon backs off and repeats it (up to 10 times), and parts that already got a 2xx are
//!   not sent again within this process.
//! - A redirect (3xx) is never followed: the write fails naming the `Location`.
//! - Proxies come from the usual `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY`
//!   environment variables.
//! - Any other 4xx fails the write for good with
//!   `HTTP <code> from <url> for stream <s> batch <seq> part <p> (webhook-id <id>): <body>`
//!   (the first 2 KiB of the response); this is what `flatsync dead-letter` shows.
//!
//! # What a receiver must do
//!
//! 1. Verify the signature over the raw body bytes before parsing them, with any Standard
//!    Webhooks library, and reject timestamps more than 5 minutes away.
//! 2. Store the rows and the `webhook-id` atomically and answer 2xx; when the id was seen
//!    before, answer 2xx without storing again. Delivery is at least once, and deduplication
//!    by id is what makes it exactly once.
//! 3. Answer 429 or 503 with `Retry-After` when busy, and 4xx only for requests that will never
//!    succeed.
//!
//! In Rust, with the `standardwebhooks` crate and the `http` types:
//!
//! ```text
//! let webhook = standardwebhooks::Webhook::new("whsec_...")?;
//! webhook.verify(&raw_body, &headers)?;          // 401 on error
//! let id = headers["webhook-id"].to_str()?;      // dedupe on this
//! ```
//!
//! # Exactly-once within the process
//!
//! The sink has no durable position of its own: the receiver's deduplication is the durable
//! half. In memory it tracks the next expected seq of each stream in progress, to report a
//! gap as a fatal error, and the parts of a batch that were accepted before a RETRY.

mod body;
mod config;
mod deliver;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use flatsync_plugin_sdk::{
    Batch, BatchStep, CreateContext, Logger, Row, Sink, SinkError, StreamPosition, export_sink,
    serde_json,
};

use body::Part;
use config::Config;
use deliver::{Clock, Deliverer, Request, SystemClock};

/// An http-forward sink instance: one per `[sinks.NAME]` entry of the daemon's config.
#[derive(Debug)]
pub struct HttpForward {
    deliverer: Deliverer,
    logger: Logger,
    /// How far each stream seen in this process and not finished yet was accepted.
    positions: HashMap<String, StreamPosition>,
    /// The batch that last ran out of budget, and which of its parts got a 2xx.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    stream: String,
    seq: u64,
    deletions: bool,
    accepted: Vec<bool>,
}

impl Sink for HttpForward {
    const HANDLES_DELETIONS: bool = true;

    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        let env = |name: &str| std::env::var_os(name);
        Self::with_env(ctx, config, &env, Arc::new(SystemClock))
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let started = self.deliverer.now();
        let deadline = started + self.deliverer.config().retry_budget;
        self.refuse_gap(batch)?;
        let rows: Vec<Row<'_>> = batch.rows().collect::<Result<_, _>>()?;
        let (parts, sent) = self.send_parts(batch, &rows, deadline)?;
        self.record_position(batch);
        self.logger.debug(&format!(
            "Batch forwarded: stream={} seq={} rows={} parts={parts} sent={sent} elapsed_ms={}",
            batch.stream(),
            batch.seq(),
            rows.len(),
            self.deliverer
                .now()
                .saturating_duration_since(started)
                .as_millis()
        ));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // A part counts as written only once the receiver answered 2xx.
        Ok(())
    }

    fn check(&mut self) -> Result<(), SinkError> {
        // The receiver may legitimately be down at start-up; the config was validated in
        // `create`, and the first write will retry until it is up.
        let config = self.deliverer.config();
        self.logger.info(&format!(
            "Forwarding to {} (format {:?}, batch_size {}, retry budget {} s)",
            config.url_display,
            config.format,
            config.batch_size,
            config.retry_budget.as_secs()
        ));
        Ok(())
    }
}

impl HttpForward {
    /// Refuses a batch beyond the next one of a stream seen in this process.
    fn refuse_gap(&self, batch: &Batch<'_>) -> Result<(), SinkError> {
        if let Some(position) = self.positions.get(batch.stream()) {
            match position.step(batch)? {
                // Only a gap stops a batch here. One the receiver accepted before is sent
                // again under the same ids, for its deduplication to drop: without a durable
                // position of its own, the sink leaves "already held" to the receiver.
                BatchStep::Skip | BatchStep::Finish | BatchStep::Apply => {}
            }
        }
        Ok(())
    }

    /// Remembers how far the stream was accepted; a finished stream is forgotten.
    fn record_position(&mut self, batch: &Batch<'_>) {
        let stream = batch.stream();
        if batch.is_last() {
            self.positions.remove(stream);
            return;
        }
        let held = match self.positions.get(stream) {
            Some(StreamPosition::Applied(held)) => (*held).max(batch.seq()),
            _ => batch.seq(),
        };
        self.positions
            .insert(stream.to_owned(), StreamPosition::Applied(held));
    }

    /// Sends the parts of `batch` the receiver has not accepted yet, in order, until `deadline`.
    /// Returns how many parts the batch has and how many were sent now. A part refused with
    /// RETRY leaves the accepted ones in `pending`, so the host's repeat skips them.
    fn send_parts(
        &mut self,
        batch: &Batch<'_>,
        rows: &[Row<'_>],
        deadline: Instant,
    ) -> Result<(usize, usize), SinkError> {
        let (stream, seq) = (batch.stream(), batch.seq());
        let fields = batch.fields()?;
        let received_at = batch.received_at_rfc3339();
        let batch_size = self.deliverer.config().batch_size;
        let format = self.deliverer.config().format;
        let parts = rows.len().div_ceil(batch_size).max(1);
        let mut accepted = match self.pending.take() {
            Some(pending)
                if pending.stream == stream
                    && pending.seq == seq
                    && pending.deletions == batch.is_deletions()
                    && pending.accepted.len() == parts =>
            {
                pending.accepted
            }
            _ => vec![false; parts],
        };
        let mut sent = 0;
        for index in 0..parts {
            if accepted[index] {
                continue;
            }
            let first_row = index * batch_size;
            let part = Part {
                batch,
                fields: &fields,
                received_at: &received_at,
                index,
                count: parts,
                first_row,
                rows: &rows[first_row.min(rows.len())..(first_row + batch_size).min(rows.len())],
            };
            let webhook_id = part.webhook_id();
            let body = part.render(format);
            let request = Request {
                webhook_id: &webhook_id,
                body: &body,
                stream,
                seq,
                part: index,
            };
            if let Err(error) = self.deliverer.send(&request, deadline) {
                if error.is_retry() {
                    self.pending = Some(Pending {
                        stream: stream.to_owned(),
                        seq,
                        deletions: batch.is_deletions(),
                        accepted,
                    });
                }
                return Err(error);
            }
            accepted[index] = true;
            sent += 1;
        }
        Ok((parts, sent))
    }

    /// `create` with environment lookups (`secret_env`, `$CREDENTIALS_DIRECTORY`) served by
    /// `env` and time read from `clock`, so tests need not change the process environment or
    /// wait for the machine's clock.
    fn with_env(
        ctx: &CreateContext<'_>,
        config: serde_json::Value,
        env: config::EnvLookup<'_>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SinkError> {
        let config = Config::parse(config, env)?;
        let logger = ctx.logger().clone();
        Ok(Self {
            deliverer: Deliverer::new(config, logger.clone(), clock),
            logger,
            positions: HashMap::new(),
            pending: None,
        })
    }
}

export_sink!(HttpForward, name = "http-forward");

#[cfg(test)]
mod tests;
