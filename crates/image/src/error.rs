//! What can go wrong with images, as one typed error. Each variant names
//! the thing that failed (reference, digest, layer entry, registry) so a
//! message shown by `nodectl` or returned over gRPC is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;

/// An image store, pull or import failure.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No stored image has this reference, digest or id.
    #[error("unknown image {0:?}")]
    UnknownImage(String),
    /// The reference does not parse (`[registry/]repository[:tag][@digest]`).
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What was given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// A digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The blob or layer being checked.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest of the bytes actually received.
        actual: String,
    },
    /// Content is longer or shorter than its descriptor says.
    #[error("size mismatch for {digest}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (at least).
        actual: u64,
    },
    /// A manifest, config or layer of a kind this store does not handle.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The media type found.
        media_type: String,
        /// Where it was found.
        what: String,
    },
    /// An image index without a linux/amd64 image.
    #[error("{reference}: the image index has no {platform} image")]
    NoMatchingPlatform {
        /// The index's reference.
        reference: String,
        /// The platform looked for.
        platform: String,
    },
    /// Malformed manifest or config, or inconsistent image metadata.
    #[error("invalid image {what}: {reason}")]
    InvalidImage {
        /// The manifest/config/image concerned.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer entry that would escape the layer or is not allowed in it.
    /// The whole layer is refused and nothing of it is kept.
    #[error("layer {layer}: refused entry {path:?}: {reason}")]
    RefusedEntry {
        /// The layer (its digest) or archive.
        layer: String,
        /// The entry's path as written in the archive.
        path: String,
        /// Why it was refused.
        reason: Refusal,
    },
    /// A layer or archive that is not a readable tar stream.
    #[error("layer {layer}: bad archive: {source}")]
    BadArchive {
        /// The layer (its digest) or archive.
        layer: String,
        /// The tar or decompression error.
        #[source]
        source: io::Error,
    },
    /// The registry refused the credentials (or demanded some).
    #[error("registry {registry}: authentication failed: {message}")]
    RegistryAuth {
        /// Registry host\[:port\].
        registry: String,
        /// What the registry or the client said.
        message: String,
    },
    /// The registry has no such repository, tag or blob.
    #[error("registry {registry}: not found: {message}")]
    RegistryNotFound {
        /// Registry host\[:port\].
        registry: String,
        /// What the registry or the client said.
        message: String,
    },
    /// The TLS connection failed (bad certificate, or a plain-HTTP registry
    /// that was not listed as insecure).
    #[error(
        "registry {registry}: TLS connection failed: {message} (a registry serving plain \
         HTTP must be listed in the insecure registries)"
    )]
    RegistryTls {
        /// Registry host\[:port\].
        registry: String,
        /// The TLS error.
        message: String,
    },
    /// Any other registry or transport failure.
    #[error("registry {registry}: {message}")]
    Registry {
        /// Registry host\[:port\].
        registry: String,
        /// What failed.
        message: String,
    },
    /// The image is leased by pods and cannot be removed.
    /// A layer's descriptor declares more bytes than the store takes from
    /// one layer: refused before anything is downloaded.
    #[error("layer {layer} declares {size} bytes, more than the {max_bytes} the store takes from one layer")]
    DeclaredTooLarge {
        /// The layer's blob digest.
        layer: String,
        /// What its descriptor says.
        size: u64,
        /// The store's cap.
        max_bytes: u64,
    },
    /// The layers a pull still needs would leave less free space than it
    /// must keep: refused before anything is downloaded.
    #[error("the pull needs about {needed} bytes (its missing layers, downloaded and unpacked) and {keep_free} must stay free, but the image store's disk has {available}")]
    NoSpace {
        /// Twice the declared size of the layers not yet stored.
        needed: u64,
        /// Free bytes the pull must leave.
        keep_free: u64,
        /// Free bytes now.
        available: u64,
    },
    #[error("image {image} is in use ({leases} lease(s) held)")]
    InUse {
        /// The image's first reference, or its id.
        image: String,
        /// How many leases are held.
        leases: usize,
    },
    /// A directory or archive given to `import` that is neither an OCI
    /// layout nor a `docker save` archive, or is inconsistent.
    #[error("import {path}: {reason}")]
    Import {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store's own index file cannot be read.
    #[error("image index {path}: {reason}")]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The index's table could not be read or written (redb: I/O error,
    /// full disk, corruption it detected).
    #[error("image index: {0}")]
    Index(#[source] redb::Error),
    /// A filesystem operation on the store failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which path.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] for `what` on `path`.
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> Self {
        ImageError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }

    /// A closure for `map_err` building [`ImageError::io`].
    pub(crate) fn io_at<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::io(what, path, source)
    }

    /// An [`ImageError::InvalidImage`].
    pub(crate) fn invalid(what: impl Into<String>, reason: impl ToString) -> Self {
        ImageError::InvalidImage {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why a layer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Absolute, or `..` leads above the layer's root.
    #[error("its path leaves the layer (absolute or `..` above the root)")]
    Escapes,
    /// A parent component is a symlink: writing through it could land
    /// anywhere.
    #[error("parent {component:?} is a symlink")]
    ThroughSymlink {
        /// The parent path that is a symlink.
        component: String,
    },
    /// A parent component exists and is not a directory.
    #[error("parent {component:?} is not a directory")]
    NotADirectory {
        /// The parent path concerned.
        component: String,
    },
    /// A hardlink whose target is absolute or above the root.
    #[error("hardlink target {target:?} is outside the layer")]
    HardlinkOutside {
        /// The link target as written.
        target: String,
    },
    /// A hardlink whose target is not an earlier entry of the same layer.
    #[error("hardlink target {target:?} is not in this layer")]
    HardlinkMissing {
        /// The link target as written.
        target: String,
    },
    /// Character or block device node.
    #[error("device nodes are not allowed")]
    DeviceNode,
    /// Entry type this store does not create (or not in this context).
    #[error("entry type {0} is not allowed")]
    UnsupportedType(String),
    /// Empty symlink target, bad whiteout name, ownership out of range.
    #[error("{0}")]
    Malformed(String),
    /// The layer would unpack to more bytes than the store takes from one
    /// layer (a decompression bomb fills the disk before any digest check).
    #[error("the layer unpacks to more than {max_bytes} bytes")]
    TooLarge {
        /// The store's cap.
        max_bytes: u64,
    },
    /// The layer has more entries than the store takes from one layer.
    #[error("the layer has more than {max_entries} entries")]
    TooManyEntries {
        /// The store's cap.
        max_entries: u64,
    },
}
