"""Issue 3 without a daemon: libvirt's own firewall (both backends, reproduced in the host namespace),
guest addresses from reservations and leases, hairpin, network `started`. The same code paths run
under a real libvirtd in tests/libvirt/."""
import json
import os
import re
import time

import pytest

from conftest import ROOT, domain_xml, sh

U1 = "33333333-3333-4333-8333-333333333333"
MAC1 = "52:54:00:aa:bb:01"
NET_XML = """<network>
  <name>default</name>
  <uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>
  <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
  <bridge name='br0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='{netmask}'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/>{hosts}</dhcp>
  </ip>{extra}
</network>"""


def write_network(lab, hosts="", netmask="255.255.255.0", extra=""):
    xml = NET_XML.format(hosts=hosts, netmask=netmask, extra=extra)
    with open(lab.run_dir / "network" / "default.xml", "w") as f:
        f.write(f"<networkstatus><class_id bitmap='0-2' next='3'/><floor sum='0'/>{xml}</networkstatus>")
    return xml


def libvirt_iptables(lab):
    """The rules libvirt 9.0 installs for the default network (LIBVIRT-LAB.md), on br0."""
    ns = lab.host
    for table, chains in (("filter", ["LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"]), ("nat", ["LIBVIRT_PRT"])):
        for c in chains:
            sh("iptables", "-w", "-t", table, "-N", c, ns=ns)
    for c in ("LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"):
        sh("iptables", "-w", "-A", "FORWARD", "-j", c, ns=ns)
    sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-j", "LIBVIRT_PRT", ns=ns)
    add_libvirt_fwi(lab)
    sh("iptables", "-w", "-A", "LIBVIRT_FWO", "-s", "192.168.122.0/24", "-i", "br0", "-j", "ACCEPT", ns=ns)
    sh("iptables", "-w", "-A", "LIBVIRT_FWO", "-i", "br0", "-j", "REJECT", ns=ns)
    sh("iptables", "-w", "-A", "LIBVIRT_FWX", "-i", "br0", "-o", "br0", "-j", "ACCEPT", ns=ns)
    sh("iptables", "-w", "-t", "nat", "-A", "LIBVIRT_PRT", "-s", "192.168.122.0/24", "!", "-d", "192.168.122.0/24",
       "-j", "MASQUERADE", ns=ns)


def add_libvirt_fwi(lab):
    # libvirt inserts (-I): reject first, then the established accept above it.
    sh("iptables", "-w", "-I", "LIBVIRT_FWI", "-o", "br0", "-j", "REJECT", "--reject-with", "icmp-port-unreachable", ns=lab.host)
    sh("iptables", "-w", "-I", "LIBVIRT_FWI", "-d", "192.168.122.0/24", "-o", "br0", "-m", "conntrack",
       "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT", ns=lab.host)


def libvirt_nftables(lab):
    """libvirt >= 10.4's nftables backend, from the fixture in tests/fixtures/, on br0."""
    with open(os.path.join(ROOT, "tests", "fixtures", "libvirt-10.4-nftables-nat-default.nft")) as f:
        text = f.read().replace("virbr0", "br0")
    path = lab.dir / "libvirt-10.4.nft"
    path.write_text(text)
    sh("nft", "-f", str(path), ns=lab.host)


def fwd_xml(guest=""):
    g = f" guest='{guest}'" if guest else ""
    return domain_xml("vm1", U1, f"<vp:portForward proto='tcp'{g}><vp:range start='2222' to='22'/></vp:portForward>")


@pytest.mark.parametrize("netmask,subnet", [("255.255.255.0", "192.168.122.0/24"),
                                            ("255.255.240.0", "192.168.112.0/20")])
def test_iptables_backend_rule_lets_forward_in_and_is_removed(lab, netmask, subnet):
    write_network(lab, netmask=netmask)
    libvirt_iptables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    xml = fwd_xml("192.168.122.10")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
    # written over netlink, read back by iptables as exactly this spec, first in FORWARD
    spec = f"-d {subnet} -o br0 -m conntrack --ctstate DNAT -m comment --comment virtport:br0 -j ACCEPT"
    assert rules[1] == f"-A FORWARD {spec}".replace("virtport:br0", '"virtport:br0"'), rules
    assert sum("virtport" in r for r in rules) == 1
    # iptables -C compares the rule byte for byte with what iptables itself would write
    assert sh("iptables", "-w", "-C", "FORWARD", *spec.split(), ns=lab.host, check=False).returncode == 0
    assert "virtport" not in sh("iptables", "-w", "-S", "LIBVIRT_FWI", ns=lab.host).stdout.decode()
    # the table stays readable and writable by iptables (libvirt's own later calls)
    sh("iptables", "-w", "-A", "LIBVIRT_FWO", "-i", "br0", "-j", "REJECT", ns=lab.host)
    sh("iptables-save", ns=lab.host)
    # a second VM start does not add a second rule
    lab.start(xml)
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode()
    assert rules.count("virtport") == 1
    lab.stop(xml)
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode()
    assert "virtport" not in rules
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")


def test_iptables_backend_ipv6_rule_is_what_ip6tables_writes(lab):
    """The IPv6 twin, written over netlink into ip6 filter: ip6tables reads it back as its own spec
    (a /64 and a /52, whose prefix ends inside a byte), and it goes with the last forward."""
    for prefix, subnet in (("64", "fd00:122::/64"), ("52", "fd00:122::/52")):
        write_network(lab, extra=f"<ip family='ipv6' address='fd00:122::1' prefix='{prefix}'/>")
        sh("ip6tables", "-w", "-N", "LIBVIRT_FWI", ns=lab.host, check=False)
        sh("ip6tables", "-w", "-A", "FORWARD", "-j", "LIBVIRT_FWI", ns=lab.host, check=False)
        xml = domain_xml("vm6", U1, "<vp:portForward proto='tcp' guest='fd00:122::10'><vp:range start='2222' to='22'/>"
                         "</vp:portForward>")
        lab.start(xml)
        spec = f"-d {subnet} -o br0 -m conntrack --ctstate DNAT -m comment --comment virtport:br0 -j ACCEPT"
        rules = sh("ip6tables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
        assert rules[1] == f"-A FORWARD {spec}".replace("virtport:br0", '"virtport:br0"'), rules
        assert sh("ip6tables", "-w", "-C", "FORWARD", *spec.split(), ns=lab.host, check=False).returncode == 0
        lab.stop(xml)
        assert "virtport" not in sh("ip6tables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode()


def test_without_virtport_rule_libvirt_rejects(lab):
    """The control: libvirt's reject is real in this topology (DNAT alone is not enough)."""
    write_network(lab)
    libvirt_iptables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    xml = fwd_xml("192.168.122.10")
    lab.start(xml)
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
    ours = [r for r in rules if "virtport" in r][0]
    sh("iptables", "-w", *ours.replace("-A", "-D", 1).replace('"', "").split(), ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")


def test_network_started_rebuilds_and_puts_rule_back_in_front(lab):
    net = write_network(lab)
    libvirt_iptables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(fwd_xml("192.168.122.10"))
    # a firewall reload: libvirt's chains are rebuilt (its FORWARD jumps now sit above our rule)
    # and virtport's own table is flushed
    for c in ("LIBVIRT_FWO", "LIBVIRT_FWI", "LIBVIRT_FWX"):
        sh("iptables", "-w", "-I", "FORWARD", "-j", c, ns=lab.host)
    sh("nft", "flush", "table", "inet", "virtport", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    hook = f"<hookData>{net}</hookData>"
    r = lab.virtport("hook", "network", "default", "started", "begin", "-", input=hook)
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
    assert "virtport:br0" in rules[1] and sum("virtport" in r for r in rules) == 1, rules
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"


def test_vm_start_puts_a_displaced_rule_back_in_front(lab):
    """libvirt 9.0 re-inserts its rules on SIGHUP/restart without calling any hook; the next hook
    that applies a forward of that network (start, reconnect) restores the order."""
    libvirt_iptables(lab)
    write_network(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    xml = fwd_xml("192.168.122.10")
    lab.start(xml)
    sh("iptables", "-w", "-I", "FORWARD", "-j", "LIBVIRT_FWI", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    r = lab.hook(xml, "reconnect")
    assert r.returncode == 0, r.stderr
    rules = sh("iptables", "-w", "-S", "FORWARD", ns=lab.host).stdout.decode().splitlines()
    assert "virtport:br0" in rules[1], rules
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"


def test_nftables_backend_from_libvirt_10_4_fixture(lab):
    write_network(lab)
    libvirt_nftables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    xml = fwd_xml("192.168.122.10")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    chain = sh("nft", "-a", "list", "chain", "ip", "libvirt_network", "guest_input", ns=lab.host).stdout.decode()
    lines = [l.strip() for l in chain.splitlines() if "handle" in l and "chain" not in l]
    # written over netlink, printed by nft as the rule `nft insert rule` would have made
    assert re.fullmatch(r'oifname "br0" ip daddr 192\.168\.122\.0/24 ct status dnat counter packets \d+ bytes \d+ '
                        r'accept comment "virtport:br0" # handle \d+', lines[0]), chain
    # libvirt inserts its own rules on top again: the next VM start puts ours back in front
    sh("nft", "insert", "rule", "ip", "libvirt_network", "guest_input", "oif", "br0", "counter", "reject", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    lab.start(xml)
    chain = sh("nft", "-a", "list", "chain", "ip", "libvirt_network", "guest_input", ns=lab.host).stdout.decode()
    lines = [l.strip() for l in chain.splitlines() if "handle" in l and "chain" not in l]
    assert 'comment "virtport:br0"' in lines[0] and chain.count("virtport") == 1, chain
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    lab.stop(xml)
    chain = sh("nft", "list", "chain", "ip", "libvirt_network", "guest_input", ns=lab.host).stdout.decode()
    assert "virtport" not in chain
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")


def test_guest_address_from_reservation_then_lease_then_pending(lab):
    write_network(lab, hosts=f"<host mac='{MAC1}' ip='192.168.122.10'/>")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    xml = fwd_xml()
    plan = json.loads(lab.virtport("plan", input=xml, check=True).stdout)
    assert plan["forwards"][0]["guest_source"] == "dhcp-reservation"
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    lab.stop(xml)

    write_network(lab)  # no reservation: the dnsmasq status file answers
    leases = lab.dir / "var-lib-libvirt" / "dnsmasq"
    leases.mkdir(parents=True)
    (leases / "br0.status").write_text(json.dumps([
        {"ip-address": "192.168.122.10", "mac-address": MAC1, "hostname": "vm1", "expiry-time": int(time.time()) + 3600},
        {"ip-address": "192.168.122.99", "mac-address": "52:54:00:00:00:99", "expiry-time": int(time.time()) + 3600}]))
    plan = json.loads(lab.virtport("plan", input=xml, check=True).stdout)
    assert (plan["forwards"][0]["guest_source"], plan["forwards"][0]["guest_address"]) == ("dhcp-lease", "192.168.122.10")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    lab.stop(xml)

    (leases / "br0.status").write_text("[]")  # nothing answers: pending, not an error
    plan = json.loads(lab.virtport("plan", input=xml, check=True).stdout)
    assert plan["forwards"][0]["guest_source"] == "pending" and plan["forwards"][0]["guest_address"] is None
    lab.start(xml)
    assert lab.elements() == []
    listing = json.loads(lab.virtport("list", "--json", check=True).stdout)
    assert [m["state"] for m in listing] == ["pending"]


def test_hairpin_from_another_guest_and_host_access(lab):
    write_network(lab)
    libvirt_iptables(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(fwd_xml("192.168.122.10"))
    # a second guest on the same bridge reaches the forward through the host's addresses;
    # masquerade makes guest1 answer via the host, so the connection works
    assert lab.connect(lab.guest2, "tcp", "203.0.113.1", 2222) == "guest1 22 from 192.168.122.1"
    assert lab.connect(lab.guest2, "tcp", "192.168.122.1", 2222) == "guest1 22 from 192.168.122.1"
    # the host itself
    assert lab.connect(lab.host, "tcp", "203.0.113.1", 2222).startswith("guest1 22 from ")


def test_conflicts_refuse_second_vm_at_prepare(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    first = fwd_xml("192.168.122.10")
    lab.start(first)
    second = domain_xml("vm2", "44444444-4444-4444-8444-444444444444",
                        "<vp:portForward proto='tcp' guest='192.168.122.11'><vp:range start='2220' end='2230'/></vp:portForward>",
                        macs=("52:54:00:aa:bb:02",))
    r = lab.hook(second, "prepare")
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "2222" in lines[0] and "vm1" in lines[0], lines
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    # a port bound by a host process
    lab.listen(lab.host, "tcp", "0.0.0.0", 3333, "hostproc")
    third = domain_xml("vm3", "55555555-5555-4555-8555-555555555555",
                       "<vp:portForward proto='tcp' guest='192.168.122.11'><vp:range start='3333'/></vp:portForward>",
                       macs=("52:54:00:aa:bb:03",))
    r = lab.hook(third, "prepare")
    assert r.returncode == 2
    line = r.stderr.decode().strip()
    assert "3333" in line and "python" in line and "pid" in line, line


def test_policy_bounds_what_metadata_may_claim(lab):
    lab.write_config(policy='host_ports = ["2000-2999"]\nmax_forwards_per_domain = 1\n')
    low = domain_xml("vm1", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='22'/></vp:portForward>")
    r = lab.hook(low, "prepare")
    assert r.returncode == 2 and "22" in r.stderr.decode() and "policy" in r.stderr.decode()
    two = domain_xml("vm1", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2001'/>"
                                "<vp:range start='2500'/></vp:portForward>")
    r = lab.hook(two, "start")
    assert r.returncode == 2 and "policy" in r.stderr.decode()
    assert lab.nft_json() is None
