#!/bin/bash
# Instructions (callgrind) of `virtport agent` serving 10 `start`+`stopped` pairs of a 10-forward VM
# handed over by hook processes (after three warm-up pairs), for each binary given: all the agent's
# threads, then the part of it spent in the work after the answer (Worker.finishDeferred,
# inclusive; 0 for a binary without it). A throwaway network namespace and directory. Root.
#
#   sudo bench/agent_callgrind.sh OLD_BINARY NEW_BINARY ...
set -e
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
. "$(dirname "$0")/callgrind-lab.sh"
callgrind_lab_ns acg
FW=""
for p in $(seq 41000 41009); do FW="$FW<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='$p' to='22'/></vp:portForward>"; done
XML=$(domain_xml web 11111111-1111-4111-8111-111111111111 "$FW")
for BIN in "$@"; do
  callgrind_lab_dir agent.sock
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
