//! Mutual TLS for the agent's gRPC port, and the development PKI that makes
//! it usable out of the box.
//!
//! The agent drives VMs and cgroups as root, so its port is mTLS by default:
//! the server presents a certificate and accepts only clients whose
//! certificate its CA signed. Plaintext (h2c) exists for debugging, and only
//! on loopback behind an explicit flag ([`check_plaintext_allowed`]).
//!
//! [`generate_dev_pki`] makes a throwaway CA plus one server and one client
//! certificate, so `make run` and `nodectl` work on a fresh machine. A real
//! deployment puts its own `ca.pem`, `server.pem`/`server.key` and
//! `client.pem`/`client.key` in the same directory layout instead.
//!
//! rustls with the *ring* provider is the TLS stack (tonic's `tls-ring`
//! feature): pure Rust plus ring's bundled C, no OpenSSL and no cmake.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};
use time::{Duration, OffsetDateTime};

use crate::certs::{self, Role};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The CA certificate both sides trust.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: only needed to sign more certificates.
pub const CA_KEY: &str = "ca.key";
/// The agent's certificate.
pub const SERVER_CERT: &str = "server.pem";
/// The agent's private key.
pub const SERVER_KEY: &str = "server.key";
/// The operator's (nodectl's) certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// The operator's private key.
pub const CLIENT_KEY: &str = "client.key";

/// Every file of a complete set, in the order they are written.
const PKI_FILES: [&str; 6] = [
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
];

/// Names every server certificate carries, so a local client can reach the
/// agent by any of the usual loopback spellings.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Common name of the client certificate (the operator CLI).
pub const CLIENT_COMMON_NAME: &str = "nodectl";

/// How long the development CA and server certificate stay valid. Long,
/// because the set is kept across restarts and an expired one only shows
/// up as an opaque handshake failure; a real deployment brings its own.
/// Client certificates are short-lived ([`certs::DEFAULT_DAYS`]): the
/// agent renews the development admin's at start ([`generate_dev_pki`]).
const VALIDITY_DAYS: i64 = 3650;

/// What can go wrong making or loading TLS material, or choosing plaintext.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading, writing or renaming a file failed.
    // The cause is part of the message, not a `source`, so printing the
    // error chain does not repeat it.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        error: io::Error,
    },
    /// Some but not all files of a set exist: regenerating would silently
    /// replace a CA that clients may already trust, so the operator decides.
    #[error(
        "{dir}: incomplete certificate set, missing {}: restore them or empty the directory to make a new development CA",
        missing.join(", ")
    )]
    IncompleteSet {
        /// The certificate directory.
        dir: PathBuf,
        /// File names that are absent.
        missing: Vec<String>,
    },
    /// A name given for the server certificate is no DNS name or IP address.
    #[error("invalid server name {name:?}: {error}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is not one.
        error: InvalidDnsNameError,
    },
    /// Making a key or certificate failed.
    #[error("generating {what}: {error}")]
    Generate {
        /// Which key or certificate.
        what: &'static str,
        /// rcgen's reason.
        error: rcgen::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: not a PEM {expected}: {detail}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        expected: &'static str,
        /// Why parsing failed.
        detail: String,
    },
    /// A private key readable by group or others, as ssh refuses them too.
    #[error("{path}: private key has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Plaintext was chosen without the explicit flag.
    #[error("refusing plaintext gRPC on {addr}: mTLS is the default; plaintext needs the explicit insecure flag")]
    PlaintextNotRequested {
        /// The listen or target address.
        addr: SocketAddr,
    },
    /// Plaintext was requested for an address other hosts can reach.
    #[error("refusing plaintext gRPC on {addr}: plaintext is only allowed on a loopback address (127.0.0.0/8, ::1)")]
    PlaintextNotLoopback {
        /// The listen or target address.
        addr: SocketAddr,
    },
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Where a certificate set lives, and whether this call made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// The certificate directory.
    pub dir: PathBuf,
    /// True when [`generate_dev_pki`] wrote the set, false when it kept an
    /// existing one.
    pub created: bool,
    /// True when it kept the set but issued the development admin a new
    /// client certificate (the old one was near its end, or from before
    /// certificates carried roles).
    pub renewed: bool,
}

impl Pki {
    fn at(dir: &Path, created: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            created,
            renewed: false,
        }
    }

    /// Path of one file of the set (e.g. [`CA_CERT`]).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Makes a development CA, a server certificate and a client certificate
/// in `dir`, unless a complete set is already there (then it is kept, so
/// clients that trust the CA keep working; `created` says which).
///
/// The server certificate names `localhost`, `127.0.0.1`, `::1` and
/// `server_names`; the client certificate has CN `nodectl`. Keys are
/// written 0600, certificates 0644, the directory is created 0700. Every
/// file is written to a temporary name first and renamed into place only
/// once all six are on disk, so a crash leaves either nothing or (in the
/// rename window) a partial set, which is reported, never papered over.
pub fn generate_dev_pki(dir: &Path, server_names: &[String]) -> Result<Pki> {
    let missing = missing_files(dir)?;
    if missing.is_empty() {
        let renewed = renew_dev_client(dir)?;
        return Ok(Pki {
            renewed,
            ..Pki::at(dir, false)
        });
    }
    if missing.len() < PKI_FILES.len() {
        return Err(TlsError::IncompleteSet {
            dir: dir.to_path_buf(),
            missing,
        });
    }
    let files = make_pki(server_names)?;
    create_private_dir(dir)?;
    write_all_atomically(dir, &files)?;
    Ok(Pki::at(dir, true))
}

/// A development admin certificate with less than this left is renewed.
const RENEW_DAYS: i64 = 7;

/// Issues the development admin (CN `nodectl`) a new client certificate
/// when the one in `dir` carries no role or ends within [`RENEW_DAYS`].
/// A client certificate with another name is the deployment's own and is
/// left alone.
pub fn renew_dev_client(dir: &Path) -> Result<bool> {
    let path = dir.join(CLIENT_CERT);
    let pem = read_certificates(&path)?;
    let bad = |detail: String| TlsError::BadPem {
        path: path.clone(),
        expected: "certificate",
        detail,
    };
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| bad(e.to_string()))?;
    let (name, not_after) = certs::name_and_end(&der).map_err(|e| bad(e.to_string()))?;
    let left = not_after - OffsetDateTime::now_utc();
    let has_role = certs::claims_of(&der).is_ok();
    if name != CLIENT_COMMON_NAME || (has_role && left > Duration::days(RENEW_DAYS)) {
        return Ok(false);
    }
    let issued = certs::issue_client(
        dir,
        &certs::ClientSpec {
            name: CLIENT_COMMON_NAME.to_string(),
            role: Role::Admin,
            namespaces: Vec::new(),
            days: certs::DEFAULT_DAYS,
        },
    )
    .map_err(|e| bad(format!("renewing the development admin certificate: {e}")))?;
    write_all_atomically(
        dir,
        &[
            PkiFile::cert(CLIENT_CERT, issued.cert_pem),
            PkiFile {
                name: CLIENT_KEY,
                contents: issued.key_pem,
                mode: 0o600,
            },
        ],
    )?;
    Ok(true)
}

/// Writes a client's certificate directory: the CA certificate, the
/// client certificate and its key (0600), in `dir` (made 0700).
pub(crate) fn write_client_set(
    dir: &Path,
    ca_pem: String,
    cert_pem: &str,
    key_pem: &str,
) -> Result<()> {
    create_private_dir(dir)?;
    write_all_atomically(
        dir,
        &[
            PkiFile::cert(CA_CERT, ca_pem),
            PkiFile::cert(CLIENT_CERT, cert_pem.to_string()),
            PkiFile {
                name: CLIENT_KEY,
                contents: key_pem.to_string(),
                mode: 0o600,
            },
        ],
    )
}

/// Replaces `dir/name` with `contents` atomically (temporary file, fsync,
/// rename, directory fsync).
pub(crate) fn replace_file(
    dir: &Path,
    name: &'static str,
    contents: String,
    mode: u32,
) -> Result<()> {
    write_all_atomically(
        dir,
        &[PkiFile {
            name,
            contents,
            mode,
        }],
    )
}

/// Names of the set's files that `dir` lacks (all of them when `dir` does
/// not exist).
fn missing_files(dir: &Path) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for name in PKI_FILES {
        let path = dir.join(name);
        let exists = path
            .try_exists()
            .map_err(|error| TlsError::Io { path, error })?;
        if !exists {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}

/// One file to write: name, PEM contents, permission bits.
struct PkiFile {
    name: &'static str,
    contents: String,
    mode: u32,
}

impl PkiFile {
    fn cert(name: &'static str, contents: String) -> Self {
        Self {
            name,
            contents,
            mode: 0o644,
        }
    }

    fn key(name: &'static str, key: &KeyPair) -> Self {
        Self {
            name,
            contents: key.serialize_pem(),
            mode: 0o600,
        }
    }
}

/// The whole set, in memory.
fn make_pki(server_names: &[String]) -> Result<Vec<PkiFile>> {
    let ca_key = new_key("CA key")?;
    let ca =
        CertifiedIssuer::self_signed(ca_params(), ca_key).map_err(|error| TlsError::Generate {
            what: "CA certificate",
            error,
        })?;
    let ca_pem = ca.pem();
    let ca_key_file = PkiFile::key(CA_KEY, ca.key());
    let (server_pem, server_key) = leaf(server_params(server_names)?, &ca, "server")?;
    let (client_pem, client_key) = leaf(client_params(), &ca, "client")?;
    Ok(vec![
        PkiFile::cert(CA_CERT, ca_pem),
        ca_key_file,
        PkiFile::cert(SERVER_CERT, server_pem),
        PkiFile::key(SERVER_KEY, &server_key),
        PkiFile::cert(CLIENT_CERT, client_pem),
        PkiFile::key(CLIENT_KEY, &client_key),
    ])
}

fn new_key(what: &'static str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|error| TlsError::Generate { what, error })
}

/// A certificate for `params` with a fresh key, signed by the CA.
fn leaf(
    params: CertificateParams,
    ca: &Issuer<'_, KeyPair>,
    what: &'static str,
) -> Result<(String, KeyPair)> {
    let key = new_key(what)?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|error| TlsError::Generate { what, error })?;
    Ok((cert.pem(), key))
}

/// Validity from an hour ago (clock skew between agent and client) to
/// `days` ahead.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Stratum development CA");
    // Path length 0: the CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, VALIDITY_DAYS);
    params
}

fn server_params(extra_names: &[String]) -> Result<CertificateParams> {
    let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    // rcgen takes any ASCII as a DNS name; check as a client will, so the
    // error names the culprit instead of a certificate no client accepts.
    for name in &names {
        ServerName::try_from(name.as_str()).map_err(|error| TlsError::InvalidName {
            name: name.clone(),
            error,
        })?;
    }
    let mut params = CertificateParams::new(names).map_err(|error| TlsError::Generate {
        what: "server certificate",
        error,
    })?;
    params
        .distinguished_name
        .push(DnType::CommonName, "stratum node-agent");
    leaf_usages(&mut params, ExtendedKeyUsagePurpose::ServerAuth);
    validity(&mut params, VALIDITY_DAYS);
    Ok(params)
}

/// The development set's client: an admin named `nodectl`, for
/// [`certs::DEFAULT_DAYS`].
fn client_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, CLIENT_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, Role::Admin.as_str());
    client_leaf(&mut params, i64::from(certs::DEFAULT_DAYS));
    params
}

/// A client certificate's end-entity settings, valid for `days`.
pub(crate) fn client_leaf(params: &mut CertificateParams, days: i64) {
    leaf_usages(params, ExtendedKeyUsagePurpose::ClientAuth);
    validity(params, days);
}

/// End-entity settings: a signing key usable for one purpose only, so a
/// stolen client certificate cannot impersonate the server and vice versa.
fn leaf_usages(params: &mut CertificateParams, purpose: ExtendedKeyUsagePurpose) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
}

/// Creates the certificate directory 0700 (its parents with the default
/// mode, since the data dir above it holds more than secrets). An existing
/// directory is used as it is.
fn create_private_dir(dir: &Path) -> Result<()> {
    let io_err = |error| TlsError::Io {
        path: dir.to_path_buf(),
        error,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err(e)),
        _ => Ok(()),
    }
}

/// Writes every file under a temporary name, then renames them all into
/// place and syncs the directory. On a write failure the temporaries are
/// removed and nothing of the set appears.
fn write_all_atomically(dir: &Path, files: &[PkiFile]) -> Result<()> {
    let mut staged = Vec::with_capacity(files.len());
    for file in files {
        let tmp = dir.join(format!(".{}.tmp-{}", file.name, std::process::id()));
        if let Err(e) = write_new(&tmp, file) {
            remove_all(&staged);
            return Err(e);
        }
        staged.push((tmp, dir.join(file.name)));
    }
    for (tmp, path) in &staged {
        fs::rename(tmp, path).map_err(|error| TlsError::Io {
            path: path.clone(),
            error,
        })?;
    }
    sync_dir(dir)
}

fn remove_all(staged: &[(PathBuf, PathBuf)]) {
    for (tmp, _) in staged {
        // Best effort: the write error being reported matters more.
        let _ = fs::remove_file(tmp);
    }
}

/// Creates `path` with the file's mode (never wider, whatever the umask
/// leaves), writes and fsyncs it.
fn write_new(path: &Path, file: &PkiFile) -> Result<()> {
    let io_err = |error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    };
    // A stale temporary from a crashed run of this pid number.
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .open(path)
        .map_err(io_err)?;
    f.write_all(file.contents.as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| TlsError::Io {
            path: dir.to_path_buf(),
            error,
        })
}

/// The agent's TLS settings: its certificate from `dir`, and client
/// certificates required and checked against `dir`'s CA (tonic's
/// `client_ca_root` with `client_auth_optional` false makes rustls refuse
/// the handshake of a client that presents none or one the CA did not sign).
pub fn server_tls_config(dir: &Path) -> Result<ServerTlsConfig> {
    install_crypto_provider();
    let identity = load_identity(dir, SERVER_CERT, SERVER_KEY)?;
    let ca = load_certificate(&dir.join(CA_CERT))?;
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(ca)
        .client_auth_optional(false))
}

/// nodectl's TLS settings: trust only `dir`'s CA, present the client
/// certificate, and expect the server certificate to name `domain` (a host
/// name or IP address, e.g. the host part of `--addr`).
pub fn client_tls_config(dir: &Path, domain: &str) -> Result<ClientTlsConfig> {
    install_crypto_provider();
    let identity = load_identity(dir, CLIENT_CERT, CLIENT_KEY)?;
    let ca = load_certificate(&dir.join(CA_CERT))?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name(domain))
}

/// Makes ring the process-wide rustls provider. The server side of tonic
/// builds its rustls config from the process default, which rustls only
/// picks on its own while exactly one provider is compiled in; installing
/// it keeps the agent working if another dependency ever adds aws-lc-rs.
fn install_crypto_provider() {
    // Err means a provider is already installed: that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate and its key, both checked to parse so a wrong file is
/// reported by name here rather than as a handshake failure later.
fn load_identity(dir: &Path, cert: &str, key: &str) -> Result<Identity> {
    let cert_pem = read_certificates(&dir.join(cert))?;
    let key_pem = read_private_key(&dir.join(key))?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

fn load_certificate(path: &Path) -> Result<Certificate> {
    Ok(Certificate::from_pem(read_certificates(path)?))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The PEM text of `path`, checked to hold at least one certificate.
fn read_certificates(path: &Path) -> Result<Vec<u8>> {
    let pem = read_file(path)?;
    let bad = |detail: String| TlsError::BadPem {
        path: path.to_path_buf(),
        expected: "certificate",
        detail,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(pem)
}

/// The PEM text of a private key file, checked to parse and to be private
/// to its owner.
fn read_private_key(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadPem {
        path: path.to_path_buf(),
        expected: "private key",
        detail: e.to_string(),
    })?;
    Ok(pem)
}

/// Whether a listener (or a client's target) may use plaintext h2c: only
/// when `insecure_flag` was given explicitly AND `addr` is loopback, where
/// only local processes can reach or impersonate it. Anything else gets an
/// error saying which condition failed.
pub fn check_plaintext_allowed(addr: SocketAddr, insecure_flag: bool) -> Result<(), TlsError> {
    if !insecure_flag {
        return Err(TlsError::PlaintextNotRequested { addr });
    }
    // to_canonical: ::ffff:127.0.0.1 is loopback too.
    if !addr.ip().to_canonical().is_loopback() {
        return Err(TlsError::PlaintextNotLoopback { addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::{Channel, Server};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    fn pki() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let pki = generate_dev_pki(&dir, &["agent.example".to_string()]).unwrap();
        assert!(pki.created);
        (tmp, dir)
    }

    #[test]
    fn the_dev_admin_certificate_is_renewed_when_it_carries_no_role() {
        let (_tmp, dir) = pki();
        let ca_before = fs::read(dir.join(CA_CERT)).unwrap();
        // The client certificate of a set made before roles: CN only.
        let ca_pem = fs::read_to_string(dir.join(CA_CERT)).unwrap();
        let ca_key = KeyPair::from_pem(&fs::read_to_string(dir.join(CA_KEY)).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, CLIENT_COMMON_NAME);
        leaf_usages(&mut params, ExtendedKeyUsagePurpose::ClientAuth);
        validity(&mut params, VALIDITY_DAYS);
        let key = KeyPair::generate().unwrap();
        let old = params.signed_by(&key, &issuer).unwrap();
        fs::write(dir.join(CLIENT_CERT), old.pem()).unwrap();

        let pki = generate_dev_pki(&dir, &[]).unwrap();
        assert!(pki.renewed && !pki.created);
        let pem = fs::read(dir.join(CLIENT_CERT)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(certs::claims_of(&der).unwrap().role, Role::Admin);
        let (_, end) = certs::name_and_end(&der).unwrap();
        let days = (end - OffsetDateTime::now_utc()).whole_days();
        assert!(days <= i64::from(certs::DEFAULT_DAYS), "{days}");
        assert_eq!(
            fs::read(dir.join(CA_CERT)).unwrap(),
            ca_before,
            "the CA stays"
        );
        // The renewed one is kept from then on; a client certificate with
        // another name is the deployment's and never replaced.
        assert!(!generate_dev_pki(&dir, &[]).unwrap().renewed);
        let mut theirs = CertificateParams::default();
        theirs.distinguished_name.push(DnType::CommonName, "ops");
        let theirs = theirs.signed_by(&key, &issuer).unwrap();
        fs::write(dir.join(CLIENT_CERT), theirs.pem()).unwrap();
        assert!(!generate_dev_pki(&dir, &[]).unwrap().renewed);
        assert_eq!(
            fs::read_to_string(dir.join(CLIENT_CERT)).unwrap(),
            theirs.pem()
        );
    }

    /// A tonic server with only the health service, mTLS from `dir`, on an
    /// ephemeral loopback port.
    async fn serve(dir: &Path) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = Server::builder()
            .tls_config(server_tls_config(dir).unwrap())
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        addr
    }

    /// The health check's answer through a client with `tls`; any failure
    /// (connect or call) as a string.
    async fn health(addr: SocketAddr, tls: ClientTlsConfig) -> Result<i32, String> {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| format!("call: {e:?}"))?;
        Ok(reply.into_inner().status)
    }

    fn read(path: PathBuf) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    #[tokio::test]
    async fn tls_client_with_the_client_certificate_is_served() {
        let (_tmp, dir) = pki();
        let addr = serve(&dir).await;
        for domain in ["localhost", "127.0.0.1"] {
            let tls = client_tls_config(&dir, domain).unwrap();
            assert_eq!(health(addr, tls).await, Ok(ServingStatus::Serving as i32));
        }
    }

    #[tokio::test]
    async fn tls_client_without_a_certificate_is_refused() {
        let (_tmp, dir) = pki();
        let addr = serve(&dir).await;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(dir.join(CA_CERT))))
            .domain_name("localhost");
        let err = health(addr, tls).await.unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn tls_client_with_a_certificate_from_another_ca_is_refused() {
        let (_tmp, dir) = pki();
        let (_tmp2, other) = pki();
        let addr = serve(&dir).await;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(dir.join(CA_CERT))))
            .identity(Identity::from_pem(
                read(other.join(CLIENT_CERT)),
                read(other.join(CLIENT_KEY)),
            ))
            .domain_name("localhost");
        assert!(health(addr, tls).await.is_err());
    }

    #[tokio::test]
    async fn tls_client_refuses_a_server_from_another_ca() {
        let (_tmp, dir) = pki();
        let (_tmp2, other) = pki();
        let addr = serve(&other).await;
        let tls = client_tls_config(&dir, "localhost").unwrap();
        assert!(health(addr, tls).await.is_err());
    }

    #[tokio::test]
    async fn tls_server_name_must_match() {
        let (_tmp, dir) = pki();
        let addr = serve(&dir).await;
        let named = client_tls_config(&dir, "agent.example").unwrap();
        assert_eq!(health(addr, named).await, Ok(ServingStatus::Serving as i32));
        let unnamed = client_tls_config(&dir, "elsewhere.example").unwrap();
        assert!(health(addr, unnamed).await.is_err());
    }

    #[test]
    fn tls_pki_files_have_private_modes() {
        let (_tmp, dir) = pki();
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        for key in [CA_KEY, SERVER_KEY, CLIENT_KEY] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        for cert in [CA_CERT, SERVER_CERT, CLIENT_CERT] {
            assert_eq!(mode(cert), 0o644, "{cert}");
        }
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn tls_generation_is_idempotent() {
        let (_tmp, dir) = pki();
        let before = read(dir.join(CA_CERT));
        let again = generate_dev_pki(&dir, &[]).unwrap();
        assert!(!again.created);
        assert_eq!(read(again.path(CA_CERT)), before);
    }

    #[test]
    fn tls_partial_set_is_an_error_naming_what_is_missing() {
        let (_tmp, dir) = pki();
        fs::remove_file(dir.join(SERVER_KEY)).unwrap();
        fs::remove_file(dir.join(CLIENT_CERT)).unwrap();
        let err = generate_dev_pki(&dir, &[]).unwrap_err();
        match &err {
            TlsError::IncompleteSet { missing, .. } => {
                assert_eq!(missing, &[SERVER_KEY.to_string(), CLIENT_CERT.to_string()])
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("server.key") && text.contains("client.pem"),
            "{text}"
        );
        assert!(!dir.join(SERVER_KEY).exists(), "nothing regenerated");
    }

    #[test]
    fn tls_bad_server_name_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = generate_dev_pki(tmp.path(), &["not a name".to_string()]).unwrap_err();
        assert!(err.to_string().contains("not a name"), "{err}");
        assert!(!tmp.path().join(CA_CERT).exists());
    }

    #[test]
    fn tls_loading_refuses_a_group_readable_key_and_a_missing_file() {
        let (_tmp, dir) = pki();
        fs::set_permissions(dir.join(SERVER_KEY), fs::Permissions::from_mode(0o640)).unwrap();
        let err = server_tls_config(&dir).unwrap_err();
        assert!(
            matches!(err, TlsError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        fs::remove_file(dir.join(CLIENT_CERT)).unwrap();
        let err = client_tls_config(&dir, "localhost").unwrap_err();
        assert!(err.to_string().contains("client.pem"), "{err}");
    }

    #[test]
    fn tls_loading_refuses_a_file_that_is_not_pem() {
        let (_tmp, dir) = pki();
        fs::write(dir.join(CA_CERT), "hello").unwrap();
        let err = client_tls_config(&dir, "localhost").unwrap_err();
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
    }

    #[test]
    fn tls_plaintext_only_with_the_flag_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for loopback in [
            "127.0.0.1:7443",
            "127.3.2.1:1",
            "[::1]:7443",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(
                check_plaintext_allowed(addr(loopback), true).is_ok(),
                "{loopback}"
            );
            assert!(matches!(
                check_plaintext_allowed(addr(loopback), false),
                Err(TlsError::PlaintextNotRequested { .. })
            ));
        }
        for open in [
            "0.0.0.0:7443",
            "[::]:7443",
            "10.0.0.1:7443",
            "[::ffff:10.0.0.1]:1",
        ] {
            let err = check_plaintext_allowed(addr(open), true).unwrap_err();
            assert!(
                matches!(err, TlsError::PlaintextNotLoopback { .. }),
                "{open}"
            );
            assert!(err.to_string().contains("loopback"), "{err}");
        }
    }
}
