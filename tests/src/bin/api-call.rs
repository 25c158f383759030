//! `api-call`: one HTTP request to a VMM's control API over its Unix
//! socket, for scenarios inside the nested test host (whose busybox has no
//! HTTP client that speaks to Unix sockets). Statically linked like `vmm`.
//!
//! Usage: `api-call SOCKET METHOD PATH [JSON-BODY]`. Prints `HTTP <status>`
//! and the response body; exits 0 for a 2xx status, 1 otherwise, 2 when
//! the request could not be made.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn request(socket: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, method, path, rest @ ..] = args.as_slice() else {
        eprintln!("usage: api-call SOCKET METHOD PATH [JSON-BODY]");
        return ExitCode::from(2);
    };
    let body = rest.first().map(String::as_str).unwrap_or("");
    match request(socket, method, path, body) {
        Ok((status, body)) => {
            println!("HTTP {status} {body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("api-call: {e}");
            ExitCode::from(2)
        }
    }
}
