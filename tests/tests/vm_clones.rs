//! Instant Clone through the agent, in the nested test host: a node-image
//! VM on a network boots with cloud-init and starts a ticker (a counter
//! printed with the hostname to the console every 2 s); `vm snapshot`
//! takes it while it runs (it runs on after); `vm clone --count 10` makes
//! ten VMs of the snapshot at once. Checked, each through the agent's API
//! and the nested host only:
//! - every clone RUNNING, its guest agent reporting the clone's own name
//!   as hostname and the clone's own MAC and address on eth0 (neither the
//!   parent's nor another clone's), and answering ping from the host at
//!   that address, which the network's anti-spoofing rules allow only to
//!   the address IPAM gave it;
//! - every clone's ticker carried on from where the parent's was (its
//!   first tick on the clone's console counts on from the parent's, not
//!   from 1), under the clone's own hostname;
//! - the clones share the snapshot's unmodified pages: the sum of their
//!   vmm processes' proportional set sizes is well below ten times the
//!   parent's resident set;
//! - the snapshot survives `kill -9` of the agent (its clones listed),
//!   cannot be deleted while its clones run, and can once they are gone;
//!   nothing is left after everything is deleted.
//!
//! On one nested-host CPU, as every full-distribution boot here (see
//! `Scenario::host_cpus`). Built by `make node-image` (part of `make test`).

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_tests::{paths, NestedHost, Scenario};

const AGENT: &str = "/stratum/bin/node-agent";
const NODECTL: &str = "/stratum/bin/nodectl";
const JAILER: &str = "/stratum/bin/stratum-jailer";
const NODE: &str = "/stratum/node";
const CLONES: u32 = 10;
/// How long the scenario's waits may take in all.
const SCENARIO_BUDGET: Duration = Duration::from_secs(1800);

/// The parent's user-data: a ticker as a transient systemd service, so
/// that it outlives cloud-init's runcmd.
const USER_DATA: &str = "#cloud-config\n\
runcmd:\n\
\x20 - [systemd-run, --unit=stratum-ticker, sh, -c, 'i=0; while :; do i=$((i+1)); echo \"TICK $(hostname) $i\" > /dev/console; sleep 2; done']\n";

fn script() -> String {
    let vmm = paths::VMM;
    format!(
        r#"CTL="{NODECTL} --addr https://127.0.0.1:7443 --certs /stratum/node/agent/certs"
N="timeout 300 $CTL"
mkdir -p {NODE} && mount /dev/vda {NODE} || exit 10
mkdir -p /stratum/artifacts/node.oci && mount --bind {NODE}/node.oci /stratum/artifacts/node.oci || exit 11
start_agent() {{
    {AGENT} --data-dir /stratum/node/agent --listen 127.0.0.1:7443 --vmm {vmm} --reserve-cpu 0 \
        --reserve-memory-mib 512 --artifact-dir /stratum/artifacts >> /stratum/node/agent.log 2>&1 &
    AGENT_PID=$!
    i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
}}
now() {{ date +%s; }}
at() {{ echo "AT-$1=$(( $(now) - T0 ))"; }}
id() {{ sed -n 's/^  "id": "\(.*\)".*/\1/p' | head -1; }}
row() {{ $N vm get "$1" | awk -v k="$2" '$1 == k {{print $2; exit}}'; }}
hostname_of() {{ $N vm get "$1" | awk '$1 == "GUEST" && $2 == "HOSTNAME" {{print $3; exit}}'; }}
name_of() {{ $N vm get "$1" | awk '$1 == "NAME" {{print $2; exit}}'; }}
address_of() {{ $N -o json vm get "$1" | sed -n 's/^ *"address": "\([0-9.]*\)\/.*/\1/p' | head -1; }}
console() {{ cat /stratum/node/agent/vms/$1/run/console.log 2>/dev/null; }}
diagnose() {{
    $N vm get "$1" | sed "s/^/DIAG-$1 /"
    console "$1" | tail -30 | sed "s/^/DIAG-$1-CONSOLE /"
    tail -20 /stratum/node/agent.log | sed "s/^/DIAG-AGENT /"
}}
deadline() {{ end=$(( $(now) + $1 )); [ $end -lt $LAST ] || end=$LAST; echo $end; }}
wait_until() {{
    t=$(now); end=$(deadline $1); label=$2; shift 2
    until "$@"; do
        if [ $(now) -gt $end ]; then echo "TIMED-OUT $label"; FAILED=1; break; fi
        sleep 3
    done
    echo "WAITED-$label=$(( $(now) - t ))"
}}
is_ready() {{ [ "$(row $1 GUEST)" = ready ]; }}
is_state() {{ [ "$(row $1 STATE)" = "$2" ]; }}
# The first packet to a clone may wait for ARP: three tries, one answer.
answers() {{ ping -c 3 -W 5 "$1" > /dev/null 2>&1 && echo yes || echo no; }}
ticking() {{ console $1 | grep -a -q "^TICK "; }}
renamed() {{ for c in $CLONES; do [ "$(hostname_of $c)" = "$(name_of $c)" ] || return 1; done; }}
pss_kib() {{ awk '/^Pss:/ {{print $2}}' /proc/$1/smaps_rollup; }}
rss_kib() {{ awk '/^Rss:/ {{print $2}}' /proc/$1/smaps_rollup; }}
start_agent
T0=$(now)
LAST=$((T0 + {budget}))
A=$($N -o json pool create tenant-a | id)
$N network create clone-net --cidr 10.60.0.0/24 --namespace $A > /dev/null; echo NET-RC=$?
$N image import /stratum/artifacts/node.oci --reference stratum/node:bookworm > /dev/null; echo IMPORT-RC=$?
cat > /run/parent.yaml <<'USERDATA'
{USER_DATA}USERDATA
P=$($N -o json vm create parent --pool $A --role worker --vcpus 1 --memory 384 --mem-reservation 128 \
    --cpu-reservation 50 --image stratum/node:bookworm --root-disk 3Gi \
    --nic network=clone-net --user-data /run/parent.yaml | id)
$N vm start $P > /dev/null; echo START-P-RC=$?
wait_until 1200 PARENT-READY is_ready $P
wait_until 120 PARENT-TICKING ticking $P
is_ready $P || diagnose $P
at PARENT-READY
# A few ticks more, so that a clone counting from 1 could not pass for one
# that went on.
sleep 10
echo PARENT-TICK-AT-SNAPSHOT=$(console $P | grep -a -o 'TICK parent [0-9]*' | tail -1 | awk '{{print $3}}')
S=$($N -o json vm snapshot $P golden | id); echo SNAPSHOT-RC=$?
echo SNAPSHOT-ID=$S
at SNAPSHOT
$N snapshot get $S | sed 's/^/OUT-SNAPSHOT /'
echo PARENT-STATE-AFTER-SNAPSHOT=$(row $P STATE)
$N vm snapshot $P golden > /dev/null 2>&1; echo SECOND-GOLDEN-RC=$?
t=$(now)
$N -o json vm clone $S web --count {CLONES} > /run/clones.json; echo CLONE-RC=$?
echo CLONE-SECONDS=$(( $(now) - t ))
CLONES=$(grep -o '"id": "vm-[0-9]*"' /run/clones.json | cut -d'"' -f4 | tr '\n' ' ')
echo CLONE-COUNT=$(echo $CLONES | wc -w)
at CLONED
$N vm list | sed 's/^/OUT-VM-LIST /'
wait_until 600 RENAMED renamed
renamed || for c in $CLONES; do diagnose $c; done
at RENAMED
for c in $CLONES; do
    addr=$(address_of $c)
    echo CLONE-PING=$(answers $addr) $c $addr
done
echo PARENT-PING=$(answers $(address_of $P))
for c in $CLONES; do wait_until 60 TICKING-$c ticking $c; done
for c in $CLONES; do
    n=$(name_of $c)
    echo "CLONE-TICKS $c first=$(console $c | grep -a -o 'TICK [a-z0-9-]* [0-9]*' | head -1 | awk '{{print $3}}') own=$(console $c | grep -a -c "TICK $n ")"
done
PARENT_RSS=$(rss_kib $(row $P PID))
SUM_PSS=0; for c in $CLONES; do p=$(pss_kib $(row $c PID)); echo CLONE-PSS-KIB=$p; SUM_PSS=$((SUM_PSS + p)); done
echo PARENT-RSS-KIB=$PARENT_RSS
echo CLONES-PSS-KIB=$SUM_PSS
echo ONE-CLONE-RSS-KIB=$(rss_kib $(row $(echo $CLONES | cut -d' ' -f1) PID))
$N vm get $(echo $CLONES | cut -d' ' -f3) | sed 's/^/OUT-CLONE-GET /'
$N snapshot list | sed 's/^/OUT-SNAPSHOT-LIST /'
for c in $P $CLONES; do echo VM-JSON=$($N -o json vm get $c | tr -d '\n'); done
$N pool list --workloads | sed 's/^/OUT-INVENTORY /'
kill -9 $AGENT_PID; wait $AGENT_PID 2>/dev/null
start_agent
echo SNAPSHOT-AFTER-AGENT-KILL=$($N snapshot list | awk -v s=$S '$1 == s {{print $2, $6}}')
for c in $CLONES; do echo STATE-AFTER-AGENT-KILL=$(row $c STATE); done
$N snapshot delete $S > /dev/null 2>&1; echo DELETE-SNAPSHOT-IN-USE-RC=$?
for c in $CLONES; do $N vm kill $c > /dev/null; done
stopped() {{ for c in $CLONES; do is_state $c STOPPED || return 1; done; }}
wait_until 120 CLONES-STOPPED stopped
for c in $CLONES; do $N vm delete $c > /dev/null; echo CLONE-DELETE-RC=$?; done
$N snapshot delete $S > /dev/null; echo DELETE-SNAPSHOT-RC=$?
echo SNAPSHOT-DIRS-LEFT=$(ls /stratum/node/agent/snapshots | wc -l)
$N vm kill $P > /dev/null
wait_until 120 PARENT-STOPPED is_state $P STOPPED
$N vm delete $P > /dev/null; echo PARENT-DELETE-RC=$?
$N network delete clone-net > /dev/null; echo NET-DELETE-RC=$?
$N image rm stratum/node:bookworm > /dev/null; echo IMAGE-RM-RC=$?
echo TAPS-LEFT=$(ls /sys/class/net | grep -c '^t')
echo VM-DIRS-LEFT=$(ls /stratum/node/agent/vms | wc -l)
at DONE
[ -z "$FAILED" ] || tail -60 /stratum/node/agent.log | sed 's/^/AGENT-LOG /'
"#,
        budget = SCENARIO_BUDGET.as_secs(),
    )
}

fn number(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

#[test]
fn ten_clones_of_a_running_vm_each_take_their_own_identity_and_share_memory() {
    let host = NestedHost::from_env().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("node.ext4");
    stratum_tests::node_image_volume_with(host.images_dir(), &volume, &[], 16)
        .unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new(script())
        .file(AGENT, NestedHost::static_bin("node-agent"))
        .file(NODECTL, NestedHost::static_bin("nodectl"))
        .file(JAILER, NestedHost::static_bin("stratum-jailer"))
        .dynamic_binary("/usr/sbin/nft", "/usr/sbin/nft")
        .drive(&volume)
        .memory_mib(6144)
        .host_cpus(1)
        .timeout(SCENARIO_BUDGET + Duration::from_secs(600));
    let outcome = host.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.host_kvm, "the nested host has no /dev/kvm");
    let tail = outcome.console_tail(150);
    for line in outcome.console.lines().filter(|l| {
        [
            "OUT-",
            "AT-",
            "WAITED-",
            "TIMED-OUT",
            "DIAG-",
            "AGENT-LOG",
            "CLONE-",
        ]
        .iter()
        .any(|p| l.starts_with(p))
            || l.contains("-KIB=")
    }) {
        eprintln!("{line}");
    }
    assert!(
        !outcome.console.lines().any(|l| l.starts_with("TIMED-OUT")),
        "a wait ended without its condition\n{tail}"
    );
    let v = |key: &str| outcome.value(key);
    for (key, want) in [
        ("NET-RC=", "0"),
        ("IMPORT-RC=", "0"),
        ("START-P-RC=", "0"),
        ("SNAPSHOT-RC=", "0"),
        ("PARENT-STATE-AFTER-SNAPSHOT=", "RUNNING"),
        ("CLONE-RC=", "0"),
        ("CLONE-COUNT=", &CLONES.to_string()),
        ("PARENT-PING=", "yes"),
        ("SNAPSHOT-AFTER-AGENT-KILL=", &format!("golden {CLONES}")),
        ("DELETE-SNAPSHOT-RC=", "0"),
        ("SNAPSHOT-DIRS-LEFT=", "0"),
        ("PARENT-DELETE-RC=", "0"),
        ("NET-DELETE-RC=", "0"),
        ("IMAGE-RM-RC=", "0"),
        ("TAPS-LEFT=", "0"),
        ("VM-DIRS-LEFT=", "0"),
    ] {
        assert_eq!(v(key), want, "{key}\n{tail}");
    }
    assert_ne!(v("SECOND-GOLDEN-RC="), "0", "names are unique\n{tail}");
    assert_ne!(
        v("DELETE-SNAPSHOT-IN-USE-RC="),
        "0",
        "running clones keep their snapshot\n{tail}"
    );
    assert_eq!(
        outcome
            .values("STATE-AFTER-AGENT-KILL=")
            .collect::<Vec<_>>(),
        ["RUNNING"; CLONES as usize],
        "{tail}"
    );
    assert_eq!(
        outcome.values("CLONE-DELETE-RC=").collect::<Vec<_>>(),
        ["0"; CLONES as usize],
        "{tail}"
    );
    // Each clone's address answers the host: the guest took it, and the
    // network lets the clone's TAP send from it.
    let pings = outcome.values("CLONE-PING=").collect::<Vec<_>>();
    assert_eq!(pings.len(), CLONES as usize, "{tail}");
    assert!(pings.iter().all(|p| p.starts_with("yes ")), "{pings:?}");
    // Identity: each clone's guest says its own name, MAC and address.
    let vms: Vec<serde_json::Value> = outcome
        .values("VM-JSON=")
        .collect::<Vec<_>>()
        .into_iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    assert_eq!(vms.len(), CLONES as usize + 1, "{tail}");
    let mut macs = std::collections::BTreeSet::new();
    let mut addresses = std::collections::BTreeSet::new();
    let mut link_locals = std::collections::BTreeSet::new();
    for vm in &vms {
        let guest = &vm["status"]["guest"];
        let nic = &vm["status"]["nics"][0];
        assert_eq!(vm["status"]["state"], "VM_STATE_RUNNING", "{vm}");
        assert_eq!(guest["hostname"], vm["spec"]["name"], "{vm}");
        let eth0 = guest["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == "eth0"))
            .unwrap_or_else(|| panic!("no eth0 in the guest's view: {vm}"));
        assert_eq!(eth0["mac"], nic["mac"], "{vm}");
        let address = nic["address"].as_str().unwrap_or_default();
        let held: Vec<&str> = eth0["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        assert!(held.contains(&address), "{vm}");
        assert!(
            held.iter().filter(|a| a.starts_with("10.60.0.")).count() == 1,
            "only its own address on the network: {vm}"
        );
        // The link-local address follows the MAC: none is the parent's.
        let link_local: Vec<&&str> = held.iter().filter(|a| a.starts_with("fe80:")).collect();
        assert_eq!(link_local.len(), 1, "{vm}");
        assert!(link_locals.insert(link_local[0].to_string()), "{vm}");
        macs.insert(nic["mac"].as_str().unwrap_or_default().to_string());
        addresses.insert(address.to_string());
    }
    assert_eq!(macs.len(), vms.len(), "every MAC its own");
    assert_eq!(addresses.len(), vms.len(), "every address its own");
    // Carried on where the parent was, then under its own name.
    let at_snapshot = number(v("PARENT-TICK-AT-SNAPSHOT="));
    let ticks: Vec<&str> = outcome.values("CLONE-TICKS").collect();
    assert_eq!(ticks.len(), CLONES as usize, "{tail}");
    for line in ticks {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .map(number)
                .unwrap_or_else(|| panic!("{line}"))
        };
        assert!(
            field("first=") >= at_snapshot && field("first=") > 1,
            "the counter went on from {at_snapshot}: {line}"
        );
        assert!(field("own=") >= 1, "a tick under its own name: {line}");
    }
    // Shared memory.
    let parent_rss = number(v("PARENT-RSS-KIB="));
    let clones_pss = number(v("CLONES-PSS-KIB="));
    assert!(
        clones_pss * 2 < parent_rss * u64::from(CLONES),
        "ten clones' PSS {clones_pss} KiB against ten times the parent's RSS {parent_rss} KiB"
    );
}
