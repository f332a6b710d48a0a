//! Plain HTTP/1.1 on 127.0.0.1 with ureq: the daemon's webhook and admin listeners, the
//! simulator's API and admin API. Every status is an answer, not an error.
//!
//! [`KeepAlive`] is the intake lines' sender instead: on this 2-core machine the load
//! generator's CPU is taken from the daemon's, so it writes pre-rendered request bytes to a
//! plain keep-alive socket and reads only what it checks of an answer (status line,
//! `Content-Length`, the body's bytes).

use std::io::{Read, Write};
use std::net::TcpStream;
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

/// How long [`KeepAlive`] waits for an answer's bytes: what ureq's agents are given.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest answer head [`KeepAlive`] reads; the daemon's are a few hundred bytes.
const MAX_ANSWER_HEAD: usize = 16 << 10;

/// One keep-alive HTTP/1.1 connection sending POSTs of JSON bodies one at a time, each
/// waiting for its answer. Nothing is parsed but the status line and `Content-Length`; an
/// answer without `Content-Length` (chunked, or ended by a close) is an error, as is a
/// connection the server closed.
pub(crate) struct KeepAlive {
    stream: TcpStream,
    /// `POST <path> HTTP/1.1` and the fixed headers, up to `Content-Length: `.
    head: Vec<u8>,
    /// The request being sent, rebuilt in place for each body.
    request: Vec<u8>,
    /// Bytes read from the socket and not yet consumed.
    answer: Vec<u8>,
    what: String,
}

impl KeepAlive {
    /// Connects to `url` (`http://host:port/path`).
    pub(crate) fn connect(url: &str) -> Result<KeepAlive, BenchError> {
        let what = format!("POST {url}");
        let fail = |message: String| BenchError::Http {
            what: what.clone(),
            message,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| fail("only http:// URLs are supported".to_owned()))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
        let stream = TcpStream::connect(authority).map_err(|e| fail(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: "
        )
        .into_bytes();
        Ok(KeepAlive {
            stream,
            request: Vec::with_capacity(head.len() + 1024),
            head,
            answer: Vec::with_capacity(4096),
            what,
        })
    }

    /// Sends `body` in one write and reads the answer: its status, which must be 2xx.
    pub(crate) fn post_ok(&mut self, body: &[u8]) -> Result<u16, BenchError> {
        self.request.clear();
        self.request.extend_from_slice(&self.head);
        self.request
            .extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
        self.request.extend_from_slice(body);
        self.stream
            .write_all(&self.request)
            .map_err(|e| self.fail(format!("cannot send: {e}")))?;
        let (status, head_len, body_len) = self.read_head()?;
        while self.answer.len() < head_len + body_len {
            self.fill()?;
        }
        if !(200..=299).contains(&status) {
            let body = &self.answer[head_len..head_len + body_len];
            let message = format!(
                "answered {status}: {}",
                excerpt(&String::from_utf8_lossy(body))
            );
            return Err(self.fail(message));
        }
        self.answer.drain(..head_len + body_len);
        Ok(status)
    }

    /// Reads until a whole answer head is buffered: the status, the head's length (with its
    /// blank line) and the body's length.
    fn read_head(&mut self) -> Result<(u16, usize, usize), BenchError> {
        loop {
            if let Some(end) = self.answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head_len = end + 4;
                let (status, body_len) = parse_answer_head(&self.answer[..end])
                    .map_err(|message| self.fail(message.to_owned()))?;
                return Ok((status, head_len, body_len));
            }
            if self.answer.len() > MAX_ANSWER_HEAD {
                return Err(self.fail(format!("an answer head over {MAX_ANSWER_HEAD} bytes")));
            }
            self.fill()?;
        }
    }

    /// Appends what one read gives; a closed connection is an error.
    fn fill(&mut self) -> Result<(), BenchError> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(self.fail("the server closed the connection".to_owned())),
            Ok(n) => {
                self.answer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(self.fail(format!("cannot read the answer: {e}"))),
        }
    }

    fn fail(&self, message: String) -> BenchError {
        BenchError::Http {
            what: self.what.clone(),
            message,
        }
    }
}

/// The status and `Content-Length` of an answer head (without its blank line).
fn parse_answer_head(head: &[u8]) -> Result<(u16, usize), &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "an answer head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("an answer without an HTTP/1.1 status line")?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or("an answer without a Content-Length")?;
    Ok((status, length))
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn an_answer_head_gives_its_status_and_length() {
        assert_eq!(
            parse_answer_head(b"HTTP/1.1 200 OK\r\ncontent-type: x\r\ncontent-length: 42"),
            Ok((200, 42))
        );
        assert_eq!(
            parse_answer_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length:0"),
            Ok((503, 0))
        );
        assert!(parse_answer_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
        assert!(parse_answer_head(b"HTTP/1.0 200 OK\r\ncontent-length: 1").is_err());
    }

    /// A server that answers each request on one connection with `answers` in turn, the
    /// first two written in one piece and the third split, to check answers are told apart
    /// whatever the reads give.
    #[test]
    fn answers_are_read_one_by_one_and_a_refusal_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            let mut bodies = Vec::new();
            for _ in 0..3 {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("head line");
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.strip_prefix("Content-Length: ") {
                        length = value.trim().parse().expect("length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                bodies.push(String::from_utf8(body).expect("UTF-8"));
                if bodies.len() == 2 {
                    writer
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nonHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\ntwo")
                        .expect("write");
                }
                if bodies.len() == 3 {
                    writer
                        .write_all(b"HTTP/1.1 503 Busy\r\nConte")
                        .expect("write");
                    writer.flush().expect("flush");
                    std::thread::sleep(Duration::from_millis(20));
                    writer
                        .write_all(b"nt-Length: 4\r\n\r\nbusy")
                        .expect("write");
                }
            }
            bodies
        });
        let mut first = KeepAlive::connect(&format!("http://{addr}/hook")).expect("connect");
        // The server answers the first two together, after the second request.
        let mut second = first.stream.try_clone().expect("clone");
        second
            .write_all(b"POST /hook HTTP/1.1\r\nContent-Length: 1\r\n\r\na")
            .expect("write");
        assert_eq!(first.post_ok(b"{\"n\":2}").expect("2xx"), 200);
        assert_eq!(
            first.answer,
            b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\ntwo"
        );
        first.answer.clear();
        let refused = first.post_ok(b"{\"n\":3}").expect_err("a 503 is an error");
        assert!(
            refused.to_string().contains("answered 503: busy"),
            "{refused}"
        );
        let bodies = server.join().expect("server");
        assert_eq!(bodies, ["a", "{\"n\":2}", "{\"n\":3}"]);
    }
}
