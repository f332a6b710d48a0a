//! The event log: every event the world emits, oldest first, per environment; `GET /v1/events`
//! pages, single events, acks, and events emitted through the admin API.

use serde_json::{Map, Value as Json, json};

use super::{World, base_context, check_environment};
use crate::admin::{EmitEvent, EventRef, SimEvent};
use crate::rejection::Rejection;
use crate::{DEFAULT_ENVIRONMENT_ID, DOMAINS, EventsOrder, SimConfig, clock, domain_of_topic};

/// Who acknowledges events: the simulator does not tell API keys apart beyond environments.
const ACK_ACTOR: &str = "us_key_sim";

/// `GET /v1/events` parameters, checked.
#[derive(Clone, Debug)]
pub(crate) struct EventsQuery {
    pub(crate) environment_id: String,
    pub(crate) since_ms: Option<u64>,
    pub(crate) topic: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) space_id: Option<String>,
    pub(crate) include_acknowledged: bool,
    pub(crate) page_number: u64,
    pub(crate) page_size: u64,
    pub(crate) order: EventsOrder,
}

#[derive(Debug)]
pub(super) struct EventRecord {
    event: SimEvent,
    environment_id: String,
    created_ms: u64,
}

/// The domain of an admin-emitted event: given, or the topic's; one of the Platform's unless
/// the request allows others.
fn custom_domain(request: &EmitEvent) -> Result<&str, Rejection> {
    if request.domain.as_deref().is_some_and(str::is_empty) {
        return Err(Rejection::bad("domain", "domain must not be empty"));
    }
    let domain = request
        .domain
        .as_deref()
        .unwrap_or_else(|| domain_of_topic(&request.topic));
    if !request.allow_unknown_domain && !DOMAINS.contains(&domain) {
        return Err(Rejection::bad(
            "domain",
            format!(
                "domain {domain:?} is not one of the Platform's domains ({}); give one, or \
                 set allowUnknownDomain to test a client with it",
                DOMAINS.join(", ")
            ),
        ));
    }
    Ok(domain)
}

/// The environment of an admin-emitted event: `environmentId` or `context.environmentId`
/// (which must agree when both are given), a configured one.
fn custom_environment(config: &SimConfig, request: &EmitEvent) -> Result<String, Rejection> {
    let from_context = match request
        .context
        .as_ref()
        .and_then(|c| c.get("environmentId"))
    {
        None => None,
        Some(Json::String(id)) => Some(id.as_str()),
        Some(_) => {
            return Err(Rejection::bad(
                "context.environmentId",
                "context.environmentId must be a string",
            ));
        }
    };
    let (environment_id, key) = match (request.environment_id.as_deref(), from_context) {
        (Some(given), Some(in_context)) if given != in_context => {
            return Err(Rejection::bad(
                "context.environmentId",
                format!("context.environmentId {in_context} differs from environmentId {given}"),
            ));
        }
        (Some(given), _) => (given, "environmentId"),
        (None, Some(in_context)) => (in_context, "context.environmentId"),
        (None, None) => (DEFAULT_ENVIRONMENT_ID, "environmentId"),
    };
    check_environment(config, environment_id, key)?;
    Ok(environment_id.to_owned())
}

impl World {
    pub(super) fn emit(
        &mut self,
        environment_id: &str,
        topic: &str,
        domain: Option<&str>,
        context: Map<String, Json>,
        payload: Json,
        data_url: Option<String>,
    ) -> EventRef {
        // Strictly increasing timestamps, so `since = last createdAt` never skips a later event
        // and ordering by createdAt is the emission order.
        let created_ms = clock::now_ms().max(self.last_event_ms + 1);
        self.last_event_ms = created_ms;
        self.next.event += 1;
        let id = format!("us_evt_{}_{}", self.tag, self.next.event);
        let domain = domain.unwrap_or_else(|| domain_of_topic(topic)).to_owned();
        let event = SimEvent {
            id: id.clone(),
            topic: topic.to_owned(),
            domain,
            context,
            payload,
            created_at: clock::iso_millis(created_ms),
            data_url,
            acknowledged_at: None,
            acknowledged_by: None,
            ack_count: 0,
        };
        tracing::debug!(event = %id, topic, environment = environment_id, "Event emitted");
        self.event_positions.insert(id.clone(), self.events.len());
        self.events.push(EventRecord {
            event,
            environment_id: environment_id.to_owned(),
            created_ms,
        });
        EventRef {
            id,
            topic: topic.to_owned(),
        }
    }

    pub(crate) fn emit_custom(
        &mut self,
        config: &SimConfig,
        request: &EmitEvent,
    ) -> Result<SimEvent, Rejection> {
        if request.topic.trim().is_empty() {
            return Err(Rejection::bad("topic", "topic must be a non-empty string"));
        }
        let domain = custom_domain(request)?.to_owned();
        let environment_id = custom_environment(config, request)?;
        let pinned_ms = self.pinned_created_ms(request)?;
        let mut context = base_context(&environment_id);
        if let Some(extra) = &request.context {
            context.extend(extra.clone());
        }
        let payload = request.payload.clone().unwrap_or_else(|| json!({}));
        let emitted = self.emit(
            &environment_id,
            &request.topic,
            Some(&domain),
            context,
            payload,
            None,
        );
        let position = self.event_positions[&emitted.id];
        if let Some(ms) = pinned_ms {
            // Checked not to be earlier than any event, so the log stays in order.
            let record = &mut self.events[position];
            record.created_ms = ms;
            record.event.created_at = clock::iso_millis(ms);
            self.last_event_ms = ms;
        }
        Ok(self.events[position].event.clone())
    }

    /// The `createdAt` an admin-emitted event names, if any: the last event's or later.
    fn pinned_created_ms(&self, request: &EmitEvent) -> Result<Option<u64>, Rejection> {
        let Some(text) = request.created_at.as_deref() else {
            return Ok(None);
        };
        let ms = clock::parse_iso_millis(text.trim()).ok_or_else(|| {
            Rejection::bad(
                "createdAt",
                "createdAt must be an ISO 8601 date-time, e.g. 2024-05-02T13:58:40.012Z",
            )
        })?;
        if ms < self.last_event_ms {
            return Err(Rejection::bad(
                "createdAt",
                format!(
                    "createdAt must not be earlier than the last event's, {}",
                    clock::iso_millis(self.last_event_ms)
                ),
            ));
        }
        Ok(Some(ms))
    }

    /// Every event, or those of one environment, oldest first.
    pub(crate) fn events(&self, environment_id: Option<&str>) -> Vec<SimEvent> {
        self.events
            .iter()
            .filter(|record| environment_id.is_none_or(|id| record.environment_id == id))
            .map(|record| record.event.clone())
            .collect()
    }

    fn event_record(&self, event_id: &str, environment_id: &str) -> Option<&EventRecord> {
        self.event_positions
            .get(event_id)
            .map(|position| &self.events[*position])
            .filter(|record| record.environment_id == environment_id)
    }

    /// `GET /v1/events/{id}` for a key of `environment_id`.
    pub(crate) fn event(&self, event_id: &str, environment_id: &str) -> Option<Json> {
        self.event_record(event_id, environment_id)
            .map(|record| record.event.to_platform_json())
    }

    /// `POST /v1/events/{id}/ack` for a key of `environment_id`; false for an unknown event.
    pub(crate) fn ack_event(&mut self, event_id: &str, environment_id: &str) -> bool {
        if self.event_record(event_id, environment_id).is_none() {
            return false;
        }
        let position = self.event_positions[event_id];
        let event = &mut self.events[position].event;
        event.ack_count += 1;
        if event.acknowledged_at.is_none() {
            event.acknowledged_at = Some(clock::iso_millis(clock::now_ms()));
            event.acknowledged_by = Some(ACK_ACTOR.to_owned());
        }
        true
    }

    /// One page of `GET /v1/events`.
    pub(crate) fn list_events(&self, query: &EventsQuery) -> Vec<Json> {
        let skip = usize::try_from((query.page_number - 1).saturating_mul(query.page_size))
            .unwrap_or(usize::MAX);
        let take = usize::try_from(query.page_size).unwrap_or(usize::MAX);
        let context_is = |record: &EventRecord, key: &str, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|wanted| {
                record.event.context.get(key).and_then(Json::as_str) == Some(wanted)
            })
        };
        // Emission order is createdAt order: timestamps never decrease.
        let ordered: Box<dyn Iterator<Item = &EventRecord>> = match query.order {
            EventsOrder::Oldest => Box::new(self.events.iter()),
            EventsOrder::Newest => Box::new(self.events.iter().rev()),
        };
        ordered
            .filter(|record| record.environment_id == query.environment_id)
            .filter(|record| {
                query
                    .since_ms
                    .is_none_or(|since| record.created_ms >= since)
            })
            .filter(|record| query.include_acknowledged || record.event.acknowledged_at.is_none())
            .filter(|record| {
                query
                    .topic
                    .as_deref()
                    .is_none_or(|topic| record.event.topic == topic)
            })
            .filter(|record| {
                query
                    .domain
                    .as_deref()
                    .is_none_or(|domain| record.event.domain == domain)
            })
            .filter(|record| context_is(record, "spaceId", &query.space_id))
            .skip(skip)
            .take(take)
            .map(|record| record.event.to_platform_json())
            .collect()
    }
}
