//! Plain HTTP/1.1 on 127.0.0.1 with ureq: the daemon's webhook and admin listeners, the
//! simulator's API and admin API. Every status is an answer, not an error.

use std::time::Duration;

use crate::error::BenchError;

/// An agent with keep-alive; one per thread that sends in parallel.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// `GET url` with `headers`: the status and the body.
pub(crate) fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), BenchError> {
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let what = || format!("GET {url}");
    let mut response = request.call().map_err(|e| BenchError::Http {
        what: what(),
        message: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| BenchError::Http {
            what: what(),
            message: e.to_string(),
        })?;
    Ok((status, body))
}

/// `POST url` with a JSON body: the status and the body.
pub(crate) fn post_json(
    agent: &ureq::Agent,
    url: &str,
    body: &str,
) -> Result<(u16, String), BenchError> {
    let what = || format!("POST {url}");
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| BenchError::Http {
            what: what(),
            message: e.to_string(),
        })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| BenchError::Http {
            what: what(),
            message: e.to_string(),
        })?;
    Ok((status, text))
}

/// [`get`], requiring a 2xx answer.
pub(crate) fn get_ok(agent: &ureq::Agent, url: &str) -> Result<String, BenchError> {
    match get(agent, url, &[])? {
        (200..=299, body) => Ok(body),
        (status, body) => Err(BenchError::Http {
            what: format!("GET {url}"),
            message: format!("answered {status}: {}", excerpt(&body)),
        }),
    }
}

/// [`post_json`], requiring a 2xx answer.
pub(crate) fn post_ok(agent: &ureq::Agent, url: &str, body: &str) -> Result<String, BenchError> {
    match post_json(agent, url, body)? {
        (200..=299, text) => Ok(text),
        (status, text) => Err(BenchError::Http {
            what: format!("POST {url}"),
            message: format!("answered {status}: {}", excerpt(&text)),
        }),
    }
}

fn excerpt(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(300)
        .map_or(text.len(), |(at, _)| at);
    &text[..end]
}
