//! Malicious layers are refused naming the entry, write nothing outside
//! the store and leave no partial layer; whiteouts end up in overlayfs
//! form and behave as deletions under a real overlay mount.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::{assert_store_empty, entries, import_layers, store, LayerTar};
use crate::{ImageError, Refusal, OPAQUE_XATTR};

/// Imports a one-layer image made of `layer`; expects it refused at
/// `path` for `reason`, and nothing left in the store.
async fn assert_refused(layer: Vec<u8>, path: &str, reason: Refusal) -> tempfile::TempDir {
    let (dir, store) = store();
    assert_refused_by(&store, dir.path(), layer, path, reason).await;
    dir
}

/// [`assert_refused`] with a store of the caller's.
async fn assert_refused_by(
    store: &crate::ImageStore,
    dir: &Path,
    layer: Vec<u8>,
    path: &str,
    reason: Refusal,
) {
    let err = import_layers(store, dir, "evil:1", &[layer])
        .await
        .expect_err("malicious layer accepted");
    match &err {
        ImageError::RefusedEntry {
            path: p, reason: r, ..
        } => {
            assert_eq!((p.as_str(), r), (path, &reason), "{err}");
        }
        other => panic!("expected a refused entry, got {other}"),
    }
    assert!(
        err.to_string().contains(path),
        "message does not name the entry: {err}"
    );
    assert_store_empty(store);
    assert!(store.list().is_empty());
}

/// No file named `name` anywhere under `root`.
fn assert_absent_under(root: &Path, name: &str) {
    for entry in walk(root) {
        assert_ne!(
            entry.file_name().and_then(|n| n.to_str()),
            Some(name),
            "{} written",
            entry.display()
        );
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test]
async fn refuses_dotdot_escape() {
    let layer = LayerTar::new()
        .file("ok", "fine")
        .file("../escape", "pwned")
        .finish();
    let dir = assert_refused(layer, "../escape", Refusal::Escapes).await;
    assert_absent_under(dir.path(), "escape");
}

#[tokio::test]
async fn refuses_absolute_path() {
    let layer = LayerTar::new().file("/abs/escape", "pwned").finish();
    let dir = assert_refused(layer, "/abs/escape", Refusal::Escapes).await;
    assert!(!Path::new("/abs").exists());
    assert_absent_under(dir.path(), "escape");
}

#[tokio::test]
async fn refuses_writing_through_symlink() {
    let outside = tempfile::tempdir().expect("outside");
    let target = outside.path().to_str().expect("utf-8 path");
    let layer = LayerTar::new()
        .symlink("link", target)
        .file("link/file", "pwned")
        .finish();
    let reason = Refusal::ThroughSymlink {
        component: "link".into(),
    };
    let _dir = assert_refused(layer, "link/file", reason).await;
    assert_eq!(
        entries(outside.path()),
        Vec::<String>::new(),
        "written through the symlink"
    );
}

#[tokio::test]
async fn refuses_hardlink_outside() {
    let layer = LayerTar::new().hardlink("passwd", "/etc/passwd").finish();
    let reason = Refusal::HardlinkOutside {
        target: "/etc/passwd".into(),
    };
    let _dir = assert_refused(layer, "passwd", reason).await;
    let dotdot = LayerTar::new()
        .hardlink("passwd", "../../../../etc/passwd")
        .finish();
    let reason = Refusal::HardlinkOutside {
        target: "../../../../etc/passwd".into(),
    };
    let _dir = assert_refused(dotdot, "passwd", reason).await;
}

#[tokio::test]
async fn refuses_device_nodes() {
    let layer = LayerTar::new().dir("dev").char_device("dev/sda").finish();
    let _dir = assert_refused(layer, "dev/sda", Refusal::DeviceNode).await;
}

#[tokio::test]
async fn keeps_in_layer_hardlinks_and_symlinks() {
    let (dir, store) = store();
    let layer = LayerTar::new()
        .dir("bin")
        .file("bin/tool", "#!/bin/sh\n")
        .hardlink("bin/alias", "bin/tool")
        .symlink("bin/abs", "/etc/passwd")
        .finish();
    let records = import_layers(&store, dir.path(), "links:1", &[layer])
        .await
        .expect("import");
    let root = store.lowerdirs(&records[0]).remove(0);
    let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
    let alias = std::fs::metadata(root.join("bin/alias")).expect("alias");
    assert_eq!(tool.ino(), alias.ino());
    // A symlink may point anywhere: it is resolved in the container later.
    assert_eq!(
        std::fs::read_link(root.join("bin/abs")).ok(),
        Some("/etc/passwd".into())
    );
}

#[tokio::test]
async fn whiteouts_become_overlay_whiteouts() {
    let (dir, store) = store();
    let lower = LayerTar::new()
        .dir("etc")
        .file("etc/keep", "k")
        .file("etc/gone", "g")
        .dir("opq")
        .file("opq/old", "o")
        .finish();
    let upper = LayerTar::new()
        .dir("etc")
        .file("etc/.wh.gone", "")
        .dir("opq")
        .file("opq/.wh..wh..opq", "")
        .file("opq/new", "n")
        .finish();
    let records = import_layers(&store, dir.path(), "wh:1", &[lower, upper])
        .await
        .expect("import");
    let lowerdirs = store.lowerdirs(&records[0]);
    let top = &lowerdirs[0];
    let gone = std::fs::symlink_metadata(top.join("etc/gone")).expect("whiteout");
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "not a 0/0 char device"
    );
    assert!(!top.join("etc/.wh.gone").exists() && !top.join("opq/.wh..wh..opq").exists());
    let mut value = [0u8; 4];
    let n = rustix::fs::lgetxattr(top.join("opq"), OPAQUE_XATTR, &mut value).expect("opaque xattr");
    assert_eq!(&value[..n], b"y");
    assert_overlay_view(dir.path(), &lowerdirs);
}

/// Mounts the layers as overlayfs and checks the merged view.
fn assert_overlay_view(work: &Path, lowerdirs: &[std::path::PathBuf]) {
    let merged = work.join("merged");
    std::fs::create_dir(&merged).expect("mkdir");
    let lower: Vec<_> = lowerdirs.iter().map(|p| p.display().to_string()).collect();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&merged)
        .status()
        .expect("run mount");
    assert!(status.success(), "overlay mount failed");
    let view = (entries(&merged.join("etc")), entries(&merged.join("opq")));
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(view, (vec!["keep".to_owned()], vec!["new".to_owned()]));
}

/// A layer past the store's caps is refused at the entry that crosses
/// them, before it is written, with nothing left: the bytes declared (what
/// a decompression bomb inflates to) and the number of entries.
#[tokio::test]
async fn layers_past_the_caps_are_refused_before_writing() {
    let limits = crate::UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 10,
    };
    let big = "z".repeat(600 << 10);
    let cases = [
        (
            LayerTar::new().file("a", &big).file("b", &big).finish(),
            "b",
            Refusal::TooLarge { max_bytes: 1 << 20 },
        ),
        (
            (0..11)
                .fold(LayerTar::new(), |t, i| t.file(&format!("f{i}"), "x"))
                .finish(),
            "f10",
            Refusal::TooManyEntries { max_entries: 10 },
        ),
    ];
    for (layer, path, reason) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::ImageStore::open_with_limits(dir.path(), limits).expect("open");
        assert_refused_by(&store, dir.path(), layer, path, reason).await;
    }
}
