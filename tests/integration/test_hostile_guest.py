"""A guest is not trusted either (issue 21): a hostile stand-in guest attacks its neighbour and
the host through a real bridge, with crafted frames (tests/hostile.py, Debian's python3-scapy).

Topology (test_guard's GuardLab, both layouts: a NAT network's virbr0 and a plain br0):

    host ns    BRIDGE 192.168.122.1/24 fd00:122::1/64 (its EUI-64 link-local: "the router")
    guest ns   eth0 52:54:00:aa:bb:01 .10 fd00:122::10 -- vnet0   the attacker, guarded or not
    guest2 ns  eth0 52:54:00:aa:bb:02 .11 fd00:122::11 -- vnet1   the victim (unguarded)

Every check is judged by its effect at the victim (its neighbour table and routes, what its
dhclient binds, what its sockets or the host's receive, the host's DHCP leases) and runs twice:
first with no guard, proving the attack works, then with the attacker's port guarded.
"""
import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import sh
from test_guard import MAC1, MAC2, glab, guard_for  # noqa: F401  (glab: the two-layout fixture)

HOSTILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hostile.py")
PY = "/usr/bin/python3"  # Debian's, with python3-scapy
ME4, VICTIM4 = "192.168.122.10", "192.168.122.11"
ME6, VICTIM6 = "fd00:122::10", "fd00:122::11"
FOREIGN_MAC = "52:54:00:aa:bb:99"


def send(lab, name, **kw):
    sh(PY, HOSTILE, "send", "eth0", name, *[f"{k}={v}" for k, v in kw.items()], ns=lab.guest)


def link_local(lab, ns, dev):
    [a] = [a["local"] for i in json.loads(sh("ip", "-j", "-6", "addr", "show", "dev", dev, "scope", "link", ns=ns).stdout)
           for a in i["addr_info"] if "local" in a]
    return a


def mac_of(lab, ns, dev):
    return json.loads(sh("ip", "-j", "link", "show", "dev", dev, ns=ns).stdout)[0]["address"]


def neigh(lab, address):
    """The victim's neighbour entry for `address`: its link-layer address, or None."""
    out = json.loads(sh("ip", "-j", "-6", "neigh", "show", address, "dev", "eth0", ns=lab.guest2).stdout or b"[]")
    return out[0].get("lladdr") if out else None


def poke(lab, address):
    """The victim sends a datagram to `address` on its link (resolving it first)."""
    sh(PY, "-c", "import socket, sys; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
       "s.sendto(b'x', (sys.argv[1], 9, 0, socket.if_nametoindex('eth0')))", address, ns=lab.guest2)
    deadline = time.time() + 2
    while neigh(lab, address) is None and time.time() < deadline:
        time.sleep(0.05)


def settle():
    time.sleep(0.3)


def guarded(lab, extra="isolated='no'"):
    xml = lab.xml(guard_for(lab, extra), lab.layout)
    lab.start(xml)
    return xml


def drops(lab):
    [row] = lab.guards_json()
    return {k: v for k, v in row["dropped"].items() if v}


class Listener:
    """A UDP socket in namespace `ns`; `.sources()` are the source addresses of what it got."""

    def __init__(self, lab, ns, address, port=9999, seconds=30):
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, PY, HOSTILE, "listen", address, str(port), str(seconds)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lab.procs.append(self.p)
        assert self.p.stdout.readline().decode().strip() == "ready", self.p.stderr.read().decode()
        self.seen = []
        os.set_blocking(self.p.stdout.fileno(), False)

    def sources(self, wait=0.5):
        time.sleep(wait)
        data = self.p.stdout.read() or b""
        self.seen += data.decode().split()
        return set(self.seen)


# -- IPv6 link-local and neighbour discovery ---------------------------------------------------

def router_entry(lab):
    """Gives the victim a fresh neighbour entry for the router's link-local; returns (ll, mac)."""
    rll, rmac = link_local(lab, lab.host, lab.bridge), mac_of(lab, lab.host, lab.bridge)
    sh("ip", "-6", "neigh", "flush", "dev", "eth0", ns=lab.guest2)
    poke(lab, rll)
    assert neigh(lab, rll) == rmac
    return rll, rmac


def test_unsolicited_na_for_the_routers_link_local(glab):
    rll, rmac = router_entry(glab)
    send(glab, "na", target=rll, router=1)
    settle()
    assert neigh(glab, rll) == MAC1  # baseline: the victim's router now is the attacker

    guarded(glab)
    rll, rmac = router_entry(glab)
    send(glab, "na", target=rll, router=1)
    settle()
    assert neigh(glab, rll) == rmac
    assert drops(glab).get("nd") == 1


def test_ns_from_a_forged_link_local_source(glab):
    """An NS "from" the router's link-local, with the attacker's own MAC in its option: every
    receiver points its entry for the router at the attacker."""
    rll, rmac = router_entry(glab)
    send(glab, "ns", src=rll, dst=VICTIM6, dmac=MAC2, target=VICTIM6)
    settle()
    assert neigh(glab, rll) == MAC1

    guarded(glab)
    rll, rmac = router_entry(glab)
    send(glab, "ns", src=rll, dst=VICTIM6, dmac=MAC2, target=VICTIM6)
    settle()
    assert neigh(glab, rll) == rmac
    assert drops(glab).get("ip6") == 1


def test_every_ndp_option_is_checked(glab):
    """An NS with a nonce option first and a foreign source link-layer option second."""
    def attack():
        sh("ip", "-6", "neigh", "flush", "dev", "eth0", ns=glab.guest2)
        send(glab, "ns", src=ME6, dst=VICTIM6, dmac=MAC2, target=VICTIM6, options="nonce,sll", lladdr=FOREIGN_MAC)
        settle()
        return neigh(glab, ME6)

    assert attack() == FOREIGN_MAC
    guarded(glab)
    assert attack() is None
    assert drops(glab).get("nd") == 1
    # The same NS with its own MAC passes (the victim learns the attacker's real address).
    send(glab, "ns", src=ME6, dst=VICTIM6, dmac=MAC2, target=VICTIM6, options="nonce,sll")
    settle()
    assert neigh(glab, ME6) == MAC1


def random_ll():
    iid = random.getrandbits(64) | (1 << 60)  # never EUI-64-shaped nor with a zero top half
    iid &= ~(0xffff << 24)
    return "fe80::%x:%x:%x:%x" % (iid >> 48, (iid >> 32) & 0xffff, (iid >> 16) & 0xffff, iid & 0xffff)


def test_only_own_link_locals_and_a_bounded_number_claimed(glab):
    """The EUI-64 link-local of its MAC, plus up to 2 more it claims by DAD (stable-privacy
    addresses), pinned for the port's life; the router's link-local and fe80::1 cannot be claimed."""
    rll = link_local(glab, glab.host, glab.bridge)
    own = link_local(glab, glab.guest, "eth0")
    vll = link_local(glab, glab.guest2, "eth0")
    claims = [random_ll() for _ in range(3)]
    victim = Listener(glab, glab.guest2, "::", seconds=60)

    def datagrams(sources):
        for s in sources:
            send(glab, "udp6", src=s, dst=vll, dmac=MAC2, port=9999)
        return victim.sources()

    # Baseline: any link-local source reaches the victim.
    assert datagrams([rll, claims[2]]) == {rll, claims[2]}
    victim.seen.clear()

    guarded(glab)
    for a in [rll, "fe80::1"] + claims:
        send(glab, "dad", target=a)
    assert drops(glab).get("nd") == 3  # the router's (EUI-64 of another MAC), fe80::1, the third claim
    assert datagrams([own, claims[0], claims[1], claims[2], rll, "fe80::1"]) == {own, claims[0], claims[1]}
    # Pinned: a claim outlives a rebuild of the table (here: its chains damaged, the network's
    # `started` hook rebuilds it), and the bound with it.
    sh("nft", "flush", "chain", "bridge", "virtport", "port", ns=glab.host)
    net = (glab.run_dir / "network" / "default.xml").read_text()
    r = glab.virtport("hook", "network", "default", "started", "begin", "-", input=net)
    assert r.returncode == 0, r.stderr.decode()
    victim.seen.clear()
    assert datagrams([claims[1], claims[2]]) == {claims[1]}


# -- VLAN-0 and QinQ-0 priority tags -----------------------------------------------------------

@pytest.mark.parametrize("tags", ["vlan0", "qinq0"])
def test_priority_tagged_spoofing_is_judged_as_untagged(glab, tags):
    victim = Listener(glab, glab.guest2, "0.0.0.0", seconds=60)
    send(glab, "udp4", src="192.168.122.50", dst=VICTIM4, dmac=MAC2, port=9999, tags=tags)
    assert victim.sources() == {"192.168.122.50"}  # the victim's kernel looks through the tags

    guarded(glab)
    victim.seen.clear()
    send(glab, "udp4", src="192.168.122.50", dst=VICTIM4, dmac=MAC2, port=9999, tags=tags)
    send(glab, "udp4", src=ME4, dst=VICTIM4, dmac=MAC2, port=9999, tags="vlan0")
    assert victim.sources() == {ME4}  # the spoofed one dropped, its own address with a VLAN-0 tag passes


def victim_routes(lab):
    return json.loads(sh("ip", "-j", "-6", "route", "show", "default", ns=lab.guest2).stdout or b"[]")


@pytest.mark.parametrize("tags", ["", "vlan0", "qinq0"])
def test_router_advertisement_in_a_priority_tag_with_spoofing_off(glab, tags):
    sh("sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=2", ns=glab.guest2)
    send(glab, "ra", tags=tags)
    time.sleep(0.5)
    assert victim_routes(glab), "baseline: the victim took the attacker's RA"
    sh("ip", "-6", "route", "flush", "default", ns=glab.guest2)
    sh("ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global", "dynamic", ns=glab.guest2)

    xml = glab.xml("<vp:guard spoofing='off' dhcpServer='block' routerAdvert='block'/>", glab.layout)
    glab.start(xml)
    send(glab, "ra", tags=tags)
    time.sleep(0.5)
    assert victim_routes(glab) == []
    assert drops(glab) == ({"ra": 1} if tags != "qinq0" else {"other": 1})


# -- the host's own input path ------------------------------------------------------------------

@pytest.mark.parametrize("group", ["01:80:c2:00:00:03", "01:80:c2:00:00:0e", "ff:ff:ff:ff:ff:ff"])
def test_frames_to_the_host_itself_get_the_same_checks(glab, group):
    """A forged source to a host socket, sent to a reserved group MAC (delivered locally by the
    bridge without its prerouting hook) or broadcast."""
    host = Listener(glab, glab.host, "0.0.0.0", seconds=60)
    send(glab, "udp4", src=VICTIM4, dst="192.168.122.1", dmac=group, port=9999)
    assert host.sources() == {VICTIM4}

    def mask():
        return sh("cat", "/sys/class/net/vnet0/brport/group_fwd_mask", ns=glab.host).stdout.decode().strip()

    xml = guarded(glab)
    # STP and LLDP frames from a guarded port are forwarded (through the guard), not handed to
    # the host past every bridge hook.
    assert mask() == "0x4001"
    host.seen.clear()
    send(glab, "udp4", src=VICTIM4, dst="192.168.122.1", dmac=group, port=9999)
    send(glab, "udp4", src=ME4, dst="192.168.122.1", dmac=group, port=9999)
    assert host.sources() == {ME4}
    assert drops(glab).get("ip4") == 1
    glab.stop(xml)
    assert mask() == "0x0"


# -- DHCP ------------------------------------------------------------------------------------------

def dnsmasq(lab, delay=0):
    """A real DHCP server on the bridge (dnsmasq), the host's; returns its lease file."""
    leases = lab.dir / "dnsmasq.leases"
    p = subprocess.Popen(["ip", "netns", "exec", lab.host, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                          "--port=0", f"--interface={lab.bridge}", "--bind-interfaces", "--pid-file=",
                          "--user=root", "--group=root", "--dhcp-range=192.168.122.100,192.168.122.150,255.255.255.0,1h",
                          f"--dhcp-leasefile={leases}", "--dhcp-option=option:router,192.168.122.1",
                          f"--dhcp-reply-delay={delay}", "--dhcp-authoritative"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lab.procs.append(p)
    time.sleep(0.3)
    assert p.poll() is None, p.stderr.read().decode()
    return leases


def dhclient(lab, six=False, seconds=8.0, ns=None):
    """The victim's ISC dhclient, from scratch: what it binds — (address, routers) for IPv4,
    (address,) for IPv6 — or None when it bound nothing within `seconds`."""
    d = lab.dir / f"dhclient-{uuidhex()}"
    d.mkdir()
    log = d / "log"
    (d / "script").write_text(f'#!/bin/sh\necho "$reason $new_ip_address $new_routers $new_ip6_address" >> {log}\n')
    os.chmod(d / "script", 0o755)
    (d / "conf").write_text("timeout 30;\nretry 60;\ninitial-interval 1;\n")
    p = subprocess.Popen(["ip", "netns", "exec", ns or lab.guest2, "dhclient", *(["-6"] if six else []), "-d", "-1",
                          "-sf", str(d / "script"), "-lf", str(d / "leases"), "-pf", str(d / "pid"),
                          "-cf", str(d / "conf"), "eth0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(p)
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            for line in (log.read_text().splitlines() if log.exists() else []):
                f = line.split()
                if f and f[0] == ("BOUND6" if six else "BOUND"):
                    return tuple(f[1:])
            time.sleep(0.1)
        return None
    finally:
        p.kill()
        p.wait()


def uuidhex():
    return "%08x" % random.getrandbits(32)


def rogue(lab, *args):
    p = subprocess.Popen(["ip", "netns", "exec", lab.guest, PY, HOSTILE, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    lab.procs.append(p)
    assert p.stdout.readline().decode().strip() == "ready", p.stderr.read().decode()
    time.sleep(0.5)
    return p


@pytest.mark.parametrize("sport", [1067, 68])
def test_rogue_dhcp_server_from_any_source_port(glab, sport):
    """The host's dnsmasq answers after 2 s; the attacker's rogue server at once, from a source
    port that is not 67."""
    dnsmasq(glab, delay=2)
    rogue(glab, "rogue-dhcp", "eth0", str(sport), "192.168.122.66", "192.168.122.99", "60")
    assert dhclient(glab) == ("192.168.122.66", "192.168.122.99")  # baseline: the victim took the rogue's

    guarded(glab)
    bound = dhclient(glab)
    assert bound is not None and bound[1] == "192.168.122.1" and bound[0].startswith("192.168.122.1"), bound
    assert drops(glab).get("dhcp", 0) >= 2  # its OFFER and its ACK


def test_rogue_dhcpv6_server_from_another_port(glab):
    rogue(glab, "rogue-dhcp6", "eth0", "1547", "fd00:122::66", "60")
    assert dhclient(glab, six=True) == ("fd00:122::66",)

    guarded(glab)
    assert dhclient(glab, six=True, seconds=4) is None
    assert drops(glab).get("dhcp", 0) >= 1  # its ADVERTISEs


def test_dhcp_release_for_another_vms_chaddr(glab):
    """DHCPRELEASE of the victim's lease, chaddr the victim's MAC, from the attacker's own MAC and
    address: the server drops the victim's lease. (What virtport's lease following then does
    with such a lease is for the lease-validation tests; here: the message never reaches the server.)"""
    leases = dnsmasq(glab)
    bmac = mac_of(glab, glab.host, glab.bridge)

    def attack():
        bound = dhclient(glab)
        assert bound is not None
        assert MAC2 in leases.read_text()
        send(glab, "dhcp-release", chaddr=MAC2, ciaddr=bound[0], server="192.168.122.1", dmac=bmac, src=ME4)
        deadline = time.time() + 2
        while MAC2 in leases.read_text() and time.time() < deadline:
            time.sleep(0.1)
        return MAC2 in leases.read_text()

    assert attack() is False  # baseline: the victim's lease is gone
    guarded(glab)
    assert attack() is True
    assert drops(glab) == {"dhcp": 1}
    # The guarded guest's own DHCP client still works (its messages carry its own chaddr).
    bound = dhclient(glab, ns=glab.guest)
    assert bound is not None and bound[1] == "192.168.122.1", bound
    assert MAC1 in leases.read_text()
    assert drops(glab) == {"dhcp": 1}



def test_a_re_enslaved_tap_gets_its_group_forward_bits_back(glab):
    """A tap re-enslaved (libvirt restarting its network) loses its port settings: reconcile and
    network `started` put the group_fwd_mask bits back, so LLDP-addressed frames meet the guard."""
    def mask():
        return sh("cat", "/sys/class/net/vnet0/brport/group_fwd_mask", ns=glab.host).stdout.decode().strip()

    xml = guarded(glab)
    glab.write_status(xml)
    host = Listener(glab, glab.host, "0.0.0.0", seconds=60)
    sh("ip", "link", "set", "dev", "vnet0", "type", "bridge_slave", "group_fwd_mask", "0", ns=glab.host)
    send(glab, "udp4", src=VICTIM4, dst="192.168.122.1", dmac="01:80:c2:00:00:0e", port=9999)
    assert host.sources() == {VICTIM4}  # without the bits: past every bridge hook
    r = glab.reconcile()
    assert r.returncode == 0 and "port guards (vnet0)" in r.stdout.decode(), r.stdout.decode()
    assert mask() == "0x4001"
    sh("ip", "link", "set", "dev", "vnet0", "type", "bridge_slave", "group_fwd_mask", "0", ns=glab.host)
    net = (glab.run_dir / "network" / "default.xml").read_text()
    assert glab.virtport("hook", "network", "default", "started", "begin", "-", input=net).returncode == 0
    if glab.layout == "nat":  # network `started` concerns the ports of that network
        assert mask() == "0x4001"
        host.seen.clear()
        send(glab, "udp4", src=VICTIM4, dst="192.168.122.1", dmac="01:80:c2:00:00:0e", port=9999)
        assert host.sources() == set()


def test_a_link_local_another_port_claimed_cannot_be_claimed(glab):
    """The victim, guarded too, uses a stable-privacy link-local (claimed by its DAD probe); the
    attacker probes the same address and then advertises it: the host's neighbour entry for the
    victim's link-local must stay the victim's."""
    y = random_ll()
    br = glab.bridge
    sh("ip", "addr", "add", f"{y}/64", "dev", "eth0", "nodad", ns=glab.guest2)

    def host_entry():
        sh("ip", "-6", "neigh", "flush", "dev", br, ns=glab.host)
        sh(PY, "-c", "import socket, sys; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
           "s.sendto(b'x', (sys.argv[1], 9, 0, socket.if_nametoindex(sys.argv[2])))", y, br, ns=glab.host)
        time.sleep(0.3)
        return lladdr_at_host()

    def lladdr_at_host():
        out = json.loads(sh("ip", "-j", "-6", "neigh", "show", y, "dev", br, ns=glab.host).stdout or b"[]")
        return out[0].get("lladdr") if out else None

    assert host_entry() == MAC2
    send(glab, "na", target=y)
    settle()
    assert lladdr_at_host() == MAC1  # baseline: the attacker took the victim's link-local

    vm2 = (glab.xml("<vp:guard ip='192.168.122.11'/>", glab.layout, tap="vnet1", uuid="7a3c1e52-0c55-4a31-9d7e-6f1b2a3c4d02")
           .replace("<name>vm1</name>", "<name>vm2</name>").replace(MAC1, MAC2))
    glab.start(vm2)
    sh(PY, HOSTILE, "send", "eth0", "dad", f"target={y}", ns=glab.guest2)  # the victim's claim
    guarded(glab)
    assert host_entry() == MAC2
    send(glab, "dad", target=y)
    send(glab, "na", target=y)
    settle()
    assert lladdr_at_host() == MAC2
    rows = {r["tap"]: {k: v for k, v in r["dropped"].items() if v} for r in glab.guards_json()}
    assert rows == {"vnet0": {"nd": 2}, "vnet1": {}}
