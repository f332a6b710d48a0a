//! Credential probes for `flatsync doctor`: one cheap authenticated GET per API, sent once.
//!
//! A probe answers "does the API take this key?", so it never retries: a retry loop would turn
//! an unreachable host into minutes of waiting, and a 401 does not improve on a second try.

use reqwest::Url;

use super::{Api, FlatfileClient, HttpMethod, endpoint, error_chain};
use crate::error::ApiError;

/// Batch id the legacy probe asks for. No such batch exists; the API authenticates the key
/// before it looks the batch up, so any answer other than 401/403 means the key was accepted.
const LEGACY_PROBE_BATCH: &str = "flatsync-doctor-probe";

impl FlatfileClient {
    /// Sends `GET {legacy}/rest/batch/flatsync-doctor-probe/rows?skip=0&take=1` once with the
    /// legacy API key and returns the HTTP status of the answer, whatever it is.
    ///
    /// 401 and 403 mean the key was refused; 2xx and 404 mean it was accepted (the batch does
    /// not exist). Errors: [`ApiError::MissingCredential`] when no legacy key is configured,
    /// [`ApiError::Transport`] when no answer came.
    pub async fn probe_legacy_key(&self) -> Result<u16, ApiError> {
        let mut url = endpoint(
            &self.inner.legacy_base,
            &["rest", "batch", LEGACY_PROBE_BATCH, "rows"],
        )?;
        url.query_pairs_mut()
            .append_pair("skip", "0")
            .append_pair("take", "1");
        self.probe(Api::Legacy, url).await
    }

    /// Sends `GET /v1/jobs?pageSize=1` once with the Platform secret key and returns the HTTP
    /// status of the answer, whatever it is. Listing jobs needs no id and reads one item.
    ///
    /// 2xx means the key was accepted, 401 and 403 that it was refused. Errors:
    /// [`ApiError::MissingCredential`] when no secret key is configured, [`ApiError::Transport`]
    /// when no answer came.
    pub async fn probe_secret_key(&self) -> Result<u16, ApiError> {
        let mut url = endpoint(&self.inner.api_base, &["jobs"])?;
        url.query_pairs_mut().append_pair("pageSize", "1");
        self.probe(Api::Platform, url).await
    }

    async fn probe(&self, api: Api, url: Url) -> Result<u16, ApiError> {
        let headers = self.headers(api)?;
        let method = HttpMethod::Get;
        let response = self
            .inner
            .http
            .request(method.to_reqwest(), url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|error| ApiError::Transport {
                method: method.as_str(),
                url: url.to_string(),
                attempts: 1,
                message: error_chain(&error.without_url()),
            })?;
        let status = response.status().as_u16();
        tracing::debug!(url = %url, status, "Flatfile probe answered");
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use tokio::net::TcpListener;

    use crate::{ApiError, ClientConfig, FlatfileClient, RetryPolicy, Secret};

    /// Requests the server saw: path with query, and the credential headers.
    type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

    async fn server(status: StatusCode) -> (SocketAddr, Seen) {
        let seen: Seen = Arc::default();
        let app =
            Router::new()
                .fallback(
                    |State((seen, status)): State<(Seen, StatusCode)>,
                     uri: Uri,
                     headers: HeaderMap| async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        seen.lock().expect("not poisoned").push((
                            uri.to_string(),
                            header("x-api-key"),
                            header("authorization"),
                        ));
                        status
                    },
                )
                .with_state((Arc::clone(&seen), status));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, seen)
    }

    fn client(base: &str, keys: bool) -> FlatfileClient {
        FlatfileClient::new(ClientConfig {
            legacy_api_url: base.to_owned(),
            legacy_api_key: keys.then(|| Secret::new("kid+secret".to_owned())),
            api_url: base.to_owned(),
            secret_key: keys.then(|| Secret::new("sk_probe".to_owned())),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            },
        })
        .expect("valid client config")
    }

    #[tokio::test]
    async fn each_probe_is_one_authenticated_get_reporting_the_status() {
        let (addr, seen) = server(StatusCode::OK).await;
        let client = client(&format!("http://{addr}"), true);
        assert_eq!(client.probe_legacy_key().await.expect("answered"), 200);
        assert_eq!(client.probe_secret_key().await.expect("answered"), 200);
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            seen[0].0,
            "/rest/batch/flatsync-doctor-probe/rows?skip=0&take=1"
        );
        assert_eq!(seen[0].1.as_deref(), Some("kid+secret"));
        assert_eq!(seen[1].0, "/v1/jobs?pageSize=1");
        assert_eq!(seen[1].2.as_deref(), Some("Bearer sk_probe"));
    }

    #[tokio::test]
    async fn a_refused_key_or_a_server_error_is_reported_once_without_retrying() {
        for status in [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE] {
            let (addr, seen) = server(status).await;
            let client = client(&format!("http://{addr}"), true);
            assert_eq!(
                client.probe_secret_key().await.expect("answered"),
                status.as_u16()
            );
            assert_eq!(seen.lock().expect("not poisoned").len(), 1, "no retry");
        }
    }

    #[tokio::test]
    async fn no_answer_is_a_transport_error_and_no_key_is_named() {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind");
        let client = client(&format!("http://{addr}"), true);
        let err = client
            .probe_legacy_key()
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(err, ApiError::Transport { attempts: 1, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("kid+secret"), "{err}");

        let client = self::client(&format!("http://{addr}"), false);
        let err = client.probe_secret_key().await.expect_err("no key");
        assert!(matches!(err, ApiError::MissingCredential { .. }), "{err:?}");
    }
}
