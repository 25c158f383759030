//! The node image on our vmm, in the nested test host: Debian 12 booted
//! with Debian's stock cloud kernel and initramfs-tools' initramfs, its
//! root disk the image itself (a QEMU drive of the nested host, writes
//! discarded), configured by cloud-init from a NoCloud seed made by
//! `stratum_vm::seed` and reporting to the host through its guest agent
//! over vsock. The host side of the protocol is `guest-probe`.
//!
//! The second test does the same through the node agent: the node image
//! imported as a VM image (its OCI layout, on an ext4 volume the nested
//! host mounts as the artifact directory), a VM created from it with
//! user-data and a static address, GUEST_READY, the guest's view in `nodectl vm get`, the link
//! coming back after the agent is killed with -9, shutdown through the
//! guest agent (a power-off, not Ctrl+Alt+Del's reboot), and nothing left
//! after delete.
//!
//! Both run the nested host on one CPU: see `Scenario::host_cpus` for why
//! a full distribution's boot needs that under QEMU's TCG.
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
         {PROBE} --uds /tmp/vsock.sock --timeout 420 --shutdown; probe=$?\n\
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

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";

#[test]
fn a_node_vm_through_the_agent_reports_ready_survives_an_agent_crash_and_powers_off() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("node.ext4");
    stratum_tests::node_image_volume(host.images_dir(), &volume).unwrap_or_else(|e| panic!("{e}"));
    let vmm = stratum_tests::paths::VMM;
    let script = format!(
        r#"N="{NODECTL} --insecure --addr http://127.0.0.1:7443"
mkdir -p {NODE} && mount -o ro /dev/vda {NODE} || exit 10
{MKTAP} tap0 && ip link set tap0 up || exit 11
start_agent() {{
    {AGENT} --data-dir /run/agent --insecure-plaintext --listen 127.0.0.1:7443 \
        --vmm {vmm} --reserve-cpu 0 --reserve-memory-mib 256 --artifact-dir {NODE} \
        >> /run/agent.log 2>&1 &
    AGENT_PID=$!
    i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
}}
state() {{ $N vm get "$1" | awk '/^STATE/ {{print $2}}'; }}
guest() {{ $N vm get "$1" | awk '$1 == "GUEST" {{print $2; exit}}'; }}
wait_guest() {{
    i=0; while [ "$(guest "$1")" != "$2" ] && [ $i -lt 800 ]; do sleep 0.5; i=$((i+1)); done
}}
cat > /run/user-data <<'USERDATA'
#cloud-config
hostname: {HOSTNAME}
runcmd:
  - [sh, -c, 'echo made-by-user-data > /var/lib/stratum-test-file']
  - [sh, -c, 'echo STRATUM-TEST-FILE=$(cat /var/lib/stratum-test-file) > /dev/console']
USERDATA
start_agent
$N image import {NODE}/node.oci --reference stratum/node:bookworm > /dev/null; echo IMPORT-RC=$?
$N image list | grep -o 'stratum/node:bookworm' | head -1 | sed 's/^/LISTED-/'
vm=$($N -o json vm create node1 --role worker --vcpus 2 --memory 1024 \
    --image stratum/node:bookworm --root-disk 3Gi --nic tap=tap0,mac={MAC},ip={ADDRESS} \
    --user-data /run/user-data | sed -n 's/^  "id": "\(vm-[0-9]*\)".*/\1/p')
echo VM=$vm
$N vm watch --vm $vm > /run/watch.log 2>&1 &
$N vm start $vm > /dev/null; echo START-RC=$?
wait_guest $vm ready
echo GUEST-STATE=$(guest $vm)
$N vm get $vm | grep '^GUEST' | sed 's/^/DETAIL-/'
echo WATCH-READY=$(grep -c GUEST_READY /run/watch.log)
console=/run/agent/vms/$vm/run/console.log
grep -a -o 'STRATUM-TEST-FILE=[a-z-]*' $console | head -1
echo DISK-SIZE=$(stat -c %s /run/agent/vms/$vm/root.img)
$N image rm stratum/node:bookworm > /dev/null 2>&1; echo RM-UNDER-VM-RC=$?
kill -9 $AGENT_PID; wait $AGENT_PID 2>/dev/null
start_agent
echo STATE-AFTER-RESTART=$(state $vm)
wait_guest $vm ready
echo GUEST-AFTER-RESTART=$(guest $vm)
$N vm stop $vm --timeout 120 > /dev/null
i=0; while [ "$(state $vm)" != STOPPED ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
echo STATE-AFTER-STOP=$(state $vm)
$N vm get $vm | grep '^STATE' | sed 's/^/STOPPED-/'
echo POWER-DOWN=$(grep -a -c 'reboot: Power down' $console)
echo RESTARTING=$(grep -a -c 'reboot: Restarting' $console)
$N vm delete $vm > /dev/null; echo DELETE-RC=$?
$N image rm stratum/node:bookworm > /dev/null; echo RM-AFTER-RC=$?
echo VM-DIR-GONE=$([ -d /run/agent/vms/$vm ] && echo no || echo yes)
echo LEAVES-LEFT=$(find /sys/fs/cgroup/stratum -name "vm-$vm" | wc -l)
[ "$(guest $vm 2>/dev/null)" = ready ] || tail -40 /run/agent.log
"#
    );
    let scenario = Scenario::new(script)
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .file(MKTAP, NestedHost::static_bin("mktap"))
        .drive(&volume)
        .memory_mib(5120)
        .host_cpus(1)
        .timeout(Duration::from_secs(1200));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let console = &outcome.console;
    let tail = outcome.console_tail(80);
    let value = |key: &str| {
        console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    for line in console.lines().filter(|l| l.starts_with("DETAIL-")) {
        eprintln!("{line}");
    }
    assert_eq!(value("IMPORT-RC="), "0", "{tail}");
    assert_eq!(value("LISTED-"), "stratum/node:bookworm", "{tail}");
    assert_eq!(value("START-RC="), "0", "{tail}");
    assert_eq!(value("GUEST-STATE="), "ready", "{tail}");
    let detail = |key: &str| value(&format!("DETAIL-{key}"));
    assert!(detail("GUEST ").contains("cloud-init: done"), "{tail}");
    assert_eq!(detail("GUEST HOSTNAME"), HOSTNAME, "{tail}");
    assert_eq!(
        detail("GUEST OS"),
        "Debian GNU/Linux 12 (bookworm)",
        "{tail}"
    );
    assert!(detail("GUEST KERNEL").ends_with("-cloud-amd64"), "{tail}");
    let nic = detail("GUEST IF eth0");
    assert!(nic.contains(MAC) && nic.contains(ADDRESS), "{nic}\n{tail}");
    assert_eq!(value("WATCH-READY="), "1", "{tail}");
    assert_eq!(value("STRATUM-TEST-FILE="), "made-by-user-data", "{tail}");
    assert_eq!(value("DISK-SIZE="), (3u64 << 30).to_string(), "{tail}");
    assert_eq!(value("STATE-AFTER-RESTART="), "RUNNING", "{tail}");
    assert_eq!(value("GUEST-AFTER-RESTART="), "ready", "{tail}");
    assert_eq!(value("STATE-AFTER-STOP="), "STOPPED", "{tail}");
    assert!(
        value("STOPPED-STATE").ends_with("(the guest powered off (ACPI S5))"),
        "vmm's word on how the guest ended\n{tail}"
    );
    assert_eq!(
        value("POWER-DOWN="),
        "1",
        "the guest agent's poweroff\n{tail}"
    );
    assert_eq!(
        value("RESTARTING="),
        "0",
        "not Ctrl+Alt+Del's reboot\n{tail}"
    );
    assert_eq!(value("DELETE-RC="), "0", "{tail}");
    assert_ne!(
        value("RM-UNDER-VM-RC="),
        "0",
        "the VM leases its image\n{tail}"
    );
    assert_eq!(value("RM-AFTER-RC="), "0", "{tail}");
    assert_eq!(value("VM-DIR-GONE="), "yes", "{tail}");
    assert_eq!(value("LEAVES-LEFT="), "0", "{tail}");
}
