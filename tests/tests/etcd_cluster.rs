//! A three-member etcd cluster of Stratum VMs, in the nested test host,
//! made through the agent's API only (nodectl): a pool `tenant-a` with a
//! CPU and memory limit, a network in it, the node image imported, three
//! VMs of role etcd whose user-data makes each a member of one cluster
//! (their addresses known up front: static, from the network's IPAM), and
//! once they are up a worker VM that pulls an image from a registry on the network (Debian's
//! docker-registry on the nested host's gateway address, a host service of
//! the network) and runs it with containerd. From the nested host, with
//! Debian's etcdctl: a key written through member 1 is read through member
//! 3; the agent killed with -9 and started again, the VMs run on and their
//! guest agents' links come back; with member 2 killed the cluster still
//! takes a write (quorum 2 of 3); started again, member 2 has caught up.
//! Each guest agent's view (hostname, OS, kernel, the NIC's MAC and
//! address) is in `vm get`; the image cannot be removed while VMs use
//! it. A busybox VM of another namespace, on another network, cannot
//! reach the members. The pool's
//! limits are in its cgroup while the cluster runs, and the VMs'
//! reservations are what the pool holds. Everything is shut down through
//! the guest agents (each console shows a power-down, not a reboot) and
//! deleted; then no TAP, bridge, address, firewall rule, disk, seed or
//! cgroup is left. The members' definition is shared with `bench-cluster`
//! (`stratum_tests::etcd`).
//!
//! On one nested-host CPU, as every full-distribution boot here (see
//! `Scenario::host_cpus`). The agent's data directory is on the volume
//! (an ext4 disk of the nested host), not on its tmpfs: a VM's writes to
//! a disk file on tmpfs are memory charged to the VM's cgroup, which a
//! member's preallocated etcd WAL alone pushes past its limit. Built by
//! `make node-image` (part of `make test`).

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::etcd::{member_user_data, shell_helpers, MEMBERS, NET};
use stratum_tests::{paths, NestedHost, Scenario};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";
const NODE: &str = "/stratum/node";
/// How long the scenario's waits may take in all, from its first Create.
const SCENARIO_BUDGET: Duration = Duration::from_secs(2700);

/// The worker's user-data: containerd pulls the image from the registry
/// on the network's gateway and runs it; both outcomes go to the console.
fn worker_user_data() -> String {
    let image = format!("{NET}.1:5000/busybox:1");
    format!(
        "#cloud-config\n\
         runcmd:\n\
         \x20 - [sh, -c, 'ok=1; for try in 1 2 3 4 5; do if systemctl start containerd && ctr images pull --plain-http {image} > /dev/null 2> /run/pull.err; then ok=0; break; fi; sleep 10; done; echo WORKER-PULL-EXIT=$ok WORKER-PULL-TRIES=$try > /dev/console; sed \"s/^/WORKER-PULL-ERR /\" /run/pull.err > /dev/console']\n\
         \x20 - [sh, -c, 'ctr run --rm {image} hello /bin/busybox echo RAN-IN-CONTAINERD > /dev/console 2>&1; echo WORKER-RUN-EXIT=$? > /dev/console']\n"
    )
}

/// The busybox VM of the other namespace: its own gateway answers, the
/// etcd members' client port does not.
fn outsider_script() -> String {
    format!(
        "ip addr add 10.41.0.21/24 dev eth0 && ip link set eth0 up && ip route add default via 10.41.0.1\n\
         probe() {{ echo | nc -w 3 \"$1\" \"$2\" > /dev/null 2>&1 && echo yes || echo no; }}\n\
         echo OUTSIDER-GATEWAY=$(ping -c 1 -W 5 10.41.0.1 > /dev/null && echo yes || echo no)\n\
         echo OUTSIDER-TO-ETCD=$(probe {NET}.11 2379)$(probe {NET}.13 2379)\n"
    )
}

fn script() -> String {
    let vmm = paths::VMM;
    let mut s = format!(
        r#"CTL="{NODECTL} --addr https://127.0.0.1:7443 --certs /stratum/node/agent/certs"
# No call may hang the scenario: a wedged agent shows as exit 124.
N="timeout 300 $CTL"
{etcd}mkdir -p {NODE} && mount /dev/vda {NODE} || exit 10
# Only the image is an artifact: the data directory on the same volume is
# the agent's own.
mkdir -p /stratum/artifacts/node.oci && mount --bind {NODE}/node.oci /stratum/artifacts/node.oci || exit 11
cat > /run/registry.yml <<'YAML'
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {NODE}/registry
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 0.0.0.0:5000
YAML
docker-registry serve /run/registry.yml > /run/registry.log 2>&1 &
start_agent() {{
    {AGENT} --data-dir /stratum/node/agent --listen 0.0.0.0:7443 --vmm {vmm} --reserve-cpu 0 \
        --reserve-memory-mib 512 --artifact-dir /stratum/artifacts --artifact-dir /stratum/guest \
        --pod-host-service tcp:5000 >> /stratum/node/agent.log 2>&1 &
    AGENT_PID=$!
    i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
}}
now() {{ date +%s; }}
at() {{ echo "AT-$1=$(( $(now) - T0 ))"; }}
id() {{ sed -n 's/^  "id": "\(.*\)".*/\1/p' | head -1; }}
state() {{ $N vm get "$1" | awk '/^STATE/ {{print $2}}'; }}
guest() {{ $N vm get "$1" | awk '$1 == "GUEST" {{print $2; exit}}'; }}
console() {{ cat /stratum/node/agent/vms/$1/run/console.log 2>/dev/null; }}
diagnose() {{
    $N vm get "$1" | sed "s/^/DIAG-$1 /"
    console "$1" | tail -60 | sed "s/^/DIAG-$1-CONSOLE /"
    cat /sys/fs/cgroup/stratum/$A/memory.events /sys/fs/cgroup/stratum/$A/memory.current | sed "s/^/DIAG-POOL /"
    free -m | sed "s/^/DIAG-FREE /"
    tail -30 /stratum/node/agent.log | sed "s/^/DIAG-AGENT /"
    threads "$1"; sleep 5; threads "$1"
}}
# Each thread of a VM's vmm: name, state, user and system ticks, where it
# waits. Twice, 5 s apart: a guest gone dark shows whether its vCPU spins.
threads() {{
    pid=$($N vm get "$1" | awk '$1 == "PID" {{print $2}}')
    for t in /proc/$pid/task/*; do
        echo "$(cat $t/comm) $(sed 's/.*) //' $t/stat | cut -d' ' -f1,12,13) $(cat $t/wchan 2>/dev/null)" | sed "s/^/DIAG-$1-THREAD /"
    done
}}
# A member that does not answer: what its guest and its vmm are doing.
diagnose_members() {{ for v in $ETCD1 $ETCD2 $ETCD3; do diagnose $v; done; }}
# Waits are bounded in seconds (LAST bounds them all); each says how long
# it took. The pool's events come from one watch, not from polling: on
# one emulated CPU a nodectl call is CPU the guests do not get.
deadline() {{ end=$(( $(now) + $1 )); [ $end -lt $LAST ] || end=$LAST; echo $end; }}
watch_pool() {{ $CTL vm watch --pool $A >> /run/watch.log 2>&1 & }}
readies() {{ grep -c "  $1  GUEST_READY" /run/watch.log; }}
# wait_ready VM LABEL SEEN SECONDS: until the VM's guest is ready once
# more than SEEN times.
wait_ready() {{
    t=$(now); end=$(deadline $4); n=0
    while [ "$(readies $1)" -le $3 ]; do
        if [ $(now) -gt $end ]; then echo "VM-NOT-READY $2"; FAILED=1; diagnose $1; break; fi
        n=$((n+1))
        if [ $((n % 10)) = 0 ]; then
            # An event the watch missed (one that came while the agent
            # restarted) still shows in the VM's state.
            [ "$(guest $1)" = ready ] && break
            case "$(state $1)" in RUNNING|STARTING) ;; *) echo "VM-DOWN $2"; FAILED=1; diagnose $1; break ;; esac
        fi
        sleep 3
    done
    echo "WAITED-$2=$(( $(now) - t ))"
}}
# wait_until SECONDS LABEL COMMAND...: until COMMAND succeeds.
wait_until() {{
    t=$(now); end=$(deadline $1); label=$2; shift 2
    until "$@"; do
        if [ $(now) -gt $end ]; then echo "TIMED-OUT $label"; FAILED=1; break; fi
        sleep 3
    done
    echo "WAITED-$label=$(( $(now) - t ))"
}}
etcd_diag() {{ for m in 11 12 13; do $E --endpoints=http://{NET}.$m:2379 endpoint status 2>&1 | sed "s/^/DIAG-ETCD-$m /"; done; }}
is_state() {{ [ "$(state $1)" = "$2" ]; }}
is_ready() {{ [ "$(guest $1)" = ready ]; }}
caught_up() {{ [ "$($E --endpoints=http://{NET}.12:2379 get /stratum/k2 --consistency=s --print-value-only 2>/dev/null)" = written-with-two-of-three ]; }}
start_agent
T0=$(now)
LAST=$((T0 + {budget}))
A=$($N -o json pool create tenant-a --cpu-limit 900m --mem-limit 4Gi | id)
B=$($N -o json pool create tenant-b | id)
echo NAMESPACES=$A,$B
$N network create tenant-net --cidr {NET}.0/24 --namespace $A | sed 's/^/OUT-NETWORK-CREATE /'
$N network create other-net --cidr 10.41.0.0/24 --namespace $B > /dev/null; echo OTHER-NET-RC=$?
$N image import /stratum/artifacts/node.oci --reference stratum/node:bookworm > /dev/null; echo IMPORT-RC=$?
watch_pool
"#,
        budget = SCENARIO_BUDGET.as_secs(),
        etcd = shell_helpers(),
    );
    for (name, host) in MEMBERS {
        s += &format!(
            "cat > /run/{name}.yaml <<'USERDATA'\n{}USERDATA\n\
             {var}=$($N -o json vm create {name} --pool $A --role etcd --vcpus 1 --memory 512 \
             --cpu-reservation 100 --image stratum/node:bookworm --root-disk 3Gi \
             --nic network=tenant-net,ip={NET}.{host} --user-data /run/{name}.yaml | id)\n\
             $N vm start ${var} > /dev/null; echo START-{var}-RC=$?\n",
            member_user_data(name).unwrap_or_default(),
            var = name.replace('-', "").to_uppercase(),
        );
    }
    s += &format!(
        r#"at STARTED
$N image rm stratum/node:bookworm > /dev/null 2>&1; echo RM-UNDER-VMS-RC=$?
echo DISK-SIZE=$(stat -c %s /stratum/node/agent/vms/$ETCD1/root.img)
echo POOL-CPU-MAX=$(cat /sys/fs/cgroup/stratum/$A/cpu.max)
echo POOL-MEMORY-MAX=$(cat /sys/fs/cgroup/stratum/$A/memory.max)
for v in $ETCD1 $ETCD2 $ETCD3; do wait_ready $v $v 0 1500; done
# The worker boots once the members have: their boots share one emulated
# CPU, and three go faster than four.
cat > /run/worker.yaml <<'USERDATA'
{worker_data}USERDATA
W=$($N -o json vm create worker-1 --pool $A --role worker --vcpus 1 --memory 768 \
    --cpu-reservation 100 --image stratum/node:bookworm --root-disk 3Gi \
    --nic network=tenant-net,ip={NET}.20 --user-data /run/worker.yaml | id)
$N vm start $W > /dev/null; echo START-W-RC=$?
wait_until 300 HEALTHY cluster_ok
cluster_ok || {{ etcd_diag; diagnose_members; }}
at HEALTHY
# Each call has 10 s; the worker boots on the same emulated CPU meanwhile,
# so a call that times out is tried again (the same key and value).
put_1() {{ PUT1=$($E --endpoints=http://{NET}.11:2379 put /stratum/k1 written-through-member-1 2>&1); [ "$PUT1" = OK ]; }}
wait_until 120 PUT-1 put_1
echo PUT-1=$PUT1
at FIRST-WRITE
read_3() {{ GET3=$($E --endpoints=http://{NET}.13:2379 get /stratum/k1 --print-value-only 2>&1); [ "$GET3" = written-through-member-1 ]; }}
wait_until 120 GET-3 read_3
echo GET-3=$GET3
$E --endpoints=http://{NET}.11:2379,http://{NET}.12:2379,http://{NET}.13:2379 member list | sed 's/^/MEMBER /'
$N vm list | sed 's/^/OUT-VM-LIST /'
$N network get tenant-net | sed 's/^/OUT-NETWORK-GET /'
$N pool list --workloads | sed 's/^/OUT-INVENTORY /'
echo POOL-JSON=$($N -o json pool get $A | tr -d '\n')
for v in $ETCD1 $ETCD2 $ETCD3 $W; do echo VM-JSON=$($N -o json vm get $v | tr -d '\n'); done
# The agent dies with -9: the VMs run on, and the links to their guest
# agents come back when it is started again.
kill -9 $AGENT_PID; wait $AGENT_PID 2>/dev/null
start_agent
watch_pool
for v in $ETCD1 $ETCD2 $ETCD3 $W; do echo STATE-AFTER-AGENT-KILL=$(state $v); done
for v in $ETCD1 $ETCD2 $ETCD3; do wait_until 300 RELINKED-$v is_ready $v; is_ready $v || diagnose $v; done
at RELINKED
O=$($N -o json vm create outsider --pool $B --role worker --vcpus 1 --memory 64 \
    --cpu-reservation 50 --kernel /stratum/guest/vmlinux --initrd /stratum/guest/initramfs.cpio.gz \
    --cmdline "{outsider}" \
    --nic network=other-net,ip=10.41.0.21 | id)
$N vm start $O > /dev/null; echo START-O-RC=$?
$N vm kill $ETCD2 > /dev/null
wait_until 300 KILLED is_state $ETCD2 STOPPED
echo ETCD2-KILLED=$(state $ETCD2)
wait_until 300 WRITE-WITH-TWO $E --endpoints=http://{NET}.11:2379 put /stratum/k2 written-with-two-of-three
echo WRITE-WITH-TWO=$($E --endpoints=http://{NET}.13:2379 get /stratum/k2 --print-value-only)
SEEN=$(readies $ETCD2)
$N vm start $ETCD2 > /dev/null; echo RESTART-ETCD2-RC=$?
wait_ready $ETCD2 RESTARTED $SEEN 900
wait_until 300 CAUGHT-UP caught_up
caught_up || {{ etcd_diag; diagnose_members; }}
echo CAUGHT-UP=$($E --endpoints=http://{NET}.12:2379 get /stratum/k2 --consistency=s --print-value-only)
at CAUGHT-UP
echo ETCD2-ADDRESS-AFTER-RESTART=$($N vm get $ETCD2 | grep '^NIC' | grep -o 'ip=[0-9./]*')
wait_ready $W WORKER 0 900
worker_done() {{ console $W | grep -a -q WORKER-RUN-EXIT; }}
wait_until 600 WORKER-RAN worker_done
console $W | grep -a -o -E 'WORKER-[A-Z]+-(EXIT|TRIES)=[0-9]+|RAN-IN-CONTAINERD|WORKER-PULL-ERR .*' | sort -u
echo WORKER-JSON=$($N -o json vm get $W | tr -d '\n')
outsider_done() {{ console $O | grep -a -q STRATUM-GUEST-RUN-EXIT; }}
wait_until 300 OUTSIDER outsider_done
console $O | grep -a -E '^OUTSIDER-' | tr -d '\r'
at STOPPING
# Shut down through the guest agents, all at once. Four systemd shutdowns
# share one emulated CPU: one took just over three minutes, so the agent
# waits up to seven before it stops a guest hard (which shows as no
# power-down on its console).
stops=""
for v in $ETCD1 $ETCD2 $ETCD3 $W; do $N vm stop $v --timeout 420 > /dev/null & stops="$stops $!"; done
wait $stops
for v in $ETCD1 $ETCD2 $ETCD3 $W; do
    wait_until 480 STOPPED-$v is_state $v STOPPED
    $N vm get $v | grep '^STATE' | sed 's/^/STOPPED-/'
    echo POWER-DOWN=$(console $v | grep -a -c 'reboot: Power down')
    echo RESTARTING=$(console $v | grep -a -c 'reboot: Restarting')
    console $v | grep -a -q 'reboot: Power down' || {{ FAILED=1; diagnose $v; }}
done
wait_until 300 STOPPED-$O is_state $O STOPPED
at STOPPED
echo WATCH-READY=$(for v in $ETCD1 $ETCD2 $ETCD3; do [ "$(readies $v)" -ge 1 ] && echo $v; done | wc -l)
echo BRIDGE-PORTS=$(ls /sys/class/net/st-tenant-net/brif | wc -l)
for v in $ETCD1 $ETCD2 $ETCD3 $W $O; do $N vm delete $v > /dev/null; echo DELETE-RC=$?; done
echo LEASES-LEFT=$($N network get tenant-net | grep -c '^ATTACHMENT')
$N network delete tenant-net > /dev/null; echo NET-DELETE-RC=$?
$N network delete other-net > /dev/null; echo NET-DELETE-RC=$?
$N image rm stratum/node:bookworm > /dev/null; echo IMAGE-RM-RC=$?
$N pool delete $A > /dev/null; echo POOL-DELETE-RC=$?
$N pool delete $B > /dev/null; echo POOL-DELETE-RC=$?
echo TAPS-LEFT=$(ls /sys/class/net | grep -c '^t')
echo BRIDGES-LEFT=$(ls /sys/class/net | grep -c '^st-')
echo RULES-LEFT=$(nft list ruleset | grep -c -E '10\.4[01]\.')
echo VM-DIRS-LEFT=$(ls /stratum/node/agent/vms | wc -l)
echo CGROUPS-LEFT=$(find /sys/fs/cgroup/stratum -mindepth 1 -type d | wc -l)
at DONE
tail -5 /run/registry.log | sed 's/^/REGISTRY-LOG /'
[ -z "$FAILED" ] || tail -60 /stratum/node/agent.log | sed 's/^/AGENT-LOG /'
"#,
        worker_data = worker_user_data(),
        outsider =
            stratum_tests::guest::run_cmdline("console=ttyS0 reboot=k panic=1", &outsider_script())
                .unwrap_or_else(|e| panic!("{e}"))
    );
    s
}

/// A 64-bit field of nodectl's JSON (a number; protobuf's JSON mapping
/// would write a string, which is taken too).
fn uint(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

#[test]
fn three_etcd_vms_form_a_cluster_on_a_network_that_holds_through_a_member_loss() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    // The image the worker pulls, in a registry's storage on the volume.
    let (registry, _reference) = stratum_testkit::fixture::registry_with_busybox(dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let volume = dir.path().join("node.ext4");
    stratum_tests::node_image_volume_with(
        host.images_dir(),
        &volume,
        &[(registry.storage(), "registry")],
        16,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(registry);
    let scenario = Scenario::new(script())
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .dynamic_binary("/usr/sbin/nft", "/usr/sbin/nft")
        .dynamic_binary("/usr/bin/docker-registry", "/usr/bin/docker-registry")
        .dynamic_binary("/usr/bin/etcdctl", "/usr/bin/etcdctl")
        .drive(&volume)
        .memory_mib(6144)
        .host_cpus(1)
        // The scenario's waits end by its budget; then the clean-up.
        .timeout(SCENARIO_BUDGET + Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(150);
    for line in outcome.console.lines().filter(|l| {
        l.starts_with("OUT-")
            || l.starts_with("AT-")
            || l.starts_with("WAITED-")
            || l.starts_with("TIMED-OUT")
            || l.starts_with("DIAG-")
            || l.starts_with("AGENT-LOG")
            || l.starts_with("VM-NOT")
            || l.starts_with("VM-DOWN")
    }) {
        eprintln!("{line}");
    }
    for failed in ["TIMED-OUT", "VM-NOT-READY", "VM-DOWN"] {
        assert!(
            !outcome.console.lines().any(|l| l.starts_with(failed)),
            "a wait ended without its condition ({failed})\n{tail}"
        );
    }
    let v = |key: &str| outcome.value(key);
    for (key, want) in [
        ("OTHER-NET-RC=", "0"),
        ("IMPORT-RC=", "0"),
        ("START-ETCD1-RC=", "0"),
        ("START-ETCD2-RC=", "0"),
        ("START-ETCD3-RC=", "0"),
        ("START-W-RC=", "0"),
        ("POOL-CPU-MAX=", "90000 100000"),
        ("POOL-MEMORY-MAX=", &(4u64 << 30).to_string()),
        ("GET-3=", "written-through-member-1"),
        ("DISK-SIZE=", &(3u64 << 30).to_string()),
        ("ETCD2-KILLED=", "STOPPED"),
        ("WRITE-WITH-TWO=", "written-with-two-of-three"),
        ("RESTART-ETCD2-RC=", "0"),
        ("CAUGHT-UP=", "written-with-two-of-three"),
        ("ETCD2-ADDRESS-AFTER-RESTART=", "ip=10.40.0.12/24"),
        ("WORKER-PULL-EXIT=", "0"),
        ("WORKER-RUN-EXIT=", "0"),
        ("OUTSIDER-GATEWAY=", "yes"),
        ("OUTSIDER-TO-ETCD=", "nono"),
        ("WATCH-READY=", "3"),
        ("BRIDGE-PORTS=", "0"),
        ("LEASES-LEFT=", "0"),
        ("IMAGE-RM-RC=", "0"),
        ("TAPS-LEFT=", "0"),
        ("BRIDGES-LEFT=", "0"),
        ("RULES-LEFT=", "0"),
        ("VM-DIRS-LEFT=", "0"),
        ("CGROUPS-LEFT=", "0"),
    ] {
        assert_eq!(v(key), want, "{key}\n{tail}");
    }
    assert_ne!(
        v("RM-UNDER-VMS-RC="),
        "0",
        "the VMs lease their image\n{tail}"
    );
    assert_eq!(
        outcome
            .values("STATE-AFTER-AGENT-KILL=")
            .collect::<Vec<_>>(),
        ["RUNNING"; 4],
        "the VMs run on while the agent is down\n{tail}"
    );
    assert_eq!(
        outcome.values("POWER-DOWN=").collect::<Vec<_>>(),
        ["1"; 4],
        "each guest powered itself off\n{tail}"
    );
    assert_eq!(
        outcome.values("RESTARTING=").collect::<Vec<_>>(),
        ["0"; 4],
        "not Ctrl+Alt+Del's reboot\n{tail}"
    );
    assert!(
        outcome.console.contains("RAN-IN-CONTAINERD"),
        "the worker's container ran\n{tail}"
    );
    let members = outcome
        .console
        .lines()
        .filter(|l| l.starts_with("MEMBER ") && l.contains("started"))
        .count();
    assert_eq!(members, 3, "{tail}");
    // The pool holds what its four running VMs reserve.
    let pool: serde_json::Value = serde_json::from_str(v("POOL-JSON=")).unwrap();
    let held = uint(&pool["status"]["memory"]["reservedByChildren"]);
    let vms: Vec<serde_json::Value> = outcome
        .console
        .lines()
        .filter_map(|l| l.strip_prefix("VM-JSON="))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    assert_eq!(vms.len(), 4, "{tail}");
    let reserved: u64 = vms
        .iter()
        .map(|vm| uint(&vm["status"]["reservation"]["memoryBytes"]))
        .sum();
    assert!(
        reserved > 0 && held == reserved,
        "pool {held}, VMs {reserved}\n{tail}"
    );
    // Each guest agent's view: the guest's own name, OS and kernel, and
    // the NIC's MAC and address as the network gave them. The members'
    // as read once they were ready; the worker's once it had run its
    // container (when the members are ready, it may still be booting).
    let worker: serde_json::Value = serde_json::from_str(v("WORKER-JSON=")).unwrap();
    let etcd_vms: Vec<_> = vms
        .iter()
        .filter(|vm| vm["spec"]["role"] == "VM_ROLE_ETCD")
        .collect();
    assert_eq!(etcd_vms.len(), 3, "{tail}");
    for vm in etcd_vms.into_iter().chain([&worker]) {
        let guest = &vm["status"]["guest"];
        let nic = &vm["status"]["nics"][0];
        assert_eq!(guest["hostname"], vm["spec"]["name"], "{vm}");
        assert_eq!(guest["os"], "Debian GNU/Linux 12 (bookworm)", "{vm}");
        let kernel = guest["kernel"].as_str().unwrap_or_default();
        assert!(kernel.ends_with("-cloud-amd64"), "{vm}");
        let eth0 = guest["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == "eth0"))
            .unwrap_or_else(|| panic!("no eth0 in the guest's view: {vm}"));
        assert_eq!(eth0["mac"], nic["mac"], "{vm}");
        let address = nic["address"].as_str().unwrap_or_default();
        assert!(
            address.starts_with("10.40.0.")
                && eth0["addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == address)),
            "{vm}"
        );
    }
    for stopped in outcome
        .console
        .lines()
        .filter(|l| l.starts_with("STOPPED-STATE"))
    {
        assert!(
            stopped.ends_with("(the guest powered off (ACPI S5))"),
            "shut down through the guest agent: {stopped}\n{tail}"
        );
    }
    assert_eq!(
        outcome
            .console
            .lines()
            .filter(|l| l.starts_with("STOPPED-STATE"))
            .count(),
        4,
        "{tail}"
    );
    let deleted = outcome
        .console
        .lines()
        .filter(|l| {
            l.starts_with("DELETE-RC=0")
                || l.starts_with("NET-DELETE-RC=0")
                || l.starts_with("POOL-DELETE-RC=0")
        })
        .count();
    assert_eq!(deleted, 9, "{tail}");
}
