//! The node image on our vmm, in the nested test host: Debian 12 booted
//! with Debian's stock cloud kernel and initramfs-tools' initramfs, its
//! root disk the image itself (a QEMU drive of the nested host, writes
//! discarded), configured by cloud-init from a NoCloud seed made by
//! `stratum_vm::seed` and reporting to the host through its guest agent
//! over vsock. The host side of the protocol is `guest-probe`.
//!
//! The same image through the node agent (imported as a VM image, VMs
//! from it with user-data and addresses from a network, GUEST_READY, the
//! guest's view, the links coming back after the agent is killed with -9,
//! shutdown through the guest agent, nothing left after delete) is the
//! cluster scenario's, tests/tests/etcd_cluster.rs.
//!
//! The nested host runs on one CPU: see `Scenario::host_cpus` for why a
//! full distribution's boot needs that under QEMU's TCG.
//!
//! Built by `make node-image` (part of `make test`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use stratum_tests::{NestedHost, Scenario};
use stratum_vm::seed::{Seed, StaticInterface};

const PROBE: &str = "/stratum/bin/guest-probe";
const MKTAP: &str = "/stratum/bin/mktap";
const NODE: &str = "/stratum/node";
const HOSTNAME: &str = "node-test-1";
const MAC: &str = "06:00:ac:10:00:02";
const ADDRESS: &str = "172.16.0.2/24";

fn node_file(host: &NestedHost, name: &str) -> PathBuf {
    let path = host.images_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `make node-image`",
        path.display()
    );
    path
}

/// The seed a VM of this test gets: a hostname, a file written by
/// user-data's runcmd and printed to the console, a static address on the
/// VM's NIC.
fn seed(dir: &Path) -> PathBuf {
    let user_data = format!(
        "#cloud-config\n\
         hostname: {HOSTNAME}\n\
         runcmd:\n\
         \x20 - [sh, -c, 'echo made-by-user-data > /var/lib/stratum-test-file']\n\
         \x20 - [sh, -c, 'echo STRATUM-TEST-FILE=$(cat /var/lib/stratum-test-file) > /dev/console']\n"
    );
    let seed = Seed {
        instance_id: "node-image-test".into(),
        hostname: HOSTNAME.into(),
        user_data: user_data.into_bytes(),
        interfaces: vec![StaticInterface {
            mac: MAC.into(),
            addresses: vec![ADDRESS.into()],
            gateway: None,
            nameservers: Vec::new(),
        }],
        ..Seed::default()
    };
    let path = dir.join("seed.img");
    seed.write(&path).unwrap_or_else(|e| panic!("seed: {e}"));
    path
}

/// Boots the node image with its seed and a NIC on a TAP, waits for the
/// guest agent to report ready, checks what it reports, and powers the
/// guest off through it: vmm then exits 0.
#[test]
fn node_image_boots_with_cloud_init_and_reports_through_the_guest_agent() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let cmdline = std::fs::read_to_string(node_file(&host, "node-cmdline")).unwrap();
    let script = format!(
        "cd /tmp\n\
         {MKTAP} tap0 && ip link set tap0 up || exit 10\n\
         vmm --kernel {NODE}/vmlinuz --initrd {NODE}/initrd.img --vcpus 2 --memory 1024 \
            --no-console-input --console /tmp/console.log \
            --drive path=/dev/vda --drive path={NODE}/seed.img,ro \
            --net tap=tap0,mac={MAC} --vsock cid=3,uds=/tmp/vsock.sock \
            --cmdline '{} reboot=k' > /tmp/vmm.out 2>&1 &\n\
         vmm=$!\n\
         timeout 480 {PROBE} --uds /tmp/vsock.sock --timeout 420 --shutdown; probe=$?\n\
         [ $probe != 124 ] || {{ echo PROBE-STUCK; for t in /proc/$vmm/task/*; do \
            echo \"VMM-THREAD $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)\"; done; \
            tail -20 /tmp/console.log; }}\n\
         i=0; while kill -0 $vmm 2>/dev/null && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done\n\
         kill -0 $vmm 2>/dev/null && {{ echo VMM-STILL-RUNNING; kill -9 $vmm; }}\n\
         wait $vmm; echo VMM-EXIT=$?\n\
         sed 's/^/VMM-SAID /' /tmp/vmm.out\n\
         grep -a 'STRATUM-TEST-FILE=' /tmp/console.log\n\
         grep -a -E 'Reached target.*Multi-User|Kernel panic|Failed to start' /tmp/console.log | head -20\n\
         echo PROBE-EXIT=$probe\n\
         [ $probe -eq 0 ] || tail -50 /tmp/console.log\n",
        cmdline.trim()
    );
    let scenario = Scenario::new(script)
        .file(PROBE, NestedHost::static_bin("guest-probe"))
        .file(MKTAP, NestedHost::static_bin("mktap"))
        .file(format!("{NODE}/vmlinuz"), node_file(&host, "node-vmlinuz"))
        .file(
            format!("{NODE}/initrd.img"),
            node_file(&host, "node-initrd.img"),
        )
        .file(format!("{NODE}/seed.img"), seed(dir.path()))
        .drive(node_file(&host, "node-rootfs.raw"))
        .memory_mib(3072)
        .host_cpus(1)
        .timeout(Duration::from_secs(900));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    let console = &outcome.console;
    for line in console.lines().filter(|l| l.starts_with("GUEST-")) {
        eprintln!("{line}");
    }
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    assert!(console.contains("PROBE-EXIT=0"), "{console}");
    assert!(
        console.contains("GUEST-HELLO agent=stratum-guest"),
        "{console}"
    );
    let ready = console
        .lines()
        .find(|l| l.starts_with("GUEST-READY"))
        .unwrap_or_else(|| panic!("no GUEST-READY: {console}"));
    assert!(ready.contains("detail=cloud-init: done"), "{ready}");
    assert!(ready.contains(&format!("hostname={HOSTNAME}")), "{ready}");
    assert!(
        ready.contains("os=Debian GNU/Linux 12 (bookworm)"),
        "{ready}"
    );
    assert!(ready.contains("-cloud-amd64"), "the stock kernel: {ready}");
    let nic = console
        .lines()
        .find(|l| l.starts_with("GUEST-IF") && l.contains(MAC))
        .unwrap_or_else(|| panic!("no interface with {MAC}: {console}"));
    assert!(nic.contains(ADDRESS), "the seed's static address: {nic}");
    assert!(console.contains("GUEST-PONG"), "{console}");
    assert!(console.contains("GUEST-SHUTDOWN-ACK"), "{console}");
    assert!(
        console.contains("STRATUM-TEST-FILE=made-by-user-data"),
        "user-data's file: {console}"
    );
    // No assertion on systemd's "Reached target ... Multi-User System": it
    // prints status lines only while jobs are pending, so when that
    // target's job is the last to finish (as it often is on one CPU) the
    // line never comes. The guest agent's ready and user-data's file say
    // the boot got through.
    assert!(
        !console.contains("VMM-STILL-RUNNING"),
        "powered off: {console}"
    );
    assert!(console.contains("VMM-EXIT=0"), "{console}");
    assert!(
        console.contains("VMM-SAID vmm: the guest powered off (ACPI S5)"),
        "the guest agent's poweroff, not a reset: {console}"
    );
}
