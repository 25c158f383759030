//! Leases, removal, garbage collection, persistence and verified writes.

use std::os::unix::fs::PermissionsExt;

use super::{assert_store_empty, entries, import_layers, store, LayerTar};
use crate::digest::Digest;
use crate::txn::Txn;
use crate::{ImageError, ImageStore};

fn layer(name: &str) -> Vec<u8> {
    LayerTar::new()
        .dir("data")
        .file(&format!("data/{name}"), name)
        .finish()
}

#[tokio::test]
async fn remove_is_refused_while_leased_and_gc_frees_the_rest() {
    let (dir, store) = store();
    let records = import_layers(&store, dir.path(), "app:1", &[layer("a")])
        .await
        .expect("import");
    let lease = store.acquire("app:1").expect("acquire");
    assert_eq!(lease.lowerdirs(), store.lowerdirs(&records[0]).as_slice());
    assert_eq!(store.lease_count("app:1").ok(), Some(1));
    let err = store.remove("app:1").expect_err("removed while leased");
    assert!(matches!(err, ImageError::InUse { leases: 1, .. }), "{err}");
    assert_eq!(store.gc().await.expect("gc").blobs_removed, 0);
    assert!(lease.lowerdirs()[0].join("data/a").is_file());
    drop(lease);
    store.remove("docker.io/library/app:1").expect("remove");
    assert!(matches!(
        store.get("app:1"),
        Err(ImageError::UnknownImage(_))
    ));
    let report = store.gc().await.expect("gc");
    assert_eq!((report.blobs_removed, report.layers_removed), (3, 1)); // manifest, config, layer
    assert!(report.blob_bytes_freed > 0);
    assert_store_empty(&store);
}

#[tokio::test]
async fn gc_keeps_layers_shared_with_remaining_images() {
    let (dir, store) = store();
    let base = layer("base");
    import_layers(&store, dir.path(), "one:1", &[base.clone(), layer("one")])
        .await
        .expect("one");
    let two = import_layers(&store, dir.path(), "two:1", &[base, layer("two")])
        .await
        .expect("two");
    assert_eq!(entries(&store.root().join("layers")).len(), 3);
    store.remove("one:1").expect("remove");
    let report = store.gc().await.expect("gc");
    assert_eq!(report.layers_removed, 1);
    for dir in store.lowerdirs(&two[0]) {
        assert!(dir.is_dir(), "{} collected", dir.display());
    }
    assert!(store.lowerdirs(&two[0])[1].join("data/base").is_file());
}

#[tokio::test]
async fn records_survive_reopen_and_are_found_by_any_name() {
    let (dir, store) = store();
    let record = import_layers(&store, dir.path(), "keep:2", &[layer("k")])
        .await
        .expect("import")
        .remove(0);
    drop(store);
    let store = ImageStore::open(dir.path()).expect("reopen");
    for name in [
        "keep:2",
        "docker.io/library/keep:2",
        record.id.as_str(),
        record.id.hex(),
        record.manifest_digest.as_str(),
    ] {
        assert_eq!(store.get(name).ok().as_ref(), Some(&record), "{name}");
    }
    assert!(matches!(
        store.get("keep:3"),
        Err(ImageError::UnknownImage(_))
    ));
    assert_eq!(store.list(), vec![record]);
}

/// A row that cannot be read (garbage, a foreign format version) is moved
/// to quarantine at open; the other images are served.
#[tokio::test]
async fn an_unreadable_record_is_quarantined_and_the_rest_served() {
    let (dir, store) = store();
    let record = import_layers(&store, dir.path(), "keep:1", &[layer("q")])
        .await
        .expect("import")
        .remove(0);
    drop(store);
    let images: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("images");
    let quarantine: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("quarantine");
    let path = dir.path().join("images/index.redb");
    {
        let db = redb::Database::create(&path).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let mut table = tx.open_table(images).expect("images");
            table
                .insert("sha256:garbage", &b"\x01{not json"[..])
                .expect("insert");
            table
                .insert("sha256:future", &b"\x09{}"[..])
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let store = ImageStore::open(dir.path()).expect("reopen");
    assert_eq!(store.list(), vec![record]);
    drop(store);
    let db = redb::Database::create(&path).expect("db");
    let tx = redb::ReadableDatabase::begin_read(&db).expect("tx");
    let table = tx.open_table(quarantine).expect("quarantine");
    let mut keys = Vec::new();
    for row in redb::ReadableTable::iter(&table).expect("iter") {
        keys.push(row.expect("row").0.value().to_string());
    }
    assert_eq!(keys, ["images/sha256:future", "images/sha256:garbage"]);
}

#[tokio::test]
async fn a_tag_moves_to_the_newer_image() {
    let (dir, store) = store();
    let old = import_layers(&store, dir.path(), "app:latest", &[layer("v1")])
        .await
        .expect("v1")
        .remove(0);
    let new = import_layers(&store, dir.path(), "app:latest", &[layer("v2")])
        .await
        .expect("v2")
        .remove(0);
    assert_eq!(store.get("app").map(|r| r.id).ok(), Some(new.id));
    let old = store.get(old.id.as_str()).expect("old by id");
    assert!(old.references.is_empty());
}

#[test]
fn blobs_whose_bytes_do_not_match_their_digest_are_refused() {
    let (_dir, store) = store();
    let claimed = Digest::of_bytes(b"the real content");
    let mut txn = Txn::new(store.shared.clone());
    let err = txn
        .put_bytes(&claimed, b"something else")
        .expect_err("accepted");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(!store.blob_path(&claimed).exists());
    txn.put_bytes(&claimed, b"the real content").expect("put");
    assert!(store.blob_path(&claimed).is_file());
    drop(txn); // uncommitted: rolled back
    assert_store_empty(&store);
}

#[test]
fn open_clears_leftover_temp_files() {
    let (dir, store) = store();
    std::fs::write(store.root().join("tmp/blob-crashed"), b"partial").expect("write");
    std::fs::create_dir(store.root().join("tmp/layer-crashed")).expect("mkdir");
    drop(store);
    let store = ImageStore::open(dir.path()).expect("reopen");
    assert_store_empty(&store);
}

/// A setuid binary in a layer keeps its mode (the container may need it),
/// but no local user reaches it through the host's tree: the store is
/// its owner's only.
#[tokio::test]
async fn unpacked_setuid_files_are_out_of_other_users_reach() {
    stratum_testkit::root::require_root("running a command as nobody");
    let (dir, store) = store();
    let tar = LayerTar::new()
        .dir("bin")
        .setuid_file("bin/su-like", "#!/bin/sh\nid\n")
        .finish();
    let records = import_layers(&store, dir.path(), "suid:1", &[tar])
        .await
        .expect("import");
    let binary = store.lowerdirs(&records[0])[0].join("bin/su-like");
    let mode = std::fs::metadata(&binary)
        .expect("unpacked")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755, "the layer keeps its mode");
    let root_mode = std::fs::metadata(store.root())
        .expect("root")
        .permissions()
        .mode();
    assert_eq!(root_mode & 0o777, 0o700);
    // The data dir above may be any mode; the store is what closes.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg("stat")
        .arg(&binary)
        .output()
        .expect("setpriv");
    assert!(!as_nobody.status.success(), "nobody reached {binary:?}");
    assert!(
        String::from_utf8_lossy(&as_nobody.stderr).contains("Permission denied"),
        "{as_nobody:?}"
    );
}
