#!/bin/bash
# Instructions (callgrind) of `virtport agent` serving 10 `start`+`stopped` pairs of a 10-forward VM
# handed over by hook processes (after three warm-up pairs), for each binary given: all the agent's
# threads, then the part of it spent in the work after the answer (Worker.finishDeferred,
# inclusive; 0 for a binary without it). A throwaway network namespace and directory. Root.
#
#   sudo bench/agent_callgrind.sh OLD_BINARY NEW_BINARY ...
set -e
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
NS=vp-acg-$$
D=$(mktemp -d /var/tmp/vp-acg.XXXXXX)
ip netns add $NS
trap "ip netns del $NS; rm -rf $D" EXIT
ip netns exec $NS ip link set lo up
ip netns exec $NS ip link add br0 type bridge
ip netns exec $NS ip addr add 192.168.122.1/24 dev br0
ip netns exec $NS ip link set br0 up
FW=""
for p in $(seq 41000 41009); do FW="$FW<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='$p' to='22'/></vp:portForward>"; done
XML="<domain type='qemu'><name>web</name><uuid>11111111-1111-4111-8111-111111111111</uuid><metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>$FW</vp:virtport></metadata><memory unit='KiB'>65536</memory><devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices></domain>"
for BIN in "$@"; do
  rm -rf $D/lab; mkdir -p $D/lab/run/network $D/lab/run/qemu
  echo "<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid><forward mode='nat'/><bridge name='br0'/><ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>" > $D/lab/run/network/default.xml
  L=$D/lab
  printf 'database = "%s/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "%s/run"\nlibvirt_config_dir = "%s/etc"\nlibvirt_state_dir = "%s/state"\nhooks_dir = "%s/hooks"\nagent_socket = "%s/agent.sock"\n[log]\nsyslog_socket = "%s/log.sock"\n' $L $L $L $L $L $L $L > $L/virtport.conf
  export VIRTPORT_CONFIG=$L/virtport.conf
  hook() { echo "$XML" | ip netns exec $NS "$BIN" hook qemu web $1 $2 - >/dev/null 2>&1; }
  ip netns exec $NS valgrind --tool=callgrind --callgrind-out-file=$L/cg.out "$BIN" agent 2>$L/agent.log &
  VG=$!
  for i in $(seq 1 300); do [ -S $L/agent.sock ] && break; sleep 0.1; done
  # Warm-up: three pairs, so that every worker the measured pairs use has opened its journal and
  # prepared its statements (a request that arrives while another worker is still busy, e.g. with
  # its work after the answer, takes a second worker).
  for i in 1 2 3; do hook start begin; hook stopped end; done
  sleep 0.5
  callgrind_control -z $VG >/dev/null 2>&1
  for i in $(seq 1 10); do hook start begin; hook stopped end; done
  sleep 0.5
  callgrind_control -d $VG >/dev/null 2>&1
  kill $VG; wait $VG 2>/dev/null || true
  OUT=$(ls -t $L/cg.out* | grep -v "^$L/cg.out$" | head -1)
  TOTAL=$(callgrind_annotate "$OUT" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
  AFTER=$(callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | grep "finishDeferred" | head -1 | awk '{gsub(",","",$1); print $1}')
  echo "$BIN: agent, 10 pairs: ${TOTAL} instructions; after the answer: ${AFTER:-0}"
done
