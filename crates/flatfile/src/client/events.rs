//! The Platform events API: listing an environment's events page by page, and acknowledging
//! them once they are handled.

use super::{
    Api, EventsQuery, FlatfileClient, HttpMethod, Query, check_not_empty, check_paging, endpoint,
};
use crate::convert::{self, EventsPage};
use crate::error::ApiError;

impl FlatfileClient {
    /// `GET /v1/events?environmentId=&since=&pageSize=&pageNumber=&includeAcknowledged=`: one
    /// page of events, each with its full JSON body.
    ///
    /// The answer is read leniently: items that are not usable events are listed in
    /// [`EventsPage::skipped`] but counted in [`EventsPage::items_on_page`]; only an envelope
    /// that is not an object with a `data` array is an error ([`ApiError::Decode`], after the
    /// usual retries). Refused with [`ApiError::InvalidRequest`] before any request: an empty
    /// environment id or `since`, page number or size 0.
    pub async fn events_page(&self, query: &EventsQuery) -> Result<EventsPage, ApiError> {
        check_not_empty(
            &query.environment_id,
            "the environment id of the events query",
        )?;
        if let Some(since) = &query.since {
            check_not_empty(since, "the \"since\" time of the events query")?;
        }
        check_paging(query.page_number, query.page_size)?;
        let mut url = endpoint(&self.inner.api_base, &["events"])?;
        let mut pairs = Query::default();
        pairs.push("environmentId", &query.environment_id);
        if let Some(since) = &query.since {
            pairs.push("since", since);
        }
        pairs
            .push("pageSize", &query.page_size.to_string())
            .push("pageNumber", &query.page_number.to_string())
            .push(
                "includeAcknowledged",
                if query.include_acknowledged {
                    "true"
                } else {
                    "false"
                },
            );
        pairs.set_on(&mut url);
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "events",
            url,
            None,
            convert::events_page,
        )
        .await
    }

    /// `POST /v1/events/{id}/ack` without a body: marks the event as handled, so listings
    /// without `includeAcknowledged` leave it out. Any 2xx answer is success, whatever its body
    /// (the API sends `{"data":{"success":true}}`, or nothing).
    pub async fn event_ack(&self, event_id: &str) -> Result<(), ApiError> {
        let url = endpoint(&self.inner.api_base, &["events", event_id, "ack"])?;
        self.execute(
            HttpMethod::Post,
            Api::Platform,
            "event_ack",
            url,
            None,
            |_| Ok(()),
        )
        .await
    }
}
