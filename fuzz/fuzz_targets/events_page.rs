//! The Platform events listing (`GET /v1/events`), as the poller reads it.
#![no_main]

use flatsync_flatfile::{EventsPage, IncomingEvent, parse_webhook_body};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let Ok(page) = EventsPage::parse(body) else {
        return;
    };
    assert_eq!(
        (page.events.len() + page.skipped.len()) as u64,
        page.items_on_page,
        "every item is either an event or a skip reason, so paging by count stays right"
    );
    for event in &page.events {
        assert!(!event.id.is_empty() && !event.topic.is_empty());
        assert!(
            !event.body.contains(&b'\n'),
            "a listed event body spans lines"
        );
        let value: Value =
            serde_json::from_slice(&event.body).expect("a listed event body is JSON");
        assert_eq!(value["id"].as_str(), Some(event.id.as_str()));
        assert_eq!(value["topic"].as_str(), Some(event.topic.as_str()));
        assert_eq!(
            value.get("createdAt").and_then(Value::as_str),
            event.created_at.as_deref()
        );
        // A polled event goes down the webhook path: as a Platform event it is the same event.
        // (An item shaped like a carried part or a legacy notification is classified as such;
        // that it does not panic is what counts there.)
        if let Ok(IncomingEvent::Platform(platform)) = parse_webhook_body(&event.body) {
            assert_eq!(platform.id, event.id);
            assert_eq!(platform.topic, event.topic);
        }
    }
    for reason in &page.skipped {
        assert!(reason.starts_with("event "), "{reason}");
    }
});
