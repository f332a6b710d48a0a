//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: enough for webhooks and the
//! simulator's API, with no dependency that could hide what goes over the wire.
//!
//! Every request sends `Connection: close` and reads the answer to the end of the stream, so
//! there is no connection reuse to reason about. Chunked answers are decoded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body from a {} answer, got ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `http://host:port/path?query` split up.
struct Target {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

fn parse_url(url: &str) -> io::Result<Target> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{why}: {url}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| invalid(&format!("bad host:port ({e})")))?
        .next()
        .ok_or_else(|| invalid("host resolves to nothing"))?;
    Ok(Target {
        addr,
        host_header: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// Sends one request and reads the whole answer.
///
/// The body is written from a second thread while this one reads, so a server that answers
/// before reading the whole body (a 413 for an oversized one) is heard instead of turning into a
/// write error.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpReply> {
    let target = parse_url(url)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        target.path,
        target.host_header,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    exchange(url, raw)
}

/// Sends `raw` (a complete request, head and body, exactly as given) to the host and port of
/// `url` and reads the whole answer. For requests [`request`] would not write, such as a
/// chunked body.
pub fn exchange(url: &str, raw: Vec<u8>) -> io::Result<HttpReply> {
    let target = parse_url(url)?;
    let stream = TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || {
        let written = writer.write_all(&raw).and_then(|()| writer.flush());
        // A server may close early (e.g. 413); the answer is what matters, not this error.
        drop(written);
    });

    let mut answer = Vec::new();
    let mut reader = &stream;
    let read = reader.read_to_end(&mut answer);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    if let Err(e) = read {
        // A reset after a complete answer still leaves a usable answer.
        if answer.is_empty() {
            return Err(e);
        }
    }
    parse_reply(&answer).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{why} in the answer from {url}: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            ),
        )
    })
}

/// POSTs a JSON body, with a bearer token when given.
pub fn post_json(url: &str, bearer: Option<&str>, body: &[u8]) -> io::Result<HttpReply> {
    let auth = bearer.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    request("POST", url, &headers, body)
}

/// GETs a URL with extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> io::Result<HttpReply> {
    request("GET", url, headers, b"")
}

fn parse_reply(raw: &[u8]) -> Result<HttpReply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status code")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, len)) => {
                let len: usize = len.parse().map_err(|_| "bad content-length")?;
                if rest.len() < len {
                    return Err(format!("body cut short ({} of {len} bytes)", rest.len()));
                }
                rest[..len].to_vec()
            }
            None => rest.to_vec(),
        }
    };
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(data.len());
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line cut short")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".to_owned());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_answers_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let reply = parse_reply(raw).expect("parses");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"abcde");
        let raw = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nX-A: b\r\n\r\n{}";
        let reply = parse_reply(raw).expect("parses");
        assert_eq!((reply.status, reply.body.as_slice()), (413, &b"{}"[..]));
        assert_eq!(reply.header("x-a"), Some("b"));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc").is_err());
    }
}
