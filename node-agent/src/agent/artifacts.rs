//! Which host files a caller may hand to the agent: a VM's kernel, initrd
//! and disk base images, and the archive or layout an image is imported
//! from.
//!
//! They are host paths named by a remote caller, and the agent reads them
//! as root: unbounded, any caller could boot a VM from, clone a disk from
//! or import any file on the host (a VM disk cloned from `/etc/shadow`).
//! This module owns the operator's allow-list, the artifact directories,
//! and is the one place such a path is checked: absolute, no `..`, below
//! an artifact directory both as written and once symlinks are resolved
//! (a link inside that points outside is refused), and the kind of file
//! asked for. A path outside gets PERMISSION_DENIED before anything is
//! looked up, so the answer says nothing about what exists elsewhere.
//!
//! The directories are trusted as the operator's: whoever can write into
//! one can point a VM at anything it links to between the check and the
//! use, so they must be writable by root only (the default one is made
//! 0755, owned by the agent's user).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::errors::{AgentError, Result};
use stratum_pool::quoted;

/// The default artifact directory, below the data directory.
pub const DEFAULT_ARTIFACT_SUBDIR: &str = "artifacts";

/// What the named path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (kernel, initrd, disk image).
    File,
    /// A regular file or a directory (an image archive or layout).
    FileOrDirectory,
}

/// The directories artifacts may come from, as configured and resolved.
#[derive(Debug, Clone, Default)]
pub struct ArtifactDirs {
    /// Each directory as configured (absolute) and its canonical form.
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl ArtifactDirs {
    /// Resolves each configured directory; each must exist and be a
    /// directory, so a typo fails the start instead of every create.
    pub fn new(dirs: &[PathBuf]) -> io::Result<ArtifactDirs> {
        let mut resolved = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let absolute = std::path::absolute(dir)?;
            let canonical = fs::canonicalize(&absolute).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("artifact directory {}: {e}", dir.display()),
                )
            })?;
            if !canonical.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("artifact directory {} is not a directory", dir.display()),
                ));
            }
            resolved.push((absolute, canonical));
        }
        Ok(ArtifactDirs { dirs: resolved })
    }

    /// The directories as configured, for messages and the docs' examples.
    pub fn configured(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(dir, _)| dir.as_path())
    }

    /// Checks `path` (named `what` in errors) and returns it resolved.
    pub fn check(&self, what: &str, path: &str, kind: Kind) -> Result<PathBuf> {
        if path.is_empty() {
            return Err(AgentError::InvalidArgument(format!(
                "{what}: a path is required"
            )));
        }
        let named = Path::new(path);
        if !named.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "{what} {} is not an absolute path",
                quoted(path)
            )));
        }
        if named.components().any(|c| c == Component::ParentDir) {
            return Err(AgentError::InvalidArgument(format!(
                "{what} {} has a '..' component",
                quoted(path)
            )));
        }
        if !self.holds(named) {
            return Err(self.outside(what, path));
        }
        let resolved = fs::canonicalize(named)
            .map_err(|e| AgentError::InvalidArgument(format!("{what} {}: {e}", quoted(path))))?;
        if !self.holds(&resolved) {
            return Err(self.outside(what, path));
        }
        let meta = fs::metadata(&resolved)
            .map_err(|e| AgentError::InvalidArgument(format!("{what} {}: {e}", quoted(path))))?;
        match kind {
            _ if meta.is_file() => Ok(resolved),
            Kind::FileOrDirectory if meta.is_dir() => Ok(resolved),
            Kind::File => Err(AgentError::InvalidArgument(format!(
                "{what} {} is not a regular file",
                quoted(path)
            ))),
            Kind::FileOrDirectory => Err(AgentError::InvalidArgument(format!(
                "{what} {} is neither a regular file nor a directory",
                quoted(path)
            ))),
        }
    }

    /// Whether `path` lies below one of the directories, as configured or
    /// resolved (a configured directory may itself be reached through a
    /// symlink).
    fn holds(&self, path: &Path) -> bool {
        self.dirs
            .iter()
            .any(|(dir, canonical)| path.starts_with(dir) || path.starts_with(canonical))
    }

    fn outside(&self, what: &str, path: &str) -> AgentError {
        let dirs: Vec<String> = self.configured().map(|d| d.display().to_string()).collect();
        AgentError::PermissionDenied(format!(
            "{what} {} is outside the agent's artifact directories ({}); the operator \
             chooses them with --artifact-dir",
            quoted(path),
            if dirs.is_empty() {
                "none configured".to_string()
            } else {
                dirs.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dirs() -> (tempfile::TempDir, ArtifactDirs) {
        let root = tempfile::tempdir().expect("tempdir");
        let allowed = root.path().join("allowed");
        fs::create_dir_all(allowed.join("sub")).expect("mkdir");
        fs::write(allowed.join("vmlinux"), b"k").expect("write");
        fs::write(root.path().join("secret"), b"s").expect("write");
        symlink(root.path().join("secret"), allowed.join("escape")).expect("symlink");
        symlink(allowed.join("vmlinux"), allowed.join("sub/inside")).expect("symlink");
        let dirs = ArtifactDirs::new(&[allowed]).expect("resolve");
        (root, dirs)
    }

    fn code(r: Result<PathBuf>) -> tonic::Code {
        r.expect_err("refused").code()
    }

    #[test]
    fn files_below_an_artifact_directory_are_accepted_resolved() {
        let (root, dirs) = dirs();
        let allowed = root.path().join("allowed");
        let kernel = allowed.join("vmlinux");
        let got = dirs
            .check("kernel", &kernel.to_string_lossy(), Kind::File)
            .expect("allowed");
        assert_eq!(got, fs::canonicalize(&kernel).expect("canonical"));
        let via_link = allowed.join("sub/inside");
        let got = dirs
            .check("kernel", &via_link.to_string_lossy(), Kind::File)
            .expect("a link that stays inside");
        assert_eq!(got, fs::canonicalize(&kernel).expect("canonical"));
        let sub = allowed.join("sub");
        assert!(dirs
            .check("import", &sub.to_string_lossy(), Kind::FileOrDirectory)
            .is_ok());
    }

    #[test]
    fn anything_outside_is_permission_denied() {
        let (root, dirs) = dirs();
        let allowed = root.path().join("allowed");
        let secret = root.path().join("secret");
        for path in [
            "/etc/shadow".to_string(),
            "/no/such/file".to_string(),
            secret.to_string_lossy().into_owned(),
            allowed.join("escape").to_string_lossy().into_owned(),
        ] {
            assert_eq!(
                code(dirs.check("kernel", &path, Kind::File)),
                tonic::Code::PermissionDenied,
                "{path}"
            );
        }
        let none = ArtifactDirs::default();
        assert_eq!(
            code(none.check(
                "kernel",
                &allowed.join("vmlinux").to_string_lossy(),
                Kind::File
            )),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn malformed_or_wrong_kind_is_invalid_argument() {
        let (root, dirs) = dirs();
        let allowed = root.path().join("allowed");
        let dotdot = format!("{}/sub/../vmlinux", allowed.display());
        let missing = allowed.join("missing").to_string_lossy().into_owned();
        let sub = allowed.join("sub").to_string_lossy().into_owned();
        for (path, kind) in [
            ("", Kind::File),
            ("vmlinux", Kind::File),
            (dotdot.as_str(), Kind::File),
            (missing.as_str(), Kind::File),
            (sub.as_str(), Kind::File),
        ] {
            assert_eq!(
                code(dirs.check("kernel", path, kind)),
                tonic::Code::InvalidArgument,
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_missing_artifact_directory_fails_the_start() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(ArtifactDirs::new(&[root.path().join("nope")]).is_err());
        let file = root.path().join("file");
        fs::write(&file, b"x").expect("write");
        assert!(ArtifactDirs::new(&[file]).is_err());
    }
}
