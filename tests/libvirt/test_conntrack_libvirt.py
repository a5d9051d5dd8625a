"""Issue 21 item 6 against a real libvirtd: `virtport remove` and a live edit (`virtport add` with
another guest) delete the conntrack entries of the forward they take down, so an ongoing UDP flow
through the host port reaches the new target within 1 s instead of the old one. Real libvirtd +
QEMU VM (the forward's owner), stand-in guests on virbr0 answering for the two addresses, a client
namespace sending one datagram every 50 ms from one source port.
Run alone: flock /var/tmp/vp-libvirt-suite.lock python3 -m pytest tests/libvirt -k conntrack"""
import os
import queue
import subprocess
import sys
import threading
import time

import harness
from test_virtport_libvirt import BIN, G1, G2, HOST, MAC1, installed, install, meta, vp  # noqa: F401

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW = """
import socket, sys, time, select
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 40123))
while True:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    end = time.time() + 0.05
    while True:
        left = end - time.time()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        print(f"{time.time():.3f} {s.recv(200).decode().strip()}", flush=True)
"""
ENTRIES = """
import sys; sys.path.insert(0, sys.argv[1]); import ctnl
print(sum(1 for o, r in ctnl.Ct().dump() if r[0] == sys.argv[2] and r[3] == 5000))
"""


def entries_to(lab, guest):
    return int(out_text(lab.exec(sys.executable, "-c", ENTRIES, TESTS, guest)))


def out_text(r):
    return r.stdout.decode().strip()


def test_remove_and_live_edit_move_an_ongoing_flow(lab, installed):
    vp, vm = installed, "vpct-edit"
    lab.define_vm(vm, MAC1, meta(("udp", 7000, 5000, G1)))
    g1, g2 = lab.stand_in_guest(G1), lab.stand_in_guest(G2)
    g1.listen("udp", 5000, "G1")
    g2.listen("udp", 5000, "G2")
    client = lab.client()
    lab.start_vm(vm)
    p = subprocess.Popen(["ip", "netns", "exec", client.ns, sys.executable, "-c", FLOW, HOST, "7000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answers = queue.Queue()
    threading.Thread(target=lambda: [answers.put(l.decode().split(" ", 1)[1].strip()) for l in p.stdout],
                     daemon=True).start()

    def next_from(tag, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if answers.get(timeout=max(0.01, deadline - time.time())).startswith(tag + " "):
                    return True
            except queue.Empty:
                pass
        return False

    try:
        assert next_from("G1", 5), "the flow should reach G1 through the forward"
        assert entries_to(lab, G1) == 1, "the flow's conntrack entry (DNAT to G1)"
        # virtport remove: the forward and its flow's entry go in the same step.
        vp.run("remove", vm, "udp", "7000")
        assert entries_to(lab, G1) == 0
        # A live edit puts the port back to another guest: the same flow follows within 1 s.
        vp.run("add", vm, "udp", "7000:5000", "--guest", G2)
        assert next_from("G2", 1.0), "the ongoing flow should reach the new target within 1 s"
        assert entries_to(lab, G1) == 0
    finally:
        p.kill()
        p.wait()
