"""End to end: the real virtport binary installed as the hooks of a real libvirtd + QEMU (harness.py).

Every scenario sends real traffic from the client namespace to the libvirt namespace's address
(198.51.100.1) and a forwarded port, which must reach a stand-in guest listening at the guest
address, and reads the kernel state back (`nft -j list table inet virtport`, `iptables -S FORWARD`)
and virtport's own view (`virtport list/history --json`).

The binary: $VIRTPORT_BIN, else .build/release/virtport (scripts/test.sh builds it first). Hooks get
their config only from the lab's /etc/virtport overlay (libvirt filters the hook environment); the
database goes into the lab's workdir, one per test.
"""
import json
import os
import re
import signal
import subprocess
import warnings

import pytest

import harness
from harness import out

BIN = os.environ.get("VIRTPORT_BIN") or os.path.join(harness.ROOT, ".build", "release", "virtport")
HOST = harness.CLIENT_HOST_IP          # the libvirt namespace's address on the client side
CLIENT = harness.CLIENT_IP
GW = harness.GATEWAY                   # virbr0's address
G1, G2, G_RESERVED = "192.168.122.50", "192.168.122.51", "192.168.122.60"
MAC1, MAC2, MAC3 = "52:54:00:76:70:01", "52:54:00:76:70:02", "52:54:00:76:70:03"
SUBNET = "192.168.122.0/24"
OUR_FORWARD_RULE = ('-A FORWARD -d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate DNAT '
                    '-m comment --comment "virtport:virbr0" -j ACCEPT')


def meta(*forwards):
    """<vp:virtport> with one portForward per (proto, host_port, guest_port, guest_ip or None)."""
    xml = "<vp:virtport xmlns:vp='urn:virtport:domain:1'>"
    for proto, host_port, guest_port, guest in forwards:
        g = f" guest='{guest}'" if guest else ""
        xml += (f"<vp:portForward proto='{proto}'{g}>"
                f"<vp:range start='{host_port}' to='{guest_port}'/></vp:portForward>")
    return xml + "</vp:virtport>"


# -- virtport and kernel state ---------------------------------------------------------------------

class Virtport:
    """The binary run inside the lab namespace (so with the lab's /etc/virtport), and the kernel
    state it owns there."""

    def __init__(self, lab, db):
        self.lab, self.db = lab, db
        self.config = f'database = "{db}"\n'

    def run(self, *args, input=None, check=True):
        r = self.lab.exec(BIN, *args, input=input, check=False)
        if check:
            assert r.returncode == 0, f"virtport {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}"
        return r

    def json(self, *args, input=None):
        return json.loads(self.run(*args, "--json", input=input).stdout)

    def mappings(self):
        """`virtport list --json`, reduced to what identifies a mapping, sorted."""
        return sorted((m["domain"], m["proto"], m["host_port_start"], m["host_port_end"], m["guest_address"],
                       m["guest_port_start"], m["state"]) for m in self.json("list"))

    def history(self, *args):
        return [(e["action"], e["domain"], e["proto"], e["host_port_start"], e["guest_address"],
                 e["guest_port_start"], e["reason"]) for e in self.json("history", *args)]

    # kernel
    def table(self):
        r = self.lab.exec("nft", "-j", "list", "table", "inet", "virtport", check=False)
        return json.loads(r.stdout)["nftables"] if r.returncode == 0 else None

    def elements(self):
        """{(map, key…): (guest address, guest port)} of table inet virtport; None without the table."""
        objs = self.table()
        if objs is None:
            return None
        elems = {}
        for o in objs:
            m = o.get("map")
            for e in (m or {}).get("elem", []):
                key, val = e
                elems[(m["name"],) + tuple(key["concat"])] = tuple(val["concat"])
        return elems

    def hairpin4(self):
        for o in self.table() or []:
            s = o.get("set")
            if s and s["name"] == "hairpin4":
                return [f"{p['prefix']['addr']}/{p['prefix']['len']}" for p in s.get("elem", [])]
        return None

    def forward_chain(self):
        """Where virtport's accept for DNATed traffic lives: iptables FORWARD (libvirt's iptables
        backend), or libvirt's `ip libvirt_network guest_input` chain (its nftables backend)."""
        if self.lab.backend == "nftables":
            return self.lab.guest_input()
        return [l for l in out(self.lab.iptables("-S", "FORWARD")).splitlines() if l.startswith("-A")]

    def assert_forward_rule_first(self):
        chain = self.forward_chain()
        if self.lab.backend == "nftables":       # above libvirt's reject (first or not)
            ours = [i for i, l in enumerate(chain) if 'ct status dnat accept comment "virtport:virbr0"' in l]
            rejects = [i for i, l in enumerate(chain) if l.endswith("reject") or " reject " in l]
            assert len(ours) == 1 and sum("virtport" in l for l in chain) == 1, "\n".join(chain)
            assert rejects and ours[0] < rejects[0], "\n".join(chain)
            return
        assert chain and chain[0] == OUR_FORWARD_RULE, "\n".join(chain)
        assert sum("virtport" in l for l in chain) == 1, "\n".join(chain)
        assert "virtport" not in out(self.lab.iptables("-S", "LIBVIRT_FWI"))

    def assert_no_forward_rule(self):
        chain = self.forward_chain()
        assert not any("virtport" in l for l in chain), "\n".join(chain)

    def clear_kernel(self):
        """Drop table inet virtport and our accept rule(s): state a previous test may have left."""
        self.lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
        self.lab.exec("nft", "delete", "table", "inet", "virtport_src", check=False)
        if self.lab.backend == "nftables":
            r = self.lab.exec("nft", "-a", "list", "chain", "ip", "libvirt_network", "guest_input", check=False)
            for handle in re.findall(r'"virtport:[^"]*".*# handle (\d+)', out(r)):
                self.lab.exec("nft", "delete", "rule", "ip", "libvirt_network", "guest_input", "handle", handle)
            return
        for line in self.forward_chain():
            if "virtport:" in line:
                spec = line.split()[2:]
                self.lab.iptables("-D", "FORWARD", *[a.strip('"') for a in spec])


def wait_log(lab, mark, needle, timeout=10):
    try:
        harness.wait_for(lambda: any(needle in l for l in lab.log_lines(mark)), timeout, 0.02, needle)
        return True
    except harness.LabError:
        return False


def install(lab, strict=False):
    """`virtport install` in the namespace, then make sure libvirtd has rescanned its hooks. strict:
    virtport's own SIGHUP must have done it; else a missing rescan is a warning and the test sends
    the SIGHUP itself (test_install_and_uninstall_make_libvirtd_rescan checks virtport's)."""
    mark = lab.log_mark()
    r = lab.install_hooks(BIN, wait_rescan=False)
    text = out(r)
    real = os.path.realpath(BIN)
    assert {h: os.path.realpath(os.path.join(lab.hooks_dir, h)) for h in ("qemu", "network")} == \
        {"qemu": real, "network": real}, text
    _rescanned(lab, mark, "Found hook script /etc/libvirt/hooks/qemu", "install", text, strict)
    return text


def uninstall(lab, strict=False):
    mark = lab.log_mark()
    r = lab.remove_hooks(BIN, wait_rescan=False)
    text = out(r)
    assert lab.hooks_installed() == {"qemu": False, "network": False}, text
    _rescanned(lab, mark, "No hook script /etc/libvirt/hooks/qemu", "uninstall", text, strict)
    return text


def _rescanned(lab, mark, needle, what, text, strict):
    # Without a SIGHUP sent, say so at once instead of waiting (virtport prints what it did).
    sent = "libvirtd is not running" not in text
    if sent and wait_log(lab, mark, needle):
        lab.wait_reload_idle()
        return
    msg = (f"`virtport {what}` did not make libvirtd rescan its hooks (no '{needle}' in libvirtd's log); "
           f"its output:\n{text}")
    if strict:
        pytest.fail(msg)
    warnings.warn(msg + "\n(the test sent the SIGHUP itself)")
    lab.sighup_libvirtd()
    assert any(needle in l for l in lab.log_lines(mark)), f"no '{needle}' even after a SIGHUP"


def restart_libvirtd(lab):
    """Restart libvirtd (the harness waits for the reconnect hooks to have run); its hook calls."""
    mark = lab.log_mark()
    lab.restart_libvirtd()
    return lab.hook_calls(mark)


def reattach(lab, guest):
    """Put a stand-in guest's veth back on virbr0 (after net-destroy/net-start made a new bridge)."""
    lab.exec("ip", "link", "set", guest.host_if, "master", harness.BRIDGE)
    harness.wait_for(lambda: "forwarding" in out(lab.exec("bridge", "link", "show", "dev", guest.host_if)),
                     10, 0.05, f"{guest.host_if} forwarding on {harness.BRIDGE}")


def uuid_of(lab, name):
    return out(lab.virsh("domuuid", name))


def refused_start(lab, vm):
    """`virsh start` of `vm` that virtport's prepare hook refuses: the VM stays off, no `start`
    hook ran; returns what the hook wrote (virsh: "error: Hook script execution failed: …
    unexpected exit status 2: <the hook's stderr>")."""
    mark = lab.log_mark()
    r = lab.start_vm(vm, check=False)
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert lab.vm_state(vm) == "shut off"
    m = re.search(r"unexpected exit status 2: (.*)\Z", err.strip(), re.S)
    assert m, err
    calls = lab.hook_calls(mark)
    assert calls[0] == ("qemu", vm, "prepare", "begin") and ("qemu", vm, "start", "begin") not in calls, calls
    return m.group(1)


def answer(guest_tag, port, source):
    return f"{guest_tag} {port} from {source}"


def start_forwarded_vm(lab, vm):
    """Defines and starts `vm` forwarding host tcp/2222 to port 22 of a listening stand-in guest at
    G1, checks that real traffic gets through, and returns (guest, client)."""
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    return guest, client


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture
def vp(lab, request):
    """The config (database in the lab's workdir, one per test) and a namespace without virtport
    state; afterwards VMs destroyed and undefined, hooks and DHCP reservations removed, table and
    FORWARD rule dropped, whatever the test did."""
    if not os.access(BIN, os.X_OK):
        msg = f"no virtport binary at {BIN} (swift build -c release, or set VIRTPORT_BIN)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    v = Virtport(lab, os.path.join(lab.workdir, f"virtport-{request.node.name}.db"))
    lab.write_etc("virtport/virtport.conf", v.config)
    v.clear_kernel()
    yield v
    if not lab.running:
        return
    errs = []
    for step in (lambda: [lab.destroy_vm(n) for n in list(lab.vms) if lab.vm_state(n) not in (None, "shut off")],
                 lambda: [lab.undefine_vm(n) for n in list(lab.vms) if lab.vm_state(n) is not None],
                 lambda: lab.hooks_binary and uninstall(lab),     # waits for the rescan: no SIGHUP
                 # may still be in flight when the next test installs (libvirtd would ignore that one)
                 lab.remove_dhcp_hosts,
                 v.clear_kernel):
        try:
            step()              # in this order: VMs go while the hooks are still there
        except Exception as e:
            errs.append(repr(e))
    assert not errs, errs


@pytest.fixture
def installed(lab, vp):
    install(lab)
    return vp


# -- scenarios -------------------------------------------------------------------------------------

def test_install_start_destroy_list_history(lab, vp):
    """1. `virtport install`, a VM declaring tcp 2222->22 and udp 5353->53: both forwards carry real
    traffic while it runs; `virsh destroy` takes everything away again; list and history agree."""
    vm = "vpe-basic"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1), ("udp", 5353, 53, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    guest.listen("udp", 53, "G1")
    client = lab.client()
    assert lab.hooks_installed() == {"qemu": False, "network": False}

    text = install(lab)
    assert "/etc/libvirt/hooks/qemu" in text and "/etc/libvirt/hooks/network" in text, text
    assert vp.mappings() == []

    mark = lab.log_mark()
    lab.start_vm(vm)
    calls = lab.hook_calls(mark)
    for op in ("prepare", "start", "started"):
        assert ("qemu", vm, op, "begin") in calls, calls
    assert not any("failed" in l.lower() for l in lab.hook_log(mark)), lab.hook_log(mark)

    # Real traffic: the guest sees the client's own address (DNAT only, no masquerade from outside).
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert client.connect("udp", HOST, 5353) == answer("G1", 53, CLIENT)
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22), ("fwd4", "udp", 5353): (G1, 53)}
    assert vp.hairpin4() == [SUBNET]
    vp.assert_forward_rule_first()
    uuid = uuid_of(lab, vm)
    listing = vp.json("list")
    assert {m["uuid"] for m in listing} == {uuid}
    assert vp.mappings() == [(vm, "tcp", 2222, 2222, G1, 22, "applied"), (vm, "udp", 5353, 5353, G1, 53, "applied")]
    assert {(m["mac"], m["network"], m["guest_source"]) for m in listing} == {(MAC1, "default", "guest-attribute")}

    mark = lab.log_mark()
    lab.destroy_vm(vm)
    calls = lab.hook_calls(mark)
    assert ("qemu", vm, "stopped", "end") in calls and ("qemu", vm, "release", "end") in calls, calls
    assert client.connect("tcp", HOST, 2222).startswith("ERROR ConnectionRefusedError")
    assert client.connect("udp", HOST, 5353).startswith("ERROR")
    assert not vp.elements()
    vp.assert_no_forward_rule()
    assert vp.mappings() == []

    hist = vp.history()
    assert sorted(hist) == sorted([
        ("add", vm, "tcp", 2222, G1, 22, "hook qemu start"), ("add", vm, "udp", 5353, G1, 53, "hook qemu start"),
        ("remove", vm, "tcp", 2222, G1, 22, "hook qemu stopped"),
        ("remove", vm, "udp", 5353, G1, 53, "hook qemu stopped")]), hist
    assert [h[0] for h in hist[:2]] == ["add", "add"]
    assert vp.history("--domain", uuid, "--port", "2222") == [
        ("add", vm, "tcp", 2222, G1, 22, "hook qemu start"), ("remove", vm, "tcp", 2222, G1, 22, "hook qemu stopped")]


def test_install_and_uninstall_make_libvirtd_rescan(lab, vp):
    """libvirtd reads hook files only at start or on SIGHUP: `virtport install` and `uninstall`
    must send it (README "Install alongside libvirtd"), or the next VM start runs without hooks."""
    install(lab, strict=True)
    install(lab, strict=True)     # idempotent, and says so
    uninstall(lab, strict=True)


def test_network_destroy_and_start(lab, installed):
    """2. net-destroy with the VM running: libvirt 9.0 keeps the VM running but its tap loses the
    bridge; the forward is dead, its journal entry stays. net-start calls the network hook, which
    rebuilds the table and our FORWARD rule (dropped here while the network was down, as a firewall
    reset would); after a VM restart the forward works again."""
    vp, vm = installed, "vpe-net"
    guest, client = start_forwarded_vm(lab, vm)
    tap = lab.vm_tap(vm)
    applied = [(vm, "tcp", 2222, 2222, G1, 22, "applied")]

    mark = lab.log_mark()
    lab.net_destroy()
    assert lab.hook_calls(mark) == [("network", "default", "stopped", "end")]
    assert lab.vm_state(vm) == "running"
    assert "master" not in out(lab.exec("ip", "-o", "link", "show", tap))
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert vp.mappings() == applied
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}

    vp.clear_kernel()
    assert vp.elements() is None and not any("virtport" in l for l in vp.forward_chain())

    mark = lab.log_mark()
    lab.net_start()
    calls = lab.hook_calls(mark)
    assert ("network", "default", "started", "begin") in calls, calls
    assert not any("failed" in l.lower() for l in lab.hook_log(mark)), lab.hook_log(mark)
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    assert vp.hairpin4() == [SUBNET]
    vp.assert_forward_rule_first()
    assert "master" not in out(lab.exec("ip", "-o", "link", "show", tap)), "libvirt re-attached the old tap"
    reattach(lab, guest)          # the stand-in is ours to plug back in
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)

    mark = lab.log_mark()
    lab.destroy_vm(vm)
    lab.start_vm(vm)
    calls = lab.hook_calls(mark)
    assert ("qemu", vm, "stopped", "end") in calls and ("qemu", vm, "start", "begin") in calls, calls
    assert f"master {harness.BRIDGE}" in out(lab.exec("ip", "-o", "link", "show", lab.vm_tap(vm)))
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    vp.assert_forward_rule_first()
    assert vp.mappings() == applied
    assert [h[0] for h in vp.history()] == ["add", "remove", "add"]


def test_libvirtd_restart_kill_and_sighup(lab, installed):
    """3. libvirtd killed (SIGKILL) and started again with the VM running: the forward never stops
    working and reconnect leaves one FORWARD rule; a graceful restart over a flushed table: the
    reconnect hook heals it; SIGHUP (libvirt re-inserts its own rules, calls no hook): our rule
    stays first in FORWARD and the forward works."""
    vp, vm = installed, "vpe-daemon"
    guest, client = start_forwarded_vm(lab, vm)
    elements = {("fwd4", "tcp", 2222): (G1, 22)}
    applied = [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    hist = vp.history()

    # Crash: SIGKILL. The kernel keeps forwarding while no daemon runs.
    pid = lab.libvirtd_pid
    os.kill(pid, signal.SIGKILL)
    harness.wait_for(lambda: not harness.pid_alive(pid), 10, 0.05, "libvirtd to die")
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    calls = restart_libvirtd(lab)
    assert calls == [("network", "default", "port-created", "begin"), ("qemu", vm, "reconnect", "begin")], calls
    assert lab.vm_state(vm) == "running"
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == elements
    vp.assert_forward_rule_first()
    assert vp.mappings() == applied

    # Graceful restart over a flushed table: the reconnect hook puts the forward back.
    lab.exec("nft", "flush", "table", "inet", "virtport")
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    restart_libvirtd(lab)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == elements
    vp.assert_forward_rule_first()
    assert vp.mappings() == applied

    if lab.backend == "nftables":
        # libvirt 11's virtnetworkd SIGHUP moves its reject above virtport's accept and no hook
        # runs: healed by the agent (test_daemons_libvirt.py), not by anything tested here.
        return
    # SIGHUP: libvirt deletes and re-inserts all its iptables rules; no hook call.
    mark = lab.log_mark()
    lab.sighup_libvirtd()
    assert any("Reloading iptables rules" in l for l in lab.log_lines(mark))
    assert lab.hook_calls(mark) == []
    vp.assert_forward_rule_first()
    assert "REJECT" in out(lab.iptables("-S", "LIBVIRT_FWI"))
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == elements
    assert vp.mappings() == applied
    assert vp.history()[:len(hist)] == hist and all(h[0] == "add" for h in vp.history()[len(hist):])


def test_hairpin_from_other_guests_and_the_host(lab, installed):
    """4. Another guest on virbr0 reaches the forward through the host's outside address and through
    virbr0's address (masqueraded to the bridge address, so the reply comes back the same way); the
    host reaches it too. (Not the guest itself: with br_netfilter loaded, as on these machines, the
    DNATed frame is bridged back towards the port it came from, which a bridge never does without
    hairpin mode on that port.)"""
    vp, vm = installed, "vpe-hairpin"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1), ("udp", 5353, 53, G1)))
    g1 = lab.stand_in_guest(G1)
    g1.listen("tcp", 22, "G1")
    g1.listen("udp", 53, "G1")
    g2 = lab.stand_in_guest(G2)
    client = lab.client()       # also gives the libvirt namespace its outside address
    lab.start_vm(vm)
    assert vp.hairpin4() == [SUBNET]
    for addr in (HOST, GW):
        assert g2.connect("tcp", addr, 2222) == answer("G1", 22, GW), addr
        assert g2.connect("udp", addr, 5353) == answer("G1", 53, GW), addr
        assert lab.connect("tcp", addr, 2222) == answer("G1", 22, addr), addr  # the host (output chain)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)


def test_conflicting_vm_is_refused_and_the_first_keeps_working(lab, installed):
    """5. A second VM claiming the same host port is refused by `virsh start` with virtport's one
    line naming the first VM; its stopped/release hooks touch nothing of the first. Once the first
    is gone the second starts and gets the port."""
    vp, a, b = installed, "vpe-first", "vpe-second"
    lab.define_vm(a, MAC1, meta(("tcp", 2222, 22, G1)))
    lab.define_vm(b, MAC2, meta(("tcp", 2224, 24, G2), ("tcp", 2222, 22, G2)))
    g1 = lab.stand_in_guest(G1)
    g1.listen("tcp", 22, "G1")
    g2 = lab.stand_in_guest(G2)
    g2.listen("tcp", 22, "G2")
    g2.listen("tcp", 24, "G2")
    client = lab.client()
    lab.start_vm(a)
    ua = uuid_of(lab, a)
    before = vp.history()

    assert refused_start(lab, b) == (f"virtport: domain '{b}' prepare: host port tcp/2222 is already forwarded "
                                     f"to domain '{a}' (uuid {ua})")

    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert client.connect("tcp", HOST, 2224).startswith("ERROR")
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    vp.assert_forward_rule_first()
    assert vp.mappings() == [(a, "tcp", 2222, 2222, G1, 22, "applied")]
    assert vp.history() == before

    lab.destroy_vm(a)
    lab.start_vm(b)
    assert client.connect("tcp", HOST, 2222) == answer("G2", 22, CLIENT)
    assert client.connect("tcp", HOST, 2224) == answer("G2", 24, CLIENT)
    assert vp.elements() == {("fwd4", "tcp", 2222): (G2, 22), ("fwd4", "tcp", 2224): (G2, 24)}
    vp.assert_forward_rule_first()


def test_reconcile_keeps_a_running_forward_and_restores_a_flushed_table(lab, installed):
    """6. With libvirtd up and the VM running, reconcile has nothing to do and keeps the forward;
    after `nft flush table inet virtport` (a firewall reload, `nft flush ruleset`) `--dry-run` says
    what it would fix and touches nothing, reconcile restores forward and hairpin, and a second run
    has nothing to do."""
    vp, vm = installed, "vpe-reconcile"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    g2 = lab.stand_in_guest(G2)
    client = lab.client()
    lab.start_vm(vm)
    elements = {("fwd4", "tcp", 2222): (G1, 22)}
    applied = [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    hist = vp.history()

    r = vp.run("reconcile")
    assert out(r) == "nothing to do: kernel, journal and running domains agree" and r.stderr == b"", r
    assert vp.json("reconcile") == {"dry_run": False, "fixes": []}
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == elements and vp.hairpin4() == [SUBNET]
    vp.assert_forward_rule_first()

    lab.exec("nft", "flush", "table", "inet", "virtport")
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    dry = vp.json("reconcile", "--dry-run")
    assert dry["dry_run"] is True and dry["fixes"], dry
    assert client.connect("tcp", HOST, 2222).startswith("ERROR"), "a dry run changed the kernel"
    fixes = vp.json("reconcile")["fixes"]
    assert [f["action"] for f in fixes] == [f["action"] for f in dry["fixes"]], (dry, fixes)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.elements() == elements
    vp.assert_forward_rule_first()
    assert vp.mappings() == applied
    assert vp.history() == hist, "reconcile of a kernel-only loss wrote journal history"
    assert vp.hairpin4() == [SUBNET], "reconcile rebuilt the table without the hairpin subnets"
    assert g2.connect("tcp", HOST, 2222) == answer("G1", 22, GW)
    assert vp.json("reconcile")["fixes"] == []


def test_reconcile_adopts_a_vm_the_hooks_missed_and_drops_a_stopped_one(lab, vp):
    """6b. reconcile asks the running libvirtd which domains are active: a VM started while no hook
    was installed gets its forward (the same path `virtport install` takes for VMs already running),
    reachable through libvirt's firewall and by hairpin; once it is stopped behind virtport's back,
    reconcile removes the forward and libvirt's accept rule."""
    vm = "vpe-adopt"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    g2 = lab.stand_in_guest(G2)
    client = lab.client()
    lab.start_vm(vm)                                   # no hooks: nothing forwarded
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert not vp.elements()

    dry = vp.json("reconcile", "--dry-run")
    assert dry["dry_run"] is True and ("add-mapping", vm) in [(f["action"], f["domain"]) for f in dry["fixes"]], dry
    assert not vp.elements() and not os.path.exists(vp.db), "a dry run changed something"
    fixes = vp.json("reconcile")["fixes"]
    assert ("add-mapping", vm) in [(f["action"], f["domain"]) for f in fixes], fixes
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    assert vp.mappings() == [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    assert vp.history() == [("add", vm, "tcp", 2222, G1, 22, "reconcile: domain running")]
    vp.assert_forward_rule_first()
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert vp.hairpin4() == [SUBNET]
    assert g2.connect("tcp", HOST, 2222) == answer("G1", 22, GW)
    assert vp.json("reconcile")["fixes"] == []

    lab.destroy_vm(vm)                                 # no hooks: virtport is not told
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    fixes = vp.json("reconcile")["fixes"]
    assert ("remove-mapping", vm) in [(f["action"], f["domain"]) for f in fixes], fixes
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert not vp.elements() and vp.mappings() == []
    assert vp.history()[-1] == ("remove", vm, "tcp", 2222, G1, 22, "reconcile: domain not running")
    vp.assert_no_forward_rule()
    assert vp.json("reconcile")["fixes"] == []


def test_guest_address_from_the_networks_dhcp_reservation(lab, installed):
    """6c. A forward without guest= goes to the address of the network's static DHCP reservation
    for the VM's MAC (`virsh net-update default add ip-dhcp-host … --live --config`): `virtport plan`
    says so with --network-xml from `virsh net-dumpxml` and from libvirt's live network XML, and
    the started VM's forward reaches that address."""
    vp, vm = installed, "vpe-reserved"
    lab.add_dhcp_host(MAC3, G_RESERVED)
    lab.define_vm(vm, MAC3, meta(("tcp", 2226, 22, None)))
    guest = lab.stand_in_guest(G_RESERVED)     # its own MAC: the VM's NIC holds MAC3 on the same bridge
    guest.listen("tcp", 22, "G3")
    client = lab.client()
    net_xml = os.path.join(lab.workdir, "default-net.xml")
    with open(net_xml, "w") as f:
        f.write(out(lab.virsh("net-dumpxml", "default")))
    dom = out(lab.virsh("dumpxml", vm))
    for args in (["--network-xml", net_xml], []):
        plan = json.loads(vp.run("plan", *args, input=dom).stdout)
        assert [(f["guest_address"], f["guest_source"], f["mac"], f["network"], f["host_port_start"],
                 f["guest_port_start"]) for f in plan["forwards"]] == \
            [(G_RESERVED, "dhcp-reservation", MAC3, "default", 2226, 22)], (args, plan)
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2226) == answer("G3", 22, CLIENT)
    assert vp.elements() == {("fwd4", "tcp", 2226): (G_RESERVED, 22)}
    vp.assert_forward_rule_first()
    assert [(m["guest_address"], m["guest_source"], m["state"]) for m in vp.json("list")] == \
        [(G_RESERVED, "dhcp-reservation", "applied")]
    assert vp.json("reconcile")["fixes"] == []


def test_uninstall_then_vm_start_forwards_nothing(lab, installed):
    """7. `virtport uninstall` removes the hooks; a VM started afterwards gets no forward (no hook
    call, nothing in the kernel or the journal), while the database with its history stays."""
    vp, vm = installed, "vpe-uninstall"
    guest, client = start_forwarded_vm(lab, vm)
    lab.destroy_vm(vm)
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")

    text = uninstall(lab)
    assert "removed" in text, text
    assert os.path.exists(vp.db)
    mark = lab.log_mark()
    lab.start_vm(vm)
    assert lab.hook_calls(mark) == []
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert not vp.elements()
    vp.assert_no_forward_rule()
    assert vp.mappings() == []
    assert [h[0] for h in vp.history()] == ["add", "remove"]
    uninstall(lab)                                     # idempotent


def test_hooks_run_by_libvirtd_are_served_by_the_agent(lab, installed):
    """8. `virtport agent` running in the host namespace (README "Agent"): the hooks libvirtd runs for
    `virsh start` and `virsh destroy` hand their work to it, and the result is the same — real
    traffic through the forward while the VM runs, nothing left after it stops, the same history."""
    vp, vm = installed, "vpe-agent"
    sock = os.path.join(lab.workdir, "agent.sock")
    lab.write_etc("virtport/virtport.conf", vp.config + f'[paths]\nagent_socket = "{sock}"\n')
    log = os.path.join(lab.workdir, "agent.log")
    with open(log, "w") as f:
        agent = subprocess.Popen(lab.cmd(BIN, "agent", "--verbose"),
                                 stdout=subprocess.DEVNULL, stderr=f)
    try:
        harness.wait_for(lambda: os.path.exists(sock), 10, 0.02, "the agent's socket")
        _, client = start_forwarded_vm(lab, vm)
        assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
        vp.assert_forward_rule_first()
        lab.destroy_vm(vm)
        assert client.connect("tcp", HOST, 2222).startswith("ERROR")
        assert not vp.elements()
        vp.assert_no_forward_rule()
        served = [l.split(": exit ")[0].split()[4] for l in open(log) if f"qemu {vm} " in l and ": exit 0" in l]
        assert served == ["prepare", "start", "stopped", "release"], open(log).read()
        assert [(h[0], h[6]) for h in vp.history()] == [("add", "hook qemu start"), ("remove", "hook qemu stopped")]
        # Its netlink socket stays open for good: deleting libvirt's accept rule at the stop left no
        # child behind to hold the socket (a hook process hands its socket's release to one).
        children = [c for t in os.listdir(f"/proc/{agent.pid}/task")
                    for c in open(f"/proc/{agent.pid}/task/{t}/children").read().split()]
        assert children == [], children
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_plan_vm_reads_the_live_xml_or_the_definition(lab, vp):
    """`virtport plan VM` asks libvirt: the definition while the VM is shut off, the live XML while
    it runs (a `virsh metadata --live` change shows there and not in `--inactive`), the same plan
    as `virsh dumpxml VM | virtport plan`; an unknown domain is one line, exit 2. A domain XML
    without <uuid> is planned from stdin, and refused by the hook."""
    vm = "vpe-plan"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))

    def plan(*args, input=None):
        r = vp.run("plan", *args, input=input)
        assert r.stderr == b"", r.stderr
        return json.loads(r.stdout)

    def ports(p):
        return [(f["proto"], f["host_port_start"], f["guest_address"], f["guest_port_start"], f["guest_source"])
                for f in p["forwards"]]

    uuid = re.search(r"<uuid>([^<]+)</uuid>", lab.dumpxml(vm)).group(1)
    off = plan(vm)
    assert off["domain"] == {"name": vm, "uuid": uuid}
    assert ports(off) == [("tcp", 2222, G1, 22, "guest-attribute")]

    lab.start_vm(vm)
    lab.virsh("metadata", vm, "urn:virtport:domain:1", "--key", "vp", "--live", "--set",
              f"<virtport><portForward proto='udp' guest='{G1}'><range start='5353' to='53'/></portForward></virtport>")
    live = plan(vm)
    assert ports(live) == [("udp", 5353, G1, 53, "guest-attribute")], live
    assert ports(plan(vm, "--inactive")) == [("tcp", 2222, G1, 22, "guest-attribute")]
    assert plan(input=lab.virsh("dumpxml", vm).stdout) == live

    r = vp.run("plan", "vpe-no-such-domain", check=False)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"" and err.count("\n") == 1, err
    assert "vpe-no-such-domain" in err and "not defined" in err, err

    no_uuid = re.sub(rb"\s*<uuid>[^<]+</uuid>", b"", lab.virsh("dumpxml", "--inactive", vm).stdout)
    assert b"<uuid>" not in no_uuid
    planned = plan(input=no_uuid)
    assert planned["domain"] == {"name": vm, "uuid": None}
    assert ports(planned) == [("tcp", 2222, G1, 22, "guest-attribute")]
    r = vp.run("hook", "qemu", vm, "prepare", "begin", "-", input=no_uuid, check=False)
    assert r.returncode == 2 and b"has no <uuid>" in r.stderr and r.stdout == b"", r.stderr
