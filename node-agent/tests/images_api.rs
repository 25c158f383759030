//! `stratum.v1.ImageService` against a real agent and a local registry
//! (`docker-registry`, plain HTTP) holding a busybox image: pull with
//! progress, list/get, `nodectl image`, the insecure-registry rule, remove.
//!
//! Needs root and the Debian packages named in `stratum_testkit::fixture`.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stratum_testkit::fixture;

use stratum_api::proto::image_service_client::ImageServiceClient;
use stratum_api::proto::pull_image_progress::Event;
use stratum_api::proto::{
    GetImageRequest, ImportImageRequest, LayerPhase, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use stratum_testkit::test_agent::{output_text as text, TestAgent};
use tonic::transport::Channel;
use tonic::Code;

async fn images(agent: &TestAgent) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(agent.channel().await)
}

/// Pulls over gRPC; returns every event, or the status the stream ended with.
async fn pull(
    client: &mut ImageServiceClient<Channel>,
    reference: &str,
) -> Result<Vec<Event>, tonic::Status> {
    let request = PullImageRequest {
        reference: reference.into(),
        auth: None,
        namespace: String::new(),
    };
    let mut stream = client.pull(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(msg) = stream.message().await? {
        events.push(msg.event.expect("an event"));
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_list_get_nodectl_and_remove() {
    let work = tempfile::tempdir().unwrap();
    let (registry, reference) = fixture::registry_with_busybox(work.path()).expect("fixture");
    let agent = TestAgent::start_with("images", &["--insecure-registry", registry.addr()]);
    let mut client = images(&agent).await;

    // Pull: resolved first, layer progress, the image last.
    let events = pull(&mut client, &reference).await.expect("pull");
    let Some(Event::Resolved(resolved)) = events.first() else {
        panic!("first event is not `resolved`: {events:?}");
    };
    assert_eq!(resolved.reference, reference);
    assert_eq!(resolved.layers, 1);
    assert!(resolved.total_bytes > 0);
    let layers: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Layer(l) => Some(l),
            _ => None,
        })
        .collect();
    assert!(layers
        .iter()
        .any(|l| l.phase == LayerPhase::Downloading as i32));
    let last_layer = layers.last().expect("layer events");
    assert_eq!(last_layer.phase, LayerPhase::Done as i32);
    assert_eq!(last_layer.done_bytes, last_layer.total_bytes);
    let Some(Event::Image(image)) = events.last() else {
        panic!("last event is not the image: {events:?}");
    };
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    assert_eq!(image.manifest_digest, resolved.manifest_digest);
    assert_eq!(image.references, vec![reference.clone()]);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.size_bytes, resolved.total_bytes);
    assert_eq!(image.config.as_ref().unwrap().cmd, vec!["/bin/sh"]);
    assert_eq!(image.users, 0);

    // List and get (by reference, by id, by manifest digest).
    let list = client
        .list(ListImagesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].id, image.id);
    for name in [&reference, &image.id, &image.manifest_digest] {
        let got = client
            .get(GetImageRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.id, image.id, "get {name}");
    }
    let missing = client
        .get(GetImageRequest {
            name: "nothing:here".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // nodectl: the same pull again (layer already present), then list.
    let out = agent.nodectl(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resolved "), "{}", text(&out));
    assert!(stdout.contains("already present"), "{}", text(&out));
    assert!(
        stdout.contains(&format!("pulled {reference} {}", image.id)),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains('\r'), "no progress bar to a pipe");
    let out = agent.nodectl(&["image", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&reference),
        "{}",
        text(&out)
    );
    let out = agent.nodectl(&["-o", "json", "image", "get", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["id"], image.id.as_str());
    let out = agent.nodectl(&["-o", "json", "image", "pull", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert!(lines.first().unwrap().get("resolved").is_some());
    assert_eq!(lines.last().unwrap()["image"]["id"], image.id.as_str());

    // Remove: the image goes, its blobs and layers with it.
    let removed = client
        .remove(RemoveImageRequest {
            name: reference.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.image.unwrap().id, image.id);
    let list = client
        .list(ListImagesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.images.is_empty(), "{list:?}");
    let layers_dir = agent.dir.join("data/images/layers");
    let left: Vec<_> = std::fs::read_dir(&layers_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "gc left layers: {left:?}");
    let again = client
        .remove(RemoveImageRequest {
            name: reference.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    let unknown = client
        .remove(RemoveImageRequest {
            name: "sha256:".to_string() + &"0".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // nodectl rm of what nodectl pulls.
    let out = agent.nodectl(&["image", "pull", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.nodectl(&["image", "rm", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.nodectl(&["image", "rm", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_registry_must_be_listed_as_insecure() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, reference) = fixture::registry_with_busybox(work.path()).expect("fixture");
    let agent = TestAgent::start("images-https");
    let mut client = images(&agent).await;
    let err = pull(&mut client, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("insecure"), "{err:?}");
    let list = client
        .list(ListImagesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.images.is_empty(), "a failed pull stores nothing");

    let out = agent.nodectl(&["image", "pull", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("UNAVAILABLE") && stderr.contains("insecure"),
        "{}",
        text(&out)
    );

    let bad = pull(&mut client, "Not A Reference").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
}

#[tokio::test]
async fn imports_come_only_from_the_artifact_directories() {
    let agent = TestAgent::start("import");
    let outside_work = tempfile::tempdir().unwrap();
    let outside = fixture::build_busybox_layout(outside_work.path(), "1").unwrap();
    let inside = fixture::build_busybox_layout(&agent.dir.join("layouts"), "1").unwrap();
    let link = agent.dir.join("outside-link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let mut client = images(&agent).await;
    let import = |path: &std::path::Path| ImportImageRequest {
        path: path.to_string_lossy().into_owned(),
        reference: "localhost/imported:1".into(),
    };
    for (what, path) in [
        ("a layout outside", outside.as_path()),
        ("a link to it", link.as_path()),
        ("/etc", std::path::Path::new("/etc")),
    ] {
        let e = client.import(import(path)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    let listed = client
        .list(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "a refused import stored {listed:?}");
    let imported = client
        .import(import(&inside))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(imported.len(), 1, "{imported:?}");
}
