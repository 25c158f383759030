# `make run-node`: runs as /scenario.sh inside the nested test host, whose
# /dev/vda is a volume holding the node image's OCI layout (node.oci). The
# node agent imports it as a VM image and runs a worker VM from it with
# cloud-init user-data, then shows what the guest agent reports, and
# shuts the VM down through it.
N="nodectl --insecure --addr http://127.0.0.1:7443"
mkdir -p /stratum/node && mount -o ro /dev/vda /stratum/node || exit 10
mktap tap0 && ip link set tap0 up || exit 11
node-agent --data-dir /run/agent --insecure-plaintext --listen 127.0.0.1:7443 \
    --vmm /stratum/bin/vmm --reserve-cpu 0 --reserve-memory-mib 256 \
    --artifact-dir /stratum/node >> /run/agent.log 2>&1 &
i=0; until $N host info > /dev/null 2>&1 || [ $i -gt 150 ]; do sleep 0.2; i=$((i+1)); done
cat > /run/user-data <<'USERDATA'
#cloud-config
hostname: worker-1
runcmd:
  - [sh, -c, 'echo "hello from user-data" > /etc/motd']
USERDATA
echo '$ nodectl image import /stratum/node/node.oci --reference stratum/node:bookworm'
$N image import /stratum/node/node.oci --reference stratum/node:bookworm
echo '$ nodectl vm create worker-1 --role worker --memory 1Gi --image stratum/node:bookworm \'
echo '      --nic tap=tap0,mac=06:00:ac:10:00:02,ip=172.16.0.2/24 --user-data user-data'
vm=$($N -o json vm create worker-1 --role worker --memory 1Gi --image stratum/node:bookworm \
    --nic tap=tap0,mac=06:00:ac:10:00:02,ip=172.16.0.2/24 --user-data /run/user-data |
    sed -n 's/^  "id": "\(vm-[0-9]*\)".*/\1/p')
echo "$vm"
echo "\$ nodectl vm start $vm"
$N vm start "$vm" > /dev/null
echo "\$ nodectl vm watch --vm $vm    # until GUEST_READY"
$N vm watch --vm "$vm" > /run/watch.log 2>&1 &
i=0; until grep -q GUEST_READY /run/watch.log || [ $i -gt 600 ]; do sleep 0.5; i=$((i+1)); done
cat /run/watch.log
echo "\$ nodectl vm get $vm"
$N vm get "$vm"
echo "\$ nodectl vm stop $vm    # through the guest agent: systemd powers off"
$N vm stop "$vm" --timeout 120 > /dev/null
i=0; until [ "$($N vm get "$vm" | awk '$1 == "STATE" {print $2}')" = STOPPED ] || [ $i -gt 600 ]; do sleep 0.2; i=$((i+1)); done
$N vm list
