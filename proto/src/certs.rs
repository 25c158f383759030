//! Client identities: what a client certificate says about its holder, how
//! the CA in the certificate directory issues one, and the revocation list
//! that withdraws one before it expires.
//!
//! A client certificate carries everything the agent authorizes on, signed
//! by the CA, so the agent needs no user database:
//! - the subject's common name: the caller's name (`alice`), shown in
//!   errors and logs;
//! - the subject's organization: the role, `admin`, `user` or `viewer`;
//! - URI subject alternative names `urn:stratum:namespace:<pool id>`: the
//!   namespaces (top-level pools) a `user` or `viewer` is confined to.
//!
//! Certificates are short-lived (30 days unless asked otherwise, at most a
//! year). Revocation is `crl.pem` in the certificate directory: an X.509
//! CRL the CA signs, which [`revoke`] rewrites and the agent reads again
//! whenever the file changes. A CRL that does not verify against the CA is
//! an error, never an empty list.
//!
//! What this module refuses: issuing without the CA's key, a role or
//! namespace it does not know the grammar of, a lifetime outside 1–365
//! days, and a certificate whose claims do not parse (no role, two roles,
//! a malformed namespace) — such a certificate is no identity at all.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, Issuer, KeyIdMethod, KeyPair,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::tls::{self, TlsError, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY};

/// The revocation list in the certificate directory.
pub const CRL_FILE: &str = "crl.pem";

/// Prefix of the URI subject alternative names that carry namespaces.
const NAMESPACE_URI: &str = "urn:stratum:namespace:";

/// Lifetime of a certificate issued without an explicit one.
pub const DEFAULT_DAYS: u32 = 30;
/// The longest lifetime [`issue_client`] signs.
pub const MAX_DAYS: u32 = 365;

/// What a caller may do, before namespaces narrow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, on every object.
    Admin,
    /// Reads and changes objects in its namespaces.
    User,
    /// Reads only: in its namespaces, or everywhere when it has none.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, CertError> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            "viewer" => Ok(Role::Viewer),
            other => Err(CertError::Claims(format!(
                "unknown role {other:?} (admin, user or viewer)"
            ))),
        }
    }
}

/// What a client certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The common name.
    pub name: String,
    pub role: Role,
    /// Sorted, without repeats.
    pub namespaces: Vec<String>,
    /// The certificate's serial number, lower-case hex without leading
    /// zeros: what a revocation names.
    pub serial: String,
}

/// Failures of issuing, revoking or reading identities.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The requested or presented claims are not a valid identity.
    #[error("{0}")]
    Claims(String),
    /// A certificate or CRL does not parse or verify.
    #[error("{path}: {detail}")]
    Bad { path: PathBuf, detail: String },
    #[error("signing {what}: {error}")]
    Sign {
        what: &'static str,
        error: rcgen::Error,
    },
    /// The output directory already holds a client certificate.
    #[error("{0}: already holds a client certificate; choose another directory")]
    Exists(PathBuf),
}

type Result<T, E = CertError> = std::result::Result<T, E>;

/// Who a new client certificate is for.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub name: String,
    pub role: Role,
    pub namespaces: Vec<String>,
    pub days: u32,
}

impl ClientSpec {
    /// Checks the grammar of every claim, and that a `user` has a
    /// namespace (a user confined to nothing could do nothing) and an
    /// `admin` none (it would suggest a confinement that does not apply).
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        for namespace in &self.namespaces {
            check_namespace(namespace)?;
        }
        match (self.role, self.namespaces.is_empty()) {
            (Role::User, true) => {
                return Err(claims("a user needs at least one --namespace"));
            }
            (Role::Admin, false) => {
                return Err(claims("an admin is not confined to namespaces"));
            }
            _ => {}
        }
        if !(1..=MAX_DAYS).contains(&self.days) {
            return Err(claims(format!(
                "lifetime of {} days: certificates last 1 to {MAX_DAYS} days",
                self.days
            )));
        }
        Ok(())
    }
}

/// A freshly signed client certificate and its key, as PEM.
pub struct IssuedClient {
    pub cert_pem: String,
    pub key_pem: String,
    pub claims: Claims,
    pub not_after: OffsetDateTime,
}

fn claims(detail: impl Into<String>) -> CertError {
    CertError::Claims(detail.into())
}

/// Names: what a person or program is called, 1–64 of `[A-Za-z0-9._@-]`.
fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(claims(format!(
            "invalid name {name:?}: 1-64 of letters, digits, '.', '_', '@', '-'"
        )));
    }
    Ok(())
}

/// Namespaces are top-level pool ids: DNS labels. `root` is the host
/// itself, not a namespace anyone is confined to.
fn check_namespace(namespace: &str) -> Result<()> {
    let bytes = namespace.as_bytes();
    let label = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if !label || namespace == "root" {
        return Err(claims(format!(
            "invalid namespace {namespace:?}: a top-level pool's id (a DNS label other than root)"
        )));
    }
    Ok(())
}

/// The CA of `dir` as an issuer: its certificate and private key.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let ca_pem = read_text(&dir.join(CA_CERT))?;
    let key_path = dir.join(CA_KEY);
    let key_pem = read_text(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Bad {
        path: key_path,
        detail: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| CertError::Bad {
        path: dir.join(CA_CERT),
        detail: e.to_string(),
    })
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|error| {
        CertError::Tls(TlsError::Io {
            path: path.to_path_buf(),
            error,
        })
    })
}

/// Signs a client certificate for `spec` with the CA in `dir`.
pub fn issue_client(dir: &Path, spec: &ClientSpec) -> Result<IssuedClient> {
    spec.validate()?;
    let issuer = load_issuer(dir)?;
    let namespaces: BTreeSet<&String> = spec.namespaces.iter().collect();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, spec.role.as_str());
    for namespace in &namespaces {
        let uri = format!("{NAMESPACE_URI}{namespace}");
        let uri = uri.try_into().map_err(|error| CertError::Sign {
            what: "namespace",
            error,
        })?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    tls::client_leaf(&mut params, i64::from(spec.days));
    let not_after = params.not_after;
    let key = KeyPair::generate().map_err(|error| CertError::Sign {
        what: "client key",
        error,
    })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|error| CertError::Sign {
            what: "client certificate",
            error,
        })?;
    let claims = claims_of(cert.der())?;
    Ok(IssuedClient {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        claims,
        not_after,
    })
}

/// Writes a certificate directory nodectl can use as `--certs`: the CA's
/// certificate, the client certificate and its key (0600), in `out`
/// (made 0700). Refuses a directory that already holds a client
/// certificate, so nobody's identity is overwritten.
pub fn write_client_dir(ca_dir: &Path, out: &Path, issued: &IssuedClient) -> Result<()> {
    if out.join(CLIENT_CERT).exists() || out.join(CLIENT_KEY).exists() {
        return Err(CertError::Exists(out.to_path_buf()));
    }
    let ca_pem = read_text(&ca_dir.join(CA_CERT))?;
    tls::write_client_set(out, ca_pem, &issued.cert_pem, &issued.key_pem)?;
    Ok(())
}

/// The claims of a DER client certificate. Does not check the signature
/// or the validity period: the TLS handshake did.
pub fn claims_of(der: &[u8]) -> Result<Claims> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| claims(format!("client certificate does not parse: {e}")))?;
    let subject = cert.subject();
    let name = single(subject.iter_common_name(), "common name")?;
    let role: Role = single(subject.iter_organization(), "role (organization)")?.parse()?;
    let mut namespaces = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::URI(uri) = general {
                if let Some(namespace) = uri.strip_prefix(NAMESPACE_URI) {
                    check_namespace(namespace)?;
                    namespaces.insert(namespace.to_string());
                }
            }
        }
    }
    Ok(Claims {
        name,
        role,
        namespaces: namespaces.into_iter().collect(),
        serial: serial_hex(cert.raw_serial()),
    })
}

/// The common name and end of validity of a DER certificate.
pub fn name_and_end(der: &[u8]) -> Result<(String, OffsetDateTime)> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| claims(format!("certificate does not parse: {e}")))?;
    let name = single(cert.subject().iter_common_name(), "common name")?;
    Ok((name, cert.validity().not_after.to_datetime()))
}

/// The one value of a subject attribute: none or several is no identity.
fn single<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<String> {
    let first = values
        .next()
        .ok_or_else(|| claims(format!("client certificate has no {what}")))?;
    if values.next().is_some() {
        return Err(claims(format!(
            "client certificate has more than one {what}"
        )));
    }
    first
        .as_str()
        .map(str::to_string)
        .map_err(|_| claims(format!("client certificate's {what} is not text")))
}

/// A serial number as revocations name it: lower-case hex, no leading
/// zero bytes (DER may add one to keep the integer positive).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a serial as [`serial_hex`] writes it (colons allowed, as
/// openssl prints them).
pub fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || claims(format!("invalid serial number {text:?}: hex digits"));
    // ASCII hex digits only, so the two-byte slices below are characters.
    let hex = digits.chars().all(|c| c.is_ascii_hexdigit());
    if !hex || digits.is_empty() || digits.len() > 40 || !digits.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// The serial of the client certificate in PEM file `path`.
pub fn serial_of_file(path: &Path) -> Result<String> {
    let pem = fs::read(path).map_err(|error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bad = |detail: String| CertError::Bad {
        path: path.to_path_buf(),
        detail,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(serial_hex(cert.raw_serial()))
}

/// Revoked serials, as [`serial_hex`] writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    pub serials: BTreeSet<String>,
    /// The CRL's sequence number (0 when there is no file).
    pub number: u64,
}

/// The revocation list of `dir`, verified against its CA; empty when
/// there is no `crl.pem`.
pub fn read_revocations(dir: &Path) -> Result<RevocationList> {
    let path = dir.join(CRL_FILE);
    let pem = match fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationList::default()),
        Err(error) => return Err(TlsError::Io { path, error }.into()),
    };
    let ca_pem = fs::read(dir.join(CA_CERT)).map_err(|error| TlsError::Io {
        path: dir.join(CA_CERT),
        error,
    })?;
    parse_revocations(&pem, &ca_pem).map_err(|detail| CertError::Bad { path, detail })
}

/// A PEM CRL's revoked serials, once its signature verifies against the
/// PEM CA certificate.
fn parse_revocations(crl_pem: &[u8], ca_pem: &[u8]) -> Result<RevocationList, String> {
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem).map_err(|e| e.to_string())?;
    let ca = ca.parse_x509().map_err(|e| e.to_string())?;
    let (_, crl) = x509_parser::pem::parse_x509_pem(crl_pem).map_err(|e| e.to_string())?;
    let crl = crl_of(&crl)?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| format!("not signed by the CA: {e}"))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok(RevocationList {
        serials: crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect(),
        number,
    })
}

fn crl_of<'a>(pem: &'a Pem) -> Result<CertificateRevocationList<'a>, String> {
    if pem.label != "X509 CRL" {
        return Err(format!("a {} block, not an X509 CRL", pem.label));
    }
    CertificateRevocationList::from_der(&pem.contents)
        .map(|(_, crl)| crl)
        .map_err(|e| e.to_string())
}

/// Adds `serials` to the revocation list of `dir` and signs it again
/// (sequence number one up), replacing `crl.pem` atomically. Returns the
/// whole list.
pub fn revoke(dir: &Path, serials: &[String]) -> Result<RevocationList> {
    let mut list = read_revocations(dir)?;
    for serial in serials {
        list.serials.insert(serial_hex(&parse_serial(serial)?));
    }
    list.number += 1;
    let issuer = load_issuer(dir)?;
    let now = OffsetDateTime::now_utc();
    let revoked_certs = list
        .serials
        .iter()
        .map(|serial| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from(parse_serial(serial)?),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let params = CertificateRevocationListParams {
        this_update: now,
        // Outlives every certificate it could name.
        next_update: now + Duration::days(i64::from(MAX_DAYS) + 1),
        crl_number: SerialNumber::from(list.number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).map_err(|error| CertError::Sign {
        what: "revocation list",
        error,
    })?;
    let pem = crl.pem().map_err(|error| CertError::Sign {
        what: "revocation list",
        error,
    })?;
    tls::replace_file(dir, CRL_FILE, pem, 0o644)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        tls::generate_dev_pki(&dir, &[]).unwrap();
        (tmp, dir)
    }

    fn spec(role: Role, namespaces: &[&str]) -> ClientSpec {
        ClientSpec {
            name: "alice".into(),
            role,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            days: 7,
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn an_issued_certificate_carries_its_claims_and_lifetime() {
        let (_tmp, dir) = ca();
        let issued =
            issue_client(&dir, &spec(Role::User, &["pool-4", "pool-2", "pool-4"])).unwrap();
        let claims = claims_of(&der(&issued.cert_pem)).unwrap();
        assert_eq!(claims.name, "alice");
        assert_eq!(claims.role, Role::User);
        assert_eq!(claims.namespaces, ["pool-2", "pool-4"]);
        assert_eq!(claims, issued.claims);
        let days = (issued.not_after - OffsetDateTime::now_utc()).whole_days();
        assert!((6..=7).contains(&days), "{days}");
        // The dev admin certificate has a role too.
        let admin = fs::read_to_string(dir.join(CLIENT_CERT)).unwrap();
        assert_eq!(claims_of(&der(&admin)).unwrap().role, Role::Admin);
    }

    #[test]
    fn bad_claims_are_refused_before_signing() {
        let (_tmp, dir) = ca();
        let refused = [
            spec(Role::User, &[]),
            spec(Role::Admin, &["pool-1"]),
            spec(Role::User, &["Pool_1"]),
            spec(Role::User, &["root"]),
            ClientSpec {
                days: 0,
                ..spec(Role::Viewer, &[])
            },
            ClientSpec {
                days: MAX_DAYS + 1,
                ..spec(Role::Viewer, &[])
            },
            ClientSpec {
                name: "a b".into(),
                ..spec(Role::Viewer, &[])
            },
        ];
        for spec in refused {
            assert!(
                matches!(issue_client(&dir, &spec), Err(CertError::Claims(_))),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn a_certificate_without_a_role_is_no_identity() {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "nodectl");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(claims_of(cert.der()), Err(CertError::Claims(_))));
        assert!(claims_of(b"garbage").is_err());
    }

    #[test]
    fn revocations_accumulate_and_verify_against_the_ca() {
        let (_tmp, dir) = ca();
        assert_eq!(read_revocations(&dir).unwrap(), RevocationList::default());
        let alice = issue_client(&dir, &spec(Role::Viewer, &[])).unwrap();
        let bob = issue_client(
            &dir,
            &ClientSpec {
                name: "bob".into(),
                ..spec(Role::Viewer, &[])
            },
        )
        .unwrap();
        revoke(&dir, std::slice::from_ref(&alice.claims.serial)).unwrap();
        let list = revoke(&dir, std::slice::from_ref(&bob.claims.serial)).unwrap();
        assert_eq!(list.number, 2);
        let read = read_revocations(&dir).unwrap();
        assert_eq!(read, list);
        assert!(read.serials.contains(&alice.claims.serial));
        assert!(read.serials.contains(&bob.claims.serial));
        // Colons and leading zeros as openssl prints serials.
        assert_eq!(serial_hex(&parse_serial("00:0a:ff").unwrap()), "0aff");
        for bad in ["xyz", "", "abc", "é1", &"ab".repeat(21)] {
            assert!(parse_serial(bad).is_err(), "{bad}");
        }

        // A list signed by another CA is an error, not an empty list.
        let (_other_tmp, other) = ca();
        revoke(&other, &["01".to_string()]).unwrap();
        fs::copy(other.join(CRL_FILE), dir.join(CRL_FILE)).unwrap();
        assert!(matches!(read_revocations(&dir), Err(CertError::Bad { .. })));
        fs::write(dir.join(CRL_FILE), "not a crl").unwrap();
        assert!(matches!(read_revocations(&dir), Err(CertError::Bad { .. })));
    }
}
