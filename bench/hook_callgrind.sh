#!/bin/bash
# Instructions (callgrind, exact and repeatable) of one hook process per operation, for each binary
# given: qemu `prepare`, `start` (table exists), `stopped`, and `start` of a domain without
# metadata. 1 forward, no agent, a throwaway network namespace and directory. Root.
#
#   sudo bench/hook_callgrind.sh OLD_BINARY NEW_BINARY ...
#
# `stopped` prints two numbers: the hook, then the child that closes its netlink socket after it
# exits (MnlSocket.closeInBackground).
set -e
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
NS=vp-cg-$$
D=$(mktemp -d /var/tmp/vp-cg.XXXXXX)
ip netns add $NS
trap "ip netns del $NS; rm -rf $D" EXIT
ip netns exec $NS ip link set lo up
ip netns exec $NS ip link add br0 type bridge
ip netns exec $NS ip addr add 192.168.122.1/24 dev br0
ip netns exec $NS ip link set br0 up
XML="<domain type='qemu'><name>web</name><uuid>11111111-1111-4111-8111-111111111111</uuid><metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward></vp:virtport></metadata><memory unit='KiB'>65536</memory><devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices></domain>"
PLAIN="<domain type='qemu'><name>plain</name><uuid>22222222-1111-4111-8111-111111111111</uuid><memory unit='KiB'>65536</memory><devices/></domain>"
for BIN in "$@"; do
  rm -rf $D/lab; mkdir -p $D/lab/run/network $D/lab/run/qemu
  echo "<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid><forward mode='nat'/><bridge name='br0'/><ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>" > $D/lab/run/network/default.xml
  L=$D/lab
  printf 'database = "%s/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "%s/run"\nlibvirt_config_dir = "%s/etc"\nlibvirt_state_dir = "%s/state"\nhooks_dir = "%s/hooks"\nagent_socket = "%s/none.sock"\n[log]\nsyslog_socket = "%s/log.sock"\n' $L $L $L $L $L $L $L > $L/virtport.conf
  export VIRTPORT_CONFIG=$L/virtport.conf
  hook() { echo "$2" | ip netns exec $NS "$BIN" hook qemu $1 $3 $4 - >/dev/null 2>&1 || true; }
  cg() { echo "$2" | ip netns exec $NS valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" hook qemu $1 $3 $4 - 2>&1 >/dev/null | grep -o "Collected : [0-9]*" | awk '{print $3}' | tr '\n' ' '; }
  hook web "$XML" start begin; hook web "$XML" stopped end   # the journal and the table exist
  echo "$BIN: prepare $(cg web "$XML" prepare begin)start $(cg web "$XML" start begin)stopped $(cg web "$XML" stopped end)no-metadata $(cg plain "$PLAIN" start begin)"
done
