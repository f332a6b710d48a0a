//! The shapes and senders other tests build on: record-event shapes, multi-part and id-less
//! submits, created jobs, event domains, the legacy Workspaces endpoint and notification, the
//! Portal 2.0 upload bodies, the forwarder's body and the `send-webhook` modes that send them.

use flatfile_sim::{
    AdminClient, DOMAINS, EmitEvent, EventShape, JobRequest, NewRecords, RecordEdit, SimConfig,
    SimEvent, SubmitRequest, WorkspaceNotification, domain_of_topic, forwarded_event_body,
    portal2_upload_bodies, portal2_upload_rows, record_ids, submit_event_body, workspace_rows,
    workspace_webhook_body,
};
use reqwest::Method;
use serde_json::{Map, Value, json};

mod common;

use common::{Harness, LEGACY_KEY, SECRET, receiver, record_ids_of as ids};

fn config(rows: u64) -> SimConfig {
    SimConfig {
        rows,
        ..SimConfig::default()
    }
}

impl Harness {
    /// GET with the secret key; the status and the JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(SECRET)
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method.clone(), self.url(path))
            .json(&body)
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("JSON body");
        assert_eq!(status, 200, "{method} {path} {body}: {answer}");
        answer
    }

    fn event(&self, id: &str) -> SimEvent {
        self.sim
            .events(None)
            .into_iter()
            .find(|event| event.id == id)
            .unwrap_or_else(|| panic!("no event {id}"))
    }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object").clone()
}

/// Neither a key nor a value anywhere in `value` is `needle`.
fn nowhere(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(text) => !text.contains(needle),
        Value::Array(items) => items.iter().all(|item| nowhere(item, needle)),
        Value::Object(map) => map
            .iter()
            .all(|(key, item)| key != needle && nowhere(item, needle)),
        _ => true,
    }
}

#[tokio::test]
async fn record_events_take_each_shape_and_every_shape_still_leads_to_the_records() {
    let h = Harness::start(config(20)).await;
    let sheet = "us_sh_shape-contacts";
    let generated = record_ids(h.sim.config(), sheet);

    // recordIds (the default): the ids in the payload.
    let plain = h
        .sim
        .add_records(sheet, &NewRecords::Count(2))
        .expect("added");
    let event = h.event(&plain.events[0].id);
    assert_eq!(event.payload["recordIds"], json!(plain.record_ids));
    assert_eq!(event.payload["recordCount"], 2);

    // count: only the count, and nothing that names the commit or the records.
    let counted = h
        .admin(
            Method::POST,
            &format!("/_sim/sheets/{sheet}/records"),
            json!({"count": 3, "eventShape": "count"}),
        )
        .await;
    let commit = counted["commitId"].as_str().expect("commitId");
    let created = h.event(counted["events"][0]["id"].as_str().expect("id"));
    assert_eq!(created.topic, "records:created");
    assert_eq!(created.payload, json!({"count": 3}));
    assert_eq!(created.data_url, None);
    let created_json = created.to_platform_json();
    assert!(nowhere(&created_json, commit), "{created_json}");
    assert!(nowhere(&created_json, "commitId") && nowhere(&created_json, "versionId"));
    for id in counted["recordIds"].as_array().expect("ids") {
        assert!(nowhere(&created_json, id.as_str().expect("id")));
    }
    let commit_created = h.event(counted["events"][1]["id"].as_str().expect("id"));
    assert_eq!(commit_created.topic, "commit:created");
    assert_eq!(commit_created.context["commitId"], commit);

    // dataUrl: the count, and a dataUrl relative to the API root that serves the commit.
    let edits = [RecordEdit {
        id: generated[0].clone(),
        values: object(json!({"age": 41})),
    }];
    let edited = h
        .sim
        .edit_records_as(sheet, &edits, EventShape::DataUrl)
        .expect("edited");
    let commit = edited.commit_id.clone().expect("an edit makes a commit");
    let updated = h.event(&edited.events[0].id);
    assert_eq!(updated.topic, "records:updated");
    assert_eq!(updated.payload, json!({"count": 1}));
    let data_url = updated.data_url.clone().expect("a dataUrl");
    assert_eq!(
        data_url,
        format!("v1/sheets/{sheet}/records?commitId={commit}")
    );
    assert!(
        !updated.context.contains_key("commitId") && !updated.context.contains_key("versionId")
    );
    let through_url = h.ok(&format!("/{data_url}")).await;
    assert_eq!(ids(&through_url), [generated[0].clone()]);
    assert_eq!(
        through_url["data"]["records"][0]["values"]["age"]["value"],
        41
    );

    // versionId: records:* and commit:* name the commit only as context.versionId.
    let admin = AdminClient::new(&h.sim.base_url()).expect("client");
    let versioned = tokio::task::spawn_blocking(move || {
        admin.add_records_as(
            "us_sh_shape-contacts",
            &NewRecords::Count(1),
            EventShape::VersionId,
        )
    })
    .await
    .expect("joined")
    .expect("added");
    let commit = versioned.commit_id.clone().expect("commit");
    for event in &versioned.events {
        let event = h.event(&event.id);
        assert_eq!(
            event.context["versionId"],
            commit.as_str(),
            "{}",
            event.topic
        );
        let json = event.to_platform_json();
        assert!(nowhere(&json, "commitId"), "{}: {json}", event.topic);
        assert!(event.data_url.is_none(), "{}", event.topic);
        assert!(nowhere(&event.payload, &commit), "{}", event.topic);
    }
    assert_eq!(
        h.event(&versioned.events[0].id).payload,
        json!({"count": 1})
    );
    let by_version = h
        .ok(&format!("/v1/sheets/{sheet}/records?versionId={commit}"))
        .await;
    assert_eq!(ids(&by_version), versioned.record_ids);

    // Deletions: recordIds or count.
    let deleted = h
        .sim
        .delete_records_as(sheet, &generated[1..3], EventShape::Count)
        .expect("deleted");
    let deletion = h.event(&deleted.events[0].id);
    assert_eq!(deletion.topic, "records:deleted");
    assert_eq!(deletion.payload, json!({"count": 2}));
    assert_eq!(deletion.data_url, None);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_multi_part_submit_has_part_jobs_and_completing_them_completes_the_parts() {
    let h = Harness::start(config(12)).await;
    let submitted = h
        .admin(Method::POST, "/_sim/submit", json!({"parts": 3}))
        .await;
    let parent = submitted["jobId"].as_str().expect("jobId").to_owned();
    let parts = submitted["parts"].as_array().expect("parts").clone();
    assert_eq!(parts.len(), 3);
    let ready = h.event(submitted["eventId"].as_str().expect("eventId"));
    assert_eq!(ready.payload["isPart"], false);
    assert_eq!(ready.context["jobId"], parent.as_str());
    for (at, part) in parts.iter().enumerate() {
        let number = at as u64 + 1;
        assert_eq!(part["part"], number);
        assert_eq!(part["total"], 3);
        let job_id = part["jobId"].as_str().expect("jobId");
        assert_ne!(job_id, parent);
        let event = h.event(part["eventId"].as_str().expect("eventId"));
        assert_eq!(event.topic, "job:ready");
        assert_eq!(event.payload["isPart"], true);
        assert_eq!(event.payload["job"], ready.payload["job"]);
        assert_eq!(event.context["jobId"], job_id);
        assert_eq!(event.context["workbookId"], ready.context["workbookId"]);
        let job = h.ok(&format!("/v1/jobs/{job_id}")).await;
        assert_eq!(job["data"]["parentId"], parent.as_str());
        assert_eq!(job["data"]["part"], number);
        assert_eq!(job["data"]["partData"], json!({"part": number, "total": 3}));
        assert_eq!(job["data"]["source"], submitted["workbookId"]);
    }
    let listed = h.ok(&format!("/v1/jobs?parentId={parent}")).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(3));

    // Completing every part emits job:parts-completed for the parent, once.
    for part in &parts {
        let job_id = part["jobId"].as_str().expect("jobId");
        let done = h
            .http
            .post(h.url(&format!("/v1/jobs/{job_id}/complete")))
            .bearer_auth(SECRET)
            .json(&json!({"outcome": {"acknowledge": true, "heading": "Success", "message": "Part done"}, "info": "Done"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(done.status(), 200);
    }
    let topics: Vec<String> = h
        .sim
        .events(None)
        .into_iter()
        .map(|event| event.topic)
        .filter(|topic| topic.starts_with("job:parts") || topic == "job:completed")
        .collect();
    assert_eq!(
        topics,
        [
            "job:completed",
            "job:completed",
            "job:completed",
            "job:parts-completed"
        ]
    );
    let last = h.sim.events(None).pop().expect("event");
    assert_eq!(last.context["jobId"], parent.as_str());

    // The typed answer lists the parts too.
    let typed = h
        .sim
        .submit(&SubmitRequest {
            parts: Some(1),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    assert_eq!(typed.parts.len(), 1);
    assert_eq!((typed.parts[0].part, typed.parts[0].total), (1, 1));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_submit_without_context_ids_names_its_workbook_only_in_the_job() {
    let h = Harness::start(config(12)).await;
    for (request, source_is_sheet) in [
        (json!({"contextIds": false, "parts": 2}), false),
        (
            json!({"contextIds": false, "workbookId": "us_wb_bare", "sheetSlug": "companies"}),
            true,
        ),
    ] {
        let submitted = h.admin(Method::POST, "/_sim/submit", request).await;
        let mut events = vec![submitted["eventId"].as_str().expect("eventId").to_owned()];
        for part in submitted["parts"].as_array().into_iter().flatten() {
            events.push(part["eventId"].as_str().expect("eventId").to_owned());
        }
        for id in &events {
            let event = h.event(id);
            for key in ["workbookId", "sheetId", "sheetSlug"] {
                assert!(!event.context.contains_key(key), "{key} in {event:?}");
            }
            let job_id = event.context["jobId"].as_str().expect("jobId");
            let job = h.ok(&format!("/v1/jobs/{job_id}")).await;
            let expected = if source_is_sheet {
                submitted["sheets"][0]["id"].clone()
            } else {
                submitted["workbookId"].clone()
            };
            assert_eq!(job["data"]["source"], expected);
        }
    }
    h.sim.shutdown().await;
}

#[tokio::test]
async fn jobs_created_by_the_admin_api_emit_nothing_and_belong_to_their_workbook() {
    let h = Harness::start(SimConfig {
        environments: vec![flatfile_sim::SimEnvironment::new(
            "us_env_other",
            "sk_other",
        )],
        ..config(6)
    })
    .await;
    let created = h
        .admin(
            Method::POST,
            "/_sim/jobs",
            json!({"job": "workbook:exportAll", "workbookId": "us_wb_admin"}),
        )
        .await;
    let job_id = created["jobId"].as_str().expect("jobId");
    assert_eq!(created["job"], "workbook:exportAll");
    assert_eq!(created["source"], "us_wb_admin");
    assert_eq!(created["environmentId"], "us_env_demo");
    assert!(h.sim.events(None).is_empty());
    let job = h.ok(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(
        (
            &job["data"]["type"],
            &job["data"]["operation"],
            &job["data"]["status"]
        ),
        (&json!("workbook"), &json!("exportAll"), &json!("ready"))
    );
    // A submitted workbook's job belongs to the workbook's environment.
    let other = h
        .sim
        .submit(&SubmitRequest {
            environment_id: Some("us_env_other".to_owned()),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    let base = h.sim.base_url();
    let workbook = other.workbook_id.clone();
    let created = tokio::task::spawn_blocking(move || {
        AdminClient::new(&base)
            .expect("client")
            .create_job(&JobRequest::workbook(workbook))
    })
    .await
    .expect("joined")
    .expect("created");
    assert_eq!(created.environment_id, "us_env_other");
    let (status, _) = h.get(&format!("/v1/jobs/{}", created.job_id)).await;
    assert_eq!(
        status, 404,
        "the default key does not see another environment's job"
    );
    // The job:ready a test sends itself names it.
    let body = submit_event_body("us_evt_x", "us_wb_admin", job_id);
    assert_eq!(body["context"]["jobId"], job_id);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn every_emitted_event_has_a_platform_domain() {
    let h = Harness::start(config(10)).await;
    let submitted = h
        .sim
        .submit(&SubmitRequest {
            parts: Some(1),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    let sheet = submitted.sheets[0].id.clone();
    h.sim
        .add_records(&sheet, &NewRecords::Count(1))
        .expect("added");
    let rows = h.sim.sheet_rows(&sheet).expect("rows");
    h.sim
        .delete_records(&sheet, &[rows[0].id.clone()])
        .expect("deleted");
    for topic in [
        "space:created",
        "agent:created",
        "snapshot:created",
        "layer:created",
        "action:created",
        "data-clip:created",
        "canvas-area:updated",
        "cron:5-minutes",
    ] {
        h.sim.emit_event(&EmitEvent::new(topic)).expect(topic);
    }
    let events = h.sim.events(None);
    assert!(events.len() > 12);
    for event in &events {
        assert!(
            DOMAINS.contains(&event.domain.as_str()),
            "{} has domain {}",
            event.topic,
            event.domain
        );
        assert_eq!(
            event.domain,
            domain_of_topic(&event.topic),
            "{}",
            event.topic
        );
    }
    let domain = |topic: &str| {
        events
            .iter()
            .find(|event| event.topic == topic)
            .map(|event| event.domain.clone())
            .unwrap_or_else(|| panic!("no {topic}"))
    };
    assert_eq!(domain("records:created"), "workbook");
    assert_eq!(domain("records:deleted"), "workbook");
    assert_eq!(domain("commit:created"), "workbook");
    assert_eq!(domain("job:ready"), "job");
    assert_eq!(domain("agent:created"), "environment");
    assert_eq!(domain("snapshot:created"), "sheet");
    assert_eq!(domain("action:created"), "space");
    assert_eq!(domain("cron:5-minutes"), "cron");
    assert_eq!(domain_of_topic("acme:custom"), "acme");
    // An explicit domain is kept when it is one of the Platform's.
    let explicit = h
        .sim
        .emit_event(&EmitEvent {
            domain: Some("file".to_owned()),
            ..EmitEvent::new("space:created")
        })
        .expect("emitted");
    assert_eq!(explicit.domain, "file");
    let odd = h
        .sim
        .emit_event(&EmitEvent {
            allow_unknown_domain: true,
            ..EmitEvent::new("acme:custom")
        })
        .expect("emitted when asked for");
    assert_eq!(odd.domain, "acme");
    h.sim.shutdown().await;
}

#[tokio::test]
async fn workspace_records_page_like_the_legacy_batch_rows() {
    let rows = 123;
    let h = Harness::start(SimConfig {
        max_page_size: 40,
        ..config(rows)
    })
    .await;
    let expected = workspace_rows(h.sim.config(), "ws-1", "sheet-a");
    assert_eq!(expected.len() as u64, rows);
    let legacy = |path: String| {
        h.http
            .get(h.url(&path))
            .header("X-Api-Key", LEGACY_KEY)
            .send()
    };
    // Default take 50, capped at 40 here: limit says what was applied.
    let first: Value = legacy("/workspace/ws-1/sheet/sheet-a/records".to_owned())
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        first["pagination"],
        json!({"currentPage": 1, "limit": 40, "offset": 0, "onPage": 40, "nextOffset": 40, "totalCount": rows, "pageCount": 4})
    );
    let mut served = Vec::new();
    let mut skip = 0;
    loop {
        let page: Value = legacy(format!(
            "/workspace/ws-1/sheet/sheet-a/records?skip={skip}&take=30"
        ))
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
        let data = page["data"].as_array().expect("data").clone();
        assert_eq!(page["pagination"]["onPage"], data.len());
        assert_eq!(page["pagination"]["limit"], 30);
        served.extend(data);
        if page["pagination"]["currentPage"] == page["pagination"]["pageCount"] {
            break;
        }
        skip = page["pagination"]["nextOffset"]
            .as_u64()
            .expect("nextOffset");
    }
    assert_eq!(served.len() as u64, rows);
    for (record, row) in served.iter().zip(&expected) {
        let mut keys: Vec<&String> = record.as_object().expect("record").keys().collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["createdAt", "id", "mapped", "status", "updatedAt", "valid"],
            "{record}"
        );
        assert_eq!(record["id"].to_string(), row.id, "ids are numbers");
        assert_eq!(record["valid"], row.valid);
        assert_eq!(record["status"], row.status.as_str());
        let mapped: Vec<(String, Value)> = record["mapped"]
            .as_object()
            .expect("mapped")
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        assert_eq!(mapped, row.values, "values in the served order");
    }
    let statuses: std::collections::HashSet<&str> =
        expected.iter().map(|row| row.status.as_str()).collect();
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert!(expected.iter().filter(|row| !row.valid).count() as u64 == rows / 10);
    assert_ne!(
        workspace_rows(h.sim.config(), "ws-1", "sheet-b")[0].id,
        expected[0].id,
        "another sheet has other records"
    );
    // Legacy auth and envelope.
    let refused = h
        .http
        .get(h.url("/workspace/ws-1/sheet/sheet-a/records"))
        .bearer_auth(SECRET)
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.expect("JSON");
    assert_eq!(refused["statusCode"], 401);
    assert_eq!(h.sim.stats().workspace_records, 7);
    h.sim.shutdown().await;
}

#[test]
fn the_workspace_notification_names_the_workspace_and_sheet() {
    let body = workspace_webhook_body(
        "evt-ws-1",
        "ws-1",
        "sheet-a",
        WorkspaceNotification::NewRecordsAdded,
    );
    assert_eq!(body["type"], "New records added");
    assert_eq!(body["env"], json!({}));
    let scope = body["scope"].as_object().expect("scope");
    let mut keys: Vec<&str> = scope.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["environmentId", "eventId", "sheetId", "team", "workspaceId"]
    );
    assert_eq!(scope["eventId"], "evt-ws-1");
    assert_eq!(scope["workspaceId"], "ws-1");
    assert_eq!(scope["sheetId"], "sheet-a");
    assert!(scope["team"]["id"].is_number() && scope["team"]["name"].is_string());
    let status = workspace_webhook_body(
        "evt-ws-2",
        "ws-1",
        "sheet-a",
        WorkspaceNotification::RecordStatusModified,
    );
    assert_eq!(status["type"], "Record status modified");
}

#[test]
fn a_portal2_upload_is_split_into_numbered_requests_of_the_fixture_shape() {
    // The flatfile crate's copy of the reference fixture, the one the workspace keeps.
    let fixture: Value = serde_json::from_str(include_str!(
        "../../flatfile/testdata/legacy-webhook-v2-batch-upload.json"
    ))
    .expect("fixture is JSON");
    let config = SimConfig {
        seed: 4,
        ..SimConfig::default()
    };
    let bodies = portal2_upload_bodies(&config, "batch-p2", 2_345, 1_000);
    let rows = portal2_upload_rows(&config, "batch-p2", 2_345, 1_000);
    assert_eq!(bodies.len(), 3);
    assert_eq!(rows.len(), 2_345);
    let event_id = bodies[0]["event"]["id"].clone();
    assert!(
        event_id.as_str().is_some_and(|id| id.len() == 36),
        "{event_id}"
    );
    let mut sent = Vec::new();
    for (at, body) in bodies.iter().enumerate() {
        let keys = |value: &Value| {
            let mut keys: Vec<String> =
                value.as_object().expect("object").keys().cloned().collect();
            keys.sort_unstable();
            keys
        };
        // The same keys as Flatfile's documented body, at every level.
        assert_eq!(keys(body), keys(&fixture));
        assert_eq!(keys(&body["event"]), keys(&fixture["event"]));
        assert_eq!(
            keys(&body["event"]["sequence"]),
            keys(&fixture["event"]["sequence"])
        );
        assert_eq!(keys(&body["data"]), keys(&fixture["data"]));
        assert_eq!(keys(&body["data"]["meta"]), keys(&fixture["data"]["meta"]));
        assert_eq!(body["event"]["type"], "batch.upload");
        assert_eq!(body["event"]["id"], event_id, "one id for the whole upload");
        assert_eq!(
            body["event"]["sequence"],
            json!({"count": 3, "index": at + 1})
        );
        assert_eq!(body["data"]["meta"]["batch"]["id"], "batch-p2");
        assert_eq!(body["data"]["meta"]["schema"]["id"], 8);
        let valid = body["data"]["validRows"].as_array().expect("validRows");
        let invalid = body["data"]["invalidRows"].as_array().expect("invalidRows");
        let expected_count = if at < 2 { 1_000 } else { 345 };
        assert_eq!(body["data"]["meta"]["count"], expected_count);
        assert_eq!(valid.len() + invalid.len(), expected_count);
        let in_request: Vec<_> = rows
            .iter()
            .filter(|row| row.request == at as u64 + 1)
            .collect();
        let expected_valid: Vec<Value> = in_request
            .iter()
            .filter(|row| row.valid)
            .map(|row| Value::Object(row.values.iter().cloned().collect()))
            .collect();
        let expected_invalid: Vec<Value> = in_request
            .iter()
            .filter(|row| !row.valid)
            .map(|row| Value::Object(row.values.iter().cloned().collect()))
            .collect();
        assert_eq!(valid, &expected_valid);
        assert_eq!(invalid, &expected_invalid);
        sent.extend(valid.iter().chain(invalid));
    }
    assert_eq!(sent.len(), 2_345);
    let invalid = rows.iter().filter(|row| !row.valid).count();
    assert_eq!(invalid, 234, "one row in ten is invalid");
    assert_eq!(
        portal2_upload_bodies(&config, "batch-p2", 2_345, 1_000),
        bodies,
        "deterministic"
    );
    let other_seed = portal2_upload_bodies(&SimConfig::default(), "batch-p2", 10, 1_000);
    assert_ne!(
        other_seed[0]["data"],
        portal2_upload_bodies(&config, "batch-p2", 10, 1_000)[0]["data"]
    );
    let empty = portal2_upload_bodies(&config, "batch-none", 0, 1_000);
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0]["data"]["meta"]["count"], 0);
}

#[test]
fn the_forwarded_body_is_the_listeners_event_object() {
    let event = submit_event_body("us_evt_fw", "us_wb_fw", "us_jb_fw");
    let body = forwarded_event_body(&event, "sk_forwarded_token", "http://127.0.0.1:9/api//");
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_accessToken",
            "_apiUrl",
            "action",
            "afterAllCallbacks",
            "cache",
            "context",
            "createdAt",
            "domain",
            "namespace",
            "origin",
            "payload",
            "src",
            "target",
            "topic"
        ],
        "no top-level id: the class never assigns it"
    );
    assert_eq!(body["src"], event);
    for key in ["topic", "domain", "context", "payload", "createdAt"] {
        assert_eq!(body[key], event[key], "{key}");
    }
    assert_eq!(body["namespace"], event["namespaces"]);
    assert_eq!(body["origin"], event["origin"]);
    assert_eq!(body["target"], "");
    assert_eq!(body["action"], "");
    assert_eq!(body["cache"], json!({"eventCache": {}}));
    assert_eq!(body["afterAllCallbacks"], json!({}));
    assert_eq!(body["_accessToken"], "sk_forwarded_token");
    assert_eq!(body["_apiUrl"], "http://127.0.0.1:9/api/");

    // Absent fields get the class's fallbacks; actionName becomes action.
    let bare = json!({
        "id": "us_evt_bare", "topic": "space:created", "domain": "space",
        "context": {"accountId": "us_acc_1", "environmentId": "us_env_1", "actionName": "go"},
        "payload": {}, "target": "space", "createdAt": "2024-05-02T13:58:40.012Z"
    });
    let body = forwarded_event_body(&bare, "t", "http://x");
    assert_eq!(body["target"], "space");
    assert_eq!(body["origin"], json!({}));
    assert_eq!(body["namespace"], json!([]));
    assert_eq!(body["action"], "go");
    assert_eq!(body["_apiUrl"], "http://x/");
    assert!(body.get("id").is_none());
}

#[tokio::test]
async fn send_webhook_creates_the_job_forwards_and_uploads() {
    let exe = env!("CARGO_BIN_EXE_flatfile-sim");
    let h = Harness::start(config(4)).await;
    let (addr, received, task) = receiver(vec![200]).await;
    let hook = format!("http://{addr}/hook");

    // --sim: the job is created in the simulator first, and the forwarded body carries the
    // token from the environment, never from argv.
    let output = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &hook, "--workbook", "us_wb_cli"])
        .args(["--sim", &h.sim.base_url(), "--forwarded"])
        .env("FLATFILE_BEARER_TOKEN", "sk_fw_zq9x")
        .env_remove("FLATSYNC_WEBHOOK_TOKEN")
        .output()
        .await
        .expect("send-webhook runs");
    assert!(output.status.success(), "{output:?}");
    let jobs = h.sim.jobs();
    assert_eq!(jobs.len(), 1, "the job was created: {jobs:?}");
    {
        let received = received.lock().expect("not poisoned");
        let body = &received[0].1;
        assert_eq!(body["_accessToken"], "sk_fw_zq9x");
        assert_eq!(body["_apiUrl"], format!("{}/", h.sim.base_url()));
        assert_eq!(body["src"]["context"]["jobId"], jobs[0].id.as_str());
        assert_eq!(body["context"]["workbookId"], "us_wb_cli");
        assert!(body.get("id").is_none());
    }

    // --portal2-upload: every request in order.
    let output = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &hook, "--portal2-upload", "b-p2"])
        .args(["--rows", "25", "--per-request", "10", "--seed", "3"])
        .output()
        .await
        .expect("send-webhook runs");
    assert!(output.status.success(), "{output:?}");
    let expected = portal2_upload_bodies(
        &SimConfig {
            seed: 3,
            ..SimConfig::default()
        },
        "b-p2",
        25,
        10,
    );
    let bodies: Vec<Value> = received.lock().expect("not poisoned")[1..]
        .iter()
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(bodies, expected);
    task.abort();

    // It stops at the first non-2xx answer.
    let (addr, received, task) = receiver(vec![200, 503]).await;
    let output = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &format!("http://{addr}/hook")])
        .args([
            "--portal2-upload",
            "b-p2",
            "--rows",
            "25",
            "--per-request",
            "10",
        ])
        .output()
        .await
        .expect("send-webhook runs");
    assert!(!output.status.success(), "a 503 is a failure: {output:?}");
    assert_eq!(received.lock().expect("not poisoned").len(), 2);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("HTTP 503 (request 2 of 3)"), "{stdout}");
    task.abort();

    // --workbook needs a job or a simulator to create one in.
    let usage = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &hook, "--workbook", "us_wb_x"])
        .output()
        .await
        .expect("runs");
    assert!(!usage.status.success());
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("--job ID or --sim URL"),
        "{usage:?}"
    );
    h.sim.shutdown().await;
}
