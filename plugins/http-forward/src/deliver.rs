//! Sending one request until the receiver accepts it, gives a final answer, or the call's
//! time budget runs out.

use std::fmt;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flatsync_plugin_sdk::{Logger, SinkError};
use ureq::Agent;
use ureq::http::{HeaderMap, Response, Uri, header};

use crate::config::{Config, redact_uri};

/// How much of an error response is quoted in the error message.
const ERROR_BODY_LIMIT: u64 = 2048;
/// How much of a 2xx response is read (and dropped) so the connection can be reused.
const ACCEPTED_BODY_LIMIT: u64 = 64 * 1024;
/// A `Retry-After` beyond this is treated as this, so a bogus value cannot overflow a clock.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);

/// The time the deliverer reads and waits by. The plugin uses the machine's; tests move their
/// own, to prove what the budget and the waits do without racing a loaded machine.
pub(crate) trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
}

/// The machine's monotonic clock.
#[derive(Debug)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// One request to send: a part of a batch, already rendered.
#[derive(Debug)]
pub(crate) struct Request<'r> {
    pub(crate) webhook_id: &'r str,
    pub(crate) body: &'r [u8],
    pub(crate) stream: &'r str,
    pub(crate) seq: u64,
    pub(crate) part: usize,
}

/// The HTTP side of the sink: the client, and the receiver's last `Retry-After`.
#[derive(Debug)]
pub(crate) struct Deliverer {
    config: Config,
    agent: Agent,
    logger: Logger,
    clock: Arc<dyn Clock>,
    /// No request goes out before this instant: the receiver asked so with `Retry-After`.
    /// Kept across calls, because the host's own backoff may be shorter.
    not_before: Option<Instant>,
}

enum Outcome {
    Accepted,
    Retryable {
        /// What went wrong, for the log and the final error.
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    Fatal(SinkError),
}

impl Deliverer {
    pub(crate) fn new(config: Config, logger: Logger, clock: Arc<dyn Clock>) -> Self {
        let agent: Agent = Agent::config_builder()
            // A redirect is the receiver's configuration problem: following it would re-send
            // the signed body to a URL nobody configured.
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("flatsync-http-forward/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            config,
            agent,
            logger,
            clock,
            not_before: None,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The time by the deliverer's clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Sends `request` until a 2xx (`Ok`), a final refusal (FATAL) or `deadline` (RETRY).
    pub(crate) fn send(
        &mut self,
        request: &Request<'_>,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        let mut attempt: u32 = 0;
        let mut last_failure: Option<String> = None;
        loop {
            if let Some(not_before) = self.not_before {
                let now = self.clock.now();
                if not_before > deadline {
                    // Sleeping out the budget spaces the host's repeated calls over the wait
                    // the receiver asked for, instead of burning them in quick succession.
                    self.clock.sleep(deadline.saturating_duration_since(now));
                    return Err(self.budget_spent(request, attempt, last_failure.as_deref(), true));
                }
                self.clock.sleep(not_before.saturating_duration_since(now));
                self.not_before = None;
            }
            let now = self.clock.now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(self.budget_spent(request, attempt, last_failure.as_deref(), false));
            }
            attempt += 1;
            // A request never outlives the call's budget, so the call ends before the host
            // would mark the sink stalled.
            let (reason, status, retry_after) =
                match self.attempt(request, self.config.timeout.min(remaining)) {
                    Outcome::Accepted => return Ok(()),
                    Outcome::Fatal(error) => return Err(error),
                    Outcome::Retryable {
                        reason,
                        status,
                        retry_after,
                    } => (reason, status, retry_after),
                };
            let now = self.clock.now();
            let backoff = self.backoff(attempt);
            let mut delay = backoff;
            if let Some(wait) = retry_after {
                let wait = wait.min(RETRY_AFTER_CAP);
                self.not_before = Some(now + wait);
                delay = delay.max(wait);
            }
            last_failure = Some(reason);
            if now + backoff > deadline {
                return Err(self.budget_spent(request, attempt, last_failure.as_deref(), false));
            }
            self.logger.warn(&format!(
                "Request retried: status={} attempt={attempt} delay_ms={} stream={} seq={} part={} webhook_id={} reason={}",
                status.map_or_else(|| "none".to_owned(), |status| status.to_string()),
                delay.as_millis(),
                request.stream,
                request.seq,
                request.part,
                request.webhook_id,
                last_failure.as_deref().unwrap_or(""),
            ));
            // Any longer wait asked by Retry-After is done at the top of the loop.
            self.clock.sleep(backoff);
        }
    }

    fn attempt(&self, request: &Request<'_>, timeout: Duration) -> Outcome {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        let signature = match self
            .config
            .signer
            .sign(request.webhook_id, timestamp, request.body)
        {
            Ok(signature) => signature,
            Err(error) => return Outcome::Fatal(error),
        };
        let mut builder = self
            .agent
            .post(&self.config.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", request.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("idempotency-key", request.webhook_id);
        for (name, value) in &self.config.headers {
            builder = builder.header(name, value);
        }
        match builder.send(request.body) {
            Ok(response) => self.judge(request, response),
            Err(error) => transport_outcome(&error),
        }
    }

    fn judge(&self, request: &Request<'_>, mut response: Response<ureq::Body>) -> Outcome {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            // The status line already says accepted; the rest only matters for keep-alive.
            let mut sink = std::io::sink();
            let _ = std::io::copy(
                &mut response.body_mut().as_reader().take(ACCEPTED_BODY_LIMIT),
                &mut sink,
            );
            return Outcome::Accepted;
        }
        let what = format!(
            "HTTP {status} from {} for stream {} batch {} part {} (webhook-id {})",
            self.config.url_display, request.stream, request.seq, request.part, request.webhook_id
        );
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map_or_else(|| "none".to_owned(), redact_location);
            return Outcome::Fatal(SinkError::fatal(format!(
                "{what}: redirects are not followed (Location: {location}); set `url` to the final address"
            )));
        }
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let mut body = Vec::new();
        let read = response
            .body_mut()
            .as_reader()
            .take(ERROR_BODY_LIMIT)
            .read_to_end(&mut body);
        let mut text = String::from_utf8_lossy(&body).into_owned();
        if let Err(error) = read {
            text.push_str(&format!(" (reading the body failed: {error})"));
        }
        if status == 408 || status == 429 || (500..600).contains(&status) {
            return Outcome::Retryable {
                reason: format!("{what}: {text}"),
                status: Some(status),
                retry_after,
            };
        }
        Outcome::Fatal(SinkError::fatal(format!("{what}: {text}")))
    }

    fn budget_spent(
        &self,
        request: &Request<'_>,
        attempts: u32,
        last_failure: Option<&str>,
        waiting: bool,
    ) -> SinkError {
        let budget = self.config.retry_budget.as_secs();
        let why = match (waiting, last_failure) {
            (true, _) => "the receiver's Retry-After asks to wait past the retry budget".to_owned(),
            (false, Some(failure)) => format!("last failure: {failure}"),
            (false, None) => "no time left to send it".to_owned(),
        };
        SinkError::retry(format!(
            "retry budget of {budget} s spent after {attempts} attempts in this call, sending \
             stream {} batch {} part {} (webhook-id {}) to {}; {why}",
            request.stream, request.seq, request.part, request.webhook_id, self.config.url_display
        ))
    }

    /// Full jitter: uniform in `[0, min(retry_max, retry_initial * 2^(attempt-1))]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let cap = self
            .config
            .retry_initial
            .saturating_mul(factor)
            .min(self.config.retry_max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=cap_ms))
    }
}

fn transport_outcome(error: &ureq::Error) -> Outcome {
    match error {
        // These do not pass with time: the request itself cannot be built.
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
            Outcome::Fatal(SinkError::fatal(format!(
                "cannot build the request: {}",
                describe_transport(error)
            )))
        }
        _ => Outcome::Retryable {
            reason: describe_transport(error),
            status: None,
            retry_after: None,
        },
    }
}

/// The error without any URL it may quote (a query string can carry a token).
fn describe_transport(error: &ureq::Error) -> String {
    match error {
        ureq::Error::BadUri(_) => "invalid URL".to_owned(),
        ureq::Error::InvalidProxyUrl => "invalid proxy URL".to_owned(),
        other => other.to_string(),
    }
}

fn redact_location(location: &str) -> String {
    match location.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => redact_uri(&uri),
        // A relative location: print its path only.
        _ => location
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// `Retry-After` as a wait from `now`: delay-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
