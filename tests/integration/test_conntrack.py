"""Issue 21 item 6: connection tracking follows the forward. When a forward goes (stop) or its
target changes (another VM takes the port, a lease moves), the conntrack entries its DNAT created
are deleted in the same step: an ongoing UDP flow reaches the new holder within 1 s, and an
ongoing TCP connection to the old target ends. Real kernel, real flows from the client namespace;
each test first shows the flow's conntrack entry pointing at the old target (the state that, left
alone, keeps the flow there: the issue's 50 of 50 replies from the old VM)."""
import ctypes
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import domain_xml, sh
from test_agent_watch import running, start_agent, wait, write_leases, guest_of_2222

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ctnl  # noqa: E402

UA = "c7c7c7c7-1111-4111-8111-111111111111"
UB = "c7c7c7c7-2222-4222-8222-222222222222"


def vm(name, uuid, guest, proto="udp"):
    return domain_xml(name, uuid, f"<vp:portForward proto='{proto}' guest='{guest}'>"
                                  "<vp:range start='7000' to='5000'/></vp:portForward>",
                      macs=("52:54:00:aa:bb:01" if guest.endswith(".10") else "52:54:00:aa:bb:02",))


# One UDP socket (one source port: one conntrack entry) sending every 50 ms; prints each answer
# with the time it arrived.
UDP_FLOW = textwrap.dedent("""
    import socket, sys, time, select
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("203.0.113.2", 40123))
    while True:
        s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        end = time.time() + 0.05
        while True:
            left = end - time.time()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            print(f"{time.time():.3f} {s.recv(200).decode().strip()}", flush=True)
""")

# argv: tag. TCP echo server on port 5000: answers every line with "TAG LINE".
ECHO = textwrap.dedent("""
    import socket, sys, threading
    tag = sys.argv[1]
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5000)); s.listen(8); print("ready", flush=True)
    def serve(c):
        for line in c.makefile():
            c.sendall(f"{tag} {line.strip()}\\n".encode())
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
""")


class Flow:
    def __init__(self, lab, port=7000):
        self.p = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", UDP_FLOW,
                                   "203.0.113.1", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lab.procs.append(self.p)
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            t, rest = line.decode().split(" ", 1)
            self.q.put((float(t), rest.strip()))

    def next_from(self, tag, timeout):
        """Seconds until an answer from `tag` arrives (answers from others are skipped)."""
        start = time.time()
        while True:
            left = start + timeout - time.time()
            if left <= 0:
                raise AssertionError(f"no answer from {tag} within {timeout}s")
            try:
                t, text = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if text.startswith(tag + " "):
                return t - start


def entries_to(lab, guest, port=5000):
    with ctnl_in(lab.host) as ct:
        return [e for e in ct.dump() if e[1][0] == guest and e[1][3] == port]


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")


class ctnl_in:
    """A ctnetlink socket inside a namespace."""
    def __init__(self, ns):
        self.ns = ns

    def __enter__(self):
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        setns(fd)
        try:
            self.ct = ctnl.Ct()
        finally:
            setns(home)
            os.close(fd)
            os.close(home)
        return self.ct

    def __exit__(self, *a):
        self.ct.s.close()


def test_udp_flow_reaches_the_new_holder_after_stop_and_start(lab):
    lab.listen(lab.guest, "udp", "0.0.0.0", 5000, "A")
    lab.listen(lab.guest2, "udp", "0.0.0.0", 5000, "B")
    a, b = vm("cta", UA, "192.168.122.10"), vm("ctb", UB, "192.168.122.11")
    lab.start(a)
    flow = Flow(lab)
    flow.next_from("A", 3)
    # Left alone, this entry keeps the flow on A whatever the maps say.
    assert entries_to(lab, "192.168.122.10"), "the flow's conntrack entry (DNAT to A) should exist"
    lab.stop(a)
    assert entries_to(lab, "192.168.122.10") == [], "stopping A should delete its flow's conntrack entry"
    lab.start(b)
    assert flow.next_from("B", 1.0) <= 1.0
    assert entries_to(lab, "192.168.122.10") == []


def test_tcp_connection_to_the_old_target_ends(lab):
    for ns, tag in ((lab.guest, "A"), (lab.guest2, "B")):
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO, tag],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lab.procs.append(p)
        assert p.stdout.readline().strip() == b"ready"
    a, b = vm("cta", UA, "192.168.122.10", "tcp"), vm("ctb", UB, "192.168.122.11", "tcp")
    lab.start(a)
    client = textwrap.dedent("""
        import socket, sys
        s = socket.create_connection(("203.0.113.1", 7000), timeout=2); f = s.makefile()
        s.sendall(b"one\\n"); print(f.readline().strip(), flush=True)
        sys.stdin.readline()
        try:
            s.sendall(b"two\\n"); line = f.readline().strip()
            print(line or "CLOSED", flush=True)
        except OSError as e:
            print("ERROR", type(e).__name__, flush=True)
    """)
    c = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", client],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.procs.append(c)
    assert c.stdout.readline().decode().strip() == "A one"
    assert entries_to(lab, "192.168.122.10"), "the connection's conntrack entry (DNAT to A) should exist"
    lab.stop(a)
    lab.start(b)
    c.stdin.write(b"go\n")
    c.stdin.flush()
    answer = c.stdout.readline().decode().strip()
    # Without the deletion the old entry keeps translating: "A two" (A's namespace still listens).
    assert not answer.startswith("A "), answer
    assert answer.startswith("ERROR") or answer == "CLOSED", answer
    # A new connection reaches the new holder.
    r = sh(sys.executable, "-c", "import socket; s = socket.create_connection(('203.0.113.1', 7000), timeout=2); "
           "s.sendall(b'three\\n'); print(s.makefile().readline().strip())", ns=lab.client, check=False)
    assert r.stdout.decode().strip() == "B three", r


def test_unrelated_flows_are_kept(lab):
    """Only what the removed forward created goes: another VM's flow and unrelated entries stay."""
    lab.listen(lab.guest, "udp", "0.0.0.0", 5000, "A")
    lab.listen(lab.guest2, "udp", "0.0.0.0", 5001, "B")
    a = vm("cta", UA, "192.168.122.10")
    b = domain_xml("ctb", UB, "<vp:portForward proto='udp' guest='192.168.122.11'>"
                              "<vp:range start='7001' to='5001'/></vp:portForward>", macs=("52:54:00:aa:bb:02",))
    lab.start(a)
    lab.start(b)
    fa, fb = Flow(lab, 7000), None
    fa.next_from("A", 3)
    assert lab.connect(lab.client, "udp", "203.0.113.1", 7001).startswith("B ")
    with ctnl_in(lab.host) as ct:
        ct.create_udp(ctnl.unrelated(1000))
    lab.stop(a)
    assert entries_to(lab, "192.168.122.10") == []
    assert entries_to(lab, "192.168.122.11", 5001), "VM B's flow should keep its entry"
    with ctnl_in(lab.host) as ct:
        assert sum(1 for e in ct.dump() if e[0][0].startswith("10.200.")) == 1000


def test_lease_move_sends_the_flow_to_the_new_address(lab):
    """The agent follows a lease to a new address: the flow follows at once, not when it ends."""
    mac = "52:54:00:aa:bb:01"
    pending = domain_xml("leaseflow", UA, "<vp:portForward proto='tcp'><vp:range start='2222' to='22'/>"
                                          "</vp:portForward><vp:portForward proto='udp'>"
                                          "<vp:range start='7000' to='5000'/></vp:portForward>")
    lab.listen(lab.guest, "udp", "0.0.0.0", 5000, "old")
    lab.listen(lab.guest2, "udp", "0.0.0.0", 5000, "new")
    write_leases(lab, [(mac, "192.168.122.10")])
    agent = start_agent(lab)
    try:
        live = running(lab, pending)
        lab.start(live)
        wait(lambda: guest_of_2222(lab) == "192.168.122.10", what="forward from the lease")
        flow = Flow(lab)
        flow.next_from("old", 3)
        assert entries_to(lab, "192.168.122.10")
        # The guest's address moves (same VM; the second namespace stands in for its new address).
        write_leases(lab, [(mac, "192.168.122.11")])
        wait(lambda: guest_of_2222(lab) == "192.168.122.11", what="forward following the lease")
        assert flow.next_from("new", 1.0) <= 1.0
        assert entries_to(lab, "192.168.122.10") == []
    finally:
        agent.stop()


def test_an_address_a_guard_stops_allowing_loses_its_flows(tmp_path):
    """A guard's allowed address moves with the lease (NAT network layout): the flows of the old
    address go in the same step (both directions), so they do not go on as if still allowed."""
    from conftest import BIN, require_root
    from test_guard import GuardLab
    require_root()
    glab = GuardLab(tmp_path)
    glab.layout = "nat"
    try:
        glab.build_bridge("virbr0")
        with open(glab.run_dir / "network" / "default.xml", "w") as f:  # no reservation: the lease decides
            f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                    "<forward mode='nat'/><bridge name='virbr0'/>"
                    "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
        glab.write_lease("192.168.122.10")
        xml = glab.xml("<vp:guard/>", "nat")
        glab.start(xml)
        assert [a["address"] for a in glab.guards_json()[0]["addresses"]] == ["192.168.122.10"]
        # libvirt's NAT rules make the host track connections; a nat chain stands in for them.
        sh("nft", "add table ip libvirt_nat; add chain ip libvirt_nat post { type nat hook postrouting priority 100; }; "
           "add rule ip libvirt_nat post ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade",
           ns=glab.host)
        # A flow from the guest to the host (one UDP datagram, tracked in the host namespace).
        glab.listen(glab.host, "udp", "192.168.122.1", 5300, "host")
        assert glab.connect(glab.guest, "udp", "192.168.122.1", 5300).startswith("host ")
        with ctnl_in(glab.host) as ct:
            assert [e for e in ct.dump() if e[0][0] == "192.168.122.10"], "the guest's flow should be tracked"
        glab.write_lease("192.168.122.50")
        r = glab.hook(xml, "reconnect")
        assert r.returncode == 0, r.stderr.decode()
        assert [a["address"] for a in glab.guards_json()[0]["addresses"]] == ["192.168.122.50"]
        with ctnl_in(glab.host) as ct:
            left = [e for e in ct.dump() if "192.168.122.10" in (e[0][0], e[1][0])]
        assert left == [], left
    finally:
        glab.cleanup()


def test_the_flow_record_survives_a_rebuilt_table(lab):
    """Someone deletes a chain; the next start rebuilds the table from the journal in one batch.
    The kernel's record of translated connections is carried over, so a later stop still finds
    the flows by tuple (without it, they would keep reaching the stopped VM)."""
    lab.listen(lab.guest, "udp", "0.0.0.0", 5000, "A")
    a = vm("cta", UA, "192.168.122.10")
    b = domain_xml("ctb", UB, "<vp:portForward proto='tcp' guest='192.168.122.11'>"
                              "<vp:range start='7001' to='22'/></vp:portForward>", macs=("52:54:00:aa:bb:02",))
    lab.start(a)
    flow = Flow(lab)
    flow.next_from("A", 3)
    sh("nft", "delete", "chain", "inet", "virtport", "prerouting", ns=lab.host)
    lab.start(b)  # heals: the table rebuilt from the journal
    assert "chain prerouting" in sh("nft", "list", "table", "inet", "virtport", ns=lab.host).stdout.decode()
    assert entries_to(lab, "192.168.122.10")
    lab.stop(a)
    assert entries_to(lab, "192.168.122.10") == [], "the stop should still find the flow after the rebuild"


def test_uninstall_deletes_the_flows_of_the_forwards_it_takes_down(lab):
    lab.listen(lab.guest, "udp", "0.0.0.0", 5000, "A")
    lab.start(vm("cta", UA, "192.168.122.10"))
    flow = Flow(lab)
    flow.next_from("A", 3)
    assert entries_to(lab, "192.168.122.10")
    r = lab.virtport("uninstall")
    assert r.returncode == 0, r.stderr.decode()
    assert lab.nft_json() is None
    # The flow keeps sending; its next packets are not translated any more.
    assert entries_to(lab, "192.168.122.10") == []


@pytest.mark.parametrize("unrelated,elsewhere", [(0, 0), (300, 0), (0, 60000)],
                         ids=["few-entries", "many-entries", "busy-host-table"])
def test_a_restart_deletes_what_flows_left_untranslated_on_every_released_port(lab, unrelated, elsewhere):
    """A VM stopped and started again (a reboot): while its ports had no forward, packets to them
    were tracked untranslated, and such an entry would keep its flow off the forward. `start`
    deletes them on every port it takes back that was released lately: by one filtered walk per
    port while walks are cheap, by one dump when the host's table is busy (60,000 entries in
    another namespace make each walk cost milliseconds); entries to other ports and unrelated ones
    stay."""
    if elsewhere:
        busy = f"vpt-busy-{os.getpid()}"
        sh("ip", "netns", "add", busy)
        try:
            with ctnl_in(busy) as ct:
                ct.create_udp(ctnl.unrelated(elsewhere))
            _restart_case(lab, unrelated)
        finally:
            sh("ip", "netns", "del", busy, check=False)
        return
    _restart_case(lab, unrelated)


def _restart_case(lab, unrelated):
    # Four ports: with a busy table the first walk is timed and the other three go by one dump.
    four = domain_xml("cta", UA, "".join("<vp:portForward proto='udp' guest='192.168.122.10'>"
                                        f"<vp:range start='{p}' to='{p - 2000}'/></vp:portForward>"
                                        for p in (7000, 7002, 7006, 7008)),
                     macs=("52:54:00:aa:bb:01",))
    lab.start(four)
    lab.stop(four)
    with ctnl_in(lab.host) as ct:
        if unrelated:
            ct.create_udp(ctnl.unrelated(unrelated))
        # What the client's packets left while no forward held the ports: untranslated entries.
        ct.create_udp([("203.0.113.2", "203.0.113.1", 40001, 7000), ("203.0.113.2", "203.0.113.1", 40002, 7002),
                       ("203.0.113.2", "203.0.113.1", 40003, 7004), ("203.0.113.2", "203.0.113.1", 40004, 7006),
                       ("203.0.113.2", "203.0.113.1", 40005, 7008), ("203.0.113.2", "203.0.113.1", 40006, 7008)])

    def left():
        with ctnl_in(lab.host) as ct:
            entries = ct.dump()
        return (sorted(e[0][4] for e in entries if e[0][0] == "203.0.113.2" and e[0][1] == "203.0.113.1"),
                sum(1 for e in entries if e[0][0].startswith("10.200.")))

    assert left() == ([7000, 7002, 7004, 7006, 7008, 7008], unrelated)
    lab.start(four)
    assert left() == ([7004], unrelated), "the released ports' untranslated entries should be gone, the rest kept"
