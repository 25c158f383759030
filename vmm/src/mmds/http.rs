//! The guest's side of MMDS: one HTTP request head to its answer, in
//! Firecracker's formats, status codes and texts.
//!
//! A request is its head alone (up to the blank line), as in Firecracker:
//! one that announces a body is answered 400, since the service reads
//! none. `GET` reads the document at the request's path, `PUT
//! /latest/api/token` issues a session token; other known methods are
//! answered 405, unknown ones 501. V2 requires a valid token
//! (`X-metadata-token`, or EC2's `X-aws-ec2-metadata-token`) on a GET and
//! answers 401 without one; V1 serves a GET either way and only counts
//! missing and invalid tokens.
//!
//! Pure functions over bytes: the TCP side is [`super::stack`]'s.

use super::data_store::{self, DataStore, MmdsVersion, OutputFormat};
use super::metrics::METRICS;
use super::token::{self, TOKEN_PATH};
use super::Mmds;

const TOKEN_HEADERS: &[&str] = &["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: &[&str] = &[
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
const FORWARDED_FOR: &str = "x-forwarded-for";

/// Methods HTTP defines that the service does not serve (405); any other
/// method is unknown (501).
const OTHER_METHODS: &[&str] = &["HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    NotImplemented,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::NotImplemented => 501,
        }
    }
}

/// An answer to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    pub json: bool,
    pub body: String,
    /// `HTTP/1.0` if the request was, else `HTTP/1.1`.
    pub http10: bool,
    /// Extra header lines (name, value): the token's lifetime.
    pub headers: Vec<(String, String)>,
    /// The guest asked to close the connection after this answer
    /// (`Connection: close`).
    pub close: bool,
}

impl Answer {
    fn text(status: Status, body: impl Into<String>) -> Self {
        Self {
            status,
            json: false,
            body: body.into(),
            http10: false,
            headers: Vec::new(),
            close: false,
        }
    }

    /// The bytes on the wire: Firecracker's status line (no reason
    /// phrase) and headers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.{} {} \r\nServer: stratum-vmm\r\nConnection: {}\r\n",
            if self.http10 { 0 } else { 1 },
            self.status.code(),
            if self.close { "close" } else { "keep-alive" },
        );
        if self.status == Status::MethodNotAllowed {
            out.push_str("Allow: GET, PUT\r\n");
        }
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            if self.json {
                "application/json"
            } else {
                "text/plain"
            },
            self.body.len()
        ));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// Where the first request head in `buf` ends (after its blank line), if
/// it is complete. A bare LF ends lines too, as in Firecracker.
pub fn request_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1..].starts_with(b"\r\n") {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// A parsed request head.
#[derive(Debug)]
struct Request<'a> {
    method: &'a str,
    /// The absolute path, as sent (no scheme and host, no query).
    path: &'a str,
    http10: bool,
    headers: Vec<(&'a str, &'a str)>,
}

impl Request<'_> {
    /// The first header named one of `names` (lower case), with its name
    /// as sent.
    fn header(&self, names: &[&str]) -> Option<(&str, &str)> {
        self.headers
            .iter()
            .find(|(name, _)| names.iter().any(|n| name.eq_ignore_ascii_case(n)))
            .copied()
    }
}

/// The answer to the request head `head`.
pub fn answer(mmds: &Mmds, head: &[u8]) -> Answer {
    let request = match parse(head) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let mut answer = match request.method {
        "GET" => get(&mmds.lock(), &request),
        "PUT" => put(&mut mmds.lock(), &request),
        _ => Answer::text(Status::MethodNotAllowed, "Not allowed HTTP method."),
    };
    answer.http10 = request.http10;
    answer.close = request.header(&["connection"]).is_some_and(|(_, v)| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
    });
    answer
}

fn invalid() -> Answer {
    Answer::text(Status::BadRequest, "Invalid request.")
}

fn parse(head: &[u8]) -> Result<Request<'_>, Answer> {
    let text = std::str::from_utf8(head).map_err(|_| invalid())?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            return Err(Answer::text(
                Status::NotImplemented,
                "Unsupported HTTP version.",
            ))
        }
    };
    if method != "GET" && method != "PUT" && !OTHER_METHODS.contains(&method) {
        return Err(Answer::text(
            Status::NotImplemented,
            "Unsupported HTTP method.",
        ));
    }
    let path =
        absolute_path(target).ok_or_else(|| Answer::text(Status::BadRequest, "Invalid URI."))?;
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(invalid)?;
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(invalid());
        }
        // The service reads no body: one announced cannot be framed.
        if name.eq_ignore_ascii_case("content-length") && value != "0" {
            return Err(invalid());
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
        {
            return Err(invalid());
        }
        headers.push((name, value));
    }
    Ok(Request {
        method,
        path,
        http10,
        headers,
    })
}

/// The path of a request target: `/a/b` or `http://host/a/b`, without a
/// query or fragment; `None` if it is neither or empty.
fn absolute_path(target: &str) -> Option<&str> {
    let path = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.starts_with('/').then_some(path)
}

/// `//` collapsed to `/`, so the path is a JSON pointer.
fn json_pointer(path: &str) -> String {
    let mut pointer = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && pointer.ends_with('/')) {
            pointer.push(c);
        }
    }
    pointer
}

fn get(store: &DataStore, request: &Request<'_>) -> Answer {
    let token = request.header(TOKEN_HEADERS);
    match (store.version(), token) {
        (MmdsVersion::V1, None) => METRICS.rx_no_token.inc(),
        (MmdsVersion::V1, Some((_, token))) => {
            if !store.is_valid_token(token) {
                METRICS.rx_invalid_token.inc();
            }
        }
        (MmdsVersion::V2, None) => {
            METRICS.rx_no_token.inc();
            return Answer::text(
                Status::Unauthorized,
                "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` \
                 header to specify the session token.",
            );
        }
        (MmdsVersion::V2, Some((_, token))) => {
            if !store.is_valid_token(token) {
                METRICS.rx_invalid_token.inc();
                return Answer::text(Status::Unauthorized, "MMDS token not valid.");
            }
        }
    }
    // Only an exact `application/json` asks for JSON, as Firecracker reads
    // `Accept`.
    let json = request
        .header(&["accept"])
        .is_some_and(|(_, value)| value == "application/json");
    let format = if json {
        OutputFormat::Json
    } else {
        OutputFormat::Imds
    };
    match store.get(&json_pointer(request.path), format) {
        Ok(body) => Answer {
            json,
            ..Answer::text(Status::Ok, body)
        },
        Err(data_store::Error::NotFound) => Answer::text(
            Status::NotFound,
            format!("Resource not found: {}.", request.path),
        ),
        Err(error) => Answer::text(Status::NotImplemented, error.to_string()),
    }
}

fn put(store: &mut DataStore, request: &Request<'_>) -> Answer {
    if let Some((name, _)) = request.header(&[FORWARDED_FOR]) {
        return Answer::text(
            Status::BadRequest,
            format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
        );
    }
    if json_pointer(request.path) != TOKEN_PATH {
        return Answer::text(
            Status::NotFound,
            format!("Resource not found: {}.", request.path),
        );
    }
    let Some((name, value)) = request.header(TTL_HEADERS) else {
        return Answer::text(
            Status::BadRequest,
            "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
             `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.",
        );
    };
    let Ok(ttl) = value.parse::<u32>() else {
        return Answer::text(
            Status::BadRequest,
            format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
        );
    };
    match store.issue_token(ttl) {
        Ok(token) => Answer {
            headers: vec![(name.to_string(), ttl.to_string())],
            ..Answer::text(Status::Ok, token)
        },
        Err(error @ token::Error::InvalidTtl(_)) => {
            Answer::text(Status::BadRequest, error.to_string())
        }
        Err(error) => Answer::text(Status::BadRequest, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mmds(version: MmdsVersion) -> Mmds {
        let mmds = Mmds::new(51_200);
        {
            let mut store = mmds.lock();
            store.configure(version, false);
            store
                .put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "zone": {"a": "b"}}}, "n": 1}))
                .unwrap();
        }
        mmds
    }

    fn ask(mmds: &Mmds, head: &str) -> Answer {
        answer(mmds, head.as_bytes())
    }

    fn token(mmds: &Mmds) -> String {
        let a = ask(
            mmds,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert_eq!(a.status, Status::Ok, "{a:?}");
        a.body
    }

    #[test]
    fn request_heads_end_at_the_blank_line() {
        assert_eq!(request_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(request_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(request_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(request_end(b""), None);
        assert_eq!(request_end(b"\n"), None);
    }

    #[test]
    fn v1_serves_without_a_token() {
        let mmds = mmds(MmdsVersion::V1);
        let a = ask(&mmds, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
        assert_eq!(
            (a.status, a.body.as_str(), a.json),
            (Status::Ok, "ami-1", false)
        );
        let a = ask(
            &mmds,
            "GET http://169.254.169.254/latest/meta-data HTTP/1.0\r\nX-metadata-token: bad\r\n\r\n",
        );
        assert_eq!((a.status, a.body.as_str()), (Status::Ok, "ami-id\nzone/"));
        assert!(a.http10);
        let bytes = String::from_utf8(a.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.0 200 \r\n"), "{bytes}");
        assert!(
            bytes.contains("Content-Type: text/plain\r\nContent-Length: 12\r\n\r\nami-id\nzone/")
        );
    }

    #[test]
    fn v2_requires_a_valid_token() {
        let mmds = mmds(MmdsVersion::V2);
        let a = ask(&mmds, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, Status::Unauthorized);
        assert!(a.body.starts_with("No MMDS token provided."), "{}", a.body);
        let a = ask(
            &mmds,
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: nope\r\n\r\n",
        );
        assert_eq!(
            (a.status, a.body.as_str()),
            (Status::Unauthorized, "MMDS token not valid.")
        );
        let t = token(&mmds);
        let a = ask(
            &mmds,
            &format!("GET /latest//meta-data/ami-id HTTP/1.1\r\nx-AWS-ec2-metadata-token: {t}\r\nAccept: application/json\r\n\r\n"),
        );
        assert_eq!(
            (a.status, a.body.as_str(), a.json),
            (Status::Ok, "\"ami-1\"", true)
        );
        let bytes = String::from_utf8(a.to_bytes()).unwrap();
        assert!(
            bytes.contains("Content-Type: application/json\r\n"),
            "{bytes}"
        );
    }

    #[test]
    fn token_requests() {
        let mmds = mmds(MmdsVersion::V2);
        let a = ask(
            &mmds,
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
        );
        assert_eq!(a.status, Status::Ok);
        assert_eq!(
            a.headers,
            vec![(
                "X-aws-ec2-metadata-token-ttl-seconds".to_string(),
                "21600".to_string()
            )]
        );
        let bytes = String::from_utf8(a.to_bytes()).unwrap();
        assert!(bytes.ends_with(&format!(
            "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n{}",
            a.body
        )));
        let cases = [
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-metadata-token-ttl-seconds: 1\r\n\r\n",
                Status::BadRequest,
                "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
            ),
            (
                "PUT /latest/api/toke HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\n\r\n",
                Status::NotFound,
                "Resource not found: /latest/api/toke.",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\n\r\n",
                Status::BadRequest,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
                 `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: application/json\r\n\r\n",
                Status::BadRequest,
                "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:application/json",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
                Status::BadRequest,
                "Invalid time to live value provided for token: 21601. Please provide a value \
                 between 1 and 21600.",
            ),
        ];
        for (head, status, body) in cases {
            let a = ask(&mmds, head);
            assert_eq!((a.status, a.body.as_str()), (status, body), "{head:?}");
        }
    }

    #[test]
    fn errors() {
        let mmds = mmds(MmdsVersion::V1);
        let cases = [
            (
                "GET /nothing HTTP/1.1\r\n\r\n",
                Status::NotFound,
                "Resource not found: /nothing.",
            ),
            (
                "GET /n HTTP/1.1\r\n\r\n",
                Status::NotImplemented,
                "Cannot retrieve value. The value has an unsupported type.",
            ),
            (
                "POST / HTTP/1.1\r\n\r\n",
                Status::MethodNotAllowed,
                "Not allowed HTTP method.",
            ),
            (
                "FOO / HTTP/1.1\r\n\r\n",
                Status::NotImplemented,
                "Unsupported HTTP method.",
            ),
            (
                "GET / HTTP/2.0\r\n\r\n",
                Status::NotImplemented,
                "Unsupported HTTP version.",
            ),
            (
                "GET nothing HTTP/1.1\r\n\r\n",
                Status::BadRequest,
                "Invalid URI.",
            ),
            (
                "GET http://host HTTP/1.1\r\n\r\n",
                Status::BadRequest,
                "Invalid URI.",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                Status::BadRequest,
                "Invalid request.",
            ),
            (
                "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Status::BadRequest,
                "Invalid request.",
            ),
            (
                "GET / HTTP/1.1\r\nno colon\r\n\r\n",
                Status::BadRequest,
                "Invalid request.",
            ),
            ("GET /\r\n\r\n", Status::BadRequest, "Invalid request."),
            ("\r\n\r\n", Status::BadRequest, "Invalid request."),
        ];
        for (head, status, body) in cases {
            let a = ask(&mmds, head);
            assert_eq!((a.status, a.body.as_str()), (status, body), "{head:?}");
        }
        let a = answer(&mmds, b"GET /\xff HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, Status::BadRequest);
        let a = ask(&mmds, "PATCH / HTTP/1.1\r\n\r\n");
        assert!(String::from_utf8(a.to_bytes())
            .unwrap()
            .contains("\r\nAllow: GET, PUT\r\n"));
        let a = ask(&mmds, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(a.close);
        assert!(String::from_utf8(a.to_bytes())
            .unwrap()
            .contains("\r\nConnection: close\r\n"));
    }
}
