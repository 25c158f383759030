//! From `--addr`/`--certs`/`--insecure` to a gRPC channel: mTLS unless
//! plaintext is asked for, and plaintext only to loopback, mirroring the
//! agent's own rule ([`stratum_api::tls::check_plaintext_allowed`]) so an
//! operator cannot send unauthenticated commands across the network by a
//! typo in the address.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::UsageError;
use stratum_api::tls;

/// The agent's port when the address names none.
pub const DEFAULT_PORT: u16 = 7443;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `--addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://host:port` or `http://host:port`.
    pub uri: String,
    /// Host as the server certificate must name it (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `--addr`: `https://HOST[:PORT]`, `http://HOST[:PORT]` (plaintext,
/// needs `insecure`) or a bare `HOST[:PORT]`. With `insecure`, an https
/// address is dialled as plaintext so the default address works with it.
pub fn target(addr: &str, insecure: bool) -> Result<Target, UsageError> {
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("https://{addr}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| UsageError(format!("invalid --addr {addr:?}: {e}")))?;
    let tls = match (uri.scheme_str(), insecure) {
        (Some("https"), insecure) => !insecure,
        (Some("http"), true) => false,
        (Some("http"), false) => {
            return Err(UsageError(format!(
                "--addr {addr:?} is plaintext: pass --insecure (loopback only) or use https://"
            )))
        }
        _ => {
            return Err(UsageError(format!(
                "invalid --addr {addr:?}: scheme must be https or http"
            )))
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| UsageError(format!("invalid --addr {addr:?}: no host")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(DEFAULT_PORT);
    let scheme = if tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}:{port}", bracketed(&host));
    Ok(Target {
        uri,
        host,
        port,
        tls,
    })
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Refuses plaintext unless every address the host resolves to is loopback.
pub fn check_plaintext_target(target: &Target) -> Result<(), UsageError> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| UsageError(format!("cannot resolve {}: {e}", target.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(UsageError(format!(
            "{} resolves to no address",
            target.host
        )));
    }
    for addr in addrs {
        tls::check_plaintext_allowed(addr, true).map_err(|e| UsageError(e.to_string()))?;
    }
    Ok(())
}

/// A lazily connecting channel: connection failures surface as the first
/// call's UNAVAILABLE status, reported like any other gRPC error.
pub fn channel(target: &Target, certs: &Path) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(target.uri.clone())
        .map_err(|e| UsageError(format!("invalid --addr {}: {e}", target.uri)))?
        .connect_timeout(CONNECT_TIMEOUT);
    if target.tls {
        let config = tls::client_tls_config(certs, &target.host).with_context(|| {
            format!(
                "loading client certificates from {} (run `nodectl certs init`, start the agent once, or set --certs / NODECTL_CERTS)",
                certs.display()
            )
        })?;
        endpoint = endpoint.tls_config(config)?;
    } else {
        check_plaintext_target(target)?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_defaults() {
        let t = target("https://127.0.0.1:7443", false).unwrap();
        assert_eq!(
            (t.uri.as_str(), t.host.as_str(), t.tls),
            ("https://127.0.0.1:7443", "127.0.0.1", true)
        );
        let t = target("localhost", false).unwrap();
        assert_eq!((t.uri.as_str(), t.port), ("https://localhost:7443", 7443));
        let t = target("https://[::1]:9000", false).unwrap();
        assert_eq!(
            (t.uri.as_str(), t.host.as_str()),
            ("https://[::1]:9000", "::1")
        );
    }

    #[test]
    fn plaintext_needs_the_flag() {
        assert!(target("http://127.0.0.1:7443", false).is_err());
        let t = target("http://127.0.0.1:7443", true).unwrap();
        assert!(!t.tls);
        let t = target("https://127.0.0.1:7443", true).unwrap();
        assert_eq!(t.uri, "http://127.0.0.1:7443");
        assert!(target("ftp://x", false).is_err());
        assert!(target("https://", false).is_err());
    }

    #[test]
    fn plaintext_only_to_loopback() {
        for ok in ["http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"] {
            let t = target(ok, true).unwrap();
            assert!(check_plaintext_target(&t).is_ok(), "{ok}");
        }
        for bad in [
            "http://0.0.0.0:1",
            "http://192.0.2.1:1",
            "http://[2001:db8::1]:1",
        ] {
            let t = target(bad, true).unwrap();
            let err = check_plaintext_target(&t).unwrap_err();
            assert!(err.to_string().contains("loopback"), "{err}");
        }
    }
}
