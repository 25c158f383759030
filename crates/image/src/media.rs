//! Media types: which manifests and layers the store accepts, and how a
//! layer is decompressed. The declared layer type is checked (foreign and
//! unknown layers are refused) but decompression follows the bytes' magic
//! number, because registries and `docker save` are known to label
//! uncompressed tars as gzip and the other way round.

use std::io::{BufRead, BufReader, Read};

use super::error::ImageError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Zstd OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A VM image's kernel (bzImage or ELF vmlinux), as is.
pub const VM_KERNEL: &str = "application/vnd.stratum.vm.kernel.v1";
/// A VM image's initramfs, as is (however it is compressed inside).
pub const VM_INITRD: &str = "application/vnd.stratum.vm.initrd.v1";
/// A VM image's root disk: a raw disk image, gzip-compressed for transport
/// and storage (a raw disk is mostly zeros); stored unpacked as a sparse
/// file.
pub const VM_DISK_GZIP: &str = "application/vnd.stratum.vm.disk.raw.v1+gzip";
/// The config label a VM image's default kernel command line is in.
pub const VM_CMDLINE_LABEL: &str = "org.stratum.vm.cmdline";

/// What a VM image layer holds, and the file it is unpacked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPayload {
    Kernel,
    Initrd,
    Disk,
}

impl VmPayload {
    /// The VM payload a layer media type names; `None` for a filesystem
    /// layer. Unlike a filesystem layer, a payload is decompressed by its
    /// declared type, never by its magic: a kernel or an initramfs may
    /// itself begin with a compressor's magic number.
    pub fn of(media_type: &str) -> Option<Self> {
        match media_type {
            VM_KERNEL => Some(VmPayload::Kernel),
            VM_INITRD => Some(VmPayload::Initrd),
            VM_DISK_GZIP => Some(VmPayload::Disk),
            _ => None,
        }
    }

    /// The file in its layer directory.
    pub fn file_name(self) -> &'static str {
        match self {
            VmPayload::Kernel => "kernel",
            VmPayload::Initrd => "initrd",
            VmPayload::Disk => "disk.raw",
        }
    }

    /// Whether the blob is gzip-compressed.
    pub fn gzipped(self) -> bool {
        self == VmPayload::Disk
    }
}

/// The manifest types asked for from a registry (`Accept`).
pub const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

const LAYER_TYPES: &[&str] = &[
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    VM_KERNEL,
    VM_INITRD,
    VM_DISK_GZIP,
];

/// A single-image manifest or a multi-platform index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// Image manifest (OCI or Docker v2.2).
    Manifest,
    /// Image index / manifest list.
    Index,
}

/// Classifies manifest JSON by its `mediaType`, or, when absent (allowed
/// by OCI), by its shape: `manifests` makes an index, `layers` a manifest.
pub fn manifest_kind(bytes: &[u8], what: &str) -> Result<ManifestKind, ImageError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ImageError::invalid(what, e))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(ImageError::UnsupportedMediaType {
            media_type: "manifest schemaVersion other than 2".into(),
            what: what.into(),
        });
    }
    match value.get("mediaType").and_then(|v| v.as_str()) {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(ManifestKind::Manifest),
        Some(OCI_INDEX | DOCKER_LIST) => Ok(ManifestKind::Index),
        Some(other) => Err(ImageError::UnsupportedMediaType {
            media_type: other.into(),
            what: what.into(),
        }),
        None if value.get("manifests").is_some() => Ok(ManifestKind::Index),
        None if value.get("layers").is_some() => Ok(ManifestKind::Manifest),
        None => Err(ImageError::invalid(what, "neither a manifest nor an index")),
    }
}

/// Refuses a config that is not an image config.
pub fn check_config_type(media_type: &str, what: &str) -> Result<(), ImageError> {
    match media_type {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(ImageError::UnsupportedMediaType {
            media_type: other.into(),
            what: what.into(),
        }),
    }
}

/// Refuses a layer type the store does not unpack (foreign Windows
/// layers, artifacts, anything unknown).
pub fn check_layer_type(media_type: &str, what: &str) -> Result<(), ImageError> {
    if LAYER_TYPES.contains(&media_type) {
        Ok(())
    } else {
        Err(ImageError::UnsupportedMediaType {
            media_type: media_type.into(),
            what: what.into(),
        })
    }
}

/// How a layer's bytes are compressed, from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Sniffs the magic number at the start of `head`.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_layer_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// Wraps `reader` in the decompressor its magic number calls for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let compression = Compression::sniff(buffered.fill_buf()?);
    Ok(match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_manifests_and_indexes() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(manifest_kind(m, "m").ok(), Some(ManifestKind::Manifest));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_kind(i, "i").ok(), Some(ManifestKind::Index));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            manifest_kind(v1, "v1"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let art =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(manifest_kind(art, "a").is_err());
    }

    #[test]
    fn refuses_foreign_layers_and_sniffs_compression() {
        assert!(check_layer_type(OCI_LAYER_GZIP, "l").is_ok());
        assert!(check_layer_type(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "l"
        )
        .is_err());
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
    }

    #[test]
    fn decompresses_by_magic() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"payload").expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(&b"payload"[..], 1).expect("zstd");
        for data in [gz, zst, b"payload".to_vec()] {
            let mut out = String::new();
            decompress(&data[..])
                .and_then(|mut r| r.read_to_string(&mut out))
                .expect("decompress");
            assert_eq!(out, "payload");
        }
    }
}
