//! Talking to registries through oci-client: credentials, which registries
//! may be reached over plain HTTP, client construction, and turning the
//! client's errors into [`ImageError`]s that say what to fix.
//!
//! HTTPS is the rule; plain HTTP is used only for registries listed in
//! [`PullOptions::insecure_registries`] (oci-client's
//! `ClientProtocol::HttpsExcept`). TLS is rustls with the ring provider
//! (as the agent's gRPC server) and the system's roots.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use super::error::ImageError;

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// No credentials (oci-client still performs the anonymous token
    /// handshake a registry such as Docker Hub asks for).
    #[default]
    Anonymous,
    /// User name and password: sent as HTTP Basic to a registry that asks
    /// for Basic, or exchanged for a token at the realm of a registry that
    /// asks for a Bearer token.
    Basic {
        /// User name.
        username: String,
        /// Password or access token used as one.
        password: String,
    },
    /// A bearer token obtained elsewhere, sent as is.
    Bearer {
        /// The token.
        token: String,
    },
}

impl RegistryCredentials {
    /// oci-client's form.
    pub fn to_oci(&self) -> RegistryAuth {
        match self {
            RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
            RegistryCredentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryCredentials::Bearer { token } => RegistryAuth::Bearer(token.clone()),
        }
    }
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCredentials::Anonymous => f.write_str("Anonymous"),
            RegistryCredentials::Basic { username, .. } => {
                write!(f, "Basic({username:?}, <redacted>)")
            }
            RegistryCredentials::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host[:port]`, exactly as in references) that may be
    /// reached over plain HTTP. Every other registry is HTTPS only.
    pub insecure_registries: Vec<String>,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for any one read from a connection.
    pub read_timeout: Duration,
    /// Bytes the image store's disk must keep free after the pull: a pull
    /// whose missing layers (declared size, twice: the blob and its
    /// unpacked tree) would eat into them is refused before it starts.
    pub keep_free: u64,
    /// Registries (as in references: `registry.k8s.io`, `docker.io`) whose
    /// pulls go to a mirror instead; the image keeps its own names.
    pub mirrors: BTreeMap<String, RegistryMirror>,
}

/// Where the pulls of one registry go instead, as a `host` entry of
/// containerd's `hosts.toml`: requests go to the mirror with the
/// registry's name in an `ns` query parameter (which plain registries,
/// `docker-registry` among them, ignore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    /// `host[:port]`.
    pub host: String,
    /// Reached over plain HTTP (an `http://` endpoint).
    pub plain_http: bool,
}

/// `REGISTRY=URL` (`registry.k8s.io=http://127.0.0.1:5000`): the
/// registry and its mirror. The URL is `http://` or `https://` and a host
/// with an optional port, nothing after.
pub fn parse_mirror(spec: &str) -> Result<(String, RegistryMirror), String> {
    let (registry, url) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not REGISTRY=URL"))?;
    let (plain_http, host) = if let Some(host) = url.strip_prefix("http://") {
        (true, host)
    } else if let Some(host) = url.strip_prefix("https://") {
        (false, host)
    } else {
        return Err(format!("mirror {url:?} is not an http:// or https:// URL"));
    };
    let host = host.trim_end_matches('/');
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    if !valid(registry) || !valid(host) {
        return Err(format!(
            "{spec:?}: the registry and the mirror must be host[:port] (no path)"
        ));
    }
    Ok((
        registry.to_string(),
        RegistryMirror {
            host: host.to_string(),
            plain_http,
        },
    ))
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            keep_free: 0,
            mirrors: BTreeMap::new(),
        }
    }
}

impl PullOptions {
    /// The protocol setting these options give oci-client.
    pub fn protocol(&self) -> ClientProtocol {
        let mut plain: Vec<String> = self.insecure_registries.clone();
        plain.extend(
            self.mirrors
                .values()
                .filter(|m| m.plain_http)
                .map(|m| m.host.clone()),
        );
        if plain.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(plain)
        }
    }

    /// The mirror pulls of `registry` go to, if any.
    pub fn mirror_of(&self, registry: &str) -> Option<&RegistryMirror> {
        self.mirrors.get(registry)
    }
}

/// A client for `options`.
pub(crate) fn client(options: &PullOptions) -> Result<Client, ImageError> {
    // reqwest is built without a bundled provider; use the agent's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: options.protocol(),
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(options.connect_timeout),
        read_timeout: Some(options.read_timeout),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| ImageError::Registry {
        registry: "-".into(),
        message: format!("cannot build the registry client: {e}"),
    })
}

/// Maps an oci-client error for `registry`.
pub(crate) fn map_error(registry: &str, err: OciDistributionError) -> ImageError {
    let reg = registry.to_owned();
    match err {
        OciDistributionError::AuthenticationFailure(message) => ImageError::RegistryAuth {
            registry: reg,
            message,
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::RegistryAuth {
            registry: reg,
            message: format!("not authorized for {url}"),
        },
        OciDistributionError::ImageManifestNotFoundError(message) => ImageError::RegistryNotFound {
            registry: reg,
            message,
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            classify(reg, codes, format!("{envelope} ({url})"))
        }
        OciDistributionError::ServerError { code, url, message } => {
            server_error(reg, code, format!("HTTP {code} for {url}: {message}"))
        }
        OciDistributionError::DigestError(e) => digest_error(registry, e),
        OciDistributionError::RequestError(e) => transport(registry, &e),
        OciDistributionError::IoError(e) => map_io_error(registry, e),
        other => ImageError::Registry {
            registry: reg,
            message: other.to_string(),
        },
    }
}

fn server_error(registry: String, code: u16, message: String) -> ImageError {
    match code {
        401 | 403 => ImageError::RegistryAuth { registry, message },
        404 => ImageError::RegistryNotFound { registry, message },
        _ => ImageError::Registry { registry, message },
    }
}

fn classify(registry: String, codes: Vec<&OciErrorCode>, message: String) -> ImageError {
    use OciErrorCode as C;
    if codes
        .iter()
        .any(|c| matches!(c, C::Unauthorized | C::Denied))
    {
        ImageError::RegistryAuth { registry, message }
    } else if codes.iter().any(|c| {
        matches!(
            c,
            C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound
        )
    }) {
        ImageError::RegistryNotFound { registry, message }
    } else {
        ImageError::Registry { registry, message }
    }
}

fn digest_error(registry: &str, err: DigestError) -> ImageError {
    match err {
        DigestError::VerificationError { expected, actual } => ImageError::DigestMismatch {
            what: format!("content from {registry}"),
            expected,
            actual,
        },
        other => ImageError::Registry {
            registry: registry.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Maps an error from a blob stream (oci-client wraps a digest mismatch
/// found at the end of the stream in an `io::Error`).
pub(crate) fn map_io_error(registry: &str, err: io::Error) -> ImageError {
    let digest = err.get_ref().and_then(|e| e.downcast_ref::<DigestError>());
    if let Some(DigestError::VerificationError { expected, actual }) = digest {
        return ImageError::DigestMismatch {
            what: format!("content from {registry}"),
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    transport(registry, &err)
}

/// A transport failure: TLS if a rustls error is anywhere in the chain.
fn transport(registry: &str, err: &(dyn StdError + 'static)) -> ImageError {
    let registry = registry.to_owned();
    match find_tls_error(err) {
        Some(message) => ImageError::RegistryTls { registry, message },
        None => ImageError::Registry {
            registry,
            message: chain(err),
        },
    }
}

/// The first rustls error in the chain, also inside (nested) `io::Error`s,
/// whose `source()` skips the error they wrap.
fn find_tls_error(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        let mut inner = Some(e);
        while let Some(level) = inner {
            if let Some(tls) = level.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            inner = level
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as _);
        }
        current = e.source();
    }
    None
}

/// Every message of an error chain, joined (reqwest's own message is only
/// "error sending request"; the cause is further down).
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_map_to_oci_client_auth() {
        let basic = RegistryCredentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(basic.to_oci(), RegistryAuth::Basic("u".into(), "p".into()));
        let bearer = RegistryCredentials::Bearer { token: "t".into() };
        assert_eq!(bearer.to_oci(), RegistryAuth::Bearer("t".into()));
        assert_eq!(
            RegistryCredentials::Anonymous.to_oci(),
            RegistryAuth::Anonymous
        );
        assert_eq!(format!("{basic:?}"), "Basic(\"u\", <redacted>)");
        assert_eq!(format!("{bearer:?}"), "Bearer(<redacted>)");
    }

    #[test]
    fn mirrors_parse_and_plain_http_ones_join_the_insecure_list() {
        let (registry, mirror) = parse_mirror("registry.k8s.io=http://127.0.0.1:5000/").unwrap();
        assert_eq!(registry, "registry.k8s.io");
        assert_eq!(
            mirror,
            RegistryMirror {
                host: "127.0.0.1:5000".into(),
                plain_http: true
            }
        );
        assert!(
            !parse_mirror("docker.io=https://mirror.example")
                .unwrap()
                .1
                .plain_http
        );
        for bad in [
            "registry.k8s.io",
            "registry.k8s.io=127.0.0.1:5000",
            "registry.k8s.io=http://127.0.0.1:5000/v2",
            "=http://127.0.0.1:5000",
            "a b=http://x",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
        let options = PullOptions {
            mirrors: [(registry, mirror)].into_iter().collect(),
            ..PullOptions::default()
        };
        assert!(matches!(
            options.protocol(),
            ClientProtocol::HttpsExcept(list) if list == vec!["127.0.0.1:5000".to_string()]
        ));
    }

    #[test]
    fn only_listed_registries_may_use_http() {
        assert_eq!(PullOptions::default().protocol(), ClientProtocol::Https);
        let opts = PullOptions {
            insecure_registries: vec!["127.0.0.1:5000".into()],
            ..PullOptions::default()
        };
        assert_eq!(
            opts.protocol(),
            ClientProtocol::HttpsExcept(vec!["127.0.0.1:5000".into()])
        );
    }

    #[test]
    fn stream_digest_errors_become_mismatches() {
        let err = io::Error::other(DigestError::VerificationError {
            expected: "sha256:a".into(),
            actual: "sha256:b".into(),
        });
        assert!(matches!(
            map_io_error("r", err),
            ImageError::DigestMismatch { .. }
        ));
        // As tokio-rustls reports a handshake failure, wrapped once more.
        let handshake = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General("bad".into()),
        );
        let tls = io::Error::other(handshake);
        assert!(matches!(
            map_io_error("r", tls),
            ImageError::RegistryTls { .. }
        ));
    }
}
