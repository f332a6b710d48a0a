//! Jobs: what the simulator remembers of each one, the Platform `Job` object it serves, and the
//! checks of the job request bodies (`JobConfig`, `JobUpdate`, `JobAckDetails`,
//! `JobCompleteDetails`), whose keys and enumerations follow `@flatfile/api`.

use serde_json::{Map, Value as Json, json};

use crate::fields::{object, string};
use crate::rejection::Rejection;
use crate::{JobState, clock, generate};

/// `JobType` of the Platform.
pub(crate) const JOB_TYPES: [&str; 9] = [
    "file",
    "workbook",
    "sheet",
    "space",
    "document",
    "app",
    "agent",
    "autobuild",
    "onboarding",
];

/// `JobStatus` of the Platform.
pub(crate) const JOB_STATUSES: [&str; 9] = [
    "created",
    "planning",
    "scheduled",
    "ready",
    "executing",
    "complete",
    "failed",
    "canceled",
    "waiting",
];

const JOB_MODES: [&str; 4] = ["foreground", "background", "toolbarBlocking", "hidden"];
const TRIGGERS: [&str; 2] = ["manual", "immediate"];
const PART_EXECUTIONS: [&str; 2] = ["sequential", "parallel"];

/// Keys of `JobConfig` besides `type`, `operation` and `source`, kept as given.
const CONFIG_KEYS: [&str; 20] = [
    "destination",
    "config",
    "trigger",
    "status",
    "progress",
    "fileId",
    "mode",
    "input",
    "subject",
    "outcome",
    "result",
    "info",
    "managed",
    "environmentId",
    "part",
    "partData",
    "partExecution",
    "parentId",
    "predecessorIds",
    "metadata",
];

/// A job the simulator created: by a submit, by `POST /_sim/jobs` or by `POST /v1/jobs`.
#[derive(Clone, Debug)]
pub(crate) struct JobRecord {
    /// Creation order, for listing.
    pub(crate) seq: u64,
    pub(crate) status: &'static str,
    /// Every `progress` sent with `ack` or `PATCH`, in order.
    pub(crate) progress: Vec<u8>,
    pub(crate) info: Option<String>,
    pub(crate) outcome: Option<Json>,
    /// `complete` and `fail` calls received, accepted or not: a job must be finished once.
    pub(crate) finishes: u32,
    pub(crate) created_ms: u64,
    pub(crate) updated_ms: u64,
    pub(crate) started_ms: Option<u64>,
    pub(crate) finished_ms: Option<u64>,
    pub(crate) outcome_acknowledged_at: Option<String>,
    pub(crate) environment_id: String,
    /// `type`: the job's domain, e.g. `workbook`.
    pub(crate) kind: String,
    pub(crate) operation: String,
    /// The workbook, sheet or file it works on.
    pub(crate) source: String,
    pub(crate) parent_id: Option<String>,
    /// Further `JobConfig` keys (`config`, `mode`, `input`, `part`, `partData`, `metadata`...),
    /// served as given over the defaults.
    pub(crate) fields: Map<String, Json>,
    /// Context of the job's `job:*` events.
    pub(crate) context: Map<String, Json>,
}

impl JobRecord {
    pub(crate) fn new(
        seq: u64,
        environment_id: &str,
        name: (&str, &str),
        source: &str,
        context: Map<String, Json>,
    ) -> JobRecord {
        let now = clock::now_ms();
        JobRecord {
            seq,
            status: "created",
            progress: Vec::new(),
            info: None,
            outcome: None,
            finishes: 0,
            created_ms: now,
            updated_ms: now,
            started_ms: None,
            finished_ms: None,
            outcome_acknowledged_at: None,
            environment_id: environment_id.to_owned(),
            kind: name.0.to_owned(),
            operation: name.1.to_owned(),
            source: source.to_owned(),
            parent_id: None,
            fields: Map::new(),
            context,
        }
    }

    /// `<type>:<operation>`, as `payload.job` of its events.
    pub(crate) fn name(&self) -> String {
        format!("{}:{}", self.kind, self.operation)
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.status, "complete" | "failed" | "canceled")
    }

    /// The payload of its `job:*` events, as the Platform documents it.
    pub(crate) fn payload(&self) -> Json {
        json!({
            "job": self.name(),
            "operation": self.operation,
            "domain": self.kind,
            "status": self.status,
            "isPart": self.parent_id.is_some(),
            "info": self.info,
            "input": self.fields.get("input").cloned().unwrap_or_else(|| json!({})),
        })
    }

    /// [`JobRecord::payload`] as it was in another status (`job:created` of a job already ready).
    pub(crate) fn payload_with_status(&self, status: &str) -> Json {
        let mut payload = self.payload();
        payload["status"] = json!(status);
        payload
    }

    pub(crate) fn state(&self, id: &str) -> JobState {
        JobState {
            id: id.to_owned(),
            status: self.status.to_owned(),
            progress: self.progress.clone(),
            info: self.info.clone(),
            outcome_message: self
                .outcome
                .as_ref()
                .and_then(|outcome| outcome.get("message"))
                .and_then(Json::as_str)
                .map(str::to_owned),
            finishes: self.finishes,
        }
    }

    /// The Platform `Job` object.
    pub(crate) fn to_json(&self, id: &str) -> Json {
        let mut job = Map::new();
        // Defaults first, so a key given at creation replaces them.
        for (key, value) in [
            ("config", json!({})),
            ("trigger", json!("immediate")),
            ("mode", json!("foreground")),
            ("input", json!({})),
            ("subject", json!({ "type": "resource", "id": self.source })),
            ("managed", json!(true)),
        ] {
            job.insert(key.to_owned(), value);
        }
        job.extend(self.fields.clone());
        let mut set = |key: &str, value: Json| {
            job.insert(key.to_owned(), value);
        };
        set("id", json!(id));
        set("createdBy", json!(generate::ACTOR_ID));
        set("createdAt", json!(clock::iso_millis(self.created_ms)));
        set("updatedAt", json!(clock::iso_millis(self.updated_ms)));
        set("startedAt", json!(self.started_ms.map(clock::iso_millis)));
        set("finishedAt", json!(self.finished_ms.map(clock::iso_millis)));
        set("outcomeAcknowledgedAt", json!(self.outcome_acknowledged_at));
        set("environmentId", json!(self.environment_id));
        set("spaceId", json!(generate::SPACE_ID));
        set("type", json!(self.kind));
        set("operation", json!(self.operation));
        set("source", json!(self.source));
        set("status", json!(self.status));
        set(
            "progress",
            json!(self.progress.last().copied().unwrap_or(0)),
        );
        set("info", json!(self.info));
        set("outcome", json!(self.outcome));
        if let Some(parent) = &self.parent_id {
            set("parentId", json!(parent));
        }
        Json::Object(job)
    }
}

/// `JobAckDetails`: `{info?, progress?, estimatedCompletionAt?}`.
#[derive(Debug, Default)]
pub(crate) struct AckDetails {
    pub(crate) info: Option<String>,
    pub(crate) progress: Option<u8>,
}

/// `JobCompleteDetails`: `{outcome?, info?}`.
#[derive(Debug, Default)]
pub(crate) struct CompleteDetails {
    pub(crate) info: Option<String>,
    pub(crate) outcome: Option<Json>,
}

/// `JobUpdate`: `{config?, status?, progress?, outcomeAcknowledgedAt?, info?, metadata?}`.
#[derive(Debug, Default)]
pub(crate) struct JobUpdate {
    pub(crate) config: Option<Json>,
    pub(crate) status: Option<&'static str>,
    pub(crate) progress: Option<u8>,
    pub(crate) outcome_acknowledged_at: Option<String>,
    pub(crate) info: Option<String>,
    pub(crate) metadata: Option<Json>,
}

/// A `JobConfig` body of `POST /v1/jobs`.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) kind: &'static str,
    pub(crate) operation: String,
    pub(crate) source: String,
    pub(crate) status: Option<&'static str>,
    pub(crate) parent_id: Option<String>,
    pub(crate) environment_id: Option<String>,
    pub(crate) fields: Map<String, Json>,
}

fn unknown_key(body: &Map<String, Json>, known: &[&str], what: &str) -> Result<(), Rejection> {
    match body.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(Rejection::bad(
            key.clone(),
            format!(
                "{key} is not a key of {what}; its keys are {}",
                known.join(", ")
            ),
        )),
    }
}

fn one_of(
    body: &Map<String, Json>,
    key: &str,
    allowed: &[&'static str],
) -> Result<Option<&'static str>, Rejection> {
    match string(body, key)? {
        None => Ok(None),
        Some(given) => allowed
            .iter()
            .copied()
            .find(|name| *name == given)
            .map(Some)
            .ok_or_else(|| {
                Rejection::bad(
                    key,
                    format!("{key} {given:?} is not one of {}", allowed.join(", ")),
                )
            }),
    }
}

fn progress(body: &Map<String, Json>) -> Result<Option<u8>, Rejection> {
    match body.get("progress") {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|progress| *progress <= 100)
            .and_then(|progress| u8::try_from(progress).ok())
            .map(Some)
            .ok_or_else(|| Rejection::bad("progress", "progress must be an integer from 0 to 100")),
    }
}

fn date_time(body: &Map<String, Json>, key: &str) -> Result<Option<String>, Rejection> {
    match string(body, key)? {
        Some(text) if clock::parse_iso_millis(&text).is_none() => Err(Rejection::bad(
            key,
            format!("{key} must be an ISO 8601 date-time, e.g. 2024-05-02T13:58:40.012Z"),
        )),
        other => Ok(other),
    }
}

pub(crate) fn parse_ack(body: &Map<String, Json>) -> Result<AckDetails, Rejection> {
    unknown_key(
        body,
        &["info", "progress", "estimatedCompletionAt"],
        "JobAckDetails",
    )?;
    date_time(body, "estimatedCompletionAt")?;
    Ok(AckDetails {
        info: string(body, "info")?,
        progress: progress(body)?,
    })
}

/// `JobOutcome` keys; `next` and `trigger` are unions the simulator keeps as given.
const OUTCOME_KEYS: [&str; 7] = [
    "acknowledge",
    "trigger",
    "buttonText",
    "next",
    "heading",
    "message",
    "hideDefaultButton",
];

pub(crate) fn parse_complete(body: &Map<String, Json>) -> Result<CompleteDetails, Rejection> {
    unknown_key(body, &["outcome", "info"], "JobCompleteDetails")?;
    let outcome = object(body, "outcome")?;
    if let Some(Json::Object(outcome)) = &outcome {
        if let Some(key) = outcome
            .keys()
            .find(|key| !OUTCOME_KEYS.contains(&key.as_str()))
        {
            return Err(Rejection::bad(
                format!("outcome.{key}"),
                format!(
                    "outcome.{key} is not a key of JobOutcome; its keys are {}",
                    OUTCOME_KEYS.join(", ")
                ),
            ));
        }
        for key in ["acknowledge", "hideDefaultButton"] {
            if outcome.get(key).is_some_and(|value| !value.is_boolean()) {
                return Err(Rejection::bad(
                    format!("outcome.{key}"),
                    format!("outcome.{key} must be true or false"),
                ));
            }
        }
        for key in ["buttonText", "heading", "message"] {
            if outcome.get(key).is_some_and(|value| !value.is_string()) {
                return Err(Rejection::bad(
                    format!("outcome.{key}"),
                    format!("outcome.{key} must be a string"),
                ));
            }
        }
    }
    Ok(CompleteDetails {
        info: string(body, "info")?,
        outcome,
    })
}

pub(crate) fn parse_update(body: &Map<String, Json>) -> Result<JobUpdate, Rejection> {
    unknown_key(
        body,
        &[
            "config",
            "status",
            "progress",
            "outcomeAcknowledgedAt",
            "info",
            "metadata",
        ],
        "JobUpdate",
    )?;
    Ok(JobUpdate {
        config: object(body, "config")?,
        status: one_of(body, "status", &JOB_STATUSES)?,
        progress: progress(body)?,
        outcome_acknowledged_at: date_time(body, "outcomeAcknowledgedAt")?,
        info: string(body, "info")?,
        metadata: object(body, "metadata")?,
    })
}

pub(crate) fn parse_config(body: &Map<String, Json>) -> Result<NewJob, Rejection> {
    let mut known = vec!["type", "operation", "source"];
    known.extend(CONFIG_KEYS);
    unknown_key(body, &known, "JobConfig")?;
    let kind = one_of(body, "type", &JOB_TYPES)?
        .ok_or_else(|| Rejection::bad("type", "type is required"))?;
    let operation = string(body, "operation")?
        .filter(|operation| !operation.is_empty())
        .ok_or_else(|| Rejection::bad("operation", "operation is required"))?;
    let source = string(body, "source")?
        .filter(|source| !source.is_empty())
        .ok_or_else(|| Rejection::bad("source", "source is required"))?;
    one_of(body, "mode", &JOB_MODES)?;
    one_of(body, "trigger", &TRIGGERS)?;
    one_of(body, "partExecution", &PART_EXECUTIONS)?;
    for key in ["destination", "fileId", "info", "environmentId", "parentId"] {
        string(body, key)?;
    }
    for key in [
        "config", "input", "subject", "outcome", "result", "partData", "metadata",
    ] {
        object(body, key)?;
    }
    if body
        .get("managed")
        .is_some_and(|value| !value.is_boolean() && !value.is_null())
    {
        return Err(Rejection::bad("managed", "managed must be true or false"));
    }
    if body
        .get("part")
        .is_some_and(|value| !value.is_u64() && !value.is_null())
    {
        return Err(Rejection::bad(
            "part",
            "part must be a non-negative integer",
        ));
    }
    let status = one_of(body, "status", &JOB_STATUSES)?;
    progress(body)?;
    let fields = body
        .iter()
        .filter(|(key, value)| {
            !value.is_null()
                && !matches!(
                    key.as_str(),
                    "type" | "operation" | "source" | "status" | "progress" | "info" | "outcome"
                )
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(NewJob {
        kind,
        operation,
        source,
        status,
        parent_id: string(body, "parentId")?,
        environment_id: string(body, "environmentId")?,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Json) -> Map<String, Json> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn request_bodies_refuse_keys_and_values_outside_the_sdk_types() {
        let refused = [
            (parse_ack(&body(json!({"progress": 101}))).err(), "progress"),
            (parse_ack(&body(json!({"percent": 5}))).err(), "percent"),
            (
                parse_complete(&body(json!({"outcome": {"colour": "red"}}))).err(),
                "outcome.colour",
            ),
            (
                parse_complete(&body(json!({"outcome": {"acknowledge": "yes"}}))).err(),
                "outcome.acknowledge",
            ),
            (
                parse_update(&body(json!({"status": "done"}))).err(),
                "status",
            ),
            (
                parse_update(&body(json!({"outcomeAcknowledgedAt": "soon"}))).err(),
                "outcomeAcknowledgedAt",
            ),
            (
                parse_config(&body(
                    json!({"type": "robot", "operation": "x", "source": "y"}),
                ))
                .err(),
                "type",
            ),
            (
                parse_config(&body(json!({"type": "workbook", "source": "y"}))).err(),
                "operation",
            ),
        ];
        for (rejection, key) in refused {
            let rejection = rejection.unwrap_or_else(|| panic!("a body with bad {key} passed"));
            assert_eq!(rejection.key.as_deref(), Some(key), "{rejection:?}");
        }
        let update = parse_update(&body(json!({
            "status": "executing", "progress": 40, "info": "Halfway",
            "outcomeAcknowledgedAt": "2024-05-02T13:58:40.012Z", "metadata": {"a": 1}, "config": {}
        })))
        .expect("a full JobUpdate is accepted");
        assert_eq!(update.status, Some("executing"));
        assert_eq!(update.progress, Some(40));
        let config = parse_config(&body(json!({
            "type": "workbook", "operation": "export", "source": "us_wb_1",
            "mode": "background", "metadata": {"by": "test"}, "status": "ready"
        })))
        .expect("a JobConfig is accepted");
        assert_eq!(
            (config.kind, config.operation.as_str(), config.status),
            ("workbook", "export", Some("ready"))
        );
        assert_eq!(config.fields["mode"], "background");
        assert!(!config.fields.contains_key("status"));
    }
}
