//! Who is calling, and whether they may: the agent's authentication and
//! authorization.
//!
//! This module owns the caller's identity for the length of a call. Every
//! request passes [`Authenticator::admit`] before any service sees it: the
//! client certificate the TLS handshake verified is read for its claims
//! (name, role, namespaces: `stratum_api::certs`) and checked against the
//! revocation list, which is read again whenever `crl.pem` changes. The
//! resulting [`Caller`] rides in the request's extensions; each service
//! asks it, per object, whether the call may read or change what it names.
//!
//! The policy, in one place:
//! - `admin`: everything.
//! - `user`: reads and changes objects whose namespace (top-level pool) is
//!   one of its own: the pools below it (not the namespace pool itself,
//!   which the admin sized), the VMs and pods in them, and the images
//!   pulled for them (`agent::image_owners`): it sees those and the host's
//!   images, its pods run only those, its removal takes its namespaces'
//!   claims. Imports (host paths) are the admin's.
//! - `viewer`: reads only, in its namespaces, or everywhere when it has
//!   none.
//!
//! Lists show only what the caller may read. An object the caller may not
//! touch is PERMISSION_DENIED; one that does not exist stays NOT_FOUND.
//!
//! What it refuses: a certificate without a role (no identity), a revoked
//! one, and every call while the revocation list cannot be read or does
//! not verify (UNAVAILABLE: failing open would honour revoked
//! certificates). Plaintext, allowed only on loopback for debugging, is
//! the local admin.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::{Request, Status};

use stratum_api::certs::{self, Claims, Role, CRL_FILE};

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The namespaces a user or viewer is confined to.
    pub namespaces: BTreeSet<String>,
}

impl Caller {
    /// The caller on a plaintext (loopback, debugging) listener.
    pub fn local_admin() -> Self {
        Self {
            name: "local".to_string(),
            role: Role::Admin,
            namespaces: BTreeSet::new(),
        }
    }

    fn from_claims(claims: Claims) -> Self {
        Self {
            name: claims.name,
            role: claims.role,
            namespaces: claims.namespaces.into_iter().collect(),
        }
    }

    /// The caller a request was admitted as.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the request carries no authenticated caller"))
    }

    /// Whether every object is readable to this caller: lists need no
    /// filtering.
    pub fn sees_everything(&self) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Viewer => self.namespaces.is_empty(),
            Role::User => false,
        }
    }

    pub fn may_read(&self, namespace: &str) -> bool {
        self.sees_everything() || self.namespaces.contains(namespace)
    }

    pub fn may_change(&self, namespace: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::User => self.namespaces.contains(namespace),
            Role::Viewer => false,
        }
    }

    /// PERMISSION_DENIED unless the caller may read objects of `namespace`.
    pub fn check_read(&self, namespace: &str, what: &str) -> Result<(), Status> {
        if self.may_read(namespace) {
            return Ok(());
        }
        Err(self.denied(&format!("read {what} in namespace {namespace}")))
    }

    /// PERMISSION_DENIED unless the caller may change objects of
    /// `namespace`.
    pub fn check_change(&self, namespace: &str, what: &str) -> Result<(), Status> {
        if self.may_change(namespace) {
            return Ok(());
        }
        Err(self.denied(&format!("change {what} in namespace {namespace}")))
    }

    /// PERMISSION_DENIED unless the caller is an admin.
    pub fn check_admin(&self, what: &str) -> Result<(), Status> {
        if self.role == Role::Admin {
            return Ok(());
        }
        Err(self.denied(what))
    }

    /// PERMISSION_DENIED unless the caller may change something somewhere
    /// (an admin or a user): for calls on host-wide things users share.
    pub fn check_not_viewer(&self, what: &str) -> Result<(), Status> {
        if self.role != Role::Viewer {
            return Ok(());
        }
        Err(self.denied(what))
    }

    fn denied(&self, what: &str) -> Status {
        let scope = if self.namespaces.is_empty() {
            String::new()
        } else {
            format!(
                " of {}",
                self.namespaces
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Status::permission_denied(format!(
            "{} ({}{scope}) may not {what}",
            self.name, self.role
        ))
    }
}

/// Admits requests: the caller from the client certificate, unless
/// revoked.
#[derive(Clone)]
pub struct Authenticator {
    inner: Option<Arc<Revocations>>,
}

impl Authenticator {
    /// Certificates checked against `cert_dir`'s revocation list.
    pub fn mtls(cert_dir: &Path) -> Self {
        Self {
            inner: Some(Arc::new(Revocations::new(cert_dir))),
        }
    }

    /// Plaintext on loopback: every caller is the local admin.
    pub fn plaintext() -> Self {
        Self { inner: None }
    }

    /// The interceptor every request passes: puts its [`Caller`] in the
    /// extensions, or refuses it.
    pub fn admit(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &self.inner {
            None => Caller::local_admin(),
            Some(revocations) => {
                let certs = request.peer_certs().ok_or_else(|| {
                    Status::unauthenticated("no client certificate on this connection")
                })?;
                let leaf = certs.first().ok_or_else(|| {
                    Status::unauthenticated("no client certificate on this connection")
                })?;
                let claims = certs::claims_of(leaf)
                    .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
                revocations.check(&claims)?;
                Caller::from_claims(claims)
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The revocation list, as last read, and how the file looked then.
struct Revocations {
    path: PathBuf,
    dir: PathBuf,
    cache: Mutex<Cached>,
}

struct Cached {
    /// (modified, length, inode) of the file read; None: there was none.
    stamp: Option<(SystemTime, u64, u64)>,
    read: bool,
    serials: Result<Arc<BTreeSet<String>>, String>,
}

impl Revocations {
    fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(CRL_FILE),
            dir: dir.to_path_buf(),
            cache: Mutex::new(Cached {
                stamp: None,
                read: false,
                serials: Ok(Arc::default()),
            }),
        }
    }

    /// PERMISSION_DENIED for a revoked certificate; UNAVAILABLE while the
    /// list cannot be trusted.
    fn check(&self, claims: &Claims) -> Result<(), Status> {
        let serials = self.current().map_err(|e| {
            Status::unavailable(format!(
                "the agent's revocation list is unusable ({e}); fix or remove {}",
                self.path.display()
            ))
        })?;
        if serials.contains(&claims.serial) {
            return Err(Status::permission_denied(format!(
                "the certificate of {} (serial {}) is revoked",
                claims.name, claims.serial
            )));
        }
        Ok(())
    }

    /// The revoked serials, read again when the file changed. The file is
    /// the agent's own (its cert dir), and it is read without the lock.
    fn current(&self) -> Result<Arc<BTreeSet<String>>, String> {
        let stamp = stamp(&self.path)?;
        {
            let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cached.read && cached.stamp == stamp {
                return cached.serials.clone();
            }
        }
        let serials = certs::read_revocations(&self.dir)
            .map(|list| Arc::new(list.serials))
            .map_err(|e| e.to_string());
        if let Err(e) = &serials {
            tracing::error!(error = %e, "revocation list unusable: refusing every call");
        }
        let mut cached = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cached = Cached {
            stamp,
            read: true,
            serials: serials.clone(),
        };
        serials
    }
}

fn stamp(path: &Path) -> Result<Option<(SystemTime, u64, u64)>, String> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(meta) => {
            let modified = meta.modified().map_err(|e| e.to_string())?;
            Ok(Some((modified, meta.len(), meta.ino())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, namespaces: &[&str]) -> Caller {
        Caller {
            name: "alice".into(),
            role,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn roles_read_and_change_as_the_policy_says() {
        let admin = caller(Role::Admin, &[]);
        let user = caller(Role::User, &["pool-1"]);
        let viewer = caller(Role::Viewer, &["pool-1"]);
        let host_viewer = caller(Role::Viewer, &[]);
        assert!(admin.may_change("pool-2") && admin.sees_everything());
        assert!(user.may_change("pool-1") && user.may_read("pool-1"));
        assert!(!user.may_change("pool-2") && !user.may_read("pool-2"));
        assert!(!user.sees_everything());
        assert!(viewer.may_read("pool-1") && !viewer.may_read("pool-2"));
        assert!(!viewer.may_change("pool-1"));
        assert!(host_viewer.sees_everything() && !host_viewer.may_change("pool-1"));
        let denied = user.check_change("pool-2", "VMs").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "alice (user of pool-1) may not change VMs in namespace pool-2"
        );
        assert!(viewer.check_not_viewer("pull images").is_err());
        assert!(user.check_admin("import images").is_err());
    }
}
