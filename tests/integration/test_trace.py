"""`virtport trace` (issue 24): real traffic from the client namespace through the host's real
nftables, each blocking table in turn, and the verdict the trace prints; its tables gone after.
`doctor` finds a killed trace's tables and foreign drops without traffic; `reconcile` removes them."""
import json
import os
import signal
import subprocess
import time

from conftest import BIN, domain_xml, sh

U1 = "24242424-2424-4242-8242-242424242424"
WEB = domain_xml("web1", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'>"
                             "<vp:range start='2222' to='22'/></vp:portForward>")


def trace(lab, *args):
    """Starts a trace in the host namespace; returns the process once its tables are in."""
    p = subprocess.Popen(["ip", "netns", "exec", lab.host, BIN, "trace", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lab.env())
    lab.procs.append(p)
    for _ in range(100):
        if "_trace_" in sh("nft", "list", "tables", ns=lab.host).stdout.decode():
            return p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"trace did not start: {p.communicate()}")


def finish(p):
    out, err = p.communicate(timeout=30)
    print(out.decode(), err.decode())   # shown with -s: the README's examples come from here
    return p.returncode, out.decode(), err.decode()


def no_trace_tables(lab):
    return "_trace_" not in sh("nft", "list", "tables", ns=lab.host).stdout.decode()


def up(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.start(WEB)


def test_clean_path_reaches_the_guest(lab):
    up(lab)
    p = trace(lab, "web1", "tcp", "2222", "--timeout", "10")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    lines = out.strip().splitlines()
    assert lines[-1].startswith("verdict: reached the guest"), out
    assert any("inet virtport prerouting" in l and "(virtport's forwards)" in l for l in lines), out
    assert any("conntrack: new" in l for l in lines), out
    assert no_trace_tables(lab)


def test_reject_in_a_foreign_inet_filter_table(lab):
    up(lab)
    sh("nft", "-f", "-", ns=lab.host, input=b"table inet filter {\n chain forward {\n type filter hook forward priority 0;\n"
       b" tcp dport 22 reject with tcp reset\n }\n}\n")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")  # the reject is real
    p = trace(lab, "tcp", "2222", "--timeout", "10", "--json")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    doc = json.loads(out)
    v = doc["verdict"]
    assert (v["result"], v["family"], v["table"], v["chain"]) == ("rejected", "inet", "filter", "forward"), doc
    assert v["owner"] == "someone's `inet filter`" and v["command"] == "nft -a list chain inet filter forward"
    assert "rejected by someone's `inet filter`" in doc["text"]
    assert no_trace_tables(lab)
    # doctor, without traffic: the same table and rule, and the command to see it.
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert len(found) == 1 and found[0]["status"] == "warn", found
    assert f"table inet filter, chain forward, rule handle {v['handle']}" in found[0]["problem"], found
    assert found[0]["fix"].startswith("nft -a list chain inet filter forward")
    # Gone: doctor says so.
    sh("nft", "delete", "table", "inet", "filter", ns=lab.host)
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert [f["status"] for f in found] == ["ok"], found


def test_libvirt_iptables_reject(lab):
    """libvirt 9.0's iptables backend (iptables-nft): LIBVIRT_FWI's reject, virtport's accept rule removed."""
    up(lab)
    # LIBVIRT_FWO first (guests' outgoing traffic: `-i br0`): doctor must see it cannot hit a
    # packet going *to* the guest, and name LIBVIRT_FWI's reject instead.
    sh("iptables", "-w", "-N", "LIBVIRT_FWO", ns=lab.host)
    sh("iptables", "-w", "-A", "FORWARD", "-j", "LIBVIRT_FWO", ns=lab.host)
    sh("iptables", "-w", "-A", "LIBVIRT_FWO", "-s", "192.168.122.0/24", "-i", "br0", "-j", "ACCEPT", ns=lab.host)
    sh("iptables", "-w", "-A", "LIBVIRT_FWO", "-i", "br0", "-j", "REJECT", ns=lab.host)
    sh("iptables", "-w", "-N", "LIBVIRT_FWI", ns=lab.host)
    sh("iptables", "-w", "-A", "FORWARD", "-j", "LIBVIRT_FWI", ns=lab.host)
    sh("iptables", "-w", "-A", "LIBVIRT_FWI", "-d", "192.168.122.0/24", "-o", "br0", "-m", "conntrack",
       "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT", ns=lab.host)
    sh("iptables", "-w", "-A", "LIBVIRT_FWI", "-o", "br0", "-j", "REJECT", "--reject-with", "icmp-port-unreachable", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    p = trace(lab, "tcp", "2222", "--timeout", "10")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    last = out.strip().splitlines()[-1]
    assert "rejected by libvirt's table ip filter, chain LIBVIRT_FWI" in last, out
    assert no_trace_tables(lab)
    # doctor sees it without traffic.
    r = lab.virtport("doctor", "--json")
    found = [f for f in json.loads(r.stdout) if f["check"] == "foreign drops"]
    assert len(found) == 1 and found[0]["status"] == "warn" and "chain LIBVIRT_FWI" in found[0]["problem"], found
    assert "nft -a list chain ip filter LIBVIRT_FWI" in found[0]["fix"]


def test_guard_drops_the_guests_reply(lab):
    """The guard allows .11 for the NIC, the guest answers from .10: the reply is dropped by the guard."""
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    xml = ("<domain type='kvm'><name>web1</name><uuid>" + U1 + "</uuid><metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>"
           "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>"
           "<vp:guard ip='192.168.122.11'/></vp:virtport></metadata><memory unit='KiB'>65536</memory><devices>"
           "<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default' bridge='br0'/>"
           "<target dev='vnet0'/></interface></devices></domain>")
    # The guest's NIC has the guarded MAC, and both sides know each other's MAC already: only the
    # guest's IPv4 source (.10, the guard allows .11) is wrong, so the TCP reply is what the guard drops.
    sh("ip", "link", "set", "eth0", "address", "52:54:00:aa:bb:01", ns=lab.guest)
    br_mac = json.loads(sh("ip", "-j", "link", "show", "br0", ns=lab.host).stdout)[0]["address"]
    sh("ip", "neigh", "replace", "192.168.122.1", "lladdr", br_mac, "dev", "eth0", "nud", "permanent", ns=lab.guest)
    sh("ip", "neigh", "replace", "192.168.122.10", "lladdr", "52:54:00:aa:bb:01", "dev", "br0", "nud", "permanent", ns=lab.host)
    lab.start(xml)
    if "table bridge virtport" not in sh("nft", "list", "tables", ns=lab.host).stdout.decode():
        import pytest
        pytest.skip("no guard table in this layout")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    p = trace(lab, "tcp", "2222", "--timeout", "10")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    last = out.strip().splitlines()[-1]
    assert "the guest's reply was dropped by virtport's guard table bridge virtport" in last, out


def test_sigterm_removes_the_tables_and_a_killed_trace_is_found_and_reconciled(lab):
    up(lab)
    p = trace(lab, "tcp", "2222", "--timeout", "60")
    p.send_signal(signal.SIGTERM)
    rc, out, err = finish(p)
    assert no_trace_tables(lab), out
    p = trace(lab, "tcp", "2222", "--timeout", "60")
    p.kill()
    p.wait()
    assert not no_trace_tables(lab)
    r = lab.virtport("doctor", "--json")
    found = [f for f in json.loads(r.stdout) if f["check"] == "trace tables"]
    assert found[0]["status"] == "fail" and found[0]["fix"] == "virtport reconcile", found
    r = lab.virtport("reconcile")
    assert r.returncode == 0 and "delete-trace-table" in r.stdout.decode(), r
    assert no_trace_tables(lab)


def test_usage_errors_exit_2(lab):
    for args in (["trace"], ["trace", "icmp", "22"], ["trace", "tcp", "0"], ["trace", "tcp", "22", "--count", "x"],
                 ["trace", "tcp", "22", "--from", "nope"]):
        r = lab.virtport(*args)
        assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) >= 1, (args, r)


def test_libvirt_nftables_backend_reject(lab):
    """libvirt >= 10.4's nftables backend (the fixture): virtport's accept rule first in guest_input,
    then libvirt's reject put in front of it (what libvirt does when it rebuilds its rules)."""
    from test_libvirt_network import libvirt_nftables, write_network
    write_network(lab)
    libvirt_nftables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.start(WEB)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")
    # virtport's tagged accept rule comes first: doctor's static check does not blame libvirt.
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert [f["status"] for f in found] == ["ok"], found
    sh("nft", "insert", "rule", "ip", "libvirt_network", "guest_input", "oif", "br0", "counter", "reject", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    p = trace(lab, "web1", "tcp", "2222", "--timeout", "10")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    last = out.strip().splitlines()[-1]
    assert last.startswith("verdict: the packet was rejected by libvirt's table ip libvirt_network, chain guest_input"), out
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert found[0]["status"] == "warn" and "table ip libvirt_network, chain guest_input" in found[0]["problem"], found


def test_drop_before_virtports_dnat(lab):
    """A foreign prerouting chain ahead of virtport's DNAT (priority raw) drops the host port:
    the trace names it, and doctor finds it without traffic."""
    up(lab)
    sh("nft", "-f", "-", ns=lab.host, input=b"table inet raw {\n chain prerouting {\n type filter hook prerouting priority -300;\n"
       b" tcp dport 2222 drop\n tcp dport 9999 drop\n }\n}\n")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert len(found) == 1 and "table inet raw, chain prerouting, rule handle" in found[0]["problem"], found
    handle = int(found[0]["problem"].split("rule handle ")[1].split()[0])
    p = trace(lab, "tcp", "2222", "--timeout", "10", "--json")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    v = json.loads(out)["verdict"]
    assert (v["result"], v["table"], v["chain"], v["handle"]) == ("dropped", "raw", "prerouting", handle), v
    # The second rule (another port) is not blamed: the first rule is the one for 2222.
    rules = sh("nft", "-a", "list", "chain", "inet", "raw", "prerouting", ns=lab.host).stdout.decode()
    assert f"tcp dport 2222 drop # handle {handle}" in rules, rules


def test_source_filter_drop_is_named(lab):
    """A forward with source= that does not list the client: the trace's verdict names virtport's
    source filter (table inet virtport_src) as the dropper, and doctor does not call it foreign."""
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    xml = domain_xml("web1", U1, "<vp:portForward proto='tcp' guest='192.168.122.10' source='198.51.100.0/24'>"
                                 "<vp:range start='2222' to='22'/></vp:portForward>")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    p = trace(lab, "web1", "tcp", "2222", "--timeout", "10", "--json")
    lab.connect(lab.client, "tcp", "203.0.113.1", 2222)
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    doc = json.loads(out)
    v = doc["verdict"]
    assert (v["result"], v["family"], v["table"], v["chain"]) == ("dropped", "inet", "virtport_src", "filter4"), doc
    assert v["owner"] == "virtport's source filter", v
    assert "dropped by virtport's source filter" in doc["text"], doc["text"]
    assert no_trace_tables(lab)
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "foreign drops"]
    assert [f["status"] for f in found] == ["ok"], found
