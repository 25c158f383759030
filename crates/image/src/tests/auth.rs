//! How credentials reach the registry: a minimal HTTP registry stand-in
//! records the `Authorization` headers oci-client sends for Basic and
//! Bearer credentials and answers 401 or 404 (manifest unknown).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::store;
use crate::{ImageError, ProgressSink, PullOptions, RegistryCredentials};

/// Serves until dropped; `/v2/` challenges with `challenge`, other paths
/// are 404 MANIFEST_UNKNOWN when `Authorization` equals `accept`, else 401.
struct FakeRegistry {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_registry(challenge: &'static str, accept: &'static str) -> FakeRegistry {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let head = read_head(&mut conn).await;
            let auth = header(&head, "authorization");
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            log.lock()
                .expect("lock")
                .push(format!("{path} {}", auth.clone().unwrap_or_default()));
            let reply = if path != "/v2/" && auth.as_deref() == Some(accept) {
                let body =
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            };
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    FakeRegistry { addr, seen, task }
}

async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.unwrap_or(0) == 1 {
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

async fn pull(registry: &FakeRegistry, credentials: RegistryCredentials) -> ImageError {
    let (_dir, store) = store();
    let options = PullOptions {
        insecure_registries: vec![registry.addr.clone()],
        ..PullOptions::default()
    };
    let reference = format!("{}/app:1", registry.addr);
    store
        .pull(&reference, &credentials, &options, &ProgressSink::none())
        .await
        .expect_err("the stand-in serves no image")
}

fn manifest_requests(registry: &FakeRegistry) -> Vec<String> {
    let seen = registry.seen.lock().expect("lock");
    seen.iter()
        .filter(|l| l.starts_with("/v2/app/manifests/"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn basic_credentials_are_sent_as_http_basic() {
    let registry = fake_registry("Basic realm=\"test\"", "Basic dXNlcjpzZWNyZXQ=").await;
    let good = RegistryCredentials::Basic {
        username: "user".into(),
        password: "secret".into(),
    };
    let err = pull(&registry, good).await;
    assert!(matches!(err, ImageError::RegistryNotFound { .. }), "{err}");
    assert_eq!(
        manifest_requests(&registry),
        vec!["/v2/app/manifests/1 Basic dXNlcjpzZWNyZXQ=".to_owned()]
    );
    let bad = RegistryCredentials::Basic {
        username: "user".into(),
        password: "wrong".into(),
    };
    let err = pull(&registry, bad).await;
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");
}

#[tokio::test]
async fn bearer_tokens_are_sent_as_is() {
    let registry = fake_registry("Bearer realm=\"http://127.0.0.1:1/token\"", "Bearer t0ken").await;
    let err = pull(
        &registry,
        RegistryCredentials::Bearer {
            token: "t0ken".into(),
        },
    )
    .await;
    assert!(matches!(err, ImageError::RegistryNotFound { .. }), "{err}");
    assert_eq!(
        manifest_requests(&registry),
        vec!["/v2/app/manifests/1 Bearer t0ken".to_owned()]
    );
    let err = pull(&registry, RegistryCredentials::Anonymous).await;
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");
}
