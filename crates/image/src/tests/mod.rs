//! Scenario tests of the image store against real parts: a local
//! `docker-registry`, umoci/skopeo-built images, crafted tar layers,
//! overlayfs. Helpers shared by the scenarios live here.

mod auth;
mod import;
mod registry;
mod store;
mod unpack;
mod vm;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;

use super::digest::Digest;
use super::{ImageStore, ImportOptions, PullOptions};
use stratum_testkit::fixture::TestRegistry;

/// A store in a fresh temp data dir.
fn store() -> (TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open store");
    (dir, store)
}

/// Options allowing plain HTTP to the test registry.
fn insecure(registry: &TestRegistry) -> PullOptions {
    PullOptions {
        insecure_registries: vec![registry.addr().to_owned()],
        ..PullOptions::default()
    }
}

/// Names of the entries of `dir` (empty if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts the store holds no blob, layer or temp file.
fn assert_store_empty(store: &ImageStore) {
    let root = store.root();
    assert_eq!(
        entries(&root.join("blobs/sha256")),
        Vec::<String>::new(),
        "blobs left"
    );
    assert_eq!(
        entries(&root.join("layers")),
        Vec::<String>::new(),
        "layers left"
    );
    assert_eq!(
        entries(&root.join("tmp")),
        Vec::<String>::new(),
        "temp files left"
    );
}

/// A tar layer built entry by entry with raw paths, so that entries the
/// tar crate's own path checks would refuse (`..`, absolute) can be made.
struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    fn new() -> Self {
        LayerTar(tar::Builder::new(Vec::new()))
    }

    fn entry(
        mut self,
        path: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut header = tar::Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.0.append(&header, data).expect("append");
        self
    }

    fn dir(self, path: &str) -> Self {
        self.entry(path, tar::EntryType::Directory, None, b"", 0o755)
    }

    fn file(self, path: &str, data: &str) -> Self {
        self.entry(path, tar::EntryType::Regular, None, data.as_bytes(), 0o644)
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(path, tar::EntryType::Symlink, Some(target), b"", 0o777)
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(path, tar::EntryType::Link, Some(target), b"", 0o644)
    }

    fn setuid_file(self, path: &str, data: &str) -> Self {
        self.entry(path, tar::EntryType::Regular, None, data.as_bytes(), 0o4755)
    }

    fn char_device(self, path: &str) -> Self {
        self.entry(path, tar::EntryType::Char, None, b"", 0o600)
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("finish tar")
    }
}

/// Writes a classic `docker save` tarball to `<dir>/<name>.tar` with the
/// given uncompressed layers (bottom first) and tag; returns its path.
fn docker_save(dir: &Path, name: &str, tag: &str, layers: &[Vec<u8>]) -> PathBuf {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| Digest::of_bytes(l).to_string())
        .collect();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let layer_paths: Vec<String> = (0..layers.len())
        .map(|i| format!("layer{i}/layer.tar"))
        .collect();
    let manifest = json!([{"Config": "config.json", "RepoTags": [tag], "Layers": layer_paths}]);
    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "config.json",
        &serde_json::to_vec(&config).expect("json"),
    );
    for (path, layer) in layer_paths.iter().zip(layers) {
        append(&mut archive, path, layer);
    }
    append(
        &mut archive,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    let path = dir.join(format!("{name}.tar"));
    let mut file = std::fs::File::create(&path).expect("create tar");
    file.write_all(&archive.into_inner().expect("tar"))
        .expect("write tar");
    path
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, path, data)
        .expect("append");
}

/// Imports a docker-save tarball made of `layers` into `store`.
async fn import_layers(
    store: &ImageStore,
    work: &Path,
    tag: &str,
    layers: &[Vec<u8>],
) -> Result<Vec<super::ImageRecord>, super::ImageError> {
    let path = docker_save(work, &tag.replace([':', '/'], "_"), tag, layers);
    store.import(&path, &ImportOptions::default()).await
}
