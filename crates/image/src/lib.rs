//! OCI images for pods run directly on the host: pull from registries,
//! import from files, a content-addressed store in the agent's data dir
//! shared by every pod, and leases so an image under a running container
//! is never removed.
//!
//! Why it is built this way:
//!
//! - **Content-addressed, verified on write.** Blobs are named by their
//!   sha256 and only renamed into the store after their bytes hash to that
//!   name (`blobs.rs`); layers are unpacked only from stored (verified)
//!   blobs and their uncompressed digest is checked against the config's
//!   diff-id (`layers.rs`). A registry, a proxy or an archive cannot slip
//!   in content the manifest did not name.
//! - **Layers stay layers.** Each is unpacked once into
//!   `layers/<diff-id>/` with overlayfs whiteouts ([`whiteout`]) and
//!   stacked read-only as a `lowerdir` under every container of every pod
//!   using it — no per-pod copy, instant container start.
//! - **Untrusted archives.** Layer tars come from registries we do not
//!   control. Unpacking resolves every path beneath the layer directory by
//!   descriptor without following symlinks (`beneath.rs`, `unpack.rs`) and
//!   refuses escapes, hardlinks out, and device nodes; a refused layer is
//!   deleted whole.
//! - **Crash-safe.** Temp file + fsync + rename for blobs, the index and
//!   layers; records are committed last ([`record`]); whatever a crash
//!   leaves is unreferenced and cleared at open or by GC ([`gc`]).
//! - **Concurrent.** Pulls, imports, GC and removals may run at once:
//!   in-flight files are pinned (`txn.rs`), images in use are leased
//!   ([`lease`]).
//!
//! - **Read, not mounted.** What the agent needs from inside an image
//!   (its `/etc/passwd` and `/etc/group`) is read from the layers by
//!   descriptor ([`merged`]), as untrusted as the archives were.
//!
//! Entry points: [`ImageStore::open`], [`ImageStore::pull`],
//! [`ImageStore::import`], [`ImageStore::list`], [`ImageStore::get`],
//! [`ImageStore::acquire`], [`ImageStore::remove`], [`ImageStore::gc`].

mod assemble;
mod beneath;
mod blobs;
pub mod digest;
mod docker_save;
pub mod error;
mod fsutil;
pub mod gc;
pub mod import;
mod layers;
pub mod lease;
pub mod media;
pub mod merged;
mod oci_layout;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod record;
pub mod reference;
pub mod registry;
mod source;
pub mod store;
mod txn;
mod unpack;
pub mod vm_layout;
pub mod whiteout;

#[cfg(test)]
mod tests;

pub use digest::Digest;
pub use error::{ImageError, Refusal};
pub use gc::GcReport;
pub use import::ImportOptions;
pub use lease::ImageLease;
pub use progress::{LayerPhase, LayerProgress, ProgressSink, PullEvent};
pub use record::{import_index_file, ImageRecord, LayerRecord};
pub use registry::{parse_mirror, PullOptions, RegistryCredentials, RegistryMirror};
pub use store::{ImageStore, VmImageFiles};
pub use unpack::UnpackLimits;
pub use whiteout::OPAQUE_XATTR;
