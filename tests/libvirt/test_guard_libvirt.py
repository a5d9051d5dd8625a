"""Bridge port guards (issue 13) against the real libvirtd + QEMU: a VM with `<interface
type='bridge'>` on a test bridge the test creates in the lab namespace, with the real binary as
hooks. libvirt picks the tap; the test reads it back (`virsh domiflist`) and checks what virtport
put on it: the port's elements in `table bridge virtport`, the port's isolated flag, `virtport list
--guards --json`, the journal's guard_history, and real frames (the diskless PXE VM's DHCP
discovers, seen by a stand-in namespace on the same bridge). Then `virsh destroy` takes it all
away again. Also the `[guard] bridges` policy (a VM without virtport metadata is guarded: the
hook's fast path serves it) and a bad `<vp:guard>` refused by `virsh start` with one line.

The lab runs libvirtd in its own network namespace, so the bridge name cannot clash with the
machine's; it is deleted after each test all the same (after the VMs, which the `vp` fixture
destroys while the hooks are still installed).
"""
import json
import re
import sqlite3
import subprocess
import sys

import pytest

import harness
from harness import out
from test_virtport_libvirt import BIN, install, installed, refused_start, uninstall, vp  # noqa: F401  (fixtures)

BRIDGE = "vpgbr0"
MAC = "52:54:00:76:70:21"
VM_IP = "192.168.200.10"
NS = "urn:virtport:domain:1"

# Prints "ready", then "discover SRC" for the first DHCP discover (UDP 68 -> 67) from MAC, within SECONDS.
SNIFF_DHCP = r"""
import socket, sys, time
iface, mac, seconds = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
deadline = time.time() + seconds
while time.time() < deadline:
    try:
        d = s.recv(65535)
    except socket.timeout:
        continue
    if d[6:12] != mac or d[12:14] != b"\x08\x00" or d[23] != 17:
        continue
    ihl = (d[14] & 15) * 4
    if d[14 + ihl:18 + ihl] == b"\x00\x44\x00\x43":
        print("discover", socket.inet_ntoa(d[26:30]), flush=True)
        break
"""


def guard_meta(attrs):
    return f"<vp:virtport xmlns:vp='{NS}'><vp:guard {attrs}/></vp:virtport>"


def tap_of(lab, name):
    """The tap libvirt picked, from `virsh domiflist` (Interface Type Source Model MAC)."""
    for line in out(lab.virsh("domiflist", name)).splitlines():
        cols = line.split()
        if len(cols) == 5 and cols[1] == "bridge" and cols[2] == BRIDGE:
            return cols[0]
    return None


def bridge_table(lab):
    r = lab.exec("nft", "-j", "list", "table", "bridge", "virtport", check=False)
    return json.loads(r.stdout)["nftables"] if r.returncode == 0 else None


def set_elements(lab, name):
    """The elements of set `name` of table bridge virtport, each flattened to a tuple of strings."""
    for o in bridge_table(lab) or []:
        s = o.get("set")
        if s and s["name"] == name:
            return [tuple(e["concat"]) if isinstance(e, dict) and "concat" in e else (e,) for e in s.get("elem", [])]
    return []


def port_details(lab, tap):
    r = lab.exec("bridge", "-d", "link", "show", "dev", tap, check=False)
    return out(r) if r.returncode == 0 else None


def guards(vp):
    return json.loads(vp.run("list", "--guards", "--json").stdout)


def guard_history(vp):
    con = sqlite3.connect(vp.db, timeout=10)
    try:
        return con.execute("SELECT action, domain_name, tap, mac, addresses, reason FROM guard_history ORDER BY id").fetchall()
    finally:
        con.close()


def assert_unguarded(lab, vp, tap):
    """After the stop: no element names the tap, its isolated flag is off (or the tap is gone),
    the journal holds no guard."""
    for s in ("guarded", "spoof", "mac", "ip4", "ipv6", "ll_1", "ll_2", "fast4", "fast6"):
        assert not [e for e in set_elements(lab, s) if e[0] == tap], (s, set_elements(lab, s))
    details = port_details(lab, tap)
    assert details is None or "isolated off" in details, details
    assert guards(vp) == []


@pytest.fixture
def test_bridge(lab):
    """BRIDGE in the lab namespace (STP off: the tap forwards at once), deleted even on failure,
    with table bridge virtport. Request it before `installed`/`vp`: it is torn down after them."""
    lab.exec("ip", "link", "del", BRIDGE, check=False)
    lab.exec("ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    lab.exec("ip", "link", "set", BRIDGE, "up")
    lab.exec("nft", "delete", "table", "bridge", "virtport", check=False)
    try:
        yield BRIDGE
    finally:
        if lab.running:
            lab.exec("ip", "link", "del", BRIDGE, check=False)
            lab.exec("nft", "delete", "table", "bridge", "virtport", check=False)


class Sniffer:
    """A stand-in namespace on BRIDGE (an unguarded, non-isolated port) that waits for a DHCP
    discover from one MAC."""

    def __init__(self, lab, mac, seconds):
        n = len(lab.guests)
        self.peer = harness.Peer(f"{lab.ns}-s{n}", None, None, f"vpgs{n}")
        harness.sh("ip", "netns", "add", self.peer.ns)
        lab.namespaces.append(self.peer.ns)
        lab.guests.append(self.peer)        # the lab's reset deletes it
        harness.sh("ip", "link", "add", self.peer.host_if, "netns", lab.ns, "type", "veth", "peer", "name", "eth0",
                   "netns", self.peer.ns)
        lab.exec("ip", "link", "set", self.peer.host_if, "master", BRIDGE)
        lab.exec("ip", "link", "set", self.peer.host_if, "up")
        harness.sh("ip", "link", "set", "eth0", "up", ns=self.peer.ns)
        harness.wait_for(lambda: "forwarding" in out(lab.exec("bridge", "link", "show", "dev", self.peer.host_if)),
                         10, 0.05, f"{self.peer.host_if} forwarding on {BRIDGE}")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.peer.ns, sys.executable, "-c", SNIFF_DHCP, "eth0", mac,
                                      str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.peer.procs.append(self.proc)
        assert self.proc.stdout.readline().decode().strip() == "ready", self.proc.stderr.read().decode()

    def result(self, timeout):
        o, e = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, e.decode()
        return o.decode().strip()


def test_guarded_bridged_vm_start_and_destroy(lab, test_bridge, installed):
    """`<vp:guard ip=… isolated='yes'/>` on a VM of a plain bridge: at `virsh start` the tap libvirt
    picked is guarded (elements, isolated flag, list, journal) and the VM's own DHCP discovers pass
    the guard; at `virsh destroy` all of it goes, with history on/off."""
    vp, vm = installed, "vpg-bridged"
    lab.define_vm(vm, MAC, guard_meta(f"ip='{VM_IP}' isolated='yes'"), pxe=True, bridge=BRIDGE)
    sniffer = Sniffer(lab, MAC, 60)
    lab.start_vm(vm)
    tap = tap_of(lab, vm)
    assert tap and re.fullmatch(r"vnet\d+", tap), out(lab.virsh("domiflist", vm))
    assert f"<target dev='{tap}'" in lab.dumpxml(vm)

    assert set_elements(lab, "guarded") == [(tap,)]
    assert set_elements(lab, "mac") == [(tap, MAC)]
    assert set_elements(lab, "ip4") == [(tap, VM_IP)]
    assert "isolated on" in port_details(lab, tap), port_details(lab, tap)
    [g] = guards(vp)
    assert (g["domain"], g["tap"], g["mac"], g["bridge"], g["state"]) == (vm, tap, MAC, BRIDGE, "applied")
    assert g["addresses"] == [{"address": VM_IP, "source": "ip-attribute"}]
    assert g["spoofing"] is True and g["isolated"] is True and g["isolated_by_virtport"] is True
    assert guard_history(vp) == [("on", vm, tap, MAC, f"{VM_IP}=ip-attribute", "hook qemu start")]

    # Legitimate traffic passes: iPXE's DHCP discover (source 0.0.0.0) from the guarded port
    # reaches the stand-in, and the guard counted no drop on the port.
    assert sniffer.result(70) == "discover 0.0.0.0"
    [g] = guards(vp)
    assert g["dropped"] is not None and not any(g["dropped"].values()), g["dropped"]

    lab.destroy_vm(vm)
    assert_unguarded(lab, vp, tap)
    assert [h[0] for h in guard_history(vp)] == ["on", "off"]
    assert guard_history(vp)[1][5] == "hook qemu stopped"


def test_guard_policy_guards_a_vm_without_metadata(lab, test_bridge, installed):
    """`[guard] bridges = [BRIDGE]`: a VM with no virtport metadata on that bridge is guarded at
    start (spoofing on, DHCP/RA server replies blocked, no address known: DHCP and DAD only) and
    unguarded at destroy — the hook's fast path must not skip it."""
    vp, vm = installed, "vpg-policy"
    lab.write_etc("virtport/virtport.conf", vp.config + f'[guard]\nbridges = ["{BRIDGE}"]\n')
    lab.define_vm(vm, MAC, bridge=BRIDGE)
    assert NS not in lab.dumpxml(vm)
    lab.start_vm(vm)
    tap = tap_of(lab, vm)
    assert tap
    [g] = guards(vp)
    assert (g["domain"], g["tap"], g["mac"], g["bridge"]) == (vm, tap, MAC, BRIDGE)
    assert (g["spoofing"], g["dhcp_server"], g["router_advert"], g["addresses"]) == (True, "block", "block", [])
    assert set_elements(lab, "guarded") == [(tap,)] and set_elements(lab, "mac") == [(tap, MAC)]
    assert set_elements(lab, "ip4") == []

    lab.destroy_vm(vm)
    assert_unguarded(lab, vp, tap)
    assert [(h[0], h[1], h[2], h[5]) for h in guard_history(vp)] == [
        ("on", vm, tap, "hook qemu start"), ("off", vm, tap, "hook qemu stopped")]


def test_guard_naming_no_nic_is_refused_by_virsh_start(lab, test_bridge, installed):
    """`<vp:guard mac=…>` that names no NIC of the domain: `virsh start` fails, its error ends in
    virtport's one line, and nothing is applied or journaled."""
    vp, vm = installed, "vpg-badmac"
    lab.define_vm(vm, MAC, guard_meta("mac='52:54:00:76:70:99'"), bridge=BRIDGE)
    assert refused_start(lab, vm) == (f"virtport: domain '{vm}' prepare: guard[1]: mac=\"52:54:00:76:70:99\" "
                                      f"matches no interface of domain {vm}")
    assert bridge_table(lab) is None
    assert guards(vp) == []
