//! The agent's networks with real guests, in the nested test host: small
//! busybox VMs (the guest initramfs, whose script comes in on the kernel
//! command line) on networks made through nodectl, the agent serving
//! mTLS on every address of the nested host. Checked from inside the
//! guests: VMs of one namespace reach each other on one network and
//! across two; a VM of another namespace reaches neither, on the same
//! network or another; every VM reaches its gateway and the host service
//! it is given, never the agent's port; a VM that takes an address IPAM
//! did not give it is cut off; a VM made with `--metadata-service` reads
//! its cloud-init meta-data from 169.254.169.254. Then the agent is killed with -9 and
//! restarted: the running VM keeps its TAP, the stopped ones have none;
//! and deleting everything leaves no TAP, bridge or firewall rule.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::{paths, NestedHost, Scenario};

/// The guest's command line: its console, and `script` to run.
fn guest_cmdline(script: &str) -> String {
    let cmdline = stratum_tests::guest::run_cmdline("console=ttyS0 reboot=k panic=1", script);
    format!("'{}'", cmdline.unwrap_or_else(|e| panic!("{e}")))
}

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";

/// What every guest script starts with: its address and default route.
fn guest(address: &str, gateway: &str, body: &str) -> String {
    format!(
        "ip addr add {address} dev eth0 && ip link set eth0 up && ip route add default via {gateway}\n\
         probe() {{ echo | nc -w 3 \"$1\" \"$2\" > /dev/null 2>&1 && echo yes || echo no; }}\n\
         {body}\n"
    )
}

/// Waits up to a minute for the server VM's port to answer, then says
/// whether it did: a client VM may boot before the server listens.
fn reach(name: &str, ip: &str) -> String {
    format!(
        "r=no; i=0; while [ $i -lt 30 ]; do r=$(probe {ip} 7000); [ $r = yes ] && break; i=$((i+1)); sleep 1; done\n\
         echo {name}=$r"
    )
}

/// The same, for a peer that must not answer: a few tries only.
fn unreachable(name: &str, ip: &str) -> String {
    format!("r=$(probe {ip} 7000); r2=$(probe {ip} 7000); echo {name}=$r$r2")
}

/// a2 reads its metadata service (the agent's `--metadata-service`): a
/// version 2 session token, then its meta-data, whose hostname it prints.
const MMDS_PROBE: &str = r#"ip route add 169.254.169.254 dev eth0
H='HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n'
T=$(printf "PUT /latest/api/token $H""X-metadata-token-ttl-seconds: 60\r\n\r\n" | timeout 10 nc 169.254.169.254 80 | tail -1)
echo A2-MMDS=$(printf "GET /latest/meta-data $H""X-metadata-token: $T\r\n\r\n" | timeout 10 nc 169.254.169.254 80 | grep -o '"local-hostname":"[a-z0-9]*"')
"#;

fn scenario_script() -> String {
    let a1 = guest(
        "10.50.0.11/24",
        "10.50.0.1",
        &format!(
            "(while :; do echo from-a1 | nc -l -p 7000; done) &\n\
             echo A1-GATEWAY=$(ping -c 1 -W 5 10.50.0.1 > /dev/null && echo yes || echo no)\n\
             {}\nsleep 600",
            reach("A1-TO-A3", "10.52.0.13")
        ),
    );
    let a2 = guest(
        "10.50.0.12/24",
        "10.50.0.1",
        &format!(
            "{MMDS_PROBE}{}\n\
             echo A2-HOST-SERVICE=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.50.0.1 8080 | tail -1)\n\
             echo A2-AGENT-PORT=$(probe 10.50.0.1 7443)\n\
             echo A2-OTHER-GATEWAY=$(ping -c 1 -W 3 10.52.0.1 > /dev/null && echo yes || echo no)",
            reach("A2-TO-A1", "10.50.0.11")
        ),
    );
    let a3 = guest(
        "10.52.0.13/24",
        "10.52.0.1",
        &format!(
            "(while :; do echo from-a3 | nc -l -p 7000; done) &\n{}\nsleep 45",
            reach("A3-TO-A1", "10.50.0.11")
        ),
    );
    let b1 = guest(
        "10.51.0.21/24",
        "10.51.0.1",
        &format!(
            "echo B1-GATEWAY=$(ping -c 1 -W 5 10.51.0.1 > /dev/null && echo yes || echo no)\n{}",
            unreachable("B1-TO-A1", "10.50.0.11")
        ),
    );
    let b2 = guest(
        "10.52.0.22/24",
        "10.52.0.1",
        &format!(
            "echo B2-GATEWAY=$(ping -c 1 -W 5 10.52.0.1 > /dev/null && echo yes || echo no)\n\
             sleep 15\n{}\n{}\n\
             ip addr flush dev eth0; ip addr add 10.52.0.99/24 dev eth0; ip route add default via 10.52.0.1\n\
             echo B2-SPOOFED-GATEWAY=$(ping -c 1 -W 3 10.52.0.1 > /dev/null && echo yes || echo no)",
            unreachable("B2-TO-A3", "10.52.0.13"),
            unreachable("B2-TO-A1", "10.50.0.11")
        ),
    );
    let vmm = paths::VMM;
    let guest_dir = "/stratum/guest";
    let mut script = format!(
        r#"# Every call is bounded: a call the agent never answers shows what the
# agent was doing instead of leaving the scenario to its timeout.
nodectl() {{
    timeout 120 {NODECTL} --addr https://127.0.0.1:7443 --certs /run/agent/certs "$@"; rc=$?
    [ $rc != 124 ] || agent_stuck "$@"
    return $rc
}}
agent_stuck() {{
    echo "AGENT-STUCK nodectl $*"
    tail -40 /run/agent.log | sed 's/^/AGENT-LOG /'
    for t in /proc/$AGENT_PID/task/*; do
        echo "AGENT-THREAD $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"
        sed 's/^/AGENT-THREAD-STACK /' $t/stack 2>/dev/null | head -6
    done
    # A thread stuck in the kernel (a vmm's included) may hold what the
    # agent waits for.
    for t in /proc/[0-9]*/task/[0-9]*; do
        [ "$(cut -d' ' -f3 $t/stat 2>/dev/null)" = D ] || continue
        echo "AGENT-SEES-BLOCKED $t $(cat $t/comm) $(cat $t/wchan)"
        sed 's/^/AGENT-SEES-BLOCKED-STACK /' $t/stack 2>/dev/null | head -8
    done
}}
N=nodectl
mkdir -p /www && echo host-service-ok > /www/index.html && httpd -p 8080 -h /www
echo HOST-HTTPD=$(wget -q -O - http://127.0.0.1:8080/)
start_agent() {{
    {AGENT} --data-dir /run/agent --listen 0.0.0.0:7443 --vmm {vmm} --reserve-cpu 0 \
        --reserve-memory-mib 128 --artifact-dir {guest_dir} --pod-host-service tcp:8080 \
        >> /run/agent.log 2>&1 &
    AGENT_PID=$!
    i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
}}
id() {{ sed -n 's/^  "id": "\(.*\)".*/\1/p' | head -1; }}
mkvm() {{
    $N -o json vm create "$1" --pool "$2" --role worker --vcpus 1 --memory 64 --cpu-reservation 100 \
        --kernel {guest_dir}/vmlinux --initrd {guest_dir}/initramfs.cpio.gz \
        --cmdline "$4" --nic "$3" $5 | id
}}
console() {{ cat /run/agent/vms/$1/run/console.log 2>/dev/null; }}
done_vm() {{ console $1 | grep -q STRATUM-GUEST-RUN-EXIT; }}
taps() {{ ls /sys/class/net | grep -c '^t' ; }}
start_agent
A=$($N -o json pool create tenant-a | id); B=$($N -o json pool create tenant-b | id)
echo NAMESPACES=$A,$B
[ -n "$A" ] || {{ $N host info; tail -20 /run/agent.log; }}
$N network create net-a --cidr 10.50.0.0/24 --namespace $A > /dev/null; echo NET-A-RC=$?
$N network create net-b --cidr 10.51.0.0/24 --namespace $B > /dev/null; echo NET-B-RC=$?
$N network create net-s --cidr 10.52.0.0/24 --namespace $A --namespace $B > /dev/null; echo NET-S-RC=$?
$N network create net-x --cidr 10.50.0.128/25 > /dev/null 2>&1; echo OVERLAP-RC=$?
"#
    );
    let vms = [
        ("a1", "$A", "network=net-a,ip=10.50.0.11", &a1, ""),
        (
            "a2",
            "$A",
            "network=net-a,ip=10.50.0.12",
            &a2,
            "--metadata-service",
        ),
        ("a3", "$A", "network=net-s,ip=10.52.0.13", &a3, ""),
        ("b1", "$B", "network=net-b,ip=10.51.0.21", &b1, ""),
        ("b2", "$B", "network=net-s,ip=10.52.0.22", &b2, ""),
    ];
    for (name, pool, nic, body, extra) in vms {
        let var = name.to_uppercase();
        script += &format!(
            "{var}=$(mkvm {name} {pool} {nic} {} {extra})\n$N vm start ${var} > /dev/null; echo START-{var}-RC=$?\n",
            guest_cmdline(body)
        );
    }
    script += r#"
$N vm create a9 --pool $B --role worker --vcpus 1 --memory 64 --kernel /stratum/guest/vmlinux --nic network=net-a > /dev/null 2>&1
echo OTHER-NAMESPACE-RC=$?
TAP_A1=$($N -o json vm get $A1 | sed -n 's/.*"hostDevice": "\(t[0-9a-f]*\)".*/\1/p' | head -1)
echo TAP-A1-MASTER=$(basename $(readlink /sys/class/net/$TAP_A1/master))
i=0; while [ $i -lt 400 ]; do
    all=yes; for v in $A2 $A3 $B1 $B2; do done_vm $v || all=no; done
    [ $all = yes ] && break; i=$((i+1)); sleep 0.5
done
for v in $A1 $A2 $A3 $B1 $B2; do console $v | grep -a -E '^[AB][0-9]-[A-Z0-9-]+=' | sed 's/\r$//'; done
$N network get net-a | grep '^ATTACHMENT' | sed 's/^/NETA-/'
nft list table inet stratum0 | grep -E 'host service|jump pod_to_host' | sed 's/^/RULE-/'
kill -9 $AGENT_PID; wait $AGENT_PID 2>/dev/null
start_agent
echo TAP-A1-AFTER-RESTART=$([ -e /sys/class/net/$TAP_A1 ] && echo yes || echo no)
echo TAPS-AFTER-RESTART=$(taps)
for v in $A1 $A2 $A3 $B1 $B2; do $N vm kill $v > /dev/null 2>&1; done
for v in $A1 $A2 $A3 $B1 $B2; do
    i=0; while $N vm get $v | grep -q -E '^STATE +(RUNNING|STOPPING)' && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
done
for v in $A1 $A2 $A3 $B1 $B2; do $N vm delete $v > /dev/null; echo DELETE-RC=$?; done
for n in net-a net-b net-s; do $N network delete $n > /dev/null; echo NET-DELETE-RC=$?; done
echo TAPS-LEFT=$(taps)
echo BRIDGES-LEFT=$(ls /sys/class/net | grep -c '^st-')
echo RULES-NAMING-TENANTS=$(nft list ruleset | grep -c -E 'st-net|10\.5[012]\.')
$N network list | sed 's/^/NETLIST-/'
[ "$(taps)" = 0 ] || tail -30 /run/agent.log
"#;
    script
}

#[test]
fn vms_on_networks_reach_their_namespace_and_nothing_else() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(scenario_script())
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .dynamic_binary("/usr/sbin/nft", "/usr/sbin/nft")
        .memory_mib(2048)
        // Five VMs at once: with two CPUs, QEMU's emulation of SVM crashed
        // the nested host's kernel in __svm_vcpu_run (see
        // `Scenario::host_cpus`).
        .host_cpus(1)
        // About two minutes on an idle machine; room for a busy one.
        .timeout(Duration::from_secs(1200));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    let tail = outcome.console_tail(120);
    let stuck: Vec<&str> = outcome
        .console
        .lines()
        .filter(|l| l.starts_with("AGENT-"))
        .collect();
    assert!(
        stuck.is_empty(),
        "the agent did not answer:\n{}\n{tail}",
        stuck.join("\n")
    );
    let v = |key: &str| outcome.value(key);
    for (key, want) in [
        ("NET-A-RC=", "0"),
        ("NET-B-RC=", "0"),
        ("NET-S-RC=", "0"),
        ("START-A1-RC=", "0"),
        ("START-B2-RC=", "0"),
        ("A1-GATEWAY=", "yes"),
        ("B1-GATEWAY=", "yes"),
        ("B2-GATEWAY=", "yes"),
        // One namespace: same network, and across networks.
        ("A2-TO-A1=", "yes"),
        ("A3-TO-A1=", "yes"),
        ("A1-TO-A3=", "yes"),
        // Another namespace: neither on the same network nor across.
        ("B2-TO-A3=", "nono"),
        ("B2-TO-A1=", "nono"),
        ("B1-TO-A1=", "nono"),
        // The host: the chosen service on the gateway, not the agent, and
        // not another network's gateway.
        ("A2-HOST-SERVICE=", "host-service-ok"),
        // Its cloud-init data, from the metadata service the agent set up.
        ("A2-MMDS=", r#""local-hostname":"a2""#),
        ("A2-AGENT-PORT=", "no"),
        ("A2-OTHER-GATEWAY=", "no"),
        // An address IPAM did not give is cut off.
        ("B2-SPOOFED-GATEWAY=", "no"),
        ("TAP-A1-MASTER=", "st-net-a"),
        ("TAP-A1-AFTER-RESTART=", "yes"),
        ("TAPS-AFTER-RESTART=", "1"),
        ("TAPS-LEFT=", "0"),
        ("BRIDGES-LEFT=", "0"),
        ("RULES-NAMING-TENANTS=", "0"),
    ] {
        assert_eq!(v(key), want, "{key}\n{tail}");
    }
    assert_ne!(v("OVERLAP-RC="), "0", "an overlapping CIDR\n{tail}");
    assert_ne!(
        v("OTHER-NAMESPACE-RC="),
        "0",
        "a NIC on another namespace's network\n{tail}"
    );
    let attached = outcome
        .console
        .lines()
        .filter(|l| l.starts_with("NETA-ATTACHMENT"))
        .count();
    assert_eq!(attached, 2, "a1 and a2 on net-a\n{tail}");
    assert_eq!(
        outcome
            .console
            .lines()
            .filter(|l| l.starts_with("DELETE-RC=0") || l.starts_with("NET-DELETE-RC=0"))
            .count(),
        8,
        "{tail}"
    );
}
