//! virtio-vsock with a real guest on real KVM, in the nested test host:
//! echo streams in both directions over the hybrid-vsock Unix sockets, and
//! the socket files are gone once the VM ends. The guest side is
//! guest-images/vsock-tool.c, the host side `vsock-host`.

use std::path::PathBuf;

use stratum_tests::guest::{run_cmdline, run_exits, CMDLINE};
use stratum_tests::paths::{GUEST_INITRAMFS, GUEST_VMLINUX};
use stratum_tests::{NestedHost, Outcome, Scenario};

const VSOCK_HOST: &str = "/stratum/bin/vsock-host";
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
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let outcome = host
        .run(&Scenario::new(script).file(VSOCK_HOST, tool))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    outcome
}

#[test]
fn streams_echo_both_ways_over_hybrid_vsock() {
    // Guest: an echo server on port 52, then a stream of its own to the
    // host's port 5000; it stays up while the host streams to port 52 —
    // until the host listens on port 5001, its sign that it is done (2 min
    // at most) — then its init reboots.
    let guest = format!(
        "vsock-tool serve 52 >/dev/null &\n\
         vsock-tool echo 2 5000 {ECHO_BYTES} && echo GUEST-ECHO-DONE && \
         i=0 && until vsock-tool echo 2 5001 1 >/dev/null 2>&1 || [ $i -ge 120 ]; do sleep 1; i=$((i+1)); done"
    );
    let cmdline = run_cmdline(CMDLINE, &guest).unwrap_or_else(|e| panic!("{e}"));
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
    assert_eq!(run_exits(&outcome), ["0"], "{tail}");
    assert!(outcome.lines_with("VMM-EXIT=0").next().is_some(), "{tail}");
    assert!(
        outcome.lines_with("SOCKET=removed").next().is_some(),
        "{tail}"
    );
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
