//! The HTTP/1.1 subset the control API speaks: requests framed by
//! `Content-Length`, persistent connections, and JSON responses.
//!
//! Parsing is a pure function over the bytes received so far, so the
//! connection loop stays trivial and the tricky cases (truncated heads,
//! pipelined requests, hostile lengths) are unit-tested without sockets.
//! Every limit is enforced before anything is allocated for it.

use std::fmt;

/// Largest request body accepted unless `--http-api-max-payload-size`
/// says otherwise: Firecracker's default. API bodies are a few hundred
/// bytes; the limit keeps a client from making us buffer arbitrary amounts.
pub const DEFAULT_MAX_BODY_SIZE: usize = 51_200;
/// Largest request line plus headers accepted.
pub const MAX_HEAD_SIZE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without its query string, e.g. `/machine-config`.
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response (HTTP/1.1
    /// default, unless `Connection: close`; HTTP/1.0 only with keep-alive).
    pub keep_alive: bool,
}

/// Why a request could not be parsed. The connection is closed after the
/// error response, since the next request's start can no longer be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request line and headers exceed {MAX_HEAD_SIZE} bytes")]
    HeadTooLarge,
    #[error("malformed request line: {0:?}")]
    RequestLine(String),
    #[error("unsupported HTTP method {0:?}: the API accepts GET, PUT and PATCH")]
    Method(String),
    #[error("unsupported HTTP version {0:?}: the API speaks HTTP/1.1")]
    Version(String),
    #[error("the request target {0:?} is not an absolute path")]
    Target(String),
    #[error("malformed header line: {0:?}")]
    Header(String),
    #[error("request head is not valid UTF-8")]
    NotUtf8,
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
    // Firecracker's words, which its clients may match.
    #[error(
        "Request payload with size {size} is larger than the limit of {limit} allowed by server."
    )]
    BodyTooLarge { size: u64, limit: usize },
    #[error("Transfer-Encoding is not supported: send the body with a Content-Length")]
    TransferEncoding,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and how many bytes of the buffer it used: the rest
    /// belongs to the next (pipelined) request.
    Complete(Request, usize),
    /// More bytes are needed. `expects_continue` is set once the head is
    /// complete and asks for `100 Continue` (curl does this for bodies over
    /// 1 KiB) so the caller can answer it before the body arrives.
    Partial { expects_continue: bool },
}

/// Parses the first request in `buf`, whose body may be at most
/// `max_body` bytes.
pub fn parse(buf: &[u8], max_body: usize) -> Result<Parsed, ParseError> {
    let Some((head_len, body_start)) = find_head_end(buf) else {
        if buf.len() > MAX_HEAD_SIZE {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(Parsed::Partial {
            expects_continue: false,
        });
    };
    if head_len > MAX_HEAD_SIZE {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| ParseError::NotUtf8)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (method, path, http10) = parse_request_line(request_line)?;

    let mut content_length: Option<u64> = None;
    let mut connection_close = http10;
    let mut expects_continue = false;
    for line in lines {
        let (name, value) = parse_header(line)?;
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<u64>()
                .ok()
                // A leading '+' parses as u64 but is not a valid length.
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ParseError::ContentLength(value.to_string()))?;
            // Two different lengths make the framing ambiguous (request
            // smuggling); the same one repeated is harmless.
            if content_length.is_some_and(|previous| previous != length) {
                return Err(ParseError::ContentLength(value.to_string()));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    connection_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    connection_close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expects_continue = true;
        }
    }

    let size = content_length.unwrap_or(0);
    let length = match usize::try_from(size) {
        Ok(length) if length <= max_body => length,
        _ => {
            return Err(ParseError::BodyTooLarge {
                size,
                limit: max_body,
            })
        }
    };
    let available = buf.len() - body_start;
    if available < length {
        return Ok(Parsed::Partial { expects_continue });
    }
    let end = body_start + length;
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            body: buf[body_start..end].to_vec(),
            keep_alive: !connection_close,
        },
        end,
    ))
}

/// Finds the blank line ending the head: returns the head's length (without
/// the blank line) and where the body starts. Bare LF line ends are
/// accepted, as most servers do.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.starts_with(b"\r\n") {
                return Some((i, i + 3));
            }
            if rest.starts_with(b"\n") {
                return Some((i, i + 2));
            }
        }
        i += 1;
    }
    None
}

fn parse_request_line(line: &str) -> Result<(Method, String, bool), ParseError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::RequestLine(line.to_string()));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ParseError::Version(version.to_string())),
    };
    let method = match method {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "" => return Err(ParseError::RequestLine(line.to_string())),
        other => return Err(ParseError::Method(other.to_string())),
    };
    if !target.starts_with('/') {
        return Err(ParseError::Target(target.to_string()));
    }
    // Firecracker ignores query strings; so do we.
    let path = target.split(['?', '#']).next().unwrap_or_default();
    Ok((method, path.to_string(), http10))
}

fn parse_header(line: &str) -> Result<(&str, &str), ParseError> {
    let bad = || ParseError::Header(line.to_string());
    let (name, value) = line.split_once(':').ok_or_else(bad)?;
    // A name with whitespace (including obsolete line folding, which starts
    // with a space) is rejected, as RFC 9112 requires.
    if name.is_empty()
        || name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad());
    }
    Ok((name, value.trim()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Continue,
    Ok,
    NoContent,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    InternalServerError,
}

impl StatusCode {
    pub fn code(self) -> u16 {
        match self {
            StatusCode::Continue => 100,
            StatusCode::Ok => 200,
            StatusCode::NoContent => 204,
            StatusCode::BadRequest => 400,
            StatusCode::NotFound => 404,
            StatusCode::PayloadTooLarge => 413,
            StatusCode::InternalServerError => 500,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            StatusCode::Continue => "Continue",
            StatusCode::Ok => "OK",
            StatusCode::NoContent => "No Content",
            StatusCode::BadRequest => "Bad Request",
            StatusCode::NotFound => "Not Found",
            StatusCode::PayloadTooLarge => "Payload Too Large",
            StatusCode::InternalServerError => "Internal Server Error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    /// A JSON document, or nothing (204).
    pub body: Option<Vec<u8>>,
    /// Firecracker's `Deprecation: true` header: the request used a field
    /// or form Firecracker deprecates.
    pub deprecated: bool,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: StatusCode::NoContent,
            body: None,
            deprecated: false,
        }
    }

    pub fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            body: Some(body),
            deprecated: false,
        }
    }

    /// The error body every Firecracker client understands.
    pub fn fault(status: StatusCode, message: &str) -> Self {
        let body = serde_json::json!({ "fault_message": message }).to_string();
        Self::json(status, body.into_bytes())
    }

    /// A 400 for bytes that are not a request we can frame: Firecracker's
    /// HTTP layer words these `{"error": ...}`, apart from the API's own
    /// `fault_message` answers.
    pub fn framing_error(error: &ParseError) -> Self {
        let body = serde_json::json!({ "error": error.to_string() }).to_string();
        Self::json(StatusCode::BadRequest, body.into_bytes())
    }

    /// The same response, marked as answering a deprecated request.
    pub fn deprecated(mut self) -> Self {
        self.deprecated = true;
        self
    }

    /// The bytes on the wire. `keep_alive` tells the client whether we keep
    /// the connection open.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: stratum-vmm\r\nConnection: {}\r\n",
            self.status.code(),
            self.status.reason(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        if self.deprecated {
            out.push_str("Deprecation: true\r\n");
        }
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ));
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(body);
                bytes
            }
            None => {
                // 204 must not carry a body; other empty answers say so.
                if self.status != StatusCode::NoContent {
                    out.push_str("Content-Length: 0\r\n");
                }
                out.push_str("\r\n");
                out.into_bytes()
            }
        }
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with Firecracker's default body limit.
    fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
        super::parse(buf, DEFAULT_MAX_BODY_SIZE)
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Ok(Parsed::Complete(request, used)) => (request, used),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn firecracker_client_request() {
        // As sent by the Go SDK / requests-unixsocket.
        let body = br#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
        let mut buf = format!(
            "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        buf.extend_from_slice(body);
        let (request, used) = complete(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path, "/machine-config");
        assert_eq!(request.body, body);
        assert!(request.keep_alive);
    }

    #[test]
    fn truncated_heads_and_bodies_wait_for_more() {
        let full = b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert_eq!(
                parse(&full[..cut]),
                Ok(Parsed::Partial {
                    expects_continue: false
                }),
                "cut at {cut}"
            );
        }
        assert!(matches!(parse(full), Ok(Parsed::Complete(..))));
    }

    #[test]
    fn pipelined_requests_are_split() {
        let buf = b"GET / HTTP/1.1\r\n\r\nPUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /vm/config HTTP/1.1\r\n\r\n";
        let (first, used) = complete(buf);
        assert_eq!(first.path, "/");
        assert!(first.body.is_empty());
        let (second, used2) = complete(&buf[used..]);
        assert_eq!(second.path, "/a");
        assert_eq!(second.body, b"{}");
        let (third, used3) = complete(&buf[used + used2..]);
        assert_eq!(third.path, "/vm/config");
        assert_eq!(used + used2 + used3, buf.len());
    }

    #[test]
    fn bad_content_lengths() {
        for value in ["abc", "-1", "+5", "", "1 2", "99999999999999999999999"] {
            let buf = format!("PUT / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert!(
                matches!(parse(buf.as_bytes()), Err(ParseError::ContentLength(_))),
                "{value:?}"
            );
        }
        let conflicting = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\nab";
        assert!(matches!(
            parse(conflicting),
            Err(ParseError::ContentLength(_))
        ));
        let repeated = b"PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab";
        assert!(matches!(parse(repeated), Ok(Parsed::Complete(..))));
    }

    #[test]
    fn oversize_body_is_refused_before_it_arrives() {
        let buf = format!(
            "PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            DEFAULT_MAX_BODY_SIZE + 1
        );
        let error = parse(buf.as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Request payload with size 51201 is larger than the limit of 51200 allowed by server."
        );
        let buf = format!("PUT / HTTP/1.1\r\nContent-Length: {DEFAULT_MAX_BODY_SIZE}\r\n\r\n");
        assert!(matches!(parse(buf.as_bytes()), Ok(Parsed::Partial { .. })));
        // The operator's limit, smaller or larger.
        let buf = b"PUT / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(
            super::parse(buf, 10),
            Err(ParseError::BodyTooLarge {
                size: 11,
                limit: 10
            })
        ));
        let buf = b"PUT / HTTP/1.1\r\nContent-Length: 60000\r\n\r\n";
        assert!(matches!(
            super::parse(buf, 100_000),
            Ok(Parsed::Partial { .. })
        ));
    }

    #[test]
    fn oversize_head_is_refused() {
        let buf = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_SIZE));
        assert_eq!(parse(buf.as_bytes()), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn malformed_heads() {
        let cases: &[&[u8]] = &[
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"DELETE / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn connection_header_and_version_decide_keep_alive() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn bare_lf_query_and_expect_continue() {
        let (r, _) = complete(b"GET /machine-config?x=1 HTTP/1.1\nHost: a\n\n");
        assert_eq!(r.path, "/machine-config");
        let head = b"PUT /logger HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse(head),
            Ok(Parsed::Partial {
                expects_continue: true
            })
        );
    }

    #[test]
    fn responses_are_framed() {
        let bytes = Response::no_content().to_bytes(true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
        let text = String::from_utf8(
            Response::fault(StatusCode::BadRequest, "no \"way\"").to_bytes(false),
        )
        .unwrap();
        let body = r#"{"fault_message":"no \"way\""}"#;
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(text.contains("Connection: close"));
        assert!(text.ends_with(body));
    }
}
