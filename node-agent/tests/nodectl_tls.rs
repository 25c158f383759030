//! mTLS by default, end to end: the agent makes its development PKI on
//! first start and requires client certificates; `nodectl` with the
//! client certificate gets through, without it (or in plaintext) it does
//! not; plaintext off loopback is refused at start, as is a VM jail that
//! cannot work. Also nodectl's pool and VM commands against the real
//! agent.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use stratum_testkit::test_agent::{output_text as text, TestAgent};

fn nodectl(agent: &TestAgent, certs: &std::path::Path, args: &[&str]) -> Output {
    agent.nodectl_as(certs, args)
}

#[test]
fn mtls_is_required_and_nodectl_drives_the_agent() {
    let agent = TestAgent::start_mtls("mtls");
    let certs = agent.dir.join("data/certs");
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(certs.join(file).exists(), "{file} made on first start");
    }
    let info = nodectl(&agent, &certs, &["host", "info"]);
    assert!(info.status.success(), "{}", text(&info));
    assert!(text(&info).contains("CGROUP"), "{}", text(&info));

    // No client certificate: refused.
    let empty = agent.dir.join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(certs.join("ca.pem"), empty.join("ca.pem")).unwrap();
    let refused = nodectl(&agent, &empty, &["host", "info"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    // Plaintext against the TLS port: refused.
    let plain = Command::new(stratum_testkit::bins::bin("nodectl"))
        .args(["--insecure", "--addr"])
        .arg(format!("http://127.0.0.1:{}", agent.port))
        .args(["host", "info"])
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));

    // The operator's path: a pool, a VM in it, the tree, JSON.
    let pool = nodectl(
        &agent,
        &certs,
        &[
            "pool",
            "create",
            "prod",
            "--cpu-reservation",
            "500m",
            "--mem-reservation",
            "256Mi",
        ],
    );
    assert!(pool.status.success(), "{}", text(&pool));
    let tree = nodectl(&agent, &certs, &["pool", "list"]);
    assert!(text(&tree).contains("prod"), "{}", text(&tree));
    let json = nodectl(&agent, &certs, &["-o", "json", "pool", "list"]);
    let pools: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let prod = pools
        .as_array()
        .or_else(|| pools["pools"].as_array())
        .and_then(|a| a.iter().find(|p| p["spec"]["name"] == "prod"))
        .cloned()
        .unwrap_or_else(|| panic!("prod in {pools}"));
    let pool_id = prod["id"].as_str().unwrap().to_string();
    let args = agent.halting_vm_args("w1", &pool_id);
    let created = nodectl(
        &agent,
        &certs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(created.status.success(), "{}", text(&created));
    let list = nodectl(&agent, &certs, &["vm", "list"]);
    assert!(text(&list).contains("w1"), "{}", text(&list));
    let bad = nodectl(&agent, &certs, &["vm", "get", "vm-does-not-exist"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("NOT_FOUND"), "{}", text(&bad));
}

#[test]
fn plaintext_off_loopback_is_refused_at_start() {
    // The agent makes its data dir before it refuses: a temporary one.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--insecure-plaintext", "--listen", "0.0.0.0:0", "--vmm"])
        .arg(stratum_testkit::test_agent::vmm_binary())
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

/// What the VM jail needs is checked at start, each with its reason: a
/// dynamically linked vmm (its jail holds no libraries), a missing
/// jailer, VM uids that overlap the pods' user namespace ids.
#[test]
fn a_vm_jail_that_cannot_work_is_refused_at_start() {
    let data = std::env::temp_dir().join(format!("stratum-jailcheck-{}", std::process::id()));
    let start = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .args([
                "--insecure-plaintext",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let vmm = stratum_testkit::test_agent::vmm_binary();
    let vmm = vmm.to_str().unwrap();
    let (code, err) = start(&["--vmm", "/bin/ls"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dynamically linked") && err.contains("--no-vm-jail"),
        "{err}"
    );
    let (code, err) = start(&["--vmm", vmm, "--jailer", "/no/such/jailer"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the jailer /no/such/jailer is missing"),
        "{err}"
    );
    let (code, err) = start(&["--vmm", vmm, "--vm-uid-range", "2000000000-2000000010"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("overlaps the pods' user namespace ids"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&data);
}
