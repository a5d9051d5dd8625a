"""What `virtport agent` watches besides hook requests (README "Agent"): DHCP lease files
(inotify), nf_tables notifications (self-heal), and its Prometheus textfile. Real agent process,
real kernel nftables in the lab's host namespace, real traffic; libvirt's files are the lab's
(status files of running domains, dnsmasq's lease list written by rename as leaseshelper does).
The libvirt event connection is tested against a real libvirtd in tests/libvirt."""
import json
import os
import signal
import subprocess
import time

from conftest import domain_xml, sh
from test_agent import Agent, agent_socket_config

U1 = "61616161-1111-4111-8111-111111111111"
MAC = "52:54:00:aa:bb:01"
PENDING = domain_xml("leaseweb", U1, """
  <vp:portForward proto='tcp'><vp:range start='2222' to='22'/></vp:portForward>
""")
FIXED = domain_xml("fixedweb", U1, """
  <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>
""")


def running(lab, xml):
    """The domain as libvirt's network hook sees it running: its status file, with the bridge."""
    live = xml.replace("<source network='default'/>", "<source network='default' bridge='br0'/>")
    lab.write_status(live)
    return live


def start_agent(lab):
    """An agent on the lab's own socket (the hooks hand it their work too)."""
    if "agent_socket" not in open(lab.config).read():
        agent_socket_config(lab)
    return Agent(lab)


def write_leases(lab, leases):
    """dnsmasq's lease list for br0, replaced by rename like libvirt's leaseshelper does."""
    d = lab.dir / "var-lib-libvirt" / "dnsmasq"
    d.mkdir(parents=True, exist_ok=True)
    body = [{"ip-address": ip, "mac-address": mac, "hostname": "vm", "expiry-time": int(time.time()) + 3600}
            for mac, ip in leases]
    tmp = d / "br0.status.new"
    tmp.write_text(json.dumps(body, indent=2))
    os.rename(tmp, d / "br0.status")


def wait(pred, timeout=5.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def guest_of_2222(lab):
    for name, key, value in lab.kernel_forwards():
        if key == ("tcp", 2222):
            return value[0]
    return None


def test_a_lease_completes_a_pending_forward_and_the_forward_follows_it(lab):
    log = lab.syslog()
    write_leases(lab, [])
    live = running(lab, PENDING)
    lab.start(live)
    assert [r["state"] for r in lab.db_rows()] == ["pending"]
    assert guest_of_2222(lab) is None
    agent = start_agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "guest2")

    # A lease for a MAC of no running VM changes nothing.
    before = lab.db_history()
    write_leases(lab, [("52:54:00:99:99:99", "192.168.122.50")])
    time.sleep(0.3)
    assert lab.db_history() == before and guest_of_2222(lab) is None

    write_leases(lab, [("52:54:00:99:99:99", "192.168.122.50"), (MAC, "192.168.122.10")])
    wait(lambda: guest_of_2222(lab) == "192.168.122.10", what="the forward completed from the lease")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest1 ")
    assert log.wait_for("completed: domain 'leaseweb' tcp *:2222 -> 192.168.122.10:22, guest address from dhcp-lease")

    # The lease moves: old element out, new in, one change; history says why.
    write_leases(lab, [(MAC, "192.168.122.11")])
    wait(lambda: guest_of_2222(lab) == "192.168.122.11", what="the forward following the lease")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest2 ")
    hist = [(h["action"], h["guest_addr"] or "", h["reason"]) for h in lab.db_history()]
    assert sorted(h[:2] for h in hist[-2:]) == [("add", "192.168.122.11"), ("remove", "192.168.122.10")], hist
    assert all("agent: DHCP lease on br0, 52:54:00:aa:bb:01 -> 192.168.122.11" in h[2] for h in hist[-2:]), hist

    # A garbage or half-written file is ignored with a warning: the forward stays.
    d = lab.dir / "var-lib-libvirt" / "dnsmasq"
    (d / "br0.status").write_text('[{"ip-address": "192.168.122.1')
    assert log.wait_for("is not a complete lease list (half-written or garbage): ignored")
    (d / "br0.status").write_bytes(b"\x00\xffgarbage")
    time.sleep(0.3)
    assert guest_of_2222(lab) == "192.168.122.11"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest2 ")
    agent.stop()


def test_an_agent_killed_mid_event_completes_the_forward_when_it_comes_back(lab):
    write_leases(lab, [])
    live = running(lab, PENDING)
    lab.start(live)
    agent = start_agent(lab)
    agent.proc.send_signal(signal.SIGKILL)
    write_leases(lab, [(MAC, "192.168.122.10")])
    agent.proc.wait(timeout=5)
    assert guest_of_2222(lab) is None
    # Restarted: the lease it missed is read at start, the forward completed; nothing leaked.
    start_agent(lab)
    wait(lambda: guest_of_2222(lab) == "192.168.122.10", what="the forward completed after the restart")
    rows = lab.db_rows()
    assert [(r["state"], r["guest_addr"]) for r in rows] == [("applied", "192.168.122.10")], rows
    assert len(lab.kernel_forwards()) == 1
    lab.stop(live)
    assert lab.kernel_forwards() == set() and lab.db_rows() == []


def test_flushed_or_deleted_rules_are_put_back_and_its_own_changes_are_not_healed(lab):
    log = lab.syslog()
    metrics = lab.dir / "virtport.prom"
    with open(lab.config, "a") as f:
        f.write(f'[agent]\nmetrics_file = "{metrics}"\n')
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(FIXED)
    want = lab.kernel_forwards()
    assert len(want) == 1
    start_agent(lab)

    sh("nft", "flush", "ruleset", ns=lab.host)
    wait(lambda: lab.kernel_forwards() == want, what="the table rebuilt after nft flush ruleset")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest1 ")
    line = log.wait_for("healed: table inet virtport rebuilt from the journal")[0]
    assert "(nft)" in line, line

    sh("nft", "delete", "element", "inet", "virtport", "fwd4", "{ tcp . 2222 }", ns=lab.host)
    wait(lambda: lab.kernel_forwards() == want, what="the deleted element re-added")
    assert log.wait_for("1 map elements of table inet virtport re-added")

    # The hooks' own stop (another process) and start: nothing to heal, nothing logged as healed.
    healed = len(log.lines("healed:"))
    lab.stop(FIXED)
    lab.start(FIXED)
    time.sleep(0.3)
    assert len(log.lines("healed:")) == healed
    assert lab.kernel_forwards() == want

    text = wait(lambda: metrics.exists() and "virtport_heals_total 2" in metrics.read_text() and metrics.read_text(),
                what="the metrics file")
    assert 'virtport_forwards{state="applied"} 1' in text
    assert 'virtport_event_duration_seconds_count{source="heal"} 2' in text


def test_a_tool_that_keeps_deleting_makes_the_agent_back_off_and_say_so(lab):
    log = lab.syslog()
    lab.start(FIXED)
    want = lab.kernel_forwards()
    start_agent(lab)
    for i in range(3):
        sh("nft", "delete", "table", "inet", "virtport", ns=lab.host)
        wait(lambda: lab.kernel_forwards() == want, what=f"heal {i + 1}")
    assert log.wait_for("backing off, the next re-apply waits 1 s")
    # The 4th deletion waits out the back-off, then is healed all the same.
    t0 = time.monotonic()
    sh("nft", "delete", "table", "inet", "virtport", ns=lab.host)
    time.sleep(0.3)
    assert lab.nft_json() is None
    wait(lambda: lab.kernel_forwards() == want, timeout=5, what="the heal after the back-off")
    assert time.monotonic() - t0 >= 0.9
    assert log.wait_for("backing off, the next re-apply waits 2 s")


def test_libvirts_accept_rule_deleted_by_hand_is_put_back(lab):
    """The rule virtport placed in libvirt's firewall (iptables backend) deleted with iptables -D:
    libvirt's reject would stop every forward; the agent puts it back in front."""
    from test_libvirt_network import libvirt_iptables, write_network
    log = lab.syslog()
    write_network(lab)
    libvirt_iptables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(FIXED)
    start_agent(lab)
    spec = "-d 192.168.122.0/24 -o br0 -m conntrack --ctstate DNAT -m comment --comment virtport:br0 -j ACCEPT"
    sh("iptables", "-w", "-D", "FORWARD", *spec.split(), ns=lab.host)
    wait(lambda: sh("iptables", "-w", "-C", "FORWARD", *spec.split(), ns=lab.host, check=False).returncode == 0,
         what="the accept rule back")
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
    assert "virtport:br0" in rules[1] and sum("virtport" in r for r in rules) == 1, rules
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest1 ")
    assert log.wait_for("healed: libvirt's accept rule for network default")
