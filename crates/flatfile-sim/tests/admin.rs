//! Environments, the events feed, record changes and commits, and the admin API, over real HTTP
//! on 127.0.0.1, plus the blocking [`AdminClient`] and the binary's environment options.

use std::collections::HashSet;

use flatfile_sim::{
    AdminClient, DEFAULT_ENVIRONMENT_ID, EmitEvent, Faults, NewRecords, RecordEdit, RunningSim,
    SimConfig, SimEnvironment, SimError, SubmitRequest, import_commit_id, record_ids,
};
use reqwest::Method;
use serde_json::{Map, Value, json};

mod common;

use common::{Harness, SECRET, local, record_ids_of as ids_of, start_binary};

const OTHER_ENV: &str = "us_env_other";
const OTHER_KEY: &str = "sk_other";

fn config(rows: u64) -> SimConfig {
    SimConfig {
        rows,
        environments: vec![SimEnvironment::new(OTHER_ENV, OTHER_KEY)],
        ..SimConfig::default()
    }
}

struct Reply {
    status: u16,
    body: Value,
}

impl Harness {
    async fn reply(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request is answered");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply { status, body }
    }

    async fn get_as(&self, key: &str, path: &str) -> Reply {
        Self::reply(self.http.get(self.url(path)).bearer_auth(key)).await
    }

    async fn ok_as(&self, key: &str, path: &str) -> Value {
        let reply = self.get_as(key, path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.body
    }

    async fn post_as(&self, key: &str, path: &str) -> Reply {
        Self::reply(self.http.post(self.url(path)).bearer_auth(key)).await
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Reply {
        Self::reply(self.http.request(method, self.url(path)).json(&body)).await
    }

    async fn admin_ok(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let reply = self.admin(method.clone(), path, body).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        reply.body
    }

    /// Asserts a 400 (or other status) naming `key`.
    async fn refused(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
        status: u16,
        key: &str,
    ) {
        let reply = self.admin(method.clone(), path, body.clone()).await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body}: {}",
            reply.body
        );
        assert_eq!(
            reply.body["errors"][0]["key"], key,
            "{body}: {}",
            reply.body
        );
        assert!(reply.body["errors"][0]["message"].is_string());
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|item| item.as_str().expect("string").to_owned())
        .collect()
}

#[tokio::test]
async fn workbooks_created_in_an_environment_are_invisible_to_other_keys() {
    let h = Harness::start(config(10)).await;
    let submitted = h
        .sim
        .submit(&SubmitRequest {
            environment_id: Some(OTHER_ENV.to_owned()),
            rows: Some(7),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    assert_eq!(submitted.environment_id, OTHER_ENV);
    assert_eq!(
        submitted
            .sheets
            .iter()
            .map(|s| (s.slug.as_str(), s.rows))
            .collect::<Vec<_>>(),
        [("contacts", 4), ("companies", 3)]
    );
    let workbook = &submitted.workbook_id;
    let sheet = &submitted.sheets[0].id;
    let paths = [
        format!("/v1/workbooks/{workbook}"),
        format!("/v1/sheets?workbookId={workbook}"),
        format!("/v1/sheets/{sheet}"),
        format!("/v1/sheets/{sheet}/counts"),
        format!("/v1/sheets/{sheet}/records"),
    ];
    for path in &paths {
        let mine = h.ok_as(OTHER_KEY, path).await;
        assert!(
            mine["data"].is_object() || mine["data"].is_array(),
            "{path}"
        );
        let theirs = h.get_as(SECRET, path).await;
        assert_eq!(theirs.status, 404, "{path} with another environment's key");
        let key = if path.contains("workbook") {
            "workbookId"
        } else {
            "sheetId"
        };
        assert_eq!(theirs.body["errors"][0]["key"], key, "{path}");
    }
    let workbook_json = h.ok_as(OTHER_KEY, &paths[0]).await;
    assert_eq!(workbook_json["data"]["environmentId"], OTHER_ENV);
    let records = h.ok_as(OTHER_KEY, &paths[4]).await;
    assert_eq!(records["data"]["records"].as_array().map(Vec::len), Some(4));
    assert_eq!(records["data"]["counts"]["total"], 4);

    // On-the-fly workbooks stay readable with every key, and belong to the default environment.
    for key in [SECRET, OTHER_KEY] {
        let workbook = h.ok_as(key, "/v1/workbooks/us_wb_any").await;
        assert_eq!(workbook["data"]["environmentId"], DEFAULT_ENVIRONMENT_ID);
        h.ok_as(key, "/v1/sheets/us_sh_any-contacts/records").await;
    }
    assert_eq!(
        h.get_as("sk_nobody", "/v1/workbooks/us_wb_any")
            .await
            .status,
        401
    );
    assert_eq!(h.sim.stats().unauthorized, 1);
    h.sim.shutdown().await;
}

#[test]
fn environments_are_validated_without_showing_keys() {
    let with = |environments: Vec<SimEnvironment>| SimConfig {
        environments,
        ..SimConfig::default()
    };
    let cases = [
        with(vec![SimEnvironment::new(DEFAULT_ENVIRONMENT_ID, "sk_x")]),
        with(vec![
            SimEnvironment::new("us_env_a", "sk_secret_a"),
            SimEnvironment::new("us_env_a", "sk_b"),
        ]),
        with(vec![SimEnvironment::new("us_env_a", SECRET)]),
        with(vec![SimEnvironment::new("us_env_a", "")]),
        with(vec![SimEnvironment::new("bad id", "sk_secret_a")]),
        SimConfig {
            secret_key: String::new(),
            ..SimConfig::default()
        },
    ];
    for config in cases {
        let err = config.validate().expect_err("refused");
        let text = format!("{err} {err:?} {config:?}");
        assert!(
            !text.contains("sk_secret_a") && !text.contains(SECRET),
            "{text}"
        );
    }
    let fine = config(1);
    fine.validate()
        .expect("two environments with distinct keys");
    assert_eq!(fine.environment_ids(), [DEFAULT_ENVIRONMENT_ID, OTHER_ENV]);
    assert_eq!(fine.environment_of_key(OTHER_KEY), Some(OTHER_ENV));
    assert_eq!(
        fine.environment_of_key(SECRET),
        Some(DEFAULT_ENVIRONMENT_ID)
    );
    assert_eq!(fine.key_of_environment(OTHER_ENV), Some(OTHER_KEY));
    assert_eq!(fine.environment_of_key("sk_nobody"), None);
}

#[tokio::test]
async fn the_events_feed_pages_filters_and_acks_per_environment() {
    let h = Harness::start(config(4)).await;
    for n in 0..12 {
        h.sim
            .emit_event(&EmitEvent {
                topic: if n % 3 == 0 {
                    "space:created"
                } else {
                    "file:created"
                }
                .to_owned(),
                payload: Some(json!({ "n": n })),
                context: (n == 5).then(|| {
                    let mut context = Map::new();
                    context.insert("spaceId".to_owned(), json!("us_sp_five"));
                    context
                }),
                ..EmitEvent::default()
            })
            .expect("emitted");
    }
    h.sim
        .emit_event(&EmitEvent {
            environment_id: Some(OTHER_ENV.to_owned()),
            ..EmitEvent::new("space:created")
        })
        .expect("emitted");

    // Default page size 10, pageNumber from 1, a short page at the end, ascending createdAt.
    let first = h.ok_as(SECRET, "/v1/events").await;
    let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["data"], "only data, no pagination");
    let first = first["data"].as_array().expect("data").clone();
    assert_eq!(first.len(), 10);
    let second = h.ok_as(SECRET, "/v1/events?pageNumber=2").await["data"].clone();
    assert_eq!(second.as_array().map(Vec::len), Some(2));
    let all: Vec<Value> = first
        .iter()
        .chain(second.as_array().expect("data"))
        .cloned()
        .collect();
    let payloads: Vec<u64> = all
        .iter()
        .map(|e| e["payload"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(payloads, (0..12).collect::<Vec<_>>());
    let created: Vec<&str> = all
        .iter()
        .map(|e| e["createdAt"].as_str().expect("createdAt"))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {created:?}"
    );
    for event in &all {
        let created = event["createdAt"].as_str().expect("createdAt");
        assert!(created.ends_with('Z') && created.len() == 24, "{created}");
        assert_eq!(event["context"]["accountId"], "us_acc_sim");
        assert_eq!(event["context"]["environmentId"], DEFAULT_ENVIRONMENT_ID);
        assert_eq!(
            event["domain"],
            event["topic"]
                .as_str()
                .expect("topic")
                .split(':')
                .next()
                .expect("domain")
        );
        assert!(
            event.get("ackCount").is_none(),
            "ackCount is the simulator's, not the API's"
        );
    }
    assert_eq!(
        all.iter()
            .map(|e| e["id"].as_str())
            .collect::<HashSet<_>>()
            .len(),
        12
    );

    // since is inclusive; the other environment's event is never listed here.
    let since = created[4];
    let from_fifth = h
        .ok_as(SECRET, &format!("/v1/events?since={since}&pageSize=100"))
        .await;
    assert_eq!(from_fifth["data"].as_array().map(Vec::len), Some(8));
    assert_eq!(from_fifth["data"][0]["payload"]["n"], 4);
    let bad_since = h.get_as(SECRET, "/v1/events?since=last-tuesday").await;
    assert_eq!(bad_since.status, 400);
    assert_eq!(bad_since.body["errors"][0]["key"], "since");

    // Filters.
    let topics = h
        .ok_as(SECRET, "/v1/events?topic=space:created&pageSize=100")
        .await;
    assert_eq!(topics["data"].as_array().map(Vec::len), Some(4));
    let domains = h.ok_as(SECRET, "/v1/events?domain=file&pageSize=100").await;
    assert_eq!(domains["data"].as_array().map(Vec::len), Some(8));
    let space = h.ok_as(SECRET, "/v1/events?spaceId=us_sp_five").await;
    assert_eq!(space["data"][0]["payload"]["n"], 5);
    assert_eq!(space["data"].as_array().map(Vec::len), Some(1));

    // The environment defaults to the key's; asking for another one is forbidden.
    let mine = h.ok_as(OTHER_KEY, "/v1/events").await;
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1));
    let same = h
        .ok_as(OTHER_KEY, &format!("/v1/events?environmentId={OTHER_ENV}"))
        .await;
    assert_eq!(same, mine);
    let forbidden = h
        .get_as(SECRET, &format!("/v1/events?environmentId={OTHER_ENV}"))
        .await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.body["errors"][0]["key"], "environmentId");
    for bad in [
        "pageSize=0",
        "pageNumber=0",
        "includeAcknowledged=maybe",
        "pageSize=x",
    ] {
        let reply = h.get_as(SECRET, &format!("/v1/events?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(
            reply.body["errors"][0]["key"],
            bad.split('=').next().expect("name"),
            "{bad}"
        );
    }

    // Get and ack.
    let id = all[0]["id"].as_str().expect("id");
    let one = h.ok_as(SECRET, &format!("/v1/events/{id}")).await;
    assert_eq!(one["data"], all[0]);
    assert_eq!(
        h.get_as(OTHER_KEY, &format!("/v1/events/{id}"))
            .await
            .status,
        404
    );
    let ack = h.post_as(SECRET, &format!("/v1/events/{id}/ack")).await;
    assert_eq!(
        (ack.status, ack.body.clone()),
        (200, json!({"data": {"success": true}}))
    );
    h.post_as(SECRET, &format!("/v1/events/{id}/ack")).await;
    let missing = h.post_as(SECRET, "/v1/events/us_evt_nope/ack").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        h.post_as(OTHER_KEY, &format!("/v1/events/{id}/ack"))
            .await
            .status,
        404
    );
    let unacked = h.ok_as(SECRET, "/v1/events?pageSize=100").await;
    assert_eq!(unacked["data"].as_array().map(Vec::len), Some(11));
    assert_ne!(unacked["data"][0]["id"], id);
    let with_acked = h
        .ok_as(SECRET, "/v1/events?pageSize=100&includeAcknowledged=true")
        .await;
    assert_eq!(with_acked["data"][0]["id"], id);
    assert!(
        with_acked["data"][0]["acknowledgedAt"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z'))
    );
    assert!(with_acked["data"][0]["acknowledgedBy"].is_string());
    let logged = h.sim.events(Some(DEFAULT_ENVIRONMENT_ID));
    assert_eq!(logged.len(), 12);
    assert_eq!(logged[0].ack_count, 2);
    assert_eq!(logged[1].ack_count, 0);
    assert_eq!(h.sim.events(None).len(), 13);
    let admin = h
        .admin_ok(
            Method::GET,
            &format!("/_sim/events?environmentId={OTHER_ENV}"),
            Value::Null,
        )
        .await;
    assert_eq!(admin.as_array().map(Vec::len), Some(1));
    assert_eq!(admin[0]["ackCount"], 0);
    h.refused(
        Method::GET,
        "/_sim/events?environmentId=us_env_nope",
        Value::Null,
        400,
        "environmentId",
    )
    .await;

    let stats = h.sim.stats();
    assert_eq!(stats.events, 16);
    assert_eq!(stats.event_acks, 4);
    assert_eq!(stats.event_gets, 2);
    assert_eq!(stats.other, 0);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn faults_apply_to_the_events_api_but_not_to_the_admin_api() {
    let h = Harness::start(SimConfig {
        rows: 2,
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    h.admin_ok(
        Method::POST,
        "/_sim/events",
        json!({"topic": "space:created"}),
    )
    .await;
    let event_id = h.sim.events(None)[0].id.clone();
    for path in ["/v1/events".to_owned(), format!("/v1/events/{event_id}")] {
        let status = h.get_as(SECRET, &path).await.status;
        assert!(status == 500 || status == 503, "{path}: {status}");
    }
    let ack = h
        .post_as(SECRET, &format!("/v1/events/{event_id}/ack"))
        .await;
    assert!(ack.status >= 500);
    assert_eq!(
        h.sim.events(None)[0].ack_count,
        0,
        "a failed ack acknowledges nothing"
    );
    assert_eq!(h.sim.stats().injected_errors, 3);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn record_changes_show_in_records_counts_and_commits() {
    let h = Harness::start(config(40)).await;
    let sheet = "us_sh_w-contacts";
    let generated = record_ids(h.sim.config(), sheet);
    assert_eq!(generated.len(), 20);
    let records = |query: &str| format!("/v1/sheets/{sheet}/records{query}");

    // Add two records: records:created, then commit:created and commit:completed.
    let added = h
        .admin_ok(
            Method::POST,
            &format!("/_sim/sheets/{sheet}/records"),
            json!({"records": [{"firstName": "Ada", "email": "ada@example.com"}, {"age": 7}]}),
        )
        .await;
    let added_ids = strings(&added["recordIds"]);
    assert_eq!(added_ids.len(), 2);
    assert!(
        added_ids
            .iter()
            .all(|id| id.starts_with("us_rc_") && !generated.contains(id))
    );
    let first_commit = added["commitId"].as_str().expect("commitId").to_owned();
    assert!(first_commit.starts_with("us_vr_"));
    let topics: Vec<&str> = added["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["topic"].as_str().expect("topic"))
        .collect();
    assert_eq!(
        topics,
        ["records:created", "commit:created", "commit:completed"]
    );
    let events = h.sim.events(None);
    let created = &events[0];
    assert_eq!(
        created.payload,
        json!({"sheetId": sheet, "recordIds": added_ids, "recordCount": 2})
    );
    assert_eq!(created.context["workbookId"], "us_wb_w");
    assert_eq!(created.context["sheetSlug"], "contacts");
    let commit = &events[1];
    assert_eq!(commit.context["commitId"], first_commit.as_str());
    assert_eq!(commit.context["sheetId"], sheet);
    assert_eq!(
        commit.payload,
        json!({"sheetId": sheet, "workbookId": "us_wb_w", "versionId": first_commit, "sheetSlug": "contacts"})
    );
    assert_eq!(
        commit.data_url.as_deref(),
        Some(format!("v1/sheets/{sheet}/records?commitId={first_commit}").as_str())
    );
    assert_eq!(events[2].payload["commitId"], first_commit.as_str());

    // Edit a generated invalid row (index 9: its email) and an added record.
    let updated = h
        .admin_ok(
            Method::PATCH,
            &format!("/_sim/sheets/{sheet}/records"),
            json!({"records": [
                {"id": generated[9], "values": {"email": "fixed@example.com"}},
                {"id": added_ids[1], "values": {"age": 8, "tier": "pro"}},
            ]}),
        )
        .await;
    let second_commit = updated["commitId"].as_str().expect("commitId").to_owned();
    assert_eq!(
        strings(&updated["recordIds"]),
        [generated[9].clone(), added_ids[1].clone()]
    );
    let changes = &h.sim.events(None)[3];
    assert_eq!(changes.topic, "records:updated");
    assert_eq!(changes.payload["changes"][0]["fieldKey"], "email");
    assert_eq!(changes.payload["changes"][0]["previousValue"], "user9@");
    assert_eq!(
        changes.payload["changes"][0]["newValue"],
        "fixed@example.com"
    );
    assert!(
        changes.payload["changes"]
            .as_array()
            .expect("changes")
            .contains(&json!({
                "recordId": added_ids[1], "fieldKey": "age", "previousValue": 7, "newValue": 8,
            }))
    );

    // Delete two generated rows (one of them the other invalid row) and the first added record.
    let deleted_ids = vec![
        generated[0].clone(),
        generated[19].clone(),
        added_ids[0].clone(),
    ];
    let deleted = h
        .admin_ok(
            Method::DELETE,
            &format!("/_sim/sheets/{sheet}/records"),
            json!({"ids": deleted_ids}),
        )
        .await;
    assert!(deleted.get("commitId").is_none());
    let gone = h.sim.events(None).last().cloned().expect("an event");
    assert_eq!(gone.topic, "records:deleted");
    assert_eq!(
        gone.payload,
        json!({"sheetId": sheet, "recordIds": deleted_ids, "recordCount": 3})
    );

    // The whole sheet: generated minus deleted, edits applied, added at the end.
    let mut expected: Vec<String> = generated
        .iter()
        .filter(|id| !deleted_ids.contains(id))
        .cloned()
        .collect();
    expected.push(added_ids[1].clone());
    let page = h.ok_as(SECRET, &records("")).await;
    assert_eq!(ids_of(&page), expected);
    assert_eq!(
        page["data"]["counts"],
        json!({"total": 19, "valid": 19, "error": 0})
    );
    assert_eq!(page["data"]["commitId"], second_commit.as_str());
    let fixed = &page["data"]["records"][8];
    assert_eq!(fixed["id"], generated[9].as_str());
    assert_eq!(fixed["valid"], true);
    assert_eq!(fixed["values"]["email"]["value"], "fixed@example.com");
    assert_eq!(fixed["values"]["email"]["messages"], json!([]));
    let last = &page["data"]["records"][18];
    assert_eq!(last["values"]["age"]["value"], 8);
    assert_eq!(last["values"]["firstName"]["value"], Value::Null);
    let counts = h.ok_as(SECRET, &format!("/v1/sheets/{sheet}/counts")).await;
    assert_eq!(counts["data"]["counts"]["total"], 19);
    assert_eq!(counts["data"]["counts"]["error"], 0);
    let mut paged = Vec::new();
    for number in 1..=5 {
        paged.extend(ids_of(
            &h.ok_as(
                SECRET,
                &records(&format!("?pageSize=4&pageNumber={number}")),
            )
            .await,
        ));
    }
    assert_eq!(paged, expected);

    // The current rows helper agrees with the API, in schema order.
    let rows = h.sim.sheet_rows(sheet).expect("sheet exists");
    assert_eq!(
        rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        expected
    );
    let keys: Vec<&str> = rows[0].values.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "firstName",
            "lastName",
            "email",
            "age",
            "subscribed",
            "tier"
        ]
    );
    let over_http = h
        .admin_ok(
            Method::GET,
            &format!("/_sim/sheets/{sheet}/records"),
            Value::Null,
        )
        .await;
    assert_eq!(
        serde_json::to_value(&rows).expect("rows serialize"),
        over_http
    );

    // ids (repeated keys): only live records, in the order asked, at most 100.
    let asked = format!(
        "?ids={}&ids={}&ids={}&ids={}",
        added_ids[1], generated[0], generated[5], added_ids[1]
    );
    assert_eq!(
        ids_of(&h.ok_as(SECRET, &records(&asked)).await),
        [added_ids[1].clone(), generated[5].clone()]
    );
    let too_many: String = (0..101).map(|n| format!("ids=us_rc_x_{n}&")).collect();
    let refused = h.get_as(SECRET, &records(&format!("?{too_many}"))).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["errors"][0]["key"], "ids");

    // commitId: what the commit touched, as it is now, deleted ones left out.
    let first = h
        .ok_as(SECRET, &records(&format!("?commitId={first_commit}")))
        .await;
    assert_eq!(ids_of(&first), [added_ids[1].clone()]);
    assert_eq!(first["data"]["records"][0]["values"]["age"]["value"], 8);
    let second = h
        .ok_as(SECRET, &records(&format!("?commitId={second_commit}")))
        .await;
    assert_eq!(
        ids_of(&second),
        [generated[9].clone(), added_ids[1].clone()]
    );
    // sinceCommitId: what later commits touched.
    let since_first = h
        .ok_as(SECRET, &records(&format!("?sinceCommitId={first_commit}")))
        .await;
    assert_eq!(ids_of(&since_first), ids_of(&second));
    let since_second = h
        .ok_as(SECRET, &records(&format!("?sinceCommitId={second_commit}")))
        .await;
    assert_eq!(ids_of(&since_second), Vec::<String>::new());
    // The import commit, named on pages of the unchanged sheet.
    let untouched = h
        .ok_as(SECRET, "/v1/sheets/us_sh_w-companies/records?pageSize=1")
        .await;
    let import = untouched["data"]["commitId"]
        .as_str()
        .expect("commitId")
        .to_owned();
    let import_of_contacts = import_commit_id(h.sim.config(), sheet).expect("a sheet id");
    assert_eq!(
        import_commit_id(h.sim.config(), "us_sh_w-companies").as_deref(),
        Some(import.as_str())
    );
    assert_ne!(import, import_of_contacts);
    let since_import = h
        .ok_as(
            SECRET,
            &records(&format!("?sinceCommitId={import_of_contacts}")),
        )
        .await;
    assert_eq!(
        ids_of(&since_import),
        [added_ids[1].clone(), generated[9].clone()]
    );
    let imported = h
        .ok_as(
            SECRET,
            &records(&format!("?commitId={import_of_contacts}&pageSize=100")),
        )
        .await;
    assert_eq!(ids_of(&imported), expected[..18]);
    // Combined with ids: the intersection.
    let both = h
        .ok_as(
            SECRET,
            &records(&format!(
                "?commitId={second_commit}&ids={}&ids={}",
                generated[1], generated[9]
            )),
        )
        .await;
    assert_eq!(ids_of(&both), [generated[9].clone()]);
    for (query, key) in [
        ("?commitId=us_vr_nope", "commitId"),
        ("?sinceCommitId=us_vr_nope", "sinceCommitId"),
        (&format!("?commitId={import}") as &str, "commitId"),
    ] {
        let reply = h.get_as(SECRET, &records(query)).await;
        assert_eq!(reply.status, 404, "{query}");
        assert_eq!(reply.body["errors"][0]["key"], key, "{query}");
    }
    let both_kinds = h
        .get_as(
            SECRET,
            &records(&format!(
                "?commitId={first_commit}&sinceCommitId={first_commit}"
            )),
        )
        .await;
    assert_eq!(both_kinds.status, 400);
    assert_eq!(both_kinds.body["errors"][0]["key"], "sinceCommitId");

    // Another sheet is untouched and still served from the generator.
    assert_eq!(untouched["data"]["counts"]["total"], 20);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn generated_added_records_are_about_one_in_ten_invalid() {
    let h = Harness::start(config(0)).await;
    let sheet = "us_sh_empty-companies";
    let added = h
        .admin_ok(
            Method::POST,
            &format!("/_sim/sheets/{sheet}/records"),
            json!({"count": 20}),
        )
        .await;
    assert_eq!(added["recordIds"].as_array().map(Vec::len), Some(20));
    let page = h
        .ok_as(SECRET, &format!("/v1/sheets/{sheet}/records"))
        .await;
    assert_eq!(ids_of(&page), strings(&added["recordIds"]));
    assert_eq!(
        page["data"]["counts"],
        json!({"total": 20, "valid": 18, "error": 2})
    );
    let invalid = &page["data"]["records"][9];
    assert_eq!(invalid["valid"], false);
    assert_eq!(
        invalid["values"]["domain"]["messages"][0]["message"],
        "Invalid domain"
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn admin_requests_with_bad_fields_are_refused_naming_the_field() {
    let h = Harness::start(config(10)).await;
    let path = "/_sim/sheets/us_sh_w-contacts/records";
    let live = record_ids(h.sim.config(), "us_sh_w-contacts")[0].clone();
    for (body, key) in [
        (json!({}), "records"),
        (json!({"records": []}), "records"),
        (
            json!({"records": [{"nickname": "x"}]}),
            "records[0].nickname",
        ),
        (json!({"records": [{"email": "a"}, 5]}), "records[1]"),
        (json!({"records": "x"}), "records"),
        (json!({"count": 0}), "count"),
        (json!({"count": -1}), "count"),
        (json!({"count": 1, "records": []}), "count"),
        (json!({"rows": 1}), "rows"),
        (json!({"count": 1, "eventShape": "ids"}), "eventShape"),
        (json!({"count": 1, "eventShape": 1}), "eventShape"),
    ] {
        h.refused(Method::POST, path, body, 400, key).await;
    }
    for (body, key) in [
        (
            json!({"records": [{"id": "us_rc_nope", "values": {"age": 1}}]}),
            "records[0].id",
        ),
        (
            json!({"records": [{"id": live, "values": {}}]}),
            "records[0].values",
        ),
        (
            json!({"records": [{"id": live, "values": {"agee": 1}}]}),
            "records[0].values.agee",
        ),
        (json!({"records": [{"id": live}]}), "records[0].values"),
        (
            json!({"records": [{"id": 5, "values": {"age": 1}}]}),
            "records[0].id",
        ),
        (
            json!({"records": [{"id": live, "values": {"age": 1}, "extra": 1}]}),
            "records[0].extra",
        ),
    ] {
        h.refused(Method::PATCH, path, body, 400, key).await;
    }
    for body in [
        json!({"ids": []}),
        json!({"ids": ["us_rc_nope"]}),
        json!({"ids": [live, live]}),
        json!({"ids": [3]}),
        json!({"ids": "x"}),
    ] {
        h.refused(Method::DELETE, path, body, 400, "ids").await;
    }
    // A deletion makes no commit: no shape that names one.
    for shape in ["dataUrl", "versionId", "nope"] {
        h.refused(
            Method::DELETE,
            path,
            json!({"ids": [live], "eventShape": shape}),
            400,
            "eventShape",
        )
        .await;
    }
    for (body, status, key) in [
        (json!({}), 400, "workbookId"),
        (
            json!({"workbookId": "us_wb_w", "sheetId": "us_sh_w-contacts"}),
            400,
            "workbookId",
        ),
        (json!({"workbookId": "nope"}), 404, "workbookId"),
        (json!({"sheetId": "us_sh_w-tickets"}), 404, "sheetId"),
        (
            json!({"workbookId": "us_wb_w", "job": "robot:go"}),
            400,
            "job",
        ),
        (
            json!({"workbookId": "us_wb_w", "environmentId": "us_env_nope"}),
            400,
            "environmentId",
        ),
        (json!({"workbookId": "us_wb_w", "jobId": "x"}), 400, "jobId"),
    ] {
        h.refused(Method::POST, "/_sim/jobs", body, status, key)
            .await;
    }
    h.refused(
        Method::POST,
        "/_sim/sheets/us_sh_w-deals/records",
        json!({"count": 1}),
        404,
        "sheetId",
    )
    .await;
    for (body, key) in [
        (json!({"environmentId": "us_env_nope"}), "environmentId"),
        (json!({"workbookId": "us_wb_w", "rows": 5}), "rows"),
        (json!({"workbookId": "nope"}), "workbookId"),
        (json!({"sheetSlug": "tickets"}), "sheetSlug"),
        (json!({"job": "submit"}), "job"),
        (json!({"job": ":submit"}), "job"),
        (json!({"job": "robot:submit"}), "job"),
        (json!({"job": "workbook:"}), "job"),
        (json!({"parts": 0}), "parts"),
        (json!({"parts": 1001}), "parts"),
        (json!({"contextIds": "no"}), "contextIds"),
        (json!({"rows": "many"}), "rows"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let status = if key == "workbookId" { 404 } else { 400 };
        h.refused(Method::POST, "/_sim/submit", body, status, key)
            .await;
    }
    for (body, key) in [
        (json!({}), "topic"),
        (json!({"topic": ""}), "topic"),
        (json!({"topic": "space:b", "domain": ""}), "domain"),
        (json!({"topic": "acme:custom"}), "domain"),
        (
            json!({"topic": "space:created", "domain": "records"}),
            "domain",
        ),
        (
            json!({"topic": "acme:custom", "allowUnknownDomain": "yes"}),
            "allowUnknownDomain",
        ),
        (
            json!({"topic": "space:b", "environmentId": "us_env_nope"}),
            "environmentId",
        ),
        (
            json!({"topic": "space:b", "context": {"environmentId": "us_env_nope"}}),
            "context.environmentId",
        ),
        (
            json!({"topic": "space:b", "environmentId": OTHER_ENV, "context": {"environmentId": DEFAULT_ENVIRONMENT_ID}}),
            "context.environmentId",
        ),
        (json!({"topic": "space:b", "context": []}), "context"),
    ] {
        h.refused(Method::POST, "/_sim/events", body, 400, key)
            .await;
    }
    // Nothing was changed by any refused request.
    assert!(h.sim.events(None).is_empty());
    assert!(h.sim.jobs().is_empty());
    assert_eq!(
        h.sim.sheet_rows("us_sh_w-contacts").map(|rows| rows.len()),
        Some(5)
    );
    let page = h.ok_as(SECRET, "/v1/sheets/us_sh_w-contacts/counts").await;
    assert_eq!(page["data"]["counts"]["total"], 5);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn submits_emit_job_events_and_finishing_the_job_emits_its_outcome() {
    let h = Harness::start(config(10)).await;
    let submitted = h.admin_ok(Method::POST, "/_sim/submit", json!({})).await;
    let job_id = submitted["jobId"].as_str().expect("jobId").to_owned();
    let workbook_id = submitted["workbookId"]
        .as_str()
        .expect("workbookId")
        .to_owned();
    assert!(workbook_id.starts_with("us_wb_"));
    assert_eq!(submitted["environmentId"], DEFAULT_ENVIRONMENT_ID);
    assert_eq!(submitted["sheets"].as_array().map(Vec::len), Some(2));
    let events = h.sim.events(None);
    assert_eq!(
        events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        ["job:created", "job:ready"]
    );
    let ready = &events[1];
    assert_eq!(submitted["eventId"], ready.id.as_str());
    assert_eq!(ready.domain, "job");
    assert_eq!(
        ready.payload,
        json!({
            "job": "workbook:submitActionFg", "operation": "submitActionFg", "domain": "workbook",
            "status": "ready", "isPart": false, "info": null, "input": {},
        })
    );
    assert_eq!(ready.context["workbookId"], workbook_id.as_str());
    assert_eq!(ready.context["jobId"], job_id.as_str());
    assert!(ready.context["actorId"].is_string());
    assert!(ready.context.get("sheetId").is_none());
    assert_eq!(events[0].payload["status"], "created");
    assert_eq!(
        h.sim.job(&job_id).map(|job| job.status),
        Some("ready".to_owned())
    );
    let job = h.ok_as(SECRET, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(job["data"]["source"], workbook_id.as_str());

    // The Platform job endpoints drive it; completing it once emits job:completed once.
    h.http
        .post(h.url(&format!("/v1/jobs/{job_id}/ack")))
        .bearer_auth(SECRET)
        .json(&json!({"progress": 0}))
        .send()
        .await
        .expect("acked");
    for _ in 0..2 {
        let done = h
            .http
            .post(h.url(&format!("/v1/jobs/{job_id}/complete")))
            .bearer_auth(SECRET)
            .json(&json!({"info": "Done", "outcome": {"message": "Imported"}}))
            .send()
            .await
            .expect("completed");
        assert_eq!(done.status(), 200);
    }
    let events = h.sim.events(None);
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].topic, "job:completed");
    assert_eq!(events[2].payload["status"], "complete");
    assert_eq!(events[2].payload["info"], "Done");
    assert_eq!(events[2].context["jobId"], job_id.as_str());

    // A sheet submit of an existing (on-the-fly) workbook, in another environment, then failed.
    let sheet_job = h
        .sim
        .submit(&SubmitRequest {
            environment_id: Some(OTHER_ENV.to_owned()),
            workbook_id: Some("us_wb_w".to_owned()),
            sheet_slug: Some("companies".to_owned()),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    assert_eq!(sheet_job.sheets.len(), 1);
    assert_eq!(sheet_job.sheets[0].id, "us_sh_w-companies");
    let ready = h.sim.events(Some(OTHER_ENV)).pop().expect("job:ready");
    assert_eq!(ready.payload["job"], "sheet:submitActionFg");
    assert_eq!(ready.payload["domain"], "sheet");
    assert_eq!(ready.context["sheetId"], "us_sh_w-companies");
    assert_eq!(ready.context["sheetSlug"], "companies");
    assert_eq!(ready.environment_id(), Some(OTHER_ENV));
    let failed = h
        .http
        .post(h.url(&format!("/v1/jobs/{}/fail", sheet_job.job_id)))
        .bearer_auth(OTHER_KEY)
        .json(&json!({"outcome": {"message": "Sink refused"}}))
        .send()
        .await
        .expect("failed");
    assert_eq!(failed.status(), 200);
    let last = h.sim.events(Some(OTHER_ENV)).pop().expect("job:failed");
    assert_eq!(last.topic, "job:failed");
    assert_eq!(last.payload["status"], "failed");

    // A created workbook belongs to its environment: a submit naming another is refused.
    h.refused(
        Method::POST,
        "/_sim/submit",
        json!({"workbookId": workbook_id, "environmentId": OTHER_ENV}),
        400,
        "environmentId",
    )
    .await;
    // Custom job names.
    let custom = h
        .sim
        .submit(&SubmitRequest {
            job: Some("workbook:exportAll".to_owned()),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    let ready = h
        .sim
        .events(None)
        .into_iter()
        .find(|e| e.id == custom.event_id)
        .expect("job:ready");
    assert_eq!(
        (
            ready.payload["job"].as_str(),
            ready.payload["operation"].as_str()
        ),
        (Some("workbook:exportAll"), Some("exportAll"))
    );

    // A job the simulator did not create does not exist: completing it changes nothing.
    let before = h.sim.events(None).len();
    let unknown = h
        .http
        .post(h.url("/v1/jobs/us_jb_external/complete"))
        .bearer_auth(SECRET)
        .send()
        .await
        .expect("answered");
    assert_eq!(unknown.status(), 404);
    assert_eq!(h.sim.events(None).len(), before);

    let jobs = h.admin_ok(Method::GET, "/_sim/jobs", Value::Null).await;
    let listed: Vec<(&str, &str)> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| {
            (
                job["id"].as_str().expect("id"),
                job["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert!(listed.contains(&(job_id.as_str(), "complete")));
    assert!(listed.contains(&(sheet_job.job_id.as_str(), "failed")));
    assert!(listed.contains(&(custom.job_id.as_str(), "ready")));
    assert_eq!(h.sim.jobs().len(), 3);
    assert_eq!(h.sim.job("us_jb_external"), None);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn emitted_events_merge_their_context_over_the_defaults() {
    let h = Harness::start(config(1)).await;
    let event = h
        .admin_ok(
            Method::POST,
            "/_sim/events",
            json!({"topic": "space:created", "context": {"spaceId": "us_sp_x", "extra": [1]}, "payload": {"a": 1}}),
        )
        .await;
    assert_eq!(event["domain"], "space");
    assert_eq!(
        event["context"],
        json!({"accountId": "us_acc_sim", "environmentId": DEFAULT_ENVIRONMENT_ID, "spaceId": "us_sp_x", "extra": [1]})
    );
    assert_eq!(event["payload"], json!({"a": 1}));
    assert_eq!(event["ackCount"], 0);
    // A domain outside the Platform's enumeration only when asked for.
    h.refused(
        Method::POST,
        "/_sim/events",
        json!({"topic": "custom-thing", "domain": "agent"}),
        400,
        "domain",
    )
    .await;
    let other = h
        .admin_ok(
            Method::POST,
            "/_sim/events",
            json!({"topic": "custom-thing", "domain": "agent", "allowUnknownDomain": true, "context": {"environmentId": OTHER_ENV}}),
        )
        .await;
    assert_eq!(other["domain"], "agent");
    assert_eq!(other["payload"], json!({}));
    let feed = h.ok_as(OTHER_KEY, "/v1/events").await;
    assert_eq!(feed["data"][0]["id"], other["id"]);
    assert_eq!(feed["data"][0]["topic"], "custom-thing");
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_changed_hundred_thousand_row_sheet_pages_by_position() {
    let h = Harness::start(config(200_000)).await;
    let sheet = "us_sh_big-contacts";
    let ids = record_ids(h.sim.config(), sheet);
    let doomed: Vec<String> = (0..100).map(|n| ids[n * 997].clone()).collect();
    h.sim.delete_records(sheet, &doomed).expect("deleted");
    h.sim
        .add_records(sheet, &NewRecords::Count(3))
        .expect("added");
    // How fast this page is served is a figure of `cargo bench -p flatfile-sim --bench generate`.
    let page = h
        .ok_as(
            SECRET,
            &format!("/v1/sheets/{sheet}/records?pageSize=1000&pageNumber=90"),
        )
        .await;
    let live: Vec<&String> = ids.iter().filter(|id| !doomed.contains(id)).collect();
    let served = ids_of(&page);
    assert_eq!(served.len(), 1000);
    assert_eq!(served.iter().collect::<Vec<_>>(), live[89_000..90_000]);
    assert_eq!(page["data"]["counts"]["total"], 99_903);
    let last = h
        .ok_as(
            SECRET,
            &format!("/v1/sheets/{sheet}/records?pageSize=1000&pageNumber=100"),
        )
        .await;
    assert_eq!(ids_of(&last).len(), 903);
    h.sim.shutdown().await;
}

#[test]
fn the_admin_client_drives_a_simulator_in_another_runtime() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sim = runtime
        .block_on(RunningSim::start(config(6), local()))
        .expect("simulator starts");
    let admin = AdminClient::new(&sim.base_url()).expect("client builds");

    let submitted = admin
        .submit(&SubmitRequest {
            rows: Some(4),
            ..SubmitRequest::default()
        })
        .expect("submitted");
    assert_eq!(submitted.sheets.iter().map(|s| s.rows).sum::<u64>(), 4);
    let sheet = submitted.sheets[0].id.clone();
    let mut values = Map::new();
    values.insert("firstName".to_owned(), json!("Grace"));
    let added = admin
        .add_records(&sheet, &NewRecords::Values(vec![values]))
        .expect("added");
    let rows = admin.sheet_rows(&sheet).expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].id, added.record_ids[0]);
    assert_eq!(rows[2].values[0], ("firstName".to_owned(), json!("Grace")));
    let mut values = Map::new();
    values.insert("age".to_owned(), json!(85));
    let edited = admin
        .edit_records(
            &sheet,
            &[RecordEdit {
                id: rows[0].id.clone(),
                values,
            }],
        )
        .expect("edited");
    assert_eq!(edited.record_ids, [rows[0].id.clone()]);
    assert_eq!(
        admin.sheet_rows(&sheet).expect("rows")[0].values[3].1,
        json!(85)
    );
    let deleted = admin
        .delete_records(&sheet, std::slice::from_ref(&rows[1].id))
        .expect("deleted");
    assert_eq!(deleted.events[0].topic, "records:deleted");
    assert_eq!(admin.sheet_rows(&sheet).expect("rows").len(), 2);
    assert_eq!(
        admin.sheet_rows(&sheet).expect("rows"),
        sim.sheet_rows(&sheet).expect("rows")
    );

    let event = admin
        .emit_event(&EmitEvent::new("space:created"))
        .expect("emitted");
    let events = admin.events(Some(DEFAULT_ENVIRONMENT_ID)).expect("events");
    assert_eq!(events.last(), Some(&event));
    assert_eq!(events, sim.events(Some(DEFAULT_ENVIRONMENT_ID)));
    assert!(admin.events(Some(OTHER_ENV)).expect("events").is_empty());
    assert_eq!(admin.jobs().expect("jobs"), sim.jobs());
    assert_eq!(
        admin
            .job(&submitted.job_id)
            .expect("answered")
            .map(|job| job.status),
        Some("ready".to_owned())
    );
    assert_eq!(admin.job("us_jb_never").expect("answered"), None);
    assert_eq!(admin.stats().expect("stats"), sim.stats());

    match admin.add_records(&sheet, &NewRecords::Count(0)) {
        Err(SimError::Rejected {
            status: 400,
            field: Some(field),
            ..
        }) => assert_eq!(field, "count"),
        other => panic!("expected a rejection naming count, got {other:?}"),
    }
    match admin.sheet_rows("us_sh_nope") {
        Err(SimError::Rejected {
            status: 404, field, ..
        }) => assert_eq!(field.as_deref(), Some("sheetId")),
        other => panic!("expected a 404, got {other:?}"),
    }
    // The in-process methods refuse the same way.
    match sim.delete_records(&sheet, &[]) {
        Err(SimError::Rejected {
            status: 400, field, ..
        }) => assert_eq!(field.as_deref(), Some("ids")),
        other => panic!("expected a rejection naming ids, got {other:?}"),
    }
    runtime.block_on(sim.shutdown());
    let err = admin.stats().expect_err("nothing listens any more");
    assert!(matches!(err, SimError::Admin { .. }), "{err:?}");
}

#[tokio::test]
async fn the_binary_takes_environments_from_its_environment_and_flags_without_printing_keys() {
    let exe = env!("CARGO_BIN_EXE_flatfile-sim");
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--listen", "127.0.0.1:0", "--rows", "4"])
        .args(["--environment", "us_env_flag=sk_flag_zq9x"])
        .env(
            "FLATFILE_SIM_ENVIRONMENTS",
            "us_env_a=sk_a_zq9x, us_env_b=sk_b_zq9x",
        )
        .env_remove("FLATFILE_SIM_SECRET_KEY");
    let mut server = start_binary(command).await;
    let line = &server.start_line;
    assert!(
        line.contains("us_env_demo, us_env_a, us_env_b, us_env_flag"),
        "{line}"
    );
    assert!(!line.contains("zq9x"), "keys are never printed: {line}");
    let base = server.base_url.clone();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for (key, environment) in [
        ("sk_demo", DEFAULT_ENVIRONMENT_ID),
        ("sk_a_zq9x", "us_env_a"),
        ("sk_b_zq9x", "us_env_b"),
        ("sk_flag_zq9x", "us_env_flag"),
    ] {
        let answer = client
            .get(format!("{base}/v1/events?environmentId={environment}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.status(), 200, "{environment}");
    }
    server.child.kill().await.expect("server stops");

    let output = tokio::process::Command::new(exe)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--environment",
            "sk_only_a_key_zq9x",
        ])
        .env_remove("FLATFILE_SIM_ENVIRONMENTS")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ID=KEY"), "{stderr}");
    assert!(!stderr.contains("zq9x"), "{stderr}");
    let output = tokio::process::Command::new(exe)
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "FLATFILE_SIM_ENVIRONMENTS",
            "us_env_a=sk_dup_zq9x,us_env_a=sk_dup2_zq9x",
        )
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("us_env_a") && !stderr.contains("zq9x"),
        "{stderr}"
    );
}

#[tokio::test]
async fn events_can_share_a_timestamp_and_be_listed_newest_first() {
    let h = Harness::start(SimConfig {
        events_order: flatfile_sim::EventsOrder::Newest,
        max_page_size: 3,
        ..config(4)
    })
    .await;
    let first = h
        .admin_ok(
            Method::POST,
            "/_sim/events",
            json!({"topic": "file:created"}),
        )
        .await;
    let at = first["createdAt"].as_str().expect("createdAt").to_owned();
    let mut burst = vec![first["id"].as_str().expect("id").to_owned()];
    for n in 1..5 {
        let event = h
            .admin_ok(
                Method::POST,
                "/_sim/events",
                json!({"topic": "file:created", "createdAt": at, "payload": {"n": n}}),
            )
            .await;
        assert_eq!(
            event["createdAt"],
            at.as_str(),
            "a pinned createdAt is kept"
        );
        burst.push(event["id"].as_str().expect("id").to_owned());
    }
    let later = h
        .admin_ok(
            Method::POST,
            "/_sim/events",
            json!({"topic": "file:updated"}),
        )
        .await;
    assert!(
        later["createdAt"].as_str().expect("createdAt") > at.as_str(),
        "an event without createdAt comes after the burst: {later}"
    );
    let earlier = h
        .admin(
            Method::POST,
            "/_sim/events",
            json!({"topic": "file:created", "createdAt": at}),
        )
        .await;
    assert_eq!(earlier.status, 400, "{}", earlier.body);
    assert_eq!(earlier.body["errors"][0]["key"], "createdAt");

    // Newest first, pages capped at 3 whatever pageSize asks, offsets from the capped size.
    let mut listed = Vec::new();
    for page in 1..=3 {
        let body = h
            .ok_as(SECRET, &format!("/v1/events?pageSize=10&pageNumber={page}"))
            .await;
        let data = body["data"].as_array().expect("data");
        assert!(data.len() <= 3, "page {page} holds {}", data.len());
        listed.extend(
            data.iter()
                .map(|e| e["id"].as_str().expect("id").to_owned()),
        );
    }
    let mut want = burst.clone();
    want.push(later["id"].as_str().expect("id").to_owned());
    want.reverse();
    assert_eq!(
        listed, want,
        "newest first, the burst in reverse emission order"
    );
    h.sim.shutdown().await;
}
