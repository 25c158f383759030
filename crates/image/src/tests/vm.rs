//! VM images: a layout made by `vm_layout` from a kernel, an initramfs
//! and a sparse disk, imported, pushed to a real registry with skopeo and
//! pulled back; the parts unpacked where the VM manager finds them, the
//! disk sparse; tampered or malformed images refused with nothing left.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{assert_store_empty, insecure, store};
use crate::progress::ProgressSink;
use crate::vm_layout::{write_vm_layout, VmImageSource};
use crate::{ImageError, ImportOptions, RegistryCredentials};
use stratum_testkit::fixture::TestRegistry;

const MIB: u64 = 1 << 20;

/// A kernel, an initramfs that starts with zstd's magic (it must not be
/// decompressed), and a 64 MiB disk with data at 1 MiB and 40 MiB.
fn parts(dir: &Path) -> VmImageSource {
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"MZ kernel bytes".repeat(300)).unwrap();
    let initrd = dir.join("initrd.img");
    let mut initrd_bytes = vec![0x28, 0xb5, 0x2f, 0xfd];
    initrd_bytes.extend(b"not really zstd".repeat(100));
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let disk = dir.join("disk.raw");
    let file = std::fs::File::create(&disk).unwrap();
    file.set_len(64 * MIB).unwrap();
    file.write_all_at(&[0xab; 4096], MIB).unwrap();
    file.write_all_at(&[0xcd; 8192], 40 * MIB).unwrap();
    VmImageSource {
        kernel,
        initrd: Some(initrd),
        disk,
        cmdline: "console=ttyS0 root=LABEL=stratum-root".into(),
        tag: "1".into(),
    }
}

fn layout(dir: &Path) -> (VmImageSource, PathBuf) {
    let source = parts(dir);
    let layout = dir.join("vm-image");
    write_vm_layout(&source, &layout).unwrap();
    (source, layout)
}

fn assert_vm_image(store: &crate::ImageStore, name: &str, source: &VmImageSource) {
    let record = store.get(name).expect("stored");
    assert!(record.is_vm_image());
    let files = store.vm_files(&record).expect("a VM image");
    assert_eq!(
        std::fs::read(&files.kernel).unwrap(),
        std::fs::read(&source.kernel).unwrap()
    );
    let initrd = files.initrd.as_ref().expect("an initrd");
    assert_eq!(
        std::fs::read(initrd).unwrap(),
        std::fs::read(source.initrd.as_ref().unwrap()).unwrap(),
        "an initramfs is stored as it is, whatever its first bytes"
    );
    assert_eq!(
        std::fs::read(&files.disk).unwrap(),
        std::fs::read(&source.disk).unwrap()
    );
    let disk = std::fs::metadata(&files.disk).unwrap();
    assert_eq!(disk.len(), 64 * MIB);
    assert!(disk.blocks() * 512 < MIB, "the disk is stored sparse");
    assert_eq!(disk.mode() & 0o777, 0o644, "readable by a jailed vmm");
    assert_eq!(files.cmdline.as_deref(), Some(source.cmdline.as_str()));
}

#[tokio::test]
async fn a_vm_image_is_imported_from_its_layout_and_collected_once_removed() {
    let (dir, store) = store();
    let (source, layout) = layout(dir.path());
    let options = ImportOptions {
        reference: Some("stratum/node:1".into()),
    };
    store.import(&layout, &options).await.expect("import");
    assert_vm_image(&store, "stratum/node:1", &source);
    store.remove("stratum/node:1").expect("remove");
    store.gc().await.expect("gc");
    assert_store_empty(&store);
}

#[tokio::test]
async fn a_vm_image_is_pulled_from_a_registry() {
    let (dir, store) = store();
    let (source, layout) = layout(dir.path());
    let registry = TestRegistry::start().expect("registry");
    let reference = registry
        .push_layout(&layout, "1", "stratum/node:1")
        .expect("skopeo pushes the VM image");
    store
        .pull(
            &reference,
            &RegistryCredentials::default(),
            &insecure(&registry),
            &ProgressSink::none(),
        )
        .await
        .expect("pull");
    assert_vm_image(&store, &reference, &source);
}

#[tokio::test]
async fn a_tampered_disk_is_refused_and_leaves_nothing() {
    let (dir, store) = store();
    let (_, layout) = layout(dir.path());
    // The disk blob is the largest: flip a byte in it.
    let blobs = layout.join("blobs/sha256");
    let disk_blob = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk_blob)
        .unwrap();
    file.write_all_at(&[0x42], 100).unwrap();
    let err = store
        .import(&layout, &ImportOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    store.gc().await.expect("gc");
    assert_store_empty(&store);
}

#[tokio::test]
async fn a_vm_image_without_a_disk_is_refused() {
    let (dir, store) = store();
    let (_, layout) = layout(dir.path());
    // Rewrite the manifest without its last (disk) layer and its diff-id.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blobs = layout.join("blobs/sha256");
    let blob = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    manifest["layers"].as_array_mut().unwrap().pop();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    let write = |value: &serde_json::Value| {
        use sha2::Digest as _;
        let bytes = serde_json::to_vec(value).unwrap();
        let hex = format!("{:x}", sha2::Sha256::digest(&bytes));
        std::fs::write(blobs.join(&hex), &bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (config_digest, config_size) = write(&config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) = write(&manifest);
    let mut index = index;
    index["manifests"][0]["digest"] = manifest_digest.into();
    index["manifests"][0]["size"] = manifest_size.into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let err = store
        .import(&layout, &ImportOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a VM image has one kernel"),
        "{err}"
    );
    store.gc().await.expect("gc");
    assert_store_empty(&store);
}
