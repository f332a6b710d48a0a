//! A stream's batches in order, fetched ahead of delivery so the wire is busy while the sinks
//! write.

use flatsync_flatfile::ApiError;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::pipeline::fetch::{Batch, FetchError, StreamReader};

/// A stream's pages in order: the first read alone, the rest fetched ahead.
pub(crate) struct ReadAhead {
    first: Option<Result<Batch, FetchError>>,
    rest: BoxStream<'static, Result<Batch, FetchError>>,
    /// Rows in the stream, when known.
    pub(crate) total_rows: Option<u64>,
    /// Batches in the stream, when known.
    pub(crate) page_count: Option<u64>,
}

impl ReadAhead {
    pub(crate) async fn open(
        reader: &mut StreamReader,
        start: u64,
        pages_in_flight: usize,
    ) -> ReadAhead {
        // The first batch is read alone: what it shows about the server's paging (whole pages
        // or a cap) is known before any batch is fetched ahead.
        let first = reader.batch(start).await;
        if let Ok(batch) = &first {
            reader.learn_total(batch.total);
        }
        let total_rows = reader.total();
        let page_count = reader.page_count();

        // With a known page count, keep `pages_in_flight` batches going ahead of delivery;
        // without one, read sequentially until a batch proves the end.
        let in_flight = if page_count.is_some() {
            pages_in_flight
        } else {
            1
        };
        let end = page_count.unwrap_or(u64::MAX);
        let ahead = reader.clone();
        let rest = futures_util::stream::iter((start + 1)..end)
            .map(move |seq| {
                let reader = ahead.clone();
                // A spawned task keeps fetching while the delivery loop waits on the sinks; a
                // plain future inside `buffered` would only progress while it is polled.
                let mut task = AbortOnDrop(tokio::spawn(async move { reader.batch(seq).await }));
                async move {
                    (&mut task.0).await.unwrap_or_else(|e| {
                        Err(FetchError::Api(ApiError::Transport {
                            method: "GET",
                            url: String::new(),
                            attempts: 0,
                            message: format!("page fetch task ended: {e}"),
                        }))
                    })
                }
            })
            .buffered(in_flight.max(1))
            .boxed();
        ReadAhead {
            first: Some(first),
            rest,
            total_rows,
            page_count,
        }
    }

    /// The next batch of the stream.
    pub(crate) async fn next(&mut self) -> Result<Batch, FetchError> {
        if let Some(first) = self.first.take() {
            return first;
        }
        match self.rest.next().await {
            Some(next) => next,
            // Only a stream of known page count runs out, and its last batch ended the
            // delivery loop before.
            None => Ok(Batch {
                ndjson: Vec::new(),
                rows: 0,
                end: true,
                total: None,
            }),
        }
    }
}

/// Aborts a spawned page fetch nobody waits for any more (the stream stopped early).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
