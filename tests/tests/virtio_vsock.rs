//! virtio-vsock with a real guest on real KVM, in the nested test host:
//! echo streams in both directions over the hybrid-vsock Unix sockets, and
//! the socket files are gone once the VM ends; the same through vmm's jail
//! (`stratum-jailer`), where the sockets are in the jail's `/run`. The
//! guest side is guest-images/vsock-tool.c, the host side `vsock-host`.

use std::path::PathBuf;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const VSOCK_HOST: &str = "/stratum/bin/vsock-host";
const JAILER: &str = "/stratum/bin/stratum-jailer";
/// The jailed run's uid and its run directory (the jail's /run).
const JAIL_UID: u32 = 1_900_000_000;
const JAIL_RUN: &str = "/run/jail";
/// Bytes echoed each way: several times the device's 256 KiB credit, so
/// flow control is exercised.
const ECHO_BYTES: usize = 1_500_000;

fn run(script: String) -> Outcome {
    let tool: PathBuf = std::env::var_os("STRATUM_VSOCK_HOST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            NestedHost::workspace_root()
                .join("target/static/x86_64-unknown-linux-gnu/release/vsock-host")
        });
    let jailer = NestedHost::workspace_root()
        .join("target/static/x86_64-unknown-linux-gnu/release/stratum-jailer");
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script)
        .file(VSOCK_HOST, tool)
        .file(JAILER, jailer);
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

/// The guest's part of both echo tests: an echo server on port 52, then a
/// stream of its own to the host's port 5000; it stays up while the host
/// streams to port 52 — until the host listens on port 5001, its sign that
/// it is done (2 min at most) — then its init reboots.
fn echo_guest_cmdline() -> String {
    let guest = format!(
        "vsock-tool serve 52 >/dev/null &\n\
         vsock-tool echo 2 5000 {ECHO_BYTES} && echo GUEST-ECHO-DONE && \
         i=0 && until vsock-tool echo 2 5001 1 >/dev/null 2>&1 || [ $i -ge 120 ]; do sleep 1; i=$((i+1)); done"
    );
    run_cmdline(CMDLINE, &guest).unwrap_or_else(|e| panic!("{e}"))
}

/// Both streams came back whole, the guest's script ended 0 and vmm
/// removed its socket.
fn assert_echoed_both_ways(outcome: &Outcome) {
    let tail = outcome.console_tail(40);
    assert!(
        outcome
            .lines_with(&format!("VSOCK-ECHO-OK {ECHO_BYTES}"))
            .next()
            .is_some(),
        "guest → host echo failed:\n{tail}"
    );
    assert!(
        outcome
            .lines_with(&format!("HOST-ECHO-OK {ECHO_BYTES}"))
            .next()
            .is_some(),
        "host → guest echo failed:\n{tail}"
    );
    assert_eq!(run_exits(outcome), ["0"], "{tail}");
    assert!(
        outcome.lines_with("SOCKET=removed").next().is_some(),
        "{tail}"
    );
}

#[test]
fn streams_echo_both_ways_over_hybrid_vsock() {
    let cmdline = echo_guest_cmdline();
    let script = format!(
        "{VSOCK_HOST} serve /run/v.sock_5000 &\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --memory 256 \
         --vsock cid=3,uds=/run/v.sock --no-console-input \
         --cmdline '{cmdline}' > /tmp/console.log 2>&1 &\n\
         VMM=$!\n\
         i=0; while ! grep -q GUEST-ECHO-DONE /tmp/console.log && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
         {VSOCK_HOST} echo /run/v.sock 52 {ECHO_BYTES}\n\
         {VSOCK_HOST} serve /run/v.sock_5001 &\n\
         wait $VMM; echo VMM-EXIT=$?\n\
         grep -E 'VSOCK-ECHO-OK|vsock-tool|STRATUM-GUEST-RUN-EXIT=' /tmp/console.log\n\
         [ -e /run/v.sock ] && echo SOCKET=left || echo SOCKET=removed\n"
    );
    let outcome = run(script);
    let tail = outcome.console_tail(40);
    assert_echoed_both_ways(&outcome);
    assert!(outcome.lines_with("VMM-EXIT=0").next().is_some(), "{tail}");
}

/// The same streams with vmm in its jail, as the agent runs it: vmm makes
/// its socket in the jail's `/run` (the host's run directory), and a host
/// listener for the guest's connections must let the VM's uid connect
/// (here: given to it), since a jailed vmm is not root.
#[test]
fn streams_echo_both_ways_through_the_jail() {
    let cmdline = echo_guest_cmdline();
    // A listener for the guest, given to the VM's uid once it exists.
    let listen = |port: u32| {
        format!(
            "{VSOCK_HOST} serve {JAIL_RUN}/v.sock_{port} &\n\
             i=0; while [ ! -S {JAIL_RUN}/v.sock_{port} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             chown {JAIL_UID}:{JAIL_UID} {JAIL_RUN}/v.sock_{port}\n"
        )
    };
    let script = format!(
        "mkdir -p {JAIL_RUN} && chown {JAIL_UID}:{JAIL_UID} {JAIL_RUN} && chmod 700 {JAIL_RUN}\n\
         {listen_5000}\
         VMM=$({JAILER} --hostname vsock --uid {JAIL_UID} --gid {JAIL_UID} --run-dir {JAIL_RUN} \
         --ro /vm/kernel={GUEST_VMLINUX} --ro /vm/initrd={GUEST_INITRAMFS} --device /dev/kvm \
         --device /dev/urandom --exec /vmm={VMM} -- --kernel /vm/kernel --initrd /vm/initrd \
         --memory 256 --vsock cid=3,uds=/run/v.sock --no-console-input --console /run/console.log \
         --cmdline '{cmdline}' < /dev/null)\n\
         echo JAILED-UID=$(awk '/^Uid:/ {{print $2}}' /proc/$VMM/status)\n\
         i=0; while ! grep -q GUEST-ECHO-DONE {JAIL_RUN}/console.log && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done\n\
         {VSOCK_HOST} echo {JAIL_RUN}/v.sock 52 {ECHO_BYTES}\n\
         {listen_5001}\
         i=0; while [ -d /proc/$VMM ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
         grep -E 'VSOCK-ECHO-OK|vsock-tool|STRATUM-GUEST-RUN-EXIT=' {JAIL_RUN}/console.log\n\
         [ -e {JAIL_RUN}/v.sock ] && echo SOCKET=left || echo SOCKET=removed\n",
        VMM = stratum_tests::paths::VMM,
        listen_5000 = listen(5000),
        listen_5001 = listen(5001),
    );
    let outcome = run(script);
    let tail = outcome.console_tail(40);
    assert!(
        outcome
            .lines_with(&format!("JAILED-UID={JAIL_UID}"))
            .next()
            .is_some(),
        "vmm runs as the jail's uid:\n{tail}"
    );
    assert_echoed_both_ways(&outcome);
}

#[test]
fn a_vsock_socket_path_in_use_is_a_clear_error() {
    let script = format!(
        "touch /run/taken.sock\n\
         vmm --kernel {GUEST_VMLINUX} --initrd {GUEST_INITRAMFS} --no-console-input \
         --vsock cid=3,uds=/run/taken.sock\n\
         echo VMM-EXIT=$?\n\
         head -c 65536 /dev/zero > /run/not-a-kernel\n\
         vmm --kernel /run/not-a-kernel --no-console-input --vsock cid=3,uds=/run/fresh.sock\n\
         echo BAD-KERNEL-EXIT=$?\n\
         [ -e /run/fresh.sock ] && echo FRESH=left || echo FRESH=removed\n"
    );
    let outcome = run(script);
    let tail = outcome.console_tail(20);
    assert!(outcome.lines_with("VMM-EXIT=1").next().is_some(), "{tail}");
    assert!(
        outcome.console.contains("vsock socket /run/taken.sock"),
        "{tail}"
    );
    assert!(
        outcome.lines_with("BAD-KERNEL-EXIT=1").next().is_some(),
        "{tail}"
    );
    assert!(
        outcome.lines_with("FRESH=removed").next().is_some(),
        "a failed start must not leave its socket behind:\n{tail}"
    );
}
