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
. "$(dirname "$0")/callgrind-lab.sh"
callgrind_lab_ns cg
XML=$(domain_xml web 11111111-1111-4111-8111-111111111111 "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>")
PLAIN="<domain type='qemu'><name>plain</name><uuid>22222222-1111-4111-8111-111111111111</uuid><memory unit='KiB'>65536</memory><devices/></domain>"
for BIN in "$@"; do
  callgrind_lab_dir none.sock
  hook() { echo "$2" | ip netns exec $NS "$BIN" hook qemu $1 $3 $4 - >/dev/null 2>&1 || true; }
  cg() { echo "$2" | ip netns exec $NS valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" hook qemu $1 $3 $4 - 2>&1 >/dev/null | grep -o "Collected : [0-9]*" | awk '{print $3}' | tr '\n' ' '; }
  hook web "$XML" start begin; hook web "$XML" stopped end   # the journal and the table exist
  echo "$BIN: prepare $(cg web "$XML" prepare begin)start $(cg web "$XML" start begin)stopped $(cg web "$XML" stopped end)no-metadata $(cg plain "$PLAIN" start begin)"
done
