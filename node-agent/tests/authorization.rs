//! Per-caller authorization end to end, through the real agent on mTLS and
//! the real `nodectl`: certificates issued with `nodectl certs issue`
//! carry a role and namespaces; a user sees and changes only its
//! namespaces, a viewer only reads, a revoked or expired certificate is
//! refused, and a revocation list that does not verify stops every call
//! until it is fixed.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use stratum_testkit::test_agent::{output_text as text, TestAgent};

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// The call failed with `code` (nodectl prints the gRPC code).
fn refused(out: Output, code: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(code), "{code} expected: {}", text(&out));
    text(&out)
}

fn json(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// Ids of the pools a list shows.
fn pool_ids(list: &serde_json::Value) -> Vec<String> {
    let pools = list
        .as_array()
        .or_else(|| list["pools"].as_array())
        .unwrap_or_else(|| panic!("pools in {list}"));
    pools
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

struct Fixture {
    agent: TestAgent,
    admin: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        Self::with(name, &[])
    }

    fn with(name: &str, extra: &[&str]) -> Self {
        let agent = TestAgent::start_mtls_with(name, extra);
        let admin = agent.dir.join("data/certs");
        Fixture { agent, admin }
    }

    fn as_(&self, certs: &Path, args: &[&str]) -> Output {
        self.agent.nodectl_as(certs, args)
    }

    /// A pool under `parent` ("" = a namespace), made by `certs`.
    fn pool(&self, certs: &Path, parent: &str, name: &str) -> String {
        let mut args = vec!["-o", "json", "pool", "create", name];
        if !parent.is_empty() {
            args.extend(["--parent", parent]);
        }
        json(self.as_(certs, &args))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `nodectl certs issue` with the agent's CA: the new caller's --certs.
    fn issue(&self, name: &str, role: &str, namespaces: &[&str]) -> PathBuf {
        let out = self.agent.dir.join(format!("certs-{name}"));
        let mut args = vec![
            "certs".to_string(),
            "issue".into(),
            name.into(),
            "--role".into(),
            role.into(),
            "--days".into(),
            "2".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        for ns in namespaces {
            args.extend(["--namespace".to_string(), ns.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let issued = ok(self.as_(&self.admin, &args));
        assert!(issued.contains("valid until"), "{issued}");
        out
    }

    fn vm(&self, certs: &Path, pool: &str, name: &str) -> Output {
        let mut args = vec!["-o".to_string(), "json".to_string()];
        args.extend(self.agent.halting_vm_args(name, pool));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.as_(certs, &args)
    }
}

#[test]
fn users_and_viewers_stay_inside_their_namespaces() {
    let f = Fixture::new("authz");
    let ns_a = f.pool(&f.admin, "", "team-a");
    let ns_b = f.pool(&f.admin, "", "team-b");
    let alice = f.issue("alice", "user", &[&ns_a]);
    let bob = f.issue("bob", "user", &[&ns_b]);
    let vic = f.issue("vic", "viewer", &[&ns_a]);
    let eve = f.issue("eve", "viewer", &[]);

    // Alice works inside her namespace.
    let web = f.pool(&alice, &ns_a, "web");
    let vm: serde_json::Value = json(f.vm(&alice, &web, "w1"));
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let b_vm: serde_json::Value = json(f.vm(&bob, &ns_b, "b1"));
    let b_vm_id = b_vm["id"].as_str().unwrap().to_string();

    // ... and nowhere else: no new namespace, nothing in b's, not her
    // namespace pool's own size.
    let denied = "PERMISSION_DENIED";
    refused(f.as_(&alice, &["pool", "create", "mine"]), denied);
    refused(
        f.as_(&alice, &["pool", "create", "x", "--parent", &ns_b]),
        denied,
    );
    refused(f.vm(&alice, &ns_b, "sneaky"), denied);
    refused(f.as_(&alice, &["pool", "get", &ns_b]), denied);
    refused(f.as_(&alice, &["vm", "get", &b_vm_id]), denied);
    refused(f.as_(&alice, &["vm", "kill", &b_vm_id]), denied);
    refused(f.as_(&alice, &["vm", "delete", &b_vm_id]), denied);
    refused(f.as_(&alice, &["pool", "delete", &ns_a]), denied);
    let message = refused(
        f.as_(
            &alice,
            &["pool", "update", &ns_a, "--cpu-reservation", "100m"],
        ),
        denied,
    );
    assert!(message.contains("alice (user of"), "{message}");
    // An id that names nothing is still NOT_FOUND.
    refused(f.as_(&alice, &["vm", "get", "vm-999"]), "NOT_FOUND");

    // Lists show only what the caller may read.
    let alice_pools = pool_ids(&json(f.as_(&alice, &["-o", "json", "pool", "list"])));
    assert_eq!(alice_pools, [ns_a.clone(), web.clone()]);
    let alice_vms = ok(f.as_(&alice, &["vm", "list"]));
    assert!(
        alice_vms.contains("w1") && !alice_vms.contains("b1"),
        "{alice_vms}"
    );
    let bob_vms = ok(f.as_(&bob, &["vm", "list"]));
    assert!(
        bob_vms.contains("b1") && !bob_vms.contains("w1"),
        "{bob_vms}"
    );
    let inventory = json(f.as_(&bob, &["-o", "json", "pool", "list", "--workloads"]));
    assert!(!inventory.to_string().contains(&vm_id), "{inventory}");

    // A viewer reads its namespace and changes nothing.
    ok(f.as_(&vic, &["vm", "get", &vm_id]));
    refused(f.as_(&vic, &["vm", "get", &b_vm_id]), denied);
    refused(f.vm(&vic, &web, "w2"), denied);
    refused(f.as_(&vic, &["vm", "delete", &vm_id]), denied);
    refused(f.as_(&vic, &["image", "pull", "localhost:1/x:1"]), denied);
    // A viewer without namespaces reads everything, changes nothing.
    let all = pool_ids(&json(f.as_(&eve, &["-o", "json", "pool", "list"])));
    assert!(all.contains(&ns_a) && all.contains(&ns_b), "{all:?}");
    ok(f.as_(&eve, &["vm", "get", &b_vm_id]));
    refused(
        f.as_(&eve, &["pool", "create", "x", "--parent", &ns_a]),
        denied,
    );

    // Host paths are the admin's: no user imports.
    refused(f.as_(&alice, &["image", "import", "/etc/hostname"]), denied);
    // Every role reads the host.
    ok(f.as_(&vic, &["host", "info"]));

    // The admin still sees everything, and alice's VM goes with her pool.
    ok(f.as_(&alice, &["vm", "delete", &vm_id]));
    ok(f.as_(&alice, &["pool", "delete", &web]));
    let admin_pools = pool_ids(&json(f.as_(&f.admin, &["-o", "json", "pool", "list"])));
    assert!(admin_pools.contains(&ns_b), "{admin_pools:?}");
}

/// Ids of the images a caller lists.
fn image_ids(f: &Fixture, certs: &Path) -> Vec<String> {
    let list = json(f.as_(certs, &["-o", "json", "image", "list"]));
    let images = list
        .as_array()
        .or_else(|| list["images"].as_array())
        .cloned()
        .unwrap_or_default();
    images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn images_are_seen_by_the_namespaces_that_pulled_them() {
    let work = tempfile::tempdir().unwrap();
    let (registry, reference) =
        stratum_testkit::fixture::registry_with_busybox(work.path()).expect("registry");
    let mut f = Fixture::with("authz-img", &["--insecure-registry", registry.addr()]);
    let ns_a = f.pool(&f.admin, "", "team-a");
    let ns_b = f.pool(&f.admin, "", "team-b");
    let alice = f.issue("alice", "user", &[&ns_a]);
    let bob = f.issue("bob", "user", &[&ns_b]);
    let vic = f.issue("vic", "viewer", &[&ns_a]);
    let eve = f.issue("eve", "viewer", &[]);

    // Alice pulls for her namespace: she, her namespace's viewer and the
    // host-wide viewer see it; bob does not, and his pods cannot run it.
    ok(f.as_(&alice, &["image", "pull", &reference]));
    let ids = image_ids(&f, &alice);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids[0].clone();
    assert_eq!(image_ids(&f, &vic), std::slice::from_ref(&id));
    assert_eq!(image_ids(&f, &eve), std::slice::from_ref(&id));
    assert!(image_ids(&f, &bob).is_empty());
    // Who pulled it is durable: the same after a crash.
    f.agent.kill9();
    f.agent.spawn();
    assert!(image_ids(&f, &bob).is_empty());
    assert_eq!(image_ids(&f, &alice), std::slice::from_ref(&id));
    refused(
        f.as_(&bob, &["image", "get", &reference]),
        "PERMISSION_DENIED",
    );
    refused(
        f.as_(&bob, &["image", "rm", &reference]),
        "PERMISSION_DENIED",
    );
    let message = refused(
        f.as_(
            &bob,
            &["pod", "run", "web", "--pool", &ns_b, "--image", &reference],
        ),
        "PERMISSION_DENIED",
    );
    assert!(message.contains("pull it there first"), "{message}");
    // Alice cannot pull for bob's namespace.
    refused(
        f.as_(&alice, &["image", "pull", &reference, "--namespace", &ns_b]),
        "PERMISSION_DENIED",
    );

    // Bob pulls it too: one image, two claims. Alice's removal takes hers
    // only; bob's, the image.
    ok(f.as_(&bob, &["image", "pull", &reference]));
    assert_eq!(image_ids(&f, &bob), std::slice::from_ref(&id));
    ok(f.as_(&alice, &["image", "rm", &reference]));
    assert!(image_ids(&f, &alice).is_empty());
    assert_eq!(image_ids(&f, &bob), std::slice::from_ref(&id));
    ok(f.as_(&bob, &["image", "rm", &reference]));
    assert!(
        image_ids(&f, &f.admin).is_empty(),
        "the last claim took the image"
    );

    // An admin's pull is the host's: everyone sees it, and it stays the
    // host's when a user pulls it again and removes it.
    ok(f.as_(&f.admin, &["image", "pull", &reference]));
    assert_eq!(image_ids(&f, &bob), std::slice::from_ref(&id));
    ok(f.as_(&alice, &["image", "pull", &reference]));
    ok(f.as_(&alice, &["image", "rm", &reference]));
    assert_eq!(image_ids(&f, &bob), [id]);
}

#[test]
fn revoked_and_expired_certificates_are_refused() {
    let f = Fixture::new("revoke");
    let ns = f.pool(&f.admin, "", "team");
    let alice = f.issue("alice", "user", &[&ns]);
    let bob = f.issue("bob", "viewer", &[]);
    ok(f.as_(&alice, &["pool", "list"]));

    // Revoked by file: refused from the next call on; bob is not.
    let revoked = ok(f.as_(
        &f.admin,
        &[
            "certs",
            "revoke",
            alice.join("client.pem").to_str().unwrap(),
        ],
    ));
    assert!(revoked.contains("1 revoked"), "{revoked}");
    let message = refused(f.as_(&alice, &["pool", "list"]), "PERMISSION_DENIED");
    assert!(message.contains("revoked"), "{message}");
    ok(f.as_(&bob, &["pool", "list"]));

    // A revocation list that does not verify refuses everyone, the admin
    // included, until it is fixed.
    let crl = f.admin.join("crl.pem");
    let good = std::fs::read(&crl).unwrap();
    std::fs::write(
        &crl,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    refused(f.as_(&f.admin, &["pool", "list"]), "UNAVAILABLE");
    std::fs::write(&crl, good).unwrap();
    ok(f.as_(&f.admin, &["pool", "list"]));
    refused(f.as_(&alice, &["pool", "list"]), "PERMISSION_DENIED");

    // An expired certificate fails the handshake.
    let expired = f.agent.dir.join("certs-expired");
    write_expired_client(&f.admin, &expired);
    let out = f.as_(&expired, &["pool", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!out.status.success());
    // A certificate without a role (as the CA signed before roles) is no
    // identity.
    let roleless = f.agent.dir.join("certs-roleless");
    write_client(&f.admin, &roleless, |_| {});
    refused(f.as_(&roleless, &["pool", "list"]), "UNAUTHENTICATED");
}

/// A client certificate signed by the CA in `ca_dir`, adjusted by
/// `adjust`, written as a --certs directory at `out`.
fn write_client(ca_dir: &Path, out: &Path, adjust: impl FnOnce(&mut rcgen::CertificateParams)) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "mallory");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    adjust(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(out.join("client.pem"), cert.pem()).unwrap();
    let key_path = out.join("client.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// An admin certificate whose validity ended yesterday.
fn write_expired_client(ca_dir: &Path, out: &Path) {
    write_client(ca_dir, out, |params| {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "admin");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(3);
        params.not_after = now - time::Duration::days(1);
    });
}

/// Networks: a user makes and deletes them for its own namespaces only,
/// a network every namespace may use is the admin's, a viewer makes
/// none; each sees the networks its namespaces may use, with only its
/// namespaces' attachments.
#[test]
fn networks_belong_to_their_namespaces() {
    let octet = std::process::id() % 200 + 20;
    let bridge = format!("stz{}", std::process::id() % 100_000);
    let cidr = |n: u32| format!("10.{n}.{octet}.0/24");
    let f = Fixture::with(
        "authz-net",
        &["--pod-bridge", &bridge, "--pod-cidr", &cidr(229)],
    );
    let guard = NetGuard(vec![bridge.clone(), "st-net-a".into(), "st-net-b".into()]);
    let ns_a = f.pool(&f.admin, "", "team-a");
    let ns_b = f.pool(&f.admin, "", "team-b");
    let alice = f.issue("alice", "user", &[&ns_a]);
    let vic = f.issue("vic", "viewer", &[&ns_a]);

    let net = |certs: &Path, name: &str, n: u32, ns: &[&str]| {
        let cidr = cidr(n);
        let mut args = vec!["network", "create", name, "--cidr", &cidr];
        for ns in ns {
            args.extend(["--namespace", ns]);
        }
        f.as_(certs, &args)
    };
    ok(net(&alice, "net-a", 230, &[&ns_a]));
    refused(net(&alice, "net-b", 231, &[&ns_b]), "PERMISSION_DENIED");
    refused(net(&alice, "net-x", 232, &[]), "PERMISSION_DENIED");
    refused(net(&vic, "net-v", 233, &[&ns_a]), "PERMISSION_DENIED");
    ok(net(&f.admin, "net-b", 231, &[&ns_b]));

    let names = |certs: &Path| -> Vec<String> {
        json(f.as_(certs, &["-o", "json", "network", "list"]))["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["spec"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&alice), ["default", "net-a"]);
    assert_eq!(names(&vic), ["default", "net-a"]);
    assert_eq!(names(&f.admin), ["default", "net-a", "net-b"]);
    refused(
        f.as_(&alice, &["network", "get", "net-b"]),
        "PERMISSION_DENIED",
    );
    refused(
        f.as_(&alice, &["network", "delete", "net-b"]),
        "PERMISSION_DENIED",
    );
    refused(
        f.as_(&vic, &["network", "delete", "net-a"]),
        "PERMISSION_DENIED",
    );
    refused(
        f.as_(&alice, &["network", "delete", "default"]),
        "PERMISSION_DENIED",
    );

    // Alice's VM on her network shows to her; not on Bob's network.
    let web = f.pool(&alice, &ns_a, "web");
    let mut args: Vec<String> = f.agent.halting_vm_args("v1", &web);
    args.extend(["--nic".into(), "network=net-a".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(f.as_(&alice, &args));
    let shown = json(f.as_(&alice, &["-o", "json", "network", "get", "net-a"]));
    assert_eq!(
        shown["status"]["attachments"].as_array().unwrap().len(),
        1,
        "{shown}"
    );
    let mut args: Vec<String> = f.agent.halting_vm_args("v2", &web);
    args.extend(["--nic".into(), "network=net-b".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(f.as_(&alice, &args), "PERMISSION_DENIED");
    ok(f.as_(&f.admin, &["network", "delete", "net-b"]));
    // On a network every namespace may use, each sees its own only, a VM
    // not running included.
    let team_b = f.pool(&f.admin, &ns_b, "team-b-vms");
    let mut args: Vec<String> = f.agent.halting_vm_args("v3", &team_b);
    args.extend(["--nic".into(), "network=default".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(f.as_(&f.admin, &args));
    let attached = |certs: &Path| {
        json(f.as_(certs, &["-o", "json", "network", "get", "default"]))["status"]["attachments"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(attached(&f.admin), 1);
    assert_eq!(attached(&alice), 0, "Bob's VM is not Alice's to see");
    drop(guard);
}

/// Removes the test's bridges and its default network's firewall tables.
struct NetGuard(Vec<String>);

impl Drop for NetGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", name])
                .stderr(std::process::Stdio::null())
                .status();
            for family in ["inet", "bridge"] {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", family, name])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[test]
fn snapshots_and_clones_belong_to_their_vms_namespace() {
    let f = Fixture::new("authz-snap");
    let ns_a = f.pool(&f.admin, "", "team-a");
    let ns_b = f.pool(&f.admin, "", "team-b");
    let alice = f.issue("alice", "user", &[&ns_a]);
    let bob = f.issue("bob", "user", &[&ns_b]);
    let vic = f.issue("vic", "viewer", &[&ns_a]);
    let vm: serde_json::Value = json(f.vm(&alice, &ns_a, "w1"));
    let vm_id = vm["id"].as_str().unwrap().to_string();
    ok(f.as_(&alice, &["vm", "start", &vm_id]));
    let denied = "PERMISSION_DENIED";
    refused(f.as_(&bob, &["vm", "snapshot", &vm_id, "stolen"]), denied);
    refused(f.as_(&vic, &["vm", "snapshot", &vm_id, "viewed"]), denied);
    let snapshot = json(f.as_(&alice, &["-o", "json", "vm", "snapshot", &vm_id, "gold"]));
    let snap_id = snapshot["id"].as_str().unwrap().to_string();

    // Bob neither sees, clones nor deletes it; the viewer only reads it.
    let bob_list = ok(f.as_(&bob, &["snapshot", "list"]));
    assert!(!bob_list.contains("gold"), "{bob_list}");
    refused(f.as_(&bob, &["snapshot", "get", &snap_id]), denied);
    refused(f.as_(&bob, &["vm", "clone", &snap_id, "mine"]), denied);
    refused(f.as_(&bob, &["snapshot", "delete", &snap_id]), denied);
    assert!(ok(f.as_(&vic, &["snapshot", "list"])).contains("gold"));
    refused(f.as_(&vic, &["vm", "clone", &snap_id, "viewed"]), denied);
    refused(f.as_(&vic, &["snapshot", "delete", &snap_id]), denied);

    // Alice clones it into her namespace, and cleans up.
    let clones = ok(f.as_(&alice, &["vm", "clone", &snap_id, "copy", "--count", "2"]));
    assert!(
        clones.contains("copy-1") && clones.contains("copy-2"),
        "{clones}"
    );
    let table = ok(f.as_(&alice, &["snapshot", "get", &snap_id]));
    assert!(table.contains("clones"), "{table}");
    for vm in json(f.as_(&alice, &["-o", "json", "vm", "list"]))["vms"]
        .as_array()
        .unwrap()
    {
        let id = vm["id"].as_str().unwrap();
        ok(f.as_(&alice, &["vm", "kill", id]));
    }
    // Kill answers before the vmm is gone: delete once each has stopped.
    for _ in 0..100 {
        let list = ok(f.as_(&alice, &["vm", "list"]));
        if !list.contains("RUNNING") && !list.contains("STOPPING") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for vm in json(f.as_(&alice, &["-o", "json", "vm", "list"]))["vms"]
        .as_array()
        .unwrap()
    {
        ok(f.as_(&alice, &["vm", "delete", vm["id"].as_str().unwrap()]));
    }
    ok(f.as_(&alice, &["snapshot", "delete", &snap_id]));
}
