//! Pulls from a real local registry (Debian's docker-registry) holding a
//! busybox image built and pushed by the fixture.

use std::sync::{Arc, Mutex};

use super::{assert_store_empty, insecure, store};
use crate::{ImageError, LayerPhase, ProgressSink, PullEvent, PullOptions, RegistryCredentials};
use stratum_testkit::fixture::registry_with_busybox;

fn recorder() -> (ProgressSink, Arc<Mutex<Vec<PullEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let sink = ProgressSink::new(move |e| sink_events.lock().expect("lock").push(e));
    (sink, events)
}

fn phases(events: &Mutex<Vec<PullEvent>>) -> Vec<LayerPhase> {
    let events = events.lock().expect("lock");
    events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Layer(l) => Some(l.phase),
            PullEvent::Resolved { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn pulls_busybox_from_an_insecure_registry() {
    let (dir, store) = store();
    let (registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let (sink, events) = recorder();
    let anon = RegistryCredentials::Anonymous;
    let record = store
        .pull(&reference, &anon, &insecure(&registry), &sink)
        .await
        .expect("pull");
    assert_eq!(record.references, vec![reference.clone()]);
    assert_eq!(record.layers.len(), 1);
    let layer = &record.layers[0];
    assert!(store.blob_path(&layer.digest).is_file() && store.blob_path(&record.id).is_file());
    let rootfs = store.layer_dir(&layer.diff_id);
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/ls")).ok(),
        Some("busybox".into())
    );
    assert!(matches!(
        events.lock().expect("lock").first(),
        Some(PullEvent::Resolved { layers: 1, .. })
    ));
    let seen = phases(&events);
    assert_eq!(seen.first(), Some(&LayerPhase::Downloading));
    assert_eq!(seen.last(), Some(&LayerPhase::Done));

    let (sink, events) = recorder();
    let again = store
        .pull(&reference, &anon, &insecure(&registry), &sink)
        .await
        .expect("pull again");
    assert_eq!(again.manifest_digest, record.manifest_digest);
    assert_eq!(phases(&events), vec![LayerPhase::AlreadyPresent]);

    let pinned = format!("{}/busybox@{}", registry.addr(), record.manifest_digest);
    let none = ProgressSink::none();
    let by_digest = store
        .pull(&pinned, &anon, &insecure(&registry), &none)
        .await
        .expect("pull by digest");
    assert_eq!(by_digest.references, vec![reference, pinned]);
    assert_eq!(store.list().len(), 1);
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_blobs_and_layers() {
    let (dir, store) = store();
    let (registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let (anon, options, none) = (
        RegistryCredentials::Anonymous,
        insecure(&registry),
        ProgressSink::none(),
    );
    let (a, b, gc) = tokio::join!(
        store.pull(&reference, &anon, &options, &none),
        store.pull(&reference, &anon, &options, &none),
        store.gc(),
    );
    let (a, b) = (a.expect("first pull"), b.expect("second pull"));
    assert_eq!(a.manifest_digest, b.manifest_digest);
    gc.expect("gc");
    assert_eq!(store.gc().await.expect("gc").blobs_removed, 0);
    assert!(store
        .layer_dir(&a.layers[0].diff_id)
        .join("bin/busybox")
        .is_file());
    assert_eq!(
        super::entries(&store.root().join("tmp")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn plain_http_is_refused_unless_the_registry_is_listed_insecure() {
    let (dir, store) = store();
    let (_registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let anon = RegistryCredentials::Anonymous;
    let err = store
        .pull(
            &reference,
            &anon,
            &PullOptions::default(),
            &ProgressSink::none(),
        )
        .await
        .expect_err("pulled over plain HTTP without it being allowed");
    assert!(matches!(err, ImageError::RegistryTls { .. }), "{err}");
    assert!(err.to_string().contains("insecure"), "{err}");
    assert_store_empty(&store);
}

#[tokio::test]
async fn a_tampered_blob_fails_with_a_digest_mismatch_and_leaves_nothing() {
    let (dir, store) = store();
    let (registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let layer = busybox_layer_digest(&dir.path().join("busybox-oci"));
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).expect("read registry blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).expect("tamper");
    let anon = RegistryCredentials::Anonymous;
    let err = store
        .pull(
            &reference,
            &anon,
            &insecure(&registry),
            &ProgressSink::none(),
        )
        .await
        .expect_err("tampered layer accepted");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer), "{err}");
    assert_store_empty(&store);
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn a_layer_declaring_more_than_the_cap_is_refused_before_its_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = crate::UnpackLimits {
        max_bytes: 1000,
        ..crate::UnpackLimits::default()
    };
    let store = crate::ImageStore::open_with_limits(dir.path(), limits).expect("open");
    let (registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let (sink, events) = recorder();
    let err = store
        .pull(
            &reference,
            &RegistryCredentials::Anonymous,
            &insecure(&registry),
            &sink,
        )
        .await
        .expect_err("an oversized layer accepted");
    assert!(
        matches!(
            err,
            ImageError::DeclaredTooLarge {
                max_bytes: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(phases(&events), [], "no layer was downloaded");
    assert_store_empty(&store);
}

#[tokio::test]
async fn a_pull_that_would_eat_into_the_kept_free_space_is_refused_before_it_starts() {
    let (dir, store) = store();
    let (registry, reference) = registry_with_busybox(dir.path()).expect("registry with busybox");
    // Keep the whole disk free: other tests free space while this one runs,
    // so "what is free now" would not stay out of reach.
    let disk = rustix::fs::statvfs(store.root()).expect("statvfs");
    let options = PullOptions {
        keep_free: disk.f_blocks * disk.f_frsize,
        ..insecure(&registry)
    };
    let (sink, events) = recorder();
    let err = store
        .pull(&reference, &RegistryCredentials::Anonymous, &options, &sink)
        .await
        .expect_err("a pull into the kept space accepted");
    assert!(
        matches!(err, ImageError::NoSpace { needed, .. } if needed > 0),
        "{err}"
    );
    assert_eq!(phases(&events), [], "no layer was downloaded");
    assert_store_empty(&store);
    // With the room it needs, the same pull goes through.
    store
        .pull(
            &reference,
            &RegistryCredentials::Anonymous,
            &insecure(&registry),
            &ProgressSink::none(),
        )
        .await
        .expect("pull");
}

#[tokio::test]
async fn an_unknown_tag_is_not_found() {
    let (dir, store) = store();
    let (registry, _) = registry_with_busybox(dir.path()).expect("registry with busybox");
    let anon = RegistryCredentials::Anonymous;
    let missing = registry.reference("busybox:nope");
    let err = store
        .pull(&missing, &anon, &insecure(&registry), &ProgressSink::none())
        .await
        .expect_err("pulled a missing tag");
    assert!(matches!(err, ImageError::RegistryNotFound { .. }), "{err}");
}

/// The hex digest of the busybox image's only layer, from its OCI layout.
fn busybox_layer_digest(layout: &std::path::Path) -> String {
    let read = |rel: String| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(layout.join(rel)).expect("read layout"))
            .expect("json")
    };
    let index = read("index.json".into());
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest");
    let manifest = read(format!("blobs/sha256/{}", &manifest_digest[7..]));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest");
    layer[7..].to_owned()
}
