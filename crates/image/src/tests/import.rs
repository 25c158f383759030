//! Import of OCI layouts (directory and tarball) and `docker save`
//! tarballs.

use std::path::Path;

use super::{docker_save, import_layers, store, LayerTar};
use crate::{ImageError, ImportOptions};
use stratum_testkit::fixture::build_busybox_layout;

fn assert_busybox(store: &crate::ImageStore, name: &str) {
    let record = store.get(name).expect("imported");
    let rootfs = store.lowerdirs(&record).remove(0);
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).ok(),
        Some("busybox".into())
    );
    assert_eq!(
        record
            .config
            .config()
            .as_ref()
            .and_then(|c| c.cmd().clone()),
        Some(vec!["/bin/sh".to_owned()])
    );
}

#[tokio::test]
async fn imports_an_oci_layout_directory() {
    let (dir, store) = store();
    let layout = build_busybox_layout(dir.path(), "1").expect("build busybox layout");
    // skopeo/umoci name the image only by tag: it is found by id, or named.
    let unnamed = store
        .import(&layout, &ImportOptions::default())
        .await
        .expect("import");
    assert_eq!(unnamed.len(), 1);
    assert!(unnamed[0].references.is_empty());
    assert_busybox(&store, unnamed[0].id.as_str());
    let options = ImportOptions {
        reference: Some("example.com/tools/busybox:1".into()),
    };
    let named = store.import(&layout, &options).await.expect("import named");
    assert_eq!(named[0].manifest_digest, unnamed[0].manifest_digest);
    assert_busybox(&store, "example.com/tools/busybox:1");
    assert_eq!(store.list().len(), 1);
}

#[tokio::test]
async fn imports_an_oci_layout_tarball() {
    let (dir, store) = store();
    let layout = build_busybox_layout(dir.path(), "1").expect("build busybox layout");
    let tarball = dir.path().join("busybox-oci.tar");
    tar_dir(&layout, &tarball);
    let options = ImportOptions {
        reference: Some("busybox:oci".into()),
    };
    store.import(&tarball, &options).await.expect("import");
    assert_busybox(&store, "docker.io/library/busybox:oci");
    assert!(
        super::entries(&store.root().join("tmp")).is_empty(),
        "unpacked archive left in tmp"
    );
}

#[tokio::test]
async fn imports_a_docker_save_tarball() {
    let (dir, store) = store();
    let layer = LayerTar::new()
        .dir("bin")
        .file("bin/hello", "echo hello")
        .finish();
    let records = import_layers(&store, dir.path(), "hello:latest", &[layer])
        .await
        .expect("import");
    assert_eq!(
        records[0].references,
        vec!["docker.io/library/hello:latest".to_owned()]
    );
    let rootfs = store.lowerdirs(&records[0]).remove(0);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("bin/hello"))
            .ok()
            .as_deref(),
        Some("echo hello")
    );
}

#[tokio::test]
async fn a_docker_save_with_a_wrong_diff_id_is_refused() {
    let (dir, store) = store();
    let real = LayerTar::new().file("a", "a").finish();
    let path = docker_save(dir.path(), "bad", "bad:1", std::slice::from_ref(&real));
    // Swap the layer for another after the config recorded the real diff-id.
    let other = LayerTar::new().file("b", "b").finish();
    let tampered = rewrite_member(&path, "layer0/layer.tar", &other);
    let err = store
        .import(&tampered, &ImportOptions::default())
        .await
        .expect_err("accepted");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    super::assert_store_empty(&store);
}

#[tokio::test]
async fn junk_is_not_an_image() {
    let (dir, store) = store();
    std::fs::write(dir.path().join("readme"), "hi").expect("write");
    let err = store
        .import(dir.path(), &ImportOptions::default())
        .await
        .expect_err("accepted");
    assert!(matches!(err, ImageError::Import { .. }), "{err}");
}

fn tar_dir(dir: &Path, out: &Path) {
    let file = std::fs::File::create(out).expect("create");
    let mut builder = tar::Builder::new(file);
    builder.append_dir_all(".", dir).expect("tar layout");
    builder.finish().expect("finish");
}

/// A copy of the tarball at `path` with member `name` replaced by `data`.
fn rewrite_member(path: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let mut input = tar::Archive::new(std::fs::File::open(path).expect("open"));
    let out_path = path.with_extension("tampered.tar");
    let mut out = tar::Builder::new(std::fs::File::create(&out_path).expect("create"));
    for entry in input.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let member = entry.path().expect("path").to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read");
        if member == name {
            bytes = data.to_vec();
        }
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        out.append_data(&mut header, &member, &bytes[..])
            .expect("append");
    }
    out.finish().expect("finish");
    out_path
}
