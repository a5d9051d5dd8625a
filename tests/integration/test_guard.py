"""Bridge port guard (issue 13): real frames from stand-in guests through a real bridge.

Topology per test (namespaces vpt-<id>-*, removed even on failure):

    host ns    BRIDGE (virbr0 for the NAT-network layout, br0 for the plain bridged one)
               192.168.122.1/24, fd00:122::1/64; vnet0 and vnet1 enslaved     <- virtport runs here
    guest ns   eth0 52:54:00:aa:bb:01 192.168.122.10 fd00:122::10   (the guarded VM, sends frames)
    guest2 ns  eth0 52:54:00:aa:bb:02 192.168.122.11 fd00:122::11   (its neighbour: the sniffer)

Frames come from tests/frames.py (AF_PACKET); what the neighbour receives is the verdict.
"""
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from conftest import BIN, Lab, require_root, sh

FRAMES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "frames.py")
sys.path.insert(0, os.path.dirname(FRAMES))
from frames import LEGIT, SPOOFED  # noqa: E402

MAC1, MAC2 = "52:54:00:aa:bb:01", "52:54:00:aa:bb:02"


class GuardLab(Lab):
    bridge_options = ()

    def build_bridge(self, bridge):
        self.bridge = bridge
        for n in (self.host, self.guest, self.guest2):
            self.addns(n)
        h = self.host
        sh("ip", "link", "add", bridge, "type", "bridge", *self.bridge_options, ns=h)
        sh("ip", "addr", "add", "192.168.122.1/24", "dev", bridge, ns=h)
        sh("ip", "addr", "add", "fd00:122::1/64", "dev", bridge, "nodad", ns=h)
        sh("ip", "link", "set", bridge, "up", ns=h)
        for i, (g, mac, v4, v6) in enumerate([(self.guest, MAC1, "192.168.122.10", "fd00:122::10"),
                                              (self.guest2, MAC2, "192.168.122.11", "fd00:122::11")]):
            tap = f"vnet{i}"
            sh("ip", "link", "add", tap, "netns", h, "type", "veth", "peer", "name", "eth0", "netns", g)
            sh("ip", "link", "set", tap, "master", bridge, ns=h)
            sh("ip", "link", "set", tap, "up", ns=h)
            sh("ip", "link", "set", "eth0", "address", mac, ns=g)
            sh("ip", "addr", "add", f"{v4}/24", "dev", "eth0", ns=g)
            sh("ip", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad", ns=g)
            sh("ip", "link", "set", "eth0", "up", ns=g)
        with open(self.run_dir / "network" / "default.xml", "w") as f:
            f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                    f"<forward mode='nat'/><bridge name='{bridge}'/>"
                    "<ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>"
                    f"<host mac='{MAC1}' ip='192.168.122.10'/></dhcp></ip>"
                    "<ip family='ipv6' address='fd00:122::1' prefix='64'/></network></networkstatus>")
        return self

    def write_lease(self, v6):
        d = self.dir / "var-lib-libvirt" / "dnsmasq"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{self.bridge}.status").write_text(json.dumps(
            [{"ip-address": v6, "mac-address": MAC1, "expiry-time": int(time.time()) + 3600}]))

    def xml(self, guard, layout, tap="vnet0", uuid="7a3c1e52-0c55-4a31-9d7e-6f1b2a3c4d01"):
        if layout == "nat":
            nic = (f"<interface type='network'><mac address='{MAC1}'/><source network='default' bridge='{self.bridge}'/>"
                   f"<target dev='{tap}'/></interface>")
        else:
            nic = f"<interface type='bridge'><mac address='{MAC1}'/><source bridge='{self.bridge}'/><target dev='{tap}'/></interface>"
        meta = f"<metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>{guard}</vp:virtport></metadata>" if guard else ""
        return (f"<domain type='kvm'><name>vm1</name><uuid>{uuid}</uuid>{meta}<memory unit='KiB'>65536</memory>"
                f"<devices>{nic}</devices></domain>")

    def through(self, names):
        """Sends `names` (then the end marker) from the guest; returns the names the neighbour received."""
        p = subprocess.Popen(["ip", "netns", "exec", self.guest2, sys.executable, FRAMES, "sniff", "eth0", "5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        assert p.stdout.readline().decode().strip() == "ready"
        sh(sys.executable, FRAMES, "send", "eth0", *names, "end", ns=self.guest)
        out, _ = p.communicate(timeout=10)
        seen = set(out.decode().split())
        assert "end" in seen, "the end frame did not arrive: the sniffer saw nothing"
        return seen - {"end"}

    def port_flags(self, tap):
        return sh("bridge", "-d", "link", "show", "dev", tap, ns=self.host, check=False).stdout.decode()

    def guards_json(self):
        r = self.virtport("list", "--guards", "--json")
        assert r.returncode == 0, r.stderr.decode()
        return json.loads(r.stdout)

    def bridge_table(self):
        r = sh("nft", "-j", "list", "table", "bridge", "virtport", ns=self.host, check=False)
        return json.loads(r.stdout)["nftables"] if r.returncode == 0 else None

    def set_elements(self, name):
        for item in self.bridge_table() or []:
            s = item.get("set")
            if s and s["name"] == name:
                return s.get("elem", [])
        return None


@pytest.fixture(params=["nat", "bridged"])
def glab(request, tmp_path):
    require_root()
    assert os.path.exists(BIN), f"build first: {BIN} is missing (swift build -c release)"
    lab = GuardLab(tmp_path)
    lab.layout = request.param
    try:
        lab.build_bridge("virbr0" if request.param == "nat" else "br0")
        yield lab
    finally:
        lab.cleanup()


def guard_for(lab, extra="isolated='yes'"):
    # NAT layout: IPv4 from the network's reservation, IPv6 from the dnsmasq lease; plain bridge:
    # no libvirt network, so ip= says.
    if lab.layout == "nat":
        lab.write_lease("fd00:122::10")
        return f"<vp:guard {extra}/>"
    return f"<vp:guard ip='192.168.122.10 fd00:122::10' {extra}/>"


def test_spoofed_frames_are_dropped_and_legitimate_ones_pass(glab):
    everything = LEGIT + list(SPOOFED)
    # Unguarded, the bridge forwards every frame: the sniffer sees them all.
    assert glab.through(everything) == set(everything)

    xml = glab.xml(guard_for(glab), glab.layout)
    plan = json.loads(glab.virtport("plan", input=xml, check=True).stdout)
    [g] = plan["guards"]
    assert g["tap"] == "vnet0" and g["mac"] == MAC1 and g["bridge"] == glab.bridge
    want = ([("192.168.122.10", "dhcp-reservation"), ("fd00:122::10", "dhcp-lease")] if glab.layout == "nat"
            else [("192.168.122.10", "ip-attribute"), ("fd00:122::10", "ip-attribute")])
    assert [(a["address"], a["source"]) for a in g["addresses"]] == want

    assert "isolated off" in glab.port_flags("vnet0")
    glab.start(xml)
    assert glab.through(everything) == set(LEGIT)
    assert "isolated on" in glab.port_flags("vnet0")

    [row] = glab.guards_json()
    assert row["tap"] == "vnet0" and row["isolated_by_virtport"] is True and row["state"] == "applied"
    expected = {}
    for name, reason in SPOOFED.items():
        expected[reason] = expected.get(reason, 0) + 1
    # Each spoofed frame counted once under its reason (the guarded port sent each frame once).
    assert {k: v for k, v in row["dropped"].items() if v} == expected
    text = glab.virtport("list", "--guards").stdout.decode()
    assert "vnet0" in text and "mac=1" in text and "ra=2" in text

    hist = glab.sql("SELECT action, tap, reason FROM guard_history ORDER BY id")
    assert hist == [{"action": "on", "tap": "vnet0", "reason": "hook qemu start"}]

    glab.stop(xml)
    assert "isolated off" in glab.port_flags("vnet0")
    assert glab.set_elements("guarded") == []
    assert glab.sql("SELECT count(*) AS n FROM guards")[0]["n"] == 0
    assert glab.sql("SELECT action FROM guard_history ORDER BY id")[-1]["action"] == "off"
    assert glab.through(everything) == set(everything)


def test_libvirts_own_isolation_is_left_alone(glab):
    sh("bridge", "link", "set", "dev", "vnet0", "isolated", "on", ns=glab.host)
    xml = glab.xml(guard_for(glab), glab.layout)
    glab.start(xml)
    assert glab.guards_json()[0]["isolated_by_virtport"] is False
    glab.stop(xml)
    assert "isolated on" in glab.port_flags("vnet0")


def test_dhcp_and_ra_allowed_when_asked(glab):
    xml = glab.xml(guard_for(glab, "dhcpServer='allow' routerAdvert='allow'"), glab.layout)
    glab.start(xml)
    seen = glab.through(["dhcp-offer", "dhcpv6-advertise", "ra", "spoof-ipv4"])
    assert seen == {"dhcp-offer", "dhcpv6-advertise", "ra"}
    glab.stop(xml)


def test_unknown_address_allows_only_dhcp_and_dad(glab):
    if glab.layout != "nat":
        pytest.skip("a plain bridge has no reservation or lease to wait for")
    # No reservation, no lease yet: a fresh network file.
    with open(glab.run_dir / "network" / "default.xml", "w") as f:
        f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                f"<forward mode='nat'/><bridge name='{glab.bridge}'/>"
                "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
    xml = glab.xml("<vp:guard/>", "nat")
    glab.start(xml)
    assert glab.guards_json()[0]["addresses"] == []
    assert glab.through(["dhcp-discover", "ns-dad", "arp-probe", "ipv6-linklocal", "ipv4", "ipv6", "arp-self"]) == \
        {"dhcp-discover", "ns-dad", "arp-probe", "ipv6-linklocal"}
    # The lease appears: the agent re-applies the live XML (DomainSync.apply); `reconnect` runs the same path.
    glab.write_lease("192.168.122.10")
    r = glab.hook(xml, "reconnect")
    assert r.returncode == 0, r.stderr.decode()
    assert [a["address"] for a in glab.guards_json()[0]["addresses"]] == ["192.168.122.10"]
    assert glab.through(["ipv4", "arp-self"]) == {"ipv4", "arp-self"}
    glab.stop(xml)


def test_policy_guards_every_port_of_a_bridge_and_cannot_be_weakened(glab):
    with open(glab.config, "a") as f:
        f.write(f'[guard]\nbridges = ["{glab.bridge}"]\n')
    plain = glab.xml("", glab.layout)
    glab.start(plain)
    [row] = glab.guards_json()
    assert row["spoofing"] is True and row["dhcp_server"] == "block"
    assert glab.through(["dhcp-offer", "ra", "spoof-mac", "dhcp-discover"]) == {"dhcp-discover"}
    glab.stop(plain)
    weak = glab.xml("<vp:guard spoofing='off'/>", glab.layout)
    r = glab.hook(weak, "prepare")
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith(
        f"""guard[1]: spoofing="off" weakens a guard the policy requires for this port ([guard] bridges = ["{glab.bridge}"])""")


def test_bad_input_is_refused_with_one_line(glab):
    for guard, message in [
        ("<vp:guard mac='52:54:00:aa:bb:99'/>", "guard[1]: mac=\"52:54:00:aa:bb:99\" matches no interface of domain vm1"),
        ("<vp:guard ip='192.168.122.10/24'/>", "guard[1]: ip=\"192.168.122.10/24\" is not an IPv4 or IPv6 address"),
        ("<vp:guard colour='red'/>", "guard[1]: unknown attribute colour="),
    ]:
        r = glab.hook(glab.xml(guard, glab.layout), "start")
        err = r.stderr.decode()
        assert r.returncode == 2 and message in err and err.count("\n") == 1, err
    if glab.layout == "nat":
        # Wrong family for the network: default here has only an IPv4 subnet.
        with open(glab.run_dir / "network" / "default.xml", "w") as f:
            f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                    f"<forward mode='nat'/><bridge name='{glab.bridge}'/>"
                    "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
        r = glab.hook(glab.xml("<vp:guard ip='fd00:122::10'/>", "nat"), "start")
        assert r.returncode == 2
        assert "is IPv6 but network 'default' has no IPv6 subnet" in r.stderr.decode()
    assert glab.bridge_table() is None  # nothing half-applied
    assert glab.sql("SELECT count(*) AS n FROM guards")[0]["n"] == 0 if os.path.exists(glab.db) else True


def test_tap_vanished_before_stopped(glab):
    xml = glab.xml(guard_for(glab), glab.layout)
    glab.start(xml)
    sh("ip", "link", "del", "vnet0", ns=glab.host)
    glab.stop(xml)  # asserts rc 0
    assert glab.sql("SELECT count(*) AS n FROM guards")[0]["n"] == 0
    assert glab.set_elements("mac") == []


def test_reconcile_and_network_started_rebuild_the_bridge_table(glab):
    xml = glab.xml(guard_for(glab), glab.layout)
    glab.start(xml)
    glab.write_status(xml)
    sh("nft", "delete", "table", "bridge", "virtport", ns=glab.host)
    assert glab.through(["spoof-mac"]) == {"spoof-mac"}
    r = glab.virtport("doctor", "--json")
    guards = [f for f in json.loads(r.stdout) if f["check"] == "guards"]
    assert r.returncode == 1 and guards and "table bridge virtport" in guards[0]["detail"], r.stdout.decode()
    r = glab.reconcile("--dry-run")
    assert r.returncode == 0 and "table bridge virtport is missing" in r.stdout.decode(), r.stdout.decode()
    assert glab.bridge_table() is None  # a dry run changes nothing
    r = glab.reconcile()
    assert r.returncode == 0, r.stderr.decode()
    assert "table bridge virtport" in r.stdout.decode() + r.stderr.decode()
    assert "nothing to do" in glab.reconcile("--dry-run").stdout.decode()
    assert glab.through(["spoof-mac", "ipv4"]) == {"ipv4"}
    sh("nft", "flush", "chain", "bridge", "virtport", "port", ns=glab.host)
    net = (glab.run_dir / "network" / "default.xml").read_text()
    r = glab.virtport("hook", "network", "default", "started", "begin", "-", input=net)
    assert r.returncode == 0, r.stderr.decode()
    assert glab.through(["spoof-mac", "ipv4"]) == {"ipv4"}
    # Its isolated flag lost (a tap re-enslaved): reconcile puts it back.
    sh("bridge", "link", "set", "dev", "vnet0", "isolated", "off", ns=glab.host)
    r = glab.reconcile()
    assert r.returncode == 0 and "port guards (vnet0)" in r.stdout.decode(), r.stdout.decode()
    assert "isolated on" in glab.port_flags("vnet0")
    # The domain stops without a hook: reconcile takes its guard away.
    glab.remove_status(xml)
    r = glab.reconcile()
    assert r.returncode == 0
    assert glab.sql("SELECT count(*) AS n FROM guards")[0]["n"] == 0
    assert glab.through(["spoof-mac"]) == {"spoof-mac"}


def test_the_agent_follows_the_lease_and_heals_the_bridge_table(glab):
    """The agent (issue "event agent") keeps a guard's allowed addresses on the DHCP lease and puts
    back `table bridge virtport` when someone deletes it."""
    if glab.layout != "nat":
        pytest.skip("a plain bridge has no lease")
    from test_agent import Agent, agent_socket_config
    log = glab.syslog()
    with open(glab.run_dir / "network" / "default.xml", "w") as f:  # no reservation: the lease decides
        f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                f"<forward mode='nat'/><bridge name='{glab.bridge}'/>"
                "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
    d = glab.dir / "var-lib-libvirt" / "dnsmasq"
    d.mkdir(parents=True, exist_ok=True)

    def lease(ip):  # replaced by rename, as libvirt's leaseshelper does
        tmp = d / f"{glab.bridge}.status.new"
        tmp.write_text(json.dumps([{"ip-address": ip, "mac-address": MAC1, "expiry-time": int(time.time()) + 3600}]))
        os.rename(tmp, d / f"{glab.bridge}.status")

    def addresses():
        return [a["address"] for a in glab.guards_json()[0]["addresses"]]

    def wait(pred, what, timeout=5.0):
        deadline = time.time() + timeout
        while not pred():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    lease_file_absent = not (d / f"{glab.bridge}.status").exists()
    assert lease_file_absent
    xml = glab.xml("<vp:guard/>", "nat")
    glab.start(xml)
    glab.write_status(xml)
    assert addresses() == []
    agent_socket_config(glab)
    Agent(glab)

    lease("192.168.122.10")
    wait(lambda: addresses() == ["192.168.122.10"], "the lease's address to be allowed")
    assert glab.through(["ipv4", "arp-self", "spoof-ipv4"]) == {"ipv4", "arp-self"}
    # The lease moves: the new address in, the old one out, in one change.
    lease("192.168.122.11")
    wait(lambda: addresses() == ["192.168.122.11"], "the allowed address to follow the lease")
    [element] = glab.set_elements("ip4")
    assert "192.168.122.11" in json.dumps(element) and "192.168.122.10" not in json.dumps(element)
    assert glab.through(["ipv4"]) == set()  # 192.168.122.10 is no longer its address
    hist = json.loads(glab.virtport("history", "--guards", "--json", check=True).stdout)
    assert [e["action"] for e in hist] == ["on", "change", "change"]
    assert "DHCP lease" in hist[-1]["reason"] and hist[-1]["addresses"] == "192.168.122.11=dhcp-lease"

    # Someone deletes the bridge table: the agent rebuilds it from the journal.
    sh("nft", "delete", "table", "bridge", "virtport", ns=glab.host)
    wait(lambda: glab.set_elements("guarded") == ["vnet0"], "table bridge virtport to come back")
    assert glab.through(["spoof-mac", "arp-probe"]) == {"arp-probe"}
    [line] = log.wait_for("healed:")  # the first guard's creating the table is no heal
    assert "table bridge virtport is missing" in line and "(deleted by pid" in line
    assert any(l.startswith("guard changed: domain 'vm1' port vnet0") and "192.168.122.11=dhcp-lease" in l
               for l in log.lines())
    glab.stop(xml)
    assert glab.set_elements("guarded") == []


def test_spoofing_off_keeps_only_the_server_guards_asked_for(glab):
    xml = glab.xml("<vp:guard spoofing='off' dhcpServer='block'/>", glab.layout)
    glab.start(xml)
    # No anti-spoofing: another MAC and address pass; DHCP server replies do not; RAs are allowed
    # (routerAdvert defaults to allow with spoofing off).
    assert glab.through(["spoof-mac", "spoof-ipv4", "dhcp-offer", "dhcpv6-advertise", "ra", "ipv4"]) == \
        {"spoof-mac", "spoof-ipv4", "ra", "ipv4"}
    [row] = glab.guards_json()
    assert {k: v for k, v in row["dropped"].items() if v} == {"dhcp": 2}
    glab.stop(xml)


def test_a_tap_that_changes_hands_keeps_nothing_of_the_previous_holder(glab):
    """vm1 stops without a hook (its journal row stays) and libvirt gives its tap to vm2: vm2's
    port allows vm2's MAC and address only — vm1's elements on that tap go in the same batch, and
    vm1's history says its guard ended. A later edit to isolation only (nothing to filter)
    takes every element of the port away."""
    vm1 = glab.xml(guard_for(glab), glab.layout)
    glab.start(vm1)
    assert glab.through(["ipv4", "arp-self"]) == {"ipv4", "arp-self"}

    mac3 = "52:54:00:aa:bb:03"
    vm2 = (glab.xml("<vp:guard ip='192.168.122.30'/>", glab.layout, uuid="7a3c1e52-0c55-4a31-9d7e-6f1b2a3c4d02")
           .replace("<name>vm1</name>", "<name>vm2</name>").replace(MAC1, mac3))
    glab.start(vm2)
    assert [e["concat"] for e in glab.set_elements("mac")] == [["vnet0", mac3]]
    assert [e["concat"] for e in glab.set_elements("ip4")] == [["vnet0", "192.168.122.30"]]
    # The stand-in still sends as vm1 (MAC1, 192.168.122.10): spoofing now, each frame dropped for
    # its source MAC (through() cannot tell: its end marker comes from MAC1 too).
    sh(sys.executable, FRAMES, "send", "eth0", "ipv4", "arp-self", "dhcp-discover", ns=glab.guest)
    [row] = glab.guards_json()
    assert (row["domain"], row["mac"]) == ("vm2", mac3)
    # (>= 3: the guest's own kernel may send an IPv6 frame of its own from MAC1 meanwhile)
    dropped = {k: v for k, v in row["dropped"].items() if v}
    assert set(dropped) == {"mac"} and dropped["mac"] >= 3, dropped
    hist = glab.sql("SELECT action, domain_name, reason FROM guard_history ORDER BY id")
    assert hist == [{"action": "on", "domain_name": "vm1", "reason": "hook qemu start"},
                    {"action": "off", "domain_name": "vm1", "reason": "hook qemu start (tap now guarded for domain 'vm2')"},
                    {"action": "on", "domain_name": "vm2", "reason": "hook qemu start"}]

    iso = vm2.replace("<vp:guard ip='192.168.122.30'/>",
                      "<vp:guard spoofing='off' dhcpServer='allow' routerAdvert='allow' isolated='yes'/>")
    r = glab.hook(iso, "reconnect")
    assert r.returncode == 0, r.stderr.decode()
    for s in ("guarded", "spoof", "mac", "ip4", "ipv6"):
        assert glab.set_elements(s) == [], s
    assert "isolated on" in glab.port_flags("vnet0")
    assert glab.through(["spoof-mac", "ipv4"]) == {"spoof-mac", "ipv4"}
    glab.stop(iso)
    assert "isolated off" in glab.port_flags("vnet0")
