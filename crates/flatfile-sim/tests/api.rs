//! The simulator over real HTTP on 127.0.0.1: response shapes against the reference fixtures,
//! determinism, paging totals, auth, jobs, 404s and fault injection.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flatfile_sim::{
    Faults, JobRequest, SimConfig, SimStats, legacy_row_ids, legacy_webhook_body, post_webhook,
    record_ids, submit_event_body, workbook_sheets,
};
use serde_json::{Value, json};

mod common;

use common::{Harness, LEGACY_KEY, SECRET, http, receiver, start_binary};

/// A reference fixture of the flatfile crate's `testdata` folder, the one copy the workspace keeps.
fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../flatfile/testdata/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every key of the fixture is present in `actual`, recursively (first element of arrays), and
/// non-null scalars have the fixture's JSON type.
fn assert_fixture_keys(fixture: &Value, actual: &Value, at: &str) {
    match (fixture, actual) {
        (Value::Object(expected), Value::Object(got)) => {
            for (key, expected_value) in expected {
                let Some(got_value) = got.get(key) else {
                    panic!("{at}.{key} is missing from {actual}");
                };
                assert_fixture_keys(expected_value, got_value, &format!("{at}.{key}"));
            }
        }
        (Value::Array(expected), Value::Array(got)) => {
            if let (Some(first_expected), Some(first_got)) = (expected.first(), got.first()) {
                assert_fixture_keys(first_expected, first_got, &format!("{at}[0]"));
            }
        }
        (Value::Object(_) | Value::Array(_), other) => {
            panic!("{at} should be like {fixture}, got {other}")
        }
        (_, Value::Null) | (Value::Null, _) => {}
        (expected, got) => {
            let kind = |v: &Value| match v {
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                _ => "other",
            };
            assert_eq!(kind(expected), kind(got), "{at}: {expected} vs {got}");
        }
    }
}

impl Harness {
    async fn legacy(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("X-Api-Key", LEGACY_KEY)
            .send()
            .await
            .expect("request is answered")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(SECRET)
            .send()
            .await
            .expect("request is answered")
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(SECRET)
            .json(&body)
            .send()
            .await
            .expect("request is answered")
    }

    async fn legacy_json(&self, path: &str) -> Value {
        let response = self.legacy(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON body")
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON body")
    }

    async fn admin_stats(&self) -> SimStats {
        let stats: SimStats = self
            .http
            .get(self.url("/_sim/stats"))
            .send()
            .await
            .expect("stats answered")
            .json()
            .await
            .expect("stats are JSON");
        assert_eq!(stats, self.sim.stats(), "admin endpoint and library agree");
        stats
    }
}

fn small(rows: u64) -> SimConfig {
    SimConfig {
        rows,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn legacy_rows_page_has_the_fixture_shape() {
    let h = Harness::start(small(5)).await;
    let page = h
        .legacy_json("/rest/batch/596c2c5f-2884-4444-9ccb-2f0772877508/rows?skip=0&take=2")
        .await;
    assert_fixture_keys(&fixture("legacy-batch-rows-page"), &page, "$");
    assert_eq!(page["pagination"]["currentPage"], 1);
    assert_eq!(page["pagination"]["limit"], 2);
    assert_eq!(page["pagination"]["onPage"], 2);
    assert_eq!(page["pagination"]["totalCount"], 5);
    assert_eq!(page["pagination"]["pageCount"], 3);
    assert_eq!(
        page["data"][0]["batchId"],
        "596c2c5f-2884-4444-9ccb-2f0772877508"
    );
    assert_eq!(page["data"][0]["sequence"], 1);
    assert_eq!(page["data"][1]["sequence"], 2);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn platform_responses_have_the_fixture_shapes() {
    let h = Harness::start(small(40)).await;
    let workbook = h.get_json("/v1/workbooks/us_wb_Qm5Zt1Xc").await;
    assert_fixture_keys(&fixture("workbook-get"), &workbook, "$");
    let sheets = workbook["data"]["sheets"].as_array().expect("sheets");
    assert_eq!(sheets.len(), 2);
    assert_eq!(sheets[0]["slug"], "contacts");
    assert_eq!(sheets[1]["slug"], "companies");
    let keys: Vec<&str> = sheets[0]["config"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["key"].as_str().expect("key"))
        .collect();
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

    let list = h.get_json("/v1/sheets?workbookId=us_wb_Qm5Zt1Xc").await;
    assert_fixture_keys(&fixture("sheets-list"), &list, "$");
    assert_eq!(list["data"], workbook["data"]["sheets"]);

    let sheet_id = "us_sh_Qm5Zt1Xc-contacts";
    let sheet = h.get_json(&format!("/v1/sheets/{sheet_id}")).await;
    assert_eq!(sheet["data"], list["data"][0]);

    let counts = h.get_json(&format!("/v1/sheets/{sheet_id}/counts")).await;
    assert_fixture_keys(&fixture("record-counts-response"), &counts, "$");
    assert_eq!(counts["data"]["counts"]["total"], 20);
    assert_eq!(counts["data"]["counts"]["error"], 2);
    assert_eq!(counts["data"]["counts"]["valid"], 18);

    let records = h
        .get_json(&format!(
            "/v1/sheets/{sheet_id}/records?pageSize=5&pageNumber=1"
        ))
        .await;
    assert_fixture_keys(&fixture("records-page"), &records, "$");
    let page = records["data"]["records"].as_array().expect("records");
    assert_eq!(page.len(), 5);
    assert!(
        page.iter()
            .all(|r| r["values"].as_object().expect("values").len() == 6)
    );

    let job_id = h.sim.workbook_job("us_wb_Qm5Zt1Xc").expect("job created");
    let job = h
        .post(
            &format!("/v1/jobs/{job_id}/ack"),
            json!({"info": "Accepted", "progress": 0}),
        )
        .await;
    assert_eq!(job.status(), 200);
    let job: Value = job.json().await.expect("JSON");
    assert_fixture_keys(&fixture("job-response"), &job, "$");
    assert_eq!(job["data"]["status"], "executing");

    let missing = h.get("/v1/sheets/us_sh_nope/records").await;
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.expect("JSON");
    assert_fixture_keys(&fixture("error-envelope"), &missing, "$");
    assert_eq!(missing["errors"][0]["key"], "sheetId");
    h.sim.shutdown().await;
}

#[test]
fn webhook_bodies_have_the_fixture_shapes() {
    let legacy = legacy_webhook_body("batch-9", "evt-1", 25);
    assert_fixture_keys(
        &fixture("legacy-webhook-portal-import-submitted"),
        &legacy,
        "$",
    );
    assert_eq!(legacy["scope"]["batchId"], "batch-9");
    assert_eq!(legacy["scope"]["eventId"], "evt-1");
    assert_eq!(legacy["type"], "portalImportSubmitted");
    assert_eq!(
        legacy["payload"]["portalImportSubmitted"],
        json!({"totalRows": 25, "validRows": 23, "invalidRows": 2})
    );

    let submit = submit_event_body("us_evt_1", "us_wb_demo", "us_jb_1");
    assert_fixture_keys(&fixture("event-job-ready-submit"), &submit, "$");
    assert_eq!(submit["id"], "us_evt_1");
    assert_eq!(submit["context"]["workbookId"], "us_wb_demo");
    assert_eq!(submit["context"]["jobId"], "us_jb_1");
    assert_eq!(submit["payload"]["job"], "workbook:submitActionFg");
}

async fn bytes(h: &Harness, path: &str, legacy: bool) -> bytes::Bytes {
    let response = if legacy {
        h.legacy(path).await
    } else {
        h.get(path).await
    };
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body")
}

#[tokio::test]
async fn same_seed_serves_the_same_bytes_and_another_seed_does_not() {
    let config = |seed| SimConfig {
        rows: 60,
        seed,
        ..SimConfig::default()
    };
    let a = Harness::start(config(7)).await;
    let b = Harness::start(config(7)).await;
    let c = Harness::start(config(8)).await;
    let legacy = "/rest/batch/b-1/rows?take=60";
    let records = "/v1/sheets/us_sh_w-companies/records";
    let (a_legacy, b_legacy, c_legacy) = (
        bytes(&a, legacy, true).await,
        bytes(&b, legacy, true).await,
        bytes(&c, legacy, true).await,
    );
    assert_eq!(a_legacy, b_legacy);
    assert_ne!(a_legacy, c_legacy);
    let (a_records, b_records, c_records) = (
        bytes(&a, records, false).await,
        bytes(&b, records, false).await,
        bytes(&c, records, false).await,
    );
    assert_eq!(a_records, b_records);
    assert_ne!(a_records, c_records);
    // Ids differ by seed too, not only the values.
    assert_ne!(
        record_ids(&config(7), "us_sh_w-companies"),
        record_ids(&config(8), "us_sh_w-companies")
    );
    for h in [a, b, c] {
        h.sim.shutdown().await;
    }
}

#[tokio::test]
async fn prerendered_pages_are_the_rendered_bytes_and_a_changed_sheet_is_never_stale() {
    let config = |prerender| SimConfig {
        rows: 60,
        seed: 7,
        prerender,
        ..SimConfig::default()
    };
    let plain = Harness::start(config(false)).await;
    let kept = Harness::start(config(true)).await;
    let legacy = "/rest/batch/b-1/rows?skip=20&take=20";
    let sheet = "us_sh_w-companies";
    let records = format!("/v1/sheets/{sheet}/records?pageSize=10&pageNumber=2");
    for _ in 0..2 {
        assert_eq!(
            bytes(&kept, legacy, true).await,
            bytes(&plain, legacy, true).await
        );
        assert_eq!(
            bytes(&kept, &records, false).await,
            bytes(&plain, &records, false).await
        );
    }
    // A record of page 2 is edited: the page stored before must not be served again.
    let before = bytes(&kept, &records, false).await;
    let id = record_ids(&config(true), sheet)[10].clone();
    let mut values = serde_json::Map::new();
    values.insert("name".to_owned(), json!("Edited after the page was kept"));
    kept.sim
        .edit_records(sheet, &[flatfile_sim::RecordEdit { id, values }])
        .expect("edit applied");
    let after = bytes(&kept, &records, false).await;
    assert_ne!(after, before);
    assert!(
        String::from_utf8_lossy(&after).contains("Edited after the page was kept"),
        "the page shows the edit"
    );
    for h in [plain, kept] {
        h.sim.shutdown().await;
    }
}

#[tokio::test]
async fn legacy_pages_of_any_size_add_up_to_the_batch() {
    let config = SimConfig {
        rows: 23,
        max_page_size: 10,
        ..SimConfig::default()
    };
    let expected = legacy_row_ids(&config, "batch-a");
    assert_eq!(expected.len(), 23);
    assert_eq!(expected.iter().collect::<HashSet<_>>().len(), 23);
    let h = Harness::start(config.clone()).await;
    for take in [1_u64, 7, 10, 23, 50] {
        let limit = take.min(10);
        let mut ids = Vec::new();
        let mut skip = 0;
        loop {
            let page = h
                .legacy_json(&format!("/rest/batch/batch-a/rows?skip={skip}&take={take}"))
                .await;
            let pagination = &page["pagination"];
            assert_eq!(pagination["limit"], limit);
            assert_eq!(pagination["offset"], skip);
            assert_eq!(pagination["totalCount"], 23);
            assert_eq!(pagination["pageCount"], 23_u64.div_ceil(limit));
            assert_eq!(pagination["currentPage"], skip / limit + 1);
            assert_eq!(pagination["nextOffset"], skip + limit, "take={take}");
            let rows = page["data"].as_array().expect("data");
            assert_eq!(pagination["onPage"], rows.len());
            ids.extend(
                rows.iter()
                    .map(|r| r["id"].as_str().expect("id").to_owned()),
            );
            if pagination["currentPage"].as_u64() >= pagination["pageCount"].as_u64() {
                break;
            }
            skip += rows.len() as u64;
        }
        assert_eq!(ids, expected, "take={take}");
    }
    let past_end = h.legacy_json("/rest/batch/batch-a/rows?skip=23").await;
    assert_eq!(past_end["data"], json!([]));
    assert_eq!(past_end["pagination"]["onPage"], 0);
    // Another batch has other ids.
    let other = legacy_row_ids(&config, "batch-b");
    assert!(other.iter().all(|id| !expected.contains(id)));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn platform_pages_of_any_size_add_up_to_the_workbook() {
    let config = SimConfig {
        rows: 23,
        sheets_per_workbook: 3,
        max_page_size: 8,
        ..SimConfig::default()
    };
    let sheets = workbook_sheets(&config, "us_wb_x-y");
    assert_eq!(
        sheets,
        vec![
            ("us_sh_x-y-contacts".to_owned(), "contacts".to_owned(), 8),
            ("us_sh_x-y-companies".to_owned(), "companies".to_owned(), 8),
            ("us_sh_x-y-deals".to_owned(), "deals".to_owned(), 7),
        ]
    );
    let h = Harness::start(config.clone()).await;
    let listed = h.get_json("/v1/sheets?workbookId=us_wb_x-y").await;
    let listed: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        listed,
        sheets.iter().map(|s| s.0.as_str()).collect::<Vec<_>>()
    );
    let mut every_id = HashSet::new();
    for (sheet_id, _, rows) in &sheets {
        let counts = h.get_json(&format!("/v1/sheets/{sheet_id}/counts")).await;
        assert_eq!(counts["data"]["counts"]["total"], *rows);
        let expected = record_ids(&config, sheet_id);
        assert_eq!(expected.len() as u64, *rows);
        for page_size in [1_u64, 7, 8, 10_000] {
            let size = page_size.min(8);
            let mut ids = Vec::new();
            for page_number in 1.. {
                let page = h
                    .get_json(&format!(
                        "/v1/sheets/{sheet_id}/records?pageSize={page_size}&pageNumber={page_number}"
                    ))
                    .await;
                let records = page["data"]["records"].as_array().expect("records");
                assert!(records.len() as u64 <= size);
                ids.extend(
                    records
                        .iter()
                        .map(|r| r["id"].as_str().expect("id").to_owned()),
                );
                if (records.len() as u64) < size {
                    break;
                }
            }
            assert_eq!(ids, expected, "{sheet_id} pageSize={page_size}");
        }
        let past_end = h
            .get_json(&format!("/v1/sheets/{sheet_id}/records?pageNumber=99"))
            .await;
        assert_eq!(past_end["data"]["records"], json!([]));
        every_id.extend(expected);
    }
    assert_eq!(every_id.len(), 23, "record ids are unique across sheets");

    // An empty sheet is a valid, empty stream.
    let tiny = SimConfig {
        rows: 1,
        sheets_per_workbook: 4,
        ..SimConfig::default()
    };
    let sheets = workbook_sheets(&tiny, "us_wb_tiny");
    assert_eq!(
        sheets.iter().map(|s| s.2).collect::<Vec<_>>(),
        vec![1, 0, 0, 0]
    );
    h.sim.shutdown().await;
    let h = Harness::start(tiny).await;
    let empty = h
        .get_json("/v1/sheets/us_sh_tiny-tickets/records?pageNumber=1")
        .await;
    assert_eq!(empty["data"]["records"], json!([]));
    assert_eq!(empty["data"]["counts"]["total"], 0);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_keys_are_refused_with_401() {
    let h = Harness::start(small(3)).await;
    let legacy_url = h.url("/rest/batch/b/rows");
    for key in [None, Some("demo-key+wrong"), Some("demo-key")] {
        let mut request = h.http.get(&legacy_url);
        if let Some(key) = key {
            request = request.header("X-Api-Key", key);
        }
        let response = request.send().await.expect("answered");
        assert_eq!(response.status(), 401, "key {key:?}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, fixture("legacy-error"));
    }
    // The legacy key is not a Platform token, and the other way round.
    let platform_url = h.url("/v1/sheets/us_sh_w-contacts/records");
    for auth in [
        None,
        Some("Bearer sk_wrong"),
        Some("sk_demo"),
        Some("Bearer "),
    ] {
        let mut request = h.http.get(&platform_url).header("X-Api-Key", LEGACY_KEY);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.expect("answered");
        assert_eq!(response.status(), 401, "auth {auth:?}");
        let body: Value = response.json().await.expect("JSON");
        assert!(body["errors"][0]["message"].is_string(), "{body}");
    }
    let job = h
        .http
        .post(h.url("/v1/jobs/us_jb_1/complete"))
        .bearer_auth("sk_other")
        .send()
        .await
        .expect("answered");
    assert_eq!(job.status(), 401);
    assert_eq!(
        h.sim.job("us_jb_1"),
        None,
        "a refused request changes nothing"
    );
    let legacy_with_bearer = h
        .http
        .get(&legacy_url)
        .bearer_auth(SECRET)
        .send()
        .await
        .expect("answered");
    assert_eq!(legacy_with_bearer.status(), 401);
    assert_eq!(h.admin_stats().await.unauthorized, 9);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn job_lifecycle_is_recorded() {
    let h = Harness::start(small(3)).await;
    let admin = |id: &str| h.http.get(h.url(&format!("/_sim/jobs/{id}"))).send();
    let a = h.sim.workbook_job("us_wb_life").expect("job created");
    assert!(a.starts_with("us_jb_"), "{a}");
    assert!(
        h.sim.events(None).is_empty(),
        "creating a job emits nothing"
    );

    let first = h.get_json(&format!("/v1/jobs/{a}")).await;
    assert_eq!(first["data"]["id"], a.as_str());
    assert_eq!(first["data"]["status"], "ready");
    assert_eq!(first["data"]["source"], "us_wb_life");
    assert_eq!(first["data"]["type"], "workbook");
    assert_eq!(first["data"]["operation"], "submitActionFg");

    let ack = h
        .post(
            &format!("/v1/jobs/{a}/ack"),
            json!({"info": "Accepted", "progress": 0}),
        )
        .await;
    assert_eq!(ack.status(), 200);
    let tick = h
        .post(
            &format!("/v1/jobs/{a}/ack"),
            json!({"progress": 60, "info": "Posting data"}),
        )
        .await;
    let tick: Value = tick.json().await.expect("JSON");
    assert_eq!(tick["data"]["status"], "executing");
    assert_eq!(tick["data"]["progress"], 60);
    assert!(tick["data"]["startedAt"].is_string());

    let bad = h
        .post(&format!("/v1/jobs/{a}/ack"), json!({"progress": 101}))
        .await;
    assert_eq!(bad.status(), 400);

    let done = h
        .post(
            &format!("/v1/jobs/{a}/complete"),
            json!({"outcome": {"acknowledge": true, "message": "Imported 3 records."}, "info": "Job is Complete"}),
        )
        .await;
    let done: Value = done.json().await.expect("JSON");
    assert_eq!(done["data"]["status"], "complete");
    assert_eq!(done["data"]["outcome"]["message"], "Imported 3 records.");
    // A late ack does not reopen a finished job.
    h.post(&format!("/v1/jobs/{a}/ack"), json!({"progress": 10}))
        .await;

    let expected = flatfile_sim::JobState {
        id: a.clone(),
        status: "complete".to_owned(),
        progress: vec![0, 60],
        info: Some("Job is Complete".to_owned()),
        outcome_message: Some("Imported 3 records.".to_owned()),
        finishes: 1,
    };
    assert_eq!(h.sim.job(&a), Some(expected.clone()));
    let via_admin: flatfile_sim::JobState = admin(&a)
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(via_admin, expected);
    // Finishing any job emits its outcome event.
    let completed = h.sim.events(None);
    assert_eq!(
        completed
            .iter()
            .map(|e| e.topic.as_str())
            .collect::<Vec<_>>(),
        ["job:completed"]
    );
    assert_eq!(completed[0].context["jobId"], a.as_str());
    assert_eq!(completed[0].context["workbookId"], "us_wb_life");

    // fail, with or without a body, on jobs of a sheet.
    let b = h
        .sim
        .create_job(&JobRequest::sheet("us_sh_life-contacts"))
        .expect("job created");
    assert_eq!(b.job, "sheet:submitActionFg");
    assert_eq!(b.source, "us_sh_life-contacts");
    let failed = h
        .post(
            &format!("/v1/jobs/{}/fail", b.job_id),
            json!({"info": "Sink refused", "outcome": {"acknowledge": true, "message": "Sink refused"}}),
        )
        .await;
    assert_eq!(failed.status(), 200);
    let c = h.sim.workbook_job("us_wb_life").expect("job created");
    let empty_body = h
        .http
        .post(h.url(&format!("/v1/jobs/{c}/ack")))
        .bearer_auth(SECRET)
        .send()
        .await
        .expect("answered");
    assert_eq!(empty_body.status(), 200);
    let b = h.sim.job(&b.job_id).expect("job b exists");
    assert_eq!(b.status, "failed");
    assert_eq!(b.outcome_message.as_deref(), Some("Sink refused"));
    let c = h.sim.job(&c).expect("job c exists");
    assert_eq!((c.status.as_str(), c.progress.len()), ("executing", 0));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_jobs_are_404_with_the_platform_error_envelope() {
    let h = Harness::start(small(3)).await;
    let known = h.sim.workbook_job("us_wb_known").expect("job created");
    let unknown = "us_jb_T7uY3kPz";
    let requests = [
        (reqwest::Method::GET, format!("/v1/jobs/{unknown}"), None),
        (
            reqwest::Method::POST,
            format!("/v1/jobs/{unknown}/ack"),
            Some(json!({"info": "Accepted", "progress": 0})),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/jobs/{unknown}/complete"),
            Some(
                json!({"outcome": {"acknowledge": true, "heading": "Success", "message": "Done"}, "info": "Done"}),
            ),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/jobs/{unknown}/fail"),
            Some(json!({"info": "No", "outcome": {"acknowledge": true, "message": "No"}})),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/jobs/{unknown}"),
            Some(json!({"progress": 10})),
        ),
    ];
    for (method, path, body) in requests {
        let mut request = h
            .http
            .request(method.clone(), h.url(&path))
            .bearer_auth(SECRET);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answered");
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.expect("JSON");
        assert_fixture_keys(&fixture("error-envelope"), &body, "$");
        assert_eq!(body["errors"][0]["key"], "jobId", "{method} {path}: {body}");
        assert_eq!(
            body["errors"][0]["message"],
            format!("Job {unknown} not found"),
            "{method} {path}"
        );
    }
    assert_eq!(h.sim.job(unknown), None, "a 404 creates nothing");
    assert_eq!(
        h.sim
            .jobs()
            .into_iter()
            .map(|job| job.id)
            .collect::<Vec<_>>(),
        [known]
    );
    // Another environment's key does not see the job either.
    let config = SimConfig {
        environments: vec![flatfile_sim::SimEnvironment::new("us_env_b", "sk_b")],
        ..small(3)
    };
    let two = Harness::start(config).await;
    let mine = two.sim.workbook_job("us_wb_two").expect("job created");
    let theirs = two
        .http
        .get(two.url(&format!("/v1/jobs/{mine}")))
        .bearer_auth("sk_b")
        .send()
        .await
        .expect("answered");
    assert_eq!(theirs.status(), 404);
    two.sim.shutdown().await;
    h.sim.shutdown().await;
}

#[tokio::test]
async fn patch_updates_a_job_and_post_creates_one() {
    let h = Harness::start(small(3)).await;
    let id = h.sim.workbook_job("us_wb_patch").expect("job created");
    let patch = |body: Value| {
        h.http
            .patch(h.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(SECRET)
            .json(&body)
            .send()
    };
    let answer = patch(json!({
        "status": "executing", "progress": 30, "info": "Working",
        "metadata": {"step": 1}, "config": {}
    }))
    .await
    .expect("answered");
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.expect("JSON");
    assert_fixture_keys(&fixture("job-response"), &answer, "$");
    assert_eq!(answer["data"]["status"], "executing");
    assert_eq!(answer["data"]["progress"], 30);
    assert_eq!(answer["data"]["info"], "Working");
    assert_eq!(answer["data"]["metadata"], json!({"step": 1}));
    assert!(answer["data"]["startedAt"].is_string());
    for (body, key) in [
        (json!({"status": "done"}), "status"),
        (json!({"progress": 101}), "progress"),
        (
            json!({"outcomeAcknowledgedAt": "soon"}),
            "outcomeAcknowledgedAt",
        ),
        (json!({"metadata": 3}), "metadata"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let refused = patch(body.clone()).await.expect("answered");
        assert_eq!(refused.status(), 400, "{body}");
        let refused: Value = refused.json().await.expect("JSON");
        assert_eq!(refused["errors"][0]["key"], key, "{body}: {refused}");
    }
    let acknowledged =
        patch(json!({"status": "complete", "outcomeAcknowledgedAt": "2024-05-02T13:58:40.012Z"}))
            .await
            .expect("answered");
    let acknowledged: Value = acknowledged.json().await.expect("JSON");
    assert_eq!(acknowledged["data"]["status"], "complete");
    assert_eq!(
        acknowledged["data"]["outcomeAcknowledgedAt"],
        "2024-05-02T13:58:40.012Z"
    );
    assert!(acknowledged["data"]["finishedAt"].is_string());
    let state = h.sim.job(&id).expect("job exists");
    assert_eq!(
        (state.status.as_str(), state.progress),
        ("complete", vec![30])
    );
    assert_eq!(
        h.sim
            .events(None)
            .iter()
            .map(|e| e.topic.as_str())
            .collect::<Vec<_>>(),
        ["job:completed"],
        "reaching complete by PATCH emits job:completed"
    );

    // POST /v1/jobs with a JobConfig.
    let created = h
        .post(
            "/v1/jobs",
            json!({"type": "sheet", "operation": "export", "source": "us_sh_patch-contacts", "mode": "background", "input": {"format": "csv"}}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.expect("JSON");
    assert_fixture_keys(&fixture("job-response"), &created, "$");
    let new_id = created["data"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["data"]["status"], "created");
    assert_eq!(created["data"]["mode"], "background");
    assert_eq!(created["data"]["input"], json!({"format": "csv"}));
    assert_eq!(
        h.get_json(&format!("/v1/jobs/{new_id}")).await,
        created,
        "the created job is served as it was answered"
    );
    let event = h.sim.events(None).pop().expect("job:created");
    assert_eq!(event.topic, "job:created");
    assert_eq!(event.context["jobId"], new_id.as_str());
    assert_eq!(event.context["sheetId"], "us_sh_patch-contacts");
    assert_eq!(event.payload["job"], "sheet:export");
    for (body, status, key) in [
        (json!({"operation": "x", "source": "y"}), 400, "type"),
        (
            json!({"type": "robot", "operation": "x", "source": "y"}),
            400,
            "type",
        ),
        (
            json!({"type": "workbook", "operation": "x", "source": "us_wb_"}),
            404,
            "source",
        ),
        (
            json!({"type": "file", "operation": "x", "source": "us_fl_1", "wat": 1}),
            400,
            "wat",
        ),
        (
            json!({"type": "file", "operation": "x", "source": "us_fl_1", "parentId": "us_jb_nope"}),
            404,
            "parentId",
        ),
    ] {
        let refused = h.post("/v1/jobs", body.clone()).await;
        assert_eq!(refused.status(), status, "{body}");
        let refused: Value = refused.json().await.expect("JSON");
        assert_eq!(refused["errors"][0]["key"], key, "{body}: {refused}");
    }
    let listed = h.get_json("/v1/jobs").await;
    assert_eq!(listed["pagination"]["totalCount"], 2);
    assert_eq!(listed["data"][1]["id"], new_id.as_str());
    h.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_sheets_and_workbooks_are_404() {
    let h = Harness::start(small(3)).await;
    for path in [
        "/v1/sheets/us_sh_w-tickets",
        "/v1/sheets/us_sh_w-tickets/records",
        "/v1/sheets/us_sh_w-contactz/counts",
        "/v1/sheets/us_sh_nodash",
        "/v1/sheets/us_sh_-contacts",
        "/v1/sheets/garbage/records",
    ] {
        let response = h.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["errors"][0]["key"], "sheetId", "{path}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .expect("message")
                .contains("not found")
        );
    }
    for path in ["/v1/workbooks/wb_1", "/v1/sheets?workbookId=us_wb_"] {
        let response = h.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["errors"][0]["key"], "workbookId", "{path}");
    }
    assert_eq!(h.get("/v1/nothing-here").await.status(), 404);
    let stats = h.admin_stats().await;
    assert_eq!(stats.requests, 9);
    assert_eq!(stats.sheets, 4);
    assert_eq!(stats.records, 2);
    assert_eq!(stats.counts, 1);
    assert_eq!(stats.workbooks, 1);
    assert_eq!(stats.other, 1);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn injected_faults_follow_the_configured_rates() {
    let config = SimConfig {
        rows: 10,
        seed: 42,
        faults: Faults {
            error_rate: 0.10,
            rate_limit_rate: 0.10,
            retry_after_secs: 3,
            drop_rate: 0.05,
        },
        ..SimConfig::default()
    };
    let h = Harness::start(config).await;
    let (mut ok, mut e500, mut e503, mut limited, mut cut) = (0, 0, 0, 0, 0);
    for n in 0..1000 {
        // Distinct URLs: nobody retries here, so early_retries must stay 0.
        let path = if n % 2 == 0 {
            format!("/v1/sheets/us_sh_w-contacts/counts?n={n}")
        } else {
            format!("/rest/batch/b/rows?take=2&n={n}")
        };
        let request = if n % 2 == 0 {
            h.http.get(h.url(&path)).bearer_auth(SECRET)
        } else {
            h.http.get(h.url(&path)).header("X-Api-Key", LEGACY_KEY)
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(_) => {
                cut += 1;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ASCII").to_owned());
        match (status, response.bytes().await) {
            (_, Err(_)) => cut += 1,
            (200, Ok(body)) => {
                serde_json::from_slice::<Value>(&body).expect("a complete body is JSON");
                ok += 1;
            }
            (500, Ok(_)) => e500 += 1,
            (503, Ok(_)) => e503 += 1,
            (429, Ok(_)) => {
                assert_eq!(retry_after.as_deref(), Some("3"));
                limited += 1;
            }
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    let within = |count: i32, expected: i32| (count - expected).abs() <= 30;
    assert!(within(e500 + e503, 100), "errors {}", e500 + e503);
    assert!(
        (e500 - e503).abs() <= 1,
        "500s {e500} and 503s {e503} alternate"
    );
    assert!(within(limited, 100), "rate limited {limited}");
    assert!(within(cut, 50), "cut {cut}");
    assert_eq!(ok + e500 + e503 + limited + cut, 1000);
    let stats = h.admin_stats().await;
    assert_eq!(stats.requests, 1000);
    assert_eq!(stats.injected_errors, (e500 + e503) as u64);
    assert_eq!(stats.injected_rate_limits, limited as u64);
    assert_eq!(stats.injected_drops, cut as u64);
    assert_eq!(stats.early_retries, 0);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_fails_on_the_client_after_part_of_the_body() {
    let config = SimConfig {
        rows: 200,
        faults: Faults {
            drop_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start(config).await;
    let response = h.legacy("/rest/batch/b/rows?take=200").await;
    assert_eq!(response.status(), 200);
    assert!(response.content_length().is_none());
    let mut response = response;
    let mut received = 0;
    let failure = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => panic!("the body ended cleanly after {received} bytes"),
            Err(err) => break err,
        }
    };
    assert!(failure.is_body() || failure.is_decode(), "{failure:?}");
    assert!(received > 0, "part of the body arrives before the cut");
    // The records endpoint, via the usual whole-body read.
    let records = h.get("/v1/sheets/us_sh_w-contacts/records").await;
    assert!(records.bytes().await.is_err());
    assert_eq!(h.admin_stats().await.injected_drops, 2);
    h.sim.shutdown().await;
}

fn rate_limited(retry_after_secs: u64) -> SimConfig {
    SimConfig {
        rows: 3,
        faults: Faults {
            rate_limit_rate: 1.0,
            retry_after_secs,
            ..Faults::default()
        },
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn retries_before_retry_after_are_counted_as_early() {
    // An hour of Retry-After: the retry below comes before it elapses however slow the machine.
    let h = Harness::start(rate_limited(3600)).await;
    let first = h.legacy("/rest/batch/b/rows?take=2").await;
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "3600");
    let body: Value = first.json().await.expect("JSON");
    assert_eq!(body["statusCode"], 429);
    let too_soon = h.legacy("/rest/batch/b/rows?take=2").await;
    assert_eq!(too_soon.status(), 429);
    assert_eq!(h.sim.stats().early_retries, 1);
    // Another query is another URL; another method would be too.
    h.legacy("/rest/batch/b/rows?take=3").await;
    let platform = h.get("/v1/sheets/us_sh_w-contacts/counts").await;
    let body: Value = platform.json().await.expect("JSON");
    assert!(body["errors"][0]["message"].is_string());
    let stats = h.admin_stats().await;
    assert_eq!(stats.early_retries, 1);
    assert_eq!(stats.injected_rate_limits, 4);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn retries_after_retry_after_are_not_early() {
    let h = Harness::start(rate_limited(1)).await;
    let paths = [
        "/rest/batch/b/rows?take=2",
        "/v1/sheets/us_sh_w-contacts/counts",
    ];
    for path in paths {
        let refused = if path.starts_with("/rest/") {
            h.legacy(path).await
        } else {
            h.get(path).await
        };
        assert_eq!(refused.status(), 429, "{path}");
        assert_eq!(refused.headers()["retry-after"], "1", "{path}");
    }
    // Waiting the whole Retry-After after the answers arrived is a lower bound: the retries
    // reach the simulator later than it asked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.legacy(paths[0]).await.status(), 429);
    assert_eq!(h.get(paths[1]).await.status(), 429);
    let stats = h.admin_stats().await;
    assert_eq!(stats.early_retries, 0);
    assert_eq!(stats.injected_rate_limits, 4);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn page_latency_delays_data_requests() {
    let latency = Duration::from_millis(400);
    let config = SimConfig {
        rows: 3,
        page_latency: latency,
        ..SimConfig::default()
    };
    let h = Harness::start(config).await;
    let started = Instant::now();
    h.legacy_json("/rest/batch/b/rows").await;
    assert!(started.elapsed() >= latency);
    let started = Instant::now();
    h.get_json("/v1/sheets/us_sh_w-contacts/records").await;
    assert!(started.elapsed() >= latency);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn page_latency_leaves_other_requests_alone() {
    // A latency no test outlasts: a request that paid it could not be answered at all.
    let config = SimConfig {
        rows: 3,
        page_latency: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let h = Harness::start(config).await;
    let held = tokio::spawn({
        let request = h
            .http
            .get(h.url("/v1/sheets/us_sh_w-contacts/records"))
            .bearer_auth(SECRET);
        async move { request.send().await }
    });
    // The records request is counted before its handler pauses: from here it is held.
    while h.sim.stats().records == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counts = h.get_json("/v1/sheets/us_sh_w-contacts/counts").await;
    assert_eq!(counts["data"]["counts"]["total"], 2);
    let workbook = h.get_json("/v1/workbooks/us_wb_w").await;
    assert_eq!(workbook["data"]["id"], "us_wb_w");
    assert!(
        !held.is_finished(),
        "the records request is still held while the others are answered"
    );
    held.abort();
    // No graceful shutdown: it would wait for the held request.
    drop(h);
}

#[tokio::test]
async fn post_webhook_sends_the_body_with_the_bearer_token() {
    let (addr, received, task) = receiver(vec![202]).await;
    let url = format!("http://{addr}/hook");
    let body = submit_event_body("us_evt_9", "us_wb_9", "us_jb_9");
    assert_eq!(
        post_webhook(&url, Some("whtoken"), &body)
            .await
            .expect("sent"),
        202
    );
    let legacy = legacy_webhook_body("b-9", "e-9", 10);
    assert_eq!(post_webhook(&url, None, &legacy).await.expect("sent"), 202);
    {
        let received = received.lock().expect("not poisoned");
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].0.as_deref(), Some("Bearer whtoken"));
        assert_eq!(received[0].1, body);
        assert_eq!(received[1].0, None);
        assert_eq!(received[1].1, legacy);
    }
    let refused = post_webhook(&format!("http://{addr}/elsewhere"), None, &legacy)
        .await
        .expect("answered");
    assert_eq!(refused, 404);
    task.abort();
    // Nothing listens there any more: an error, which must not leak the query string.
    let err = post_webhook(&format!("http://{addr}/hook?token=s3cret"), None, &legacy)
        .await
        .expect_err("connection refused");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn the_binary_serves_and_sends_webhooks() {
    let exe = env!("CARGO_BIN_EXE_flatfile-sim");
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--listen", "127.0.0.1:0", "--rows", "12", "--seed", "5"])
        .env("FLATFILE_SIM_SECRET_KEY", "sk_from_env")
        .env_remove("FLATFILE_SIM_LEGACY_API_KEY");
    let mut server = start_binary(command).await;
    let line = &server.start_line;
    assert!(
        line.starts_with("flatfile-sim listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        !line.contains("sk_from_env"),
        "keys are never printed: {line}"
    );
    let base = server.base_url.clone();
    let client = http();
    let counts: Value = client
        .get(format!("{base}/v1/sheets/us_sh_a-contacts/counts"))
        .bearer_auth("sk_from_env")
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(counts["data"]["counts"]["total"], 6);
    let legacy = client
        .get(format!("{base}/rest/batch/x/rows"))
        .header("X-Api-Key", LEGACY_KEY)
        .send()
        .await
        .expect("answered");
    assert_eq!(legacy.status(), 200, "legacy key defaults to the demo key");
    server.child.kill().await.expect("server stops");

    let (addr, received, task) = receiver(vec![200]).await;
    let output = tokio::process::Command::new(exe)
        .args([
            "send-webhook",
            "--to",
            &format!("http://{addr}/hook"),
            "--workbook",
            "us_wb_cli",
            "--job",
            "us_jb_cli",
            "--event-id",
            "us_evt_cli",
        ])
        .env("FLATSYNC_WEBHOOK_TOKEN", "tok")
        .output()
        .await
        .expect("send-webhook runs");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP 200"));
    let output = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &format!("http://{addr}/nowhere")])
        .args(["--legacy-batch", "b-cli", "--rows", "12"])
        .env_remove("FLATSYNC_WEBHOOK_TOKEN")
        .output()
        .await
        .expect("send-webhook runs");
    assert!(!output.status.success(), "a 404 is a failure: {output:?}");
    let output = tokio::process::Command::new(exe)
        .args(["send-webhook", "--to", &format!("http://{addr}/hook")])
        .args(["--legacy-batch", "b-cli", "--rows", "12"])
        .env_remove("FLATSYNC_WEBHOOK_TOKEN")
        .output()
        .await
        .expect("send-webhook runs");
    assert!(output.status.success(), "{output:?}");
    {
        let received = received.lock().expect("not poisoned");
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].0.as_deref(), Some("Bearer tok"));
        assert_eq!(received[0].1["id"], "us_evt_cli");
        assert_eq!(received[0].1["context"]["workbookId"], "us_wb_cli");
        assert_eq!(received[1].0, None);
        assert_eq!(received[1].1["scope"]["batchId"], "b-cli");
        assert_eq!(
            received[1].1["payload"]["portalImportSubmitted"]["totalRows"],
            12
        );
    }
    task.abort();

    let usage = tokio::process::Command::new(exe)
        .args([
            "send-webhook",
            "--to",
            "http://127.0.0.1:9/hook",
            "--job",
            "j",
        ])
        .output()
        .await
        .expect("runs");
    assert!(
        !usage.status.success(),
        "--job without --workbook is refused"
    );
    let help = tokio::process::Command::new(exe)
        .arg("--help")
        .output()
        .await
        .expect("runs");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("FLATFILE_SIM_SECRET_KEY"));
}
