//! The metadata service (MMDS, V2) with a real guest on real KVM, in the
//! nested test host: a VM with one NIC on a TAP, MMDS configured on it and
//! filled before boot through Firecracker's API. The guest gives eth0 a
//! link-local address and speaks HTTP to 169.254.169.254 with busybox
//! `nc`: it gets a session token, reads a nested value as IMDS text and
//! as JSON with it, is refused (401) without it, and then sees data the
//! host PATCHed while it ran. The guest's part comes in on its command
//! line; everything it prints is prefixed so the host's lines are told
//! apart.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const API_CALL: &str = "/stratum/bin/api-call";
const MKTAP: &str = "/stratum/bin/mktap";

/// The guest's part. `R METHOD-AND-PATH HEADERS` sends one request (the
/// headers as printf escapes) and prints the answer, CRs removed;
/// `Connection: close` makes the service close after it, so `nc` ends.
fn guest_script() -> &'static str {
    r#"ip addr add 169.254.169.2/16 dev eth0 && ip link set eth0 up
R() { printf "$1 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n$2\r\n" | timeout 10 nc 169.254.169.254 80 | tr -d '\r'; echo; }
T=$(R 'PUT /latest/api/token' 'X-metadata-token-ttl-seconds: 60\r\n' | tail -n 1)
echo MMDS-TOKEN-LEN=${#T}
R 'GET /latest/meta-data/placement/zone' "X-metadata-token: $T\r\n" | sed 's/^/MMDS-PLAIN /'
R 'GET /latest/meta-data/placement' "X-metadata-token: $T\r\nAccept: application/json\r\n" | sed 's/^/MMDS-JSON /'
R 'GET /latest/meta-data' "X-aws-ec2-metadata-token: $T\r\n" | sed 's/^/MMDS-KEYS /'
R 'GET /latest/meta-data/placement/zone' '' | sed 's/^/MMDS-NOTOKEN /'
echo MMDS-GUEST-READY
i=0; until R 'GET /latest/user-data' "X-metadata-token: $T\r\n" | grep -q patched || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
R 'GET /latest/user-data' "X-metadata-token: $T\r\n" | sed 's/^/MMDS-PATCHED /'
"#
}

fn script() -> String {
    let cmdline = run_cmdline(CMDLINE, guest_script()).unwrap_or_else(|e| panic!("{e}"));
    let data = r#"{"latest": {"meta-data": {"ami-id": "ami-12345678", "placement": {"zone": "zone-a", "region": "region-1"}}, "user-data": "before"}}"#;
    format!(
        r#"api() {{ r=$({API_CALL} /tmp/a.sock "$@"); echo "API $1 $2 => $r"; }}
{MKTAP} tap0 && ip link set tap0 up
vmm --api-sock /tmp/a.sock --no-console-input > /tmp/a.log 2>&1 &
VMM=$!
i=0; while [ ! -S /tmp/a.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
api PUT /boot-source '{{"kernel_image_path": "{GUEST_VMLINUX}", "initrd_path": "{GUEST_INITRAMFS}", "boot_args": "{cmdline}"}}'
api PUT /machine-config '{{"vcpu_count": 1, "mem_size_mib": 256}}'
api PUT /network-interfaces/eth0 '{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:53:54:52:00:02"}}'
api PUT /mmds/config '{{"version": "V2", "network_interfaces": ["eth0"]}}'
api PUT /mmds '{data}'
api PUT /actions '{{"action_type": "InstanceStart"}}'
i=0; while ! grep -a -q MMDS-GUEST-READY /tmp/a.log && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done
api PATCH /mmds '{{"latest": {{"user-data": "patched"}}}}'
api PUT /mmds/config '{{"version": "V2", "network_interfaces": ["eth0"]}}'
api GET /vm/config
wait $VMM; echo VMM-EXIT=$?
grep -a -e MMDS- -e STRATUM-GUEST-RUN-EXIT= /tmp/a.log
"#
    )
}

fn lines<'a>(outcome: &'a Outcome, prefix: &'a str) -> Vec<&'a str> {
    outcome
        .lines_with(prefix)
        .map(|l| l[prefix.len()..].trim())
        .collect()
}

#[test]
fn a_guest_reads_mmds_v2_through_its_nic() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script())
        .file(
            API_CALL,
            NestedHost::static_tool("STRATUM_API_CALL", "api-call"),
        )
        .file(MKTAP, NestedHost::static_tool("STRATUM_MKTAP", "mktap"))
        .timeout(Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(60);
    for line in outcome.console.lines().filter(|l| l.starts_with("API ")) {
        eprintln!("{line}");
    }

    // The host's side: configured before boot, PATCHed after, and the
    // configuration refused once the VM runs.
    let api: Vec<&str> = outcome.lines_with("API ").collect();
    let answer = |request: &str| -> Vec<&str> {
        api.iter()
            .filter(|l| l.starts_with(&format!("API {request} =>")))
            .copied()
            .collect()
    };
    for request in [
        "PUT /network-interfaces/eth0",
        "PUT /mmds",
        "PUT /actions",
        "PATCH /mmds",
    ] {
        assert!(
            answer(request).iter().all(|l| l.contains("HTTP 204")) && !answer(request).is_empty(),
            "{request}: {:?}\n{tail}",
            answer(request)
        );
    }
    let configs = answer("PUT /mmds/config");
    assert_eq!(configs.len(), 2, "{tail}");
    assert!(configs[0].contains("HTTP 204"), "{configs:?}");
    assert!(
        configs[1].contains("HTTP 400") && configs[1].contains("after starting the microVM"),
        "{configs:?}"
    );
    let vm_config = answer("GET /vm/config");
    assert!(
        vm_config.iter().any(|l| l.contains(
            r#""mmds-config":{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254","imds_compat":false}"#
        )),
        "{vm_config:?}"
    );

    // The guest's side.
    let token_len = lines(&outcome, "MMDS-TOKEN-LEN=");
    assert!(
        token_len
            .first()
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|n| n >= 32),
        "no token: {token_len:?}\n{tail}"
    );
    let plain = lines(&outcome, "MMDS-PLAIN ");
    assert!(
        plain.iter().any(|l| l.starts_with("HTTP/1.1 200")),
        "{plain:?}\n{tail}"
    );
    assert!(plain.contains(&"Content-Type: text/plain"), "{plain:?}");
    assert!(plain.contains(&"zone-a"), "{plain:?}");
    let json = lines(&outcome, "MMDS-JSON ");
    assert!(
        json.contains(&"Content-Type: application/json"),
        "{json:?}\n{tail}"
    );
    assert!(
        json.contains(&r#"{"region":"region-1","zone":"zone-a"}"#),
        "{json:?}"
    );
    let keys = lines(&outcome, "MMDS-KEYS ");
    assert!(
        keys.contains(&"ami-id") && keys.contains(&"placement/"),
        "IMDS keys, objects with a slash: {keys:?}\n{tail}"
    );
    let refused = lines(&outcome, "MMDS-NOTOKEN ");
    assert!(
        refused.iter().any(|l| l.starts_with("HTTP/1.1 401")),
        "{refused:?}\n{tail}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.starts_with("No MMDS token provided.")),
        "{refused:?}"
    );
    let patched = lines(&outcome, "MMDS-PATCHED ");
    assert!(patched.contains(&"patched"), "{patched:?}\n{tail}");
    assert_eq!(run_exits(&outcome), ["0"], "{tail}");
    assert!(outcome.lines_with("VMM-EXIT=0").next().is_some(), "{tail}");
}
