//! Making a VM image: a kernel, an optional initramfs and a raw root disk
//! become an OCI image layout directory, which the store imports (`nodectl
//! image import`) and a registry serves (`skopeo copy oci:DIR docker://…`).
//!
//! The format (see DESIGN.md, "VM images"): an ordinary OCI image manifest
//! and config, so registries, skopeo and the store's pull and import take it
//! as they take any image, whose layers are not filesystem tars but the VM's
//! parts, told apart by media type ([`crate::media::VM_KERNEL`],
//! [`crate::media::VM_INITRD`], [`crate::media::VM_DISK_GZIP`]); the config's
//! diff-ids are the parts' digests uncompressed, and its label
//! [`crate::media::VM_CMDLINE_LABEL`] the default kernel command line. The
//! disk is gzip-compressed: a raw disk is mostly zeros.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::media::{
    OCI_CONFIG, OCI_MANIFEST, VM_CMDLINE_LABEL, VM_DISK_GZIP, VM_INITRD, VM_KERNEL,
};

/// What a VM image is made of.
#[derive(Debug, Clone)]
pub struct VmImageSource {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A raw disk image (sparse or not).
    pub disk: PathBuf,
    /// The default kernel command line.
    pub cmdline: String,
    /// The tag the layout names the image by (`org.opencontainers.image.ref.name`).
    pub tag: String,
}

/// One blob written into the layout.
struct Blob {
    digest: String,
    size: u64,
    /// The digest of its content uncompressed (the diff-id).
    diff_id: String,
}

/// Writes the OCI image layout of `source` into the new directory `dest`.
pub fn write_vm_layout(source: &VmImageSource, dest: &Path) -> io::Result<()> {
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let mut layers = vec![(VM_KERNEL, copy_blob(&source.kernel, &blobs, false)?)];
    if let Some(initrd) = &source.initrd {
        layers.push((VM_INITRD, copy_blob(initrd, &blobs, false)?));
    }
    layers.push((VM_DISK_GZIP, copy_blob(&source.disk, &blobs, true)?));
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { VM_CMDLINE_LABEL: source.cmdline } },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(_, b)| b.diff_id.clone()).collect::<Vec<_>>(),
        },
    });
    let config = write_json_blob(&config, &blobs)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size },
        "layers": layers
            .iter()
            .map(|(media_type, b)| json!({ "mediaType": media_type, "digest": b.digest, "size": b.size }))
            .collect::<Vec<_>>(),
    });
    let manifest = write_json_blob(&manifest, &blobs)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { "org.opencontainers.image.ref.name": source.tag },
        }],
    });
    fs::write(dest.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        dest.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
}

/// Copies `path` into the blob directory (gzip-compressed when asked),
/// hashing what it reads and what it writes.
fn copy_blob(path: &Path, blobs: &Path, gzip: bool) -> io::Result<Blob> {
    let input = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let temp = blobs.join(".incoming");
    let out = HashingWriter::new(File::create(&temp)?);
    let mut content = Sha256::new();
    let mut reader = io::BufReader::with_capacity(1 << 20, input);
    let mut buf = vec![0u8; 1 << 20];
    let out = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        pump(&mut reader, &mut encoder, &mut content, &mut buf)?;
        encoder.finish()?
    } else {
        let mut out = out;
        pump(&mut reader, &mut out, &mut content, &mut buf)?;
        out
    };
    let (file, digest, size) = out.finish();
    file.sync_all()?;
    let digest = format!("sha256:{digest}");
    fs::rename(&temp, blobs.join(&digest["sha256:".len()..]))?;
    let diff_id = format!("sha256:{:x}", content.finalize());
    Ok(Blob {
        digest,
        size,
        diff_id,
    })
}

fn pump(
    reader: &mut impl Read,
    writer: &mut impl Write,
    content: &mut Sha256,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let n = reader.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        content.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
}

fn write_json_blob(value: &serde_json::Value, blobs: &Path) -> io::Result<Blob> {
    let bytes = serde_json::to_vec(value)?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    fs::write(blobs.join(&digest), &bytes)?;
    Ok(Blob {
        digest: format!("sha256:{digest}"),
        size: bytes.len() as u64,
        diff_id: String::new(),
    })
}

/// Counts and hashes what passes through.
struct HashingWriter {
    inner: File,
    hash: Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(inner: File) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (File, String, u64) {
        (self.inner, format!("{:x}", self.hash.finalize()), self.size)
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
