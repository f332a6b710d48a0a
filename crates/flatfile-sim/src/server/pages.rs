//! Pre-rendered pages ([`crate::SimConfig::prerender`]): a page body is rendered on its first
//! request and kept in memory as [`Bytes`]; every later request for the same page gets those
//! bytes as they are. A benchmark reads every page once to warm it, and from then on the
//! simulator only copies memory to the socket, so it is not what a measurement measures.
//!
//! Only pages that cannot change are kept: legacy pages (generated, never edited) and Platform
//! pages of sheets nobody changed, asked for without filters. Memory grows with the pages read;
//! the mode is for benchmarks, not for long-running use.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

use crate::lock::lock;

/// Which page: the request path and its paging, as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PageKey {
    /// The request path, e.g. `/rest/batch/<id>/rows` or `/v1/sheets/<id>/records`.
    pub(super) path: String,
    /// `skip` (legacy) or `pageNumber` (Platform).
    pub(super) at: u64,
    /// `take` (legacy) or `pageSize` (Platform).
    pub(super) size: u64,
}

/// The rendered bodies, by page.
#[derive(Debug, Default)]
pub(super) struct Pages {
    bodies: Mutex<HashMap<PageKey, Bytes>>,
}

impl Pages {
    /// The body of `key`, rendered by `render` the first time.
    pub(super) fn body(&self, key: PageKey, render: impl FnOnce() -> Vec<u8>) -> Bytes {
        if let Some(body) = lock(&self.bodies).get(&key) {
            return body.clone();
        }
        // Rendered outside the lock, so first reads of different pages render in parallel; two
        // first reads of the same page both render and the first stored wins.
        let body = Bytes::from(render());
        lock(&self.bodies).entry(key).or_insert(body).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_rendered_once_and_served_as_stored() {
        let pages = Pages::default();
        let key = |at| PageKey {
            path: "/rest/batch/b/rows".to_owned(),
            at,
            size: 10,
        };
        let mut renders = 0;
        let first = pages.body(key(0), || {
            renders += 1;
            b"first".to_vec()
        });
        let again = pages.body(key(0), || {
            renders += 1;
            b"second".to_vec()
        });
        let other = pages.body(key(10), || {
            renders += 1;
            b"other".to_vec()
        });
        assert_eq!(renders, 2);
        assert_eq!(
            (&first[..], &again[..], &other[..]),
            (&b"first"[..], &b"first"[..], &b"other"[..])
        );
        // The same allocation is handed out again, not a copy.
        assert_eq!(first.as_ptr(), again.as_ptr());
    }
}
