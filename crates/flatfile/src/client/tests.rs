//! Client tests against small servers on 127.0.0.1 that answer from a script.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpVerb, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const LEGACY_KEY_VALUE: &str = "AKID-EXAMPLE-1234+SECRET-EXAMPLE-abcd";
const SECRET_KEY_VALUE: &str = "sk_test_0123456789";

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

struct Script {
    /// Request n gets reply n; the last reply repeats.
    replies: Vec<Reply>,
    seen: Mutex<Vec<Seen>>,
}

struct TestServer {
    url: String,
    script: Arc<Script>,
}

impl TestServer {
    async fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty());
        let script = Arc::new(Script {
            replies,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&script));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, script }
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().expect("not poisoned").clone()
    }

    fn client(&self) -> FlatfileClient {
        FlatfileClient::new(config(&self.url)).expect("client builds")
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    method: HttpVerb,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let index = {
        let mut seen = script.seen.lock().expect("not poisoned");
        seen.push(Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        seen.len() - 1
    };
    let reply = script.replies[index.min(script.replies.len() - 1)].clone();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response
        .body(Body::from(reply.body))
        .expect("valid test response")
}

fn config(url: &str) -> ClientConfig {
    ClientConfig {
        legacy_api_url: url.to_owned(),
        legacy_api_key: Some(Secret::new(LEGACY_KEY_VALUE.to_owned())),
        api_url: format!("{url}/api"),
        secret_key: Some(Secret::new(SECRET_KEY_VALUE.to_owned())),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[tokio::test]
async fn legacy_page_sends_the_api_key_and_converts_rows() {
    let server = TestServer::start(vec![Reply::new(
        200,
        fixture("legacy-batch-rows-page.json"),
    )])
    .await;
    let page = server
        .client()
        .legacy_rows_page(
            "596c2c5f-2884-4444-9ccb-2f0772877508",
            100,
            50,
            &Buffers::default(),
        )
        .await
        .expect("page");
    assert_eq!(
        String::from_utf8(page.ndjson).expect("UTF-8"),
        concat!(
            r#"{"id":"3f1c2a9e-6b7d-4e2f-9a10-5c4b3a2d1e0f","valid":true,"values":{"name":"John","email":"john.smith@example.com"}}"#,
            "\n",
            r#"{"id":"8a7b6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d","valid":false,"values":{"name":"Suzie","email":"suzie.q@"}}"#,
            "\n",
        )
    );
    assert_eq!((page.rows_delivered, page.rows_on_page), (2, 2));
    assert_eq!(page.total_count, Some(2));

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].path,
        "/rest/batch/596c2c5f-2884-4444-9ccb-2f0772877508/rows"
    );
    assert_eq!(seen[0].query.as_deref(), Some("skip=100&take=50"));
    assert_eq!(seen[0].header("x-api-key"), Some(LEGACY_KEY_VALUE));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].header("accept"), Some("application/json"));
}

#[tokio::test]
async fn records_page_sends_bearer_and_disable_hooks() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let page = server
        .client()
        .records_page("us_sh_Jp4Ls8Dn", 2, 500)
        .await
        .expect("page");
    assert_eq!(page.rows, 2);
    assert_eq!(page.commit_id.as_deref(), Some("us_vr_Wc9Hx4Ra"));
    assert!(page.ndjson.starts_with(
        br#"{"id":"us_rc_7f3a9c2e41d84b0f9a6e2d1c5b8a7e30","valid":true,"values":{"firstName":"John","#
    ));

    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/v1/sheets/us_sh_Jp4Ls8Dn/records");
    assert_eq!(seen[0].query.as_deref(), Some("pageSize=500&pageNumber=2"));
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET_KEY_VALUE}").as_str())
    );
    assert_eq!(seen[0].header("x-disable-hooks"), Some("true"));
    assert_eq!(seen[0].header("x-api-key"), None);
}

#[tokio::test]
async fn workbook_sheets_sheet_and_counts() {
    let sheets_list: Value =
        serde_json::from_slice(&fixture("sheets-list.json")).expect("fixture is JSON");
    let one_sheet = json!({"data": sheets_list["data"][0]});
    let server = TestServer::start(vec![
        Reply::new(200, fixture("workbook-get.json")),
        Reply::new(200, fixture("sheets-list.json")),
        Reply::new(200, one_sheet.to_string()),
        Reply::new(200, fixture("record-counts-response.json")),
    ])
    .await;
    let client = server.client();

    let workbook = client.workbook("us_wb_Qm5Zt1Xc").await.expect("workbook");
    assert_eq!(workbook.sheets.len(), 2);
    let sheets = client.sheets("us_wb_Qm5Zt1Xc").await.expect("sheets");
    assert_eq!(sheets, workbook.sheets);
    let sheet = client.sheet("us_sh_Jp4Ls8Dn").await.expect("sheet");
    assert_eq!(sheet.slug, "contacts");
    assert_eq!(sheet.field_keys[..3], ["firstName", "lastName", "email"]);
    assert_eq!(
        client.record_count("us_sh_Jp4Ls8Dn").await.expect("count"),
        2
    );

    let requests: Vec<(String, Option<String>)> = server
        .seen()
        .into_iter()
        .map(|s| (s.path, s.query))
        .collect();
    assert_eq!(
        requests,
        [
            ("/api/v1/workbooks/us_wb_Qm5Zt1Xc".to_owned(), None),
            (
                "/api/v1/sheets".to_owned(),
                Some("workbookId=us_wb_Qm5Zt1Xc".to_owned())
            ),
            ("/api/v1/sheets/us_sh_Jp4Ls8Dn".to_owned(), None),
            ("/api/v1/sheets/us_sh_Jp4Ls8Dn/counts".to_owned(), None),
        ]
    );
}

#[tokio::test]
async fn job_calls_post_the_documented_bodies() {
    let server = TestServer::start(vec![Reply::new(200, fixture("job-response.json"))]).await;
    let client = server.client();
    client
        .job_ack("us_jb_T7uY3kPz", "Accepted", 0)
        .await
        .expect("ack");
    client
        .job_ack("us_jb_T7uY3kPz", "Posting data", 250)
        .await
        .expect("progress");
    client
        .job_complete("us_jb_T7uY3kPz", "Imported 2 records.")
        .await
        .expect("complete");
    client
        .job_fail("us_jb_T7uY3kPz", "Downstream API returned 503")
        .await
        .expect("fail");

    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/jobs/us_jb_T7uY3kPz/ack",
            "/api/v1/jobs/us_jb_T7uY3kPz/ack",
            "/api/v1/jobs/us_jb_T7uY3kPz/complete",
            "/api/v1/jobs/us_jb_T7uY3kPz/fail",
        ]
    );
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-disable-hooks"), Some("true"));
    }
    assert_eq!(seen[0].json(), json!({"info": "Accepted", "progress": 0}));
    assert_eq!(
        seen[1].json(),
        json!({"info": "Posting data", "progress": 100})
    );
    assert_eq!(
        seen[2].json(),
        json!({
            "outcome": {"acknowledge": true, "heading": "Success", "message": "Imported 2 records."},
            "info": "Imported 2 records."
        })
    );
    // The exact body of Flatfile's job-handler plugin (fixture job-fail-request.json).
    assert_eq!(
        seen[3].json(),
        json!({
            "info": "Downstream API returned 503",
            "outcome": {"acknowledge": true, "message": "Downstream API returned 503"}
        })
    );
}

#[tokio::test]
async fn retries_a_503_then_succeeds() {
    let server = TestServer::start(vec![
        Reply::new(503, "upstream busy"),
        Reply::new(200, fixture("records-page.json")),
    ])
    .await;
    let page = server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("second attempt succeeds");
    assert_eq!(page.rows, 2);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn waits_for_retry_after_on_429() {
    let server = TestServer::start(vec![
        Reply::new(429, r#"{"errors":[{"message":"Too many requests"}]}"#)
            .header("retry-after", "1"),
        Reply::new(200, fixture("record-counts-response.json")),
    ])
    .await;
    let count = server
        .client()
        .record_count("us_sh_1")
        .await
        .expect("count");
    assert_eq!(count, 2);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before the server's Retry-After"
    );
}

#[tokio::test]
async fn retry_after_beyond_an_hour_gives_up_at_once() {
    let server = TestServer::start(vec![
        Reply::new(503, "maintenance").header("retry-after", "7200"),
    ])
    .await;
    let error = server
        .client()
        .record_count("us_sh_1")
        .await
        .expect_err("gives up");
    assert!(
        matches!(error, ApiError::Status { status: 503, .. }),
        "{error}"
    );
    assert!(!error.is_permanent());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn not_found_fails_at_once_with_the_envelope_message() {
    let server = TestServer::start(vec![Reply::new(404, fixture("error-envelope.json"))]).await;
    let error = server
        .client()
        .records_page("us_sh_Jp4Ls8Dn", 1, 100)
        .await
        .expect_err("404");
    match &error {
        ApiError::Status {
            method,
            url,
            status,
            body,
        } => {
            assert_eq!(*method, "GET");
            assert_eq!(*status, 404);
            assert_eq!(body, "sheetId: Sheet us_sh_Jp4Ls8Dn not found");
            assert!(
                url.ends_with("/api/v1/sheets/us_sh_Jp4Ls8Dn/records?pageSize=100&pageNumber=1")
            );
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(error.is_permanent());
    assert!(
        error
            .to_string()
            .ends_with("returned HTTP 404: sheetId: Sheet us_sh_Jp4Ls8Dn not found"),
        "{error}"
    );
    assert_eq!(server.seen().len(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn legacy_401_reports_the_legacy_message() {
    let server = TestServer::start(vec![Reply::new(401, fixture("legacy-error.json"))]).await;
    let error = server
        .client()
        .legacy_rows_page("b1", 0, 50, &Buffers::default())
        .await
        .expect_err("401");
    assert!(
        matches!(&error, ApiError::Status { status: 401, body, .. } if body == "Unauthorized"),
        "{error:?}"
    );
    assert!(!error.to_string().contains(LEGACY_KEY_VALUE));
    assert_eq!(server.seen().len(), 1);

    let server = TestServer::start(vec![Reply::new(
        400,
        r#"{"statusCode":400,"message":["take must not be greater than 1000","skip must be a number"],"error":"Bad Request"}"#,
    )])
    .await;
    let error = server
        .client()
        .legacy_rows_page("b1", 0, 5000, &Buffers::default())
        .await
        .expect_err("400");
    assert!(
        matches!(&error, ApiError::Status { body, .. }
            if body == "Bad Request: take must not be greater than 1000; skip must be a number"),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_attempts_run_out() {
    let page = format!("<html>{}</html>", "x".repeat(2000));
    let server = TestServer::start(vec![
        Reply::new(500, page).header("content-type", "text/html"),
    ])
    .await;
    let error = server.client().workbook("us_wb_1").await.expect_err("500");
    match &error {
        ApiError::Status { status, body, .. } => {
            assert_eq!(*status, 500);
            assert!(body.starts_with("<html>xxx"));
            assert_eq!(body.len(), 512);
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(!error.is_permanent());
    assert_eq!(server.seen().len(), 3, "max_attempts");
}

#[tokio::test]
async fn truncated_json_is_retried_then_reported_as_decode_error() {
    let body = fixture("records-page.json");
    let server = TestServer::start(vec![Reply::new(200, body[..body.len() / 2].to_vec())]).await;
    let error = server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect_err("never decodes");
    match &error {
        ApiError::Decode { url, message } => {
            assert!(url.contains("/api/v1/sheets/us_sh_1/records"));
            assert!(message.contains("EOF"), "{message}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 3);

    // And a truncated body followed by a good one succeeds.
    let server = TestServer::start(vec![
        Reply::new(200, body[..body.len() / 2].to_vec()),
        Reply::new(200, body.clone()),
    ])
    .await;
    let page = server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("second attempt decodes");
    assert_eq!(page.rows, 2);
}

#[tokio::test]
async fn missing_credentials_fail_before_any_request() {
    let server = TestServer::start(vec![Reply::new(200, "{}")]).await;
    let client = FlatfileClient::new(ClientConfig {
        legacy_api_key: None,
        secret_key: None,
        ..config(&server.url)
    })
    .expect("client builds without keys");

    let error = client
        .legacy_rows_page("b1", 0, 50, &Buffers::default())
        .await
        .expect_err("no legacy key");
    assert!(
        matches!(error, ApiError::MissingCredential { which } if which.contains("legacy_api_key_env")),
        "{error:?}"
    );
    assert!(error.is_permanent());
    let error = client
        .records_page("us_sh_1", 1, 10)
        .await
        .expect_err("no secret key");
    assert!(
        matches!(error, ApiError::MissingCredential { which } if which.contains("secret_key_env")),
        "{error:?}"
    );
    let error = client
        .job_ack("us_jb_1", "Accepted", 0)
        .await
        .expect_err("no secret key");
    assert!(
        error.to_string().starts_with("no Platform secret key"),
        "{error}"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn connection_refused_is_a_transport_error_after_all_attempts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let client = FlatfileClient::new(config(&format!("http://{address}"))).expect("client");
    let error = client
        .legacy_rows_page("b1", 0, 50, &Buffers::default())
        .await
        .expect_err("nothing listens");
    match &error {
        ApiError::Transport {
            method,
            url,
            attempts,
            message,
        } => {
            assert_eq!(*method, "GET");
            assert_eq!(*attempts, 3);
            assert_eq!(
                url,
                &format!("http://{address}/rest/batch/b1/rows?skip=0&take=50")
            );
            assert!(
                !message.contains(url.as_str()),
                "the URL is not repeated: {message}"
            );
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn a_slow_response_times_out_and_is_retried() {
    let server = TestServer::start(vec![
        // Never answered within the test: only the client's timeout can end this request.
        Reply::new(200, fixture("record-counts-response.json")).delayed(Duration::from_secs(3600)),
        Reply::new(200, fixture("record-counts-response.json")),
    ])
    .await;
    let client = FlatfileClient::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&server.url)
    })
    .expect("client");
    // A hang guard, not a speed claim: without the request timeout this never returns.
    let count = tokio::time::timeout(Duration::from_secs(120), client.record_count("us_sh_1"))
        .await
        .expect("the stalled request was abandoned and retried");
    assert_eq!(count.expect("count"), 2);
    assert_eq!(server.seen().len(), 2);
}

/// A raw server whose first response announces more body than it sends and then closes the
/// connection; later connections get `full_body`.
async fn start_breaking_server(full_body: Vec<u8>) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let connections = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = {
                let mut count = counter.lock().expect("not poisoned");
                *count += 1;
                *count
            };
            let body = full_body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buf[..read]),
                    }
                }
                let mut response = Vec::new();
                if n == 1 {
                    write!(
                        response,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .expect("write to Vec");
                    response.extend_from_slice(&body[..body.len() / 3]);
                } else {
                    write!(
                        response,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .expect("write to Vec");
                    response.extend_from_slice(&body);
                }
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (address, connections)
}

#[tokio::test]
async fn a_body_that_breaks_off_is_retried() {
    let (address, connections) = start_breaking_server(fixture("records-page.json")).await;
    let client = FlatfileClient::new(config(&format!("http://{address}"))).expect("client");
    let page = client
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("second attempt gets the whole body");
    assert_eq!(page.rows, 2);
    assert_eq!(*connections.lock().expect("not poisoned"), 2);
}

/// A body read whole (`read_success_body`) breaking off mid-way fails its attempt too, never
/// passing for the shorter page.
#[tokio::test]
async fn a_whole_body_that_breaks_off_is_retried() {
    let (address, connections) =
        start_breaking_server(fixture("legacy-batch-rows-page.json")).await;
    let client = FlatfileClient::new(config(&format!("http://{address}"))).expect("client");
    let page = client
        .legacy_rows_page("b1", 0, 50, &Buffers::default())
        .await
        .expect("second attempt gets the whole body");
    assert_eq!(page.rows_on_page, 2);
    assert_eq!(*connections.lock().expect("not poisoned"), 2);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = TestServer::start(vec![
        Reply::new(302, "").header("location", "http://elsewhere.invalid/steal"),
    ])
    .await;
    let error = server
        .client()
        .legacy_rows_page("b1", 0, 50, &Buffers::default())
        .await
        .expect_err("redirect");
    assert!(
        matches!(&error, ApiError::Status { status: 302, body, .. }
            if body.contains("redirect to http://elsewhere.invalid/steal not followed")),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn ids_are_encoded_as_single_path_segments() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let client = server.client();
    client.records_page("a/b?c#d e", 1, 10).await.expect("page");
    assert_eq!(
        server.seen()[0].path,
        "/api/v1/sheets/a%2Fb%3Fc%23d%20e/records"
    );
    for bad in ["", ".", ".."] {
        let error = client
            .legacy_rows_page(bad, 0, 10, &Buffers::default())
            .await
            .expect_err("unusable id");
        assert!(matches!(error, ApiError::InvalidUrl { .. }), "{error:?}");
    }
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn api_url_ending_in_v1_is_not_doubled() {
    let server = TestServer::start(vec![Reply::new(
        200,
        fixture("record-counts-response.json"),
    )])
    .await;
    let client = FlatfileClient::new(ClientConfig {
        api_url: format!("{}/v1/", server.url),
        legacy_api_url: format!("{}/", server.url),
        ..config(&server.url)
    })
    .expect("client");
    client.record_count("s1").await.expect("count");
    // A counts body is not a rows page: decoding fails on every attempt.
    let error = client
        .legacy_rows_page("b1", 0, 1, &Buffers::default())
        .await
        .expect_err("not a rows page");
    assert!(matches!(error, ApiError::Decode { .. }), "{error:?}");
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/sheets/s1/counts",
            "/rest/batch/b1/rows",
            "/rest/batch/b1/rows",
            "/rest/batch/b1/rows"
        ]
    );
}

#[test]
fn bad_base_urls_are_refused_without_leaking_passwords() {
    for (url, expected) in [
        ("ftp://example.com", "the scheme must be http or https"),
        ("not a url", "relative URL without a base"),
        ("https://example.com/api?x=1", "query or fragment"),
        ("https://user:hunter2@example.com", "user name or password"),
    ] {
        let error = FlatfileClient::new(ClientConfig {
            api_url: url.to_owned(),
            ..ClientConfig::default()
        })
        .expect_err("refused");
        let text = error.to_string();
        assert!(matches!(error, ApiError::InvalidUrl { .. }), "{error:?}");
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert_eq!(
        redact_userinfo("https://u:p@host/path@x"),
        "https://<redacted>@host/path@x"
    );
    assert_eq!(redact_userinfo("https://host/a@b"), "https://host/a@b");
    assert_eq!(redact_userinfo("no scheme"), "no scheme");
}

#[tokio::test]
async fn credentials_are_trimmed_and_checked() {
    let server = TestServer::start(vec![Reply::new(
        200,
        fixture("record-counts-response.json"),
    )])
    .await;
    let client = FlatfileClient::new(ClientConfig {
        secret_key: Some(Secret::new("sk_from_file\n".to_owned())),
        ..config(&server.url)
    })
    .expect("client");
    client.record_count("s1").await.expect("count");
    assert_eq!(
        server.seen()[0].header("authorization"),
        Some("Bearer sk_from_file")
    );

    for (key, reason) in [("  \n", "empty"), ("sk_\u{1}x", "not allowed")] {
        let error = FlatfileClient::new(ClientConfig {
            legacy_api_key: Some(Secret::new(key.to_owned())),
            ..ClientConfig::default()
        })
        .expect_err("refused");
        assert!(
            matches!(&error, ApiError::InvalidCredential { reason: r, .. } if r.contains(reason)),
            "{error:?}"
        );
    }
}

#[test]
fn debug_output_hides_secrets() {
    let config = config("http://127.0.0.1:9");
    let client = FlatfileClient::new(config.clone()).expect("client");
    for text in [format!("{config:?}"), format!("{client:?}")] {
        assert!(!text.contains(SECRET_KEY_VALUE), "{text}");
        assert!(!text.contains("SECRET-EXAMPLE"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn retries_are_logged_without_secrets() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(vec![
        Reply::new(503, "busy"),
        Reply::new(200, fixture("records-page.json")),
    ])
    .await;
    server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("page");

    let text = String::from_utf8(logs.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    assert!(text.contains("Retrying Flatfile request"), "{text}");
    assert!(text.contains("status=503"), "{text}");
    assert!(text.contains("attempt=1"), "{text}");
    assert!(text.contains("delay_ms="), "{text}");
    assert!(
        text.contains("method=\"GET\"") || text.contains("method=GET"),
        "{text}"
    );
    assert!(!text.contains(SECRET_KEY_VALUE), "{text}");
    assert!(!text.contains("Bearer"), "{text}");
}

#[test]
fn retry_after_forms() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(30))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

#[test]
fn backoff_stays_within_the_policy() {
    let client = FlatfileClient::new(ClientConfig {
        retry: RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        },
        ..ClientConfig::default()
    })
    .expect("client");
    for _ in 0..200 {
        assert!(client.backoff(1) <= Duration::from_millis(100));
        assert!(client.backoff(3) <= Duration::from_millis(400));
        assert!(client.backoff(10) <= Duration::from_secs(1));
        assert!(client.backoff(u32::MAX) <= Duration::from_secs(1));
    }
    // Full jitter spreads the waits instead of synchronising clients.
    let waits: std::collections::HashSet<Duration> = (0..50).map(|_| client.backoff(5)).collect();
    assert!(waits.len() > 10, "{waits:?}");
}

#[test]
fn envelope_messages() {
    assert_eq!(
        envelope_message(br#"{"errors":[{"key":"a","message":"m1"},{"message":"m2"}]}"#).as_deref(),
        Some("a: m1; m2")
    );
    assert_eq!(
        envelope_message(br#"{"statusCode":404,"message":"Batch not found","error":"Not Found"}"#)
            .as_deref(),
        Some("Not Found: Batch not found")
    );
    assert_eq!(envelope_message(br#"{"errors":[]}"#), None);
    assert_eq!(envelope_message(b"<html>"), None);
    assert_eq!(truncate_detail("é".repeat(300)).len(), 512);
    assert_eq!(truncate_detail(format!("a{}", "é".repeat(300))).len(), 511);
}

fn events_fixture() -> Vec<u8> {
    include_bytes!("../../testdata/events-list-page.json").to_vec()
}

fn events_query() -> EventsQuery {
    EventsQuery {
        environment_id: "us_env_Rk2v9WqA".to_owned(),
        since: Some("2024-05-01T12:00:00.000+00:00".to_owned()),
        page_size: 4,
        page_number: 2,
        include_acknowledged: false,
    }
}

#[tokio::test]
async fn events_page_sends_the_documented_query_and_keeps_whole_events() {
    let server = TestServer::start(vec![Reply::new(200, events_fixture())]).await;
    let client = server.client();
    let page = client.events_page(&events_query()).await.expect("page");
    assert_eq!(page.items_on_page, 4);
    assert!(page.skipped.is_empty(), "{:?}", page.skipped);
    let topics: Vec<&str> = page.events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "records:created",
            "commit:created",
            "workbook:updated",
            "job:ready"
        ]
    );
    // Each body is a Platform event the webhook parser accepts, with its context intact.
    match crate::parse_webhook_body(&page.events[1].body).expect("an event body") {
        crate::IncomingEvent::Platform(event) => {
            assert_eq!(event.id, "us_evt_8Tn2Vc5Rb1Qx7Hk4");
            assert_eq!(event.context_str("commitId"), Some("us_vr_Wc9Hx4Ra"));
            assert_eq!(
                event.created_at.as_deref(),
                Some("2024-05-02T13:58:40.090Z")
            );
        }
        other => panic!("expected a Platform event, got {other:?}"),
    }

    client
        .events_page(&EventsQuery {
            since: None,
            page_size: 100,
            page_number: 1,
            include_acknowledged: true,
            ..events_query()
        })
        .await
        .expect("page");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/api/v1/events");
    assert_eq!(
        seen[0].query.as_deref(),
        Some(
            "environmentId=us_env_Rk2v9WqA&since=2024-05-01T12%3A00%3A00.000%2B00%3A00\
             &pageSize=4&pageNumber=2&includeAcknowledged=false"
        )
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET_KEY_VALUE}").as_str())
    );
    assert_eq!(seen[0].header("x-disable-hooks"), Some("true"));
    assert_eq!(
        seen[1].query.as_deref(),
        Some("environmentId=us_env_Rk2v9WqA&pageSize=100&pageNumber=1&includeAcknowledged=true")
    );
}

#[tokio::test]
async fn events_page_skips_bad_items_and_counts_them_for_paging() {
    let body = json!({"data": [
        {"id": "us_evt_a", "topic": "space:created", "createdAt": "2026-01-02T03:04:05.006Z"},
        {"topic": "space:created"},
        "us_evt_b",
        {"id": "us_evt_c", "topic": 3},
    ]});
    let server = TestServer::start(vec![Reply::new(200, body.to_string())]).await;
    let page = server
        .client()
        .events_page(&events_query())
        .await
        .expect("a page with bad items is still a page");
    assert_eq!(page.items_on_page, 4, "a full page: there may be more");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].id, "us_evt_a");
    assert_eq!(
        page.skipped,
        [
            "event 1 of the page has no usable \"id\": it is missing or null",
            "event 2 of the page is a string, expected an object",
            "event 3 of the page (us_evt_c) has no usable \"topic\": it is a number",
        ]
    );
    assert_eq!(
        server.seen().len(),
        1,
        "bad items are not a reason to retry"
    );
}

#[tokio::test]
async fn events_envelope_of_the_wrong_shape_is_a_decode_error_naming_the_url() {
    let server = TestServer::start(vec![Reply::new(200, r#"{"events":[]}"#)]).await;
    let error = server
        .client()
        .events_page(&events_query())
        .await
        .expect_err("no data array");
    match &error {
        ApiError::Decode { url, message } => {
            assert!(url.contains("/api/v1/events?environmentId="), "{url}");
            assert_eq!(
                message,
                "expected an object with a \"data\" array, found an object without \"data\""
            );
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(error.to_string().contains("/api/v1/events"), "{error}");
    assert!(error.is_permanent());
    assert_eq!(
        server.seen().len(),
        3,
        "decoded on every attempt, like the other calls"
    );
}

#[tokio::test]
async fn events_page_retries_a_503() {
    let server = TestServer::start(vec![
        Reply::new(503, "busy"),
        Reply::new(502, "bad gateway"),
        Reply::new(200, events_fixture()),
    ])
    .await;
    let page = server
        .client()
        .events_page(&events_query())
        .await
        .expect("third attempt succeeds");
    assert_eq!(page.events.len(), 4);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.query == seen[0].query),
        "same request"
    );
}

#[tokio::test]
async fn event_ack_posts_nothing_and_accepts_any_success_body() {
    let server = TestServer::start(vec![
        Reply::new(200, r#"{"data":{"success":true}}"#),
        Reply::new(204, ""),
        Reply::new(200, ""),
    ])
    .await;
    let client = server.client();
    client
        .event_ack("us_evt_5Pa8Lx2Nc6Vd3Mz9")
        .await
        .expect("ack");
    client.event_ack("us_evt_2").await.expect("ack, no content");
    client.event_ack("us/evt 3").await.expect("ack, empty body");

    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/events/us_evt_5Pa8Lx2Nc6Vd3Mz9/ack",
            "/api/v1/events/us_evt_2/ack",
            "/api/v1/events/us%2Fevt%203/ack",
        ]
    );
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert!(request.body.is_empty());
        assert_eq!(request.query, None);
        assert_eq!(request.header("content-type"), None);
        assert_eq!(request.header("content-length"), Some("0"));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {SECRET_KEY_VALUE}").as_str())
        );
    }
}

#[tokio::test]
async fn event_ack_of_an_unknown_event_fails_at_once() {
    let server = TestServer::start(vec![Reply::new(
        404,
        r#"{"errors":[{"key":"eventId","message":"Event us_evt_x not found"}]}"#,
    )])
    .await;
    let error = server
        .client()
        .event_ack("us_evt_x")
        .await
        .expect_err("404");
    assert!(
        matches!(&error, ApiError::Status { method: "POST", status: 404, body, .. }
            if body == "eventId: Event us_evt_x not found"),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn records_by_ids_repeat_the_key_and_encode_each_id() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let ids = vec![
        "us_rc_7f3a9c2e41d84b0f9a6e2d1c5b8a7e30".to_owned(),
        "a b+c&d=e/é".to_owned(),
        "us_rc_0c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b".to_owned(),
    ];
    let page = server
        .client()
        .records_selection_page("us_sh_Jp4Ls8Dn", &RecordsSelection::Ids(ids), 1, 100)
        .await
        .expect("page");
    assert_eq!(page.rows, 2);
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/v1/sheets/us_sh_Jp4Ls8Dn/records");
    assert_eq!(
        seen[0].query.as_deref(),
        Some(
            "pageSize=100&pageNumber=1&ids=us_rc_7f3a9c2e41d84b0f9a6e2d1c5b8a7e30\
             &ids=a%20b%2Bc%26d%3De%2F%C3%A9&ids=us_rc_0c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b"
        )
    );
}

#[tokio::test]
async fn more_than_a_hundred_ids_are_refused_without_a_request() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let client = server.client();
    let ids = |n: usize| RecordsSelection::Ids((0..n).map(|i| format!("us_rc_{i}")).collect());

    let error = client
        .records_selection_page("us_sh_1", &ids(101), 1, 1000)
        .await
        .expect_err("too many ids");
    assert!(
        matches!(error, ApiError::InvalidRequest { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "invalid Flatfile request: 101 record ids asked for in one request; \
         the API accepts at most 100"
    );
    assert!(error.is_permanent());
    assert!(server.seen().is_empty());

    client
        .records_selection_page("us_sh_1", &ids(RecordsSelection::MAX_IDS), 1, 1000)
        .await
        .expect("exactly the limit is fine");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let query = seen[0].query.as_deref().expect("a query");
    assert_eq!(query.matches("ids=").count(), 100, "{query}");
    assert!(query.ends_with("&ids=us_rc_98&ids=us_rc_99"), "{query}");
}

#[tokio::test]
async fn selections_that_would_widen_or_page_wrongly_are_refused() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let client = server.client();

    // No ids select no records: an empty page, without asking the API (which would answer
    // with the whole sheet).
    let page = client
        .records_selection_page("us_sh_1", &RecordsSelection::Ids(Vec::new()), 1, 100)
        .await
        .expect("empty page");
    assert_eq!((page.rows, page.ndjson.len(), page.commit_id), (0, 0, None));

    let refused = [
        (
            RecordsSelection::Ids(vec!["us_rc_1".to_owned(), String::new()]),
            1,
            100,
            "record id 1 of the selection is empty",
        ),
        (
            RecordsSelection::Commit(String::new()),
            1,
            100,
            "the commit id of the selection is empty",
        ),
        (
            RecordsSelection::SinceCommit(String::new()),
            1,
            100,
            "the since-commit id of the selection is empty",
        ),
        (
            RecordsSelection::All,
            0,
            100,
            "page numbers start at 1, got 0",
        ),
        (
            RecordsSelection::All,
            1,
            0,
            "the page size must be at least 1",
        ),
    ];
    for (selection, page_number, page_size, expected) in refused {
        let error = client
            .records_selection_page("us_sh_1", &selection, page_number, page_size)
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, ApiError::InvalidRequest { message } if message == expected),
            "{selection:?}: {error:?}"
        );
    }
    for (query, expected) in [
        (
            EventsQuery {
                environment_id: String::new(),
                ..events_query()
            },
            "the environment id of the events query is empty",
        ),
        (
            EventsQuery {
                since: Some(String::new()),
                ..events_query()
            },
            "the \"since\" time of the events query is empty",
        ),
        (
            EventsQuery {
                page_size: 0,
                ..events_query()
            },
            "the page size must be at least 1",
        ),
        (
            EventsQuery {
                page_number: 0,
                ..events_query()
            },
            "page numbers start at 1, got 0",
        ),
    ] {
        let error = client.events_page(&query).await.expect_err("refused");
        assert!(
            matches!(&error, ApiError::InvalidRequest { message } if message == expected),
            "{query:?}: {error:?}"
        );
    }
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn records_by_commit_and_since_commit() {
    let server = TestServer::start(vec![Reply::new(200, fixture("records-page.json"))]).await;
    let client = server.client();
    let page = client
        .records_selection_page(
            "us_sh_Jp4Ls8Dn",
            &RecordsSelection::Commit("us_vr_Wc9Hx4Ra".to_owned()),
            3,
            500,
        )
        .await
        .expect("page");
    assert_eq!(page.rows, 2);
    assert_eq!(page.commit_id.as_deref(), Some("us_vr_Wc9Hx4Ra"));
    client
        .records_selection_page(
            "us_sh_Jp4Ls8Dn",
            &RecordsSelection::SinceCommit("us_vr_Ab1".to_owned()),
            1,
            500,
        )
        .await
        .expect("page");
    client
        .records_selection_page("us_sh_Jp4Ls8Dn", &RecordsSelection::All, 1, 500)
        .await
        .expect("page");

    let queries: Vec<Option<String>> = server.seen().into_iter().map(|s| s.query).collect();
    assert_eq!(
        queries,
        [
            Some("pageSize=500&pageNumber=3&commitId=us_vr_Wc9Hx4Ra".to_owned()),
            Some("pageSize=500&pageNumber=1&sinceCommitId=us_vr_Ab1".to_owned()),
            Some("pageSize=500&pageNumber=1".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_data_url_is_read_under_the_api_root_with_flatsyncs_paging_and_the_key() {
    let page = include_bytes!("../../testdata/records-page.json").to_vec();
    let server = TestServer::start(vec![Reply::new(200, page)]).await;
    let client = server.client();
    let records = client
        .data_url_records_page("v1/sheets/us_sh_1/records?for=us_evt_1&pageSize=5", 3, 200)
        .await
        .expect("the page is read");
    assert!(records.rows > 0, "{records:?}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert!(
        seen[0].path.ends_with("/v1/sheets/us_sh_1/records"),
        "under the configured root: {}",
        seen[0].path
    );
    assert_eq!(
        seen[0].query.as_deref(),
        Some("for=us_evt_1&pageSize=200&pageNumber=3"),
        "the event's own keys kept, paging flatsync's"
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET_KEY_VALUE}").as_str())
    );
    // A dataUrl on another host is never sent the key.
    let err = client
        .data_url_records_page("https://elsewhere.example/v1/sheets/s/records", 1, 10)
        .await
        .expect_err("refused");
    assert!(matches!(err, ApiError::InvalidRequest { .. }), "{err}");
    assert_eq!(server.seen().len(), 1, "no request was sent");
}

#[tokio::test]
async fn a_records_page_the_stream_gives_up_on_is_read_again_and_converted_whole() {
    // The second record's escaped key is valid JSON the fast conversion does not vouch for,
    // met after the first record was converted and let go of.
    let body = br#"{"data":{"records":[{"id":"a","values":{"k":{"value":1}}},{"id":"b","v\u0061lues":{"k":{"value":2}}}]}}"#;
    let server = TestServer::start(vec![Reply::new(200, body.to_vec())]).await;
    let page = server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("converted whole");
    assert_eq!(page, convert::records_page(body).expect("serde takes it"));
    assert_eq!(page.rows, 2);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "read once streaming, once whole");
    assert_eq!(seen[0].query, seen[1].query);
}

#[tokio::test]
async fn a_records_page_of_another_opening_is_read_once_and_converted_whole() {
    let body = br#"{"data":{"commitId":"us_vr_1","records":[{"id":"a","values":{}}]}}"#;
    let server = TestServer::start(vec![Reply::new(200, body.to_vec())]).await;
    let page = server
        .client()
        .records_page("us_sh_1", 1, 100)
        .await
        .expect("page");
    assert_eq!(page.rows, 1);
    assert_eq!(page.commit_id.as_deref(), Some("us_vr_1"));
    assert_eq!(server.seen().len(), 1);
}

/// Records what the client told it; opens once the test says so.
struct RecordingGate {
    told: Mutex<Vec<Duration>>,
    open: tokio::sync::watch::Receiver<bool>,
}

impl AnswerGate for RecordingGate {
    fn answered(
        &self,
        wait_at_most: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.told.lock().expect("not poisoned").push(wait_at_most);
        Box::pin(async move {
            let mut open = self.open.clone();
            open.wait_for(|open| *open)
                .await
                .expect("the test holds the sender");
        })
    }
}

#[tokio::test]
async fn a_success_answer_waits_at_the_fetch_gate_before_its_body_is_read() {
    let server = TestServer::start(vec![
        Reply::new(503, "upstream busy"),
        Reply::new(200, fixture("records-page.json")),
    ])
    .await;
    let (open, opened) = tokio::sync::watch::channel(false);
    let gate = Arc::new(RecordingGate {
        told: Mutex::new(Vec::new()),
        open: opened,
    });
    let client = server.client();
    let fetch = with_answer_gate(gate.clone(), client.records_page("us_sh_1", 1, 100));
    tokio::pin!(fetch);
    // Until the gate opens the page cannot be converted, though both answers came.
    for _ in 0..100 {
        tokio::select! {
            biased;
            _ = &mut fetch => panic!("the body was read before the gate opened"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if !gate.told.lock().expect("not poisoned").is_empty() {
            break;
        }
    }
    assert_eq!(server.seen().len(), 2, "the 503 was retried");
    assert_eq!(
        *gate.told.lock().expect("not poisoned"),
        vec![Duration::from_millis(2_500)],
        "told of the success answer only, to wait at most half the request timeout"
    );
    open.send_replace(true);
    let page = fetch.await.expect("the page, once the gate opened");
    assert_eq!(page.rows, 2);
}
