"""The event agent against the real libvirtd (README "Agent", "Live edits"): a forward completed
from a real DHCP lease (the diskless PXE VM's iPXE asks libvirt's dnsmasq), `virsh metadata
--live` taking effect through the metadata-change event, `virtport add`/`remove` on a running VM
(real traffic through the new forward at once), refusals that change nothing, libvirtd restarted
under a running agent, and VMs started while the agent was away converging when it connects."""
import os
import subprocess
import time

import pytest

import harness
from harness import out
from syslog_catcher import SyslogCatcher
from test_virtport_libvirt import (BIN, CLIENT, G1, HOST, MAC1, MAC2, answer, install, installed, meta,  # noqa: F401
                                   uninstall, uuid_of, vp)

G2 = "192.168.122.52"
NS = "urn:virtport:domain:1"


class LabAgent:
    """`virtport agent --verbose` in the lab namespace (its config from the lab's /etc overlay),
    with the lab's syslog socket caught."""

    def __init__(self, lab, vp, metrics=None):
        self.lab = lab
        self.socket = os.path.join(lab.workdir, "agent.sock")
        self.syslog = SyslogCatcher(os.path.join(lab.workdir, "log.sock"))
        extra = f'[paths]\nagent_socket = "{self.socket}"\n[log]\nsyslog_socket = "{self.syslog.sock.getsockname()}"\n'
        if metrics:
            extra += f'[agent]\nmetrics_file = "{metrics}"\n'
        lab.write_etc("virtport/virtport.conf", vp.config + extra)
        self.log = os.path.join(lab.workdir, f"agent-{time.monotonic_ns()}.log")
        self.proc = None
        self.start()

    def start(self):
        with open(self.log, "a") as f:
            self.proc = subprocess.Popen(self.lab.cmd(BIN, "agent", "--verbose"),
                                         stdout=subprocess.DEVNULL, stderr=f)
        harness.wait_for(lambda: self.connects() >= 1 or self.proc.poll() is not None, 20, 0.05, "the agent connected")
        assert self.proc.poll() is None, open(self.log).read()

    def text(self):
        return open(self.log).read()

    def connects(self):
        return self.text().count("libvirt: connected to")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.syslog.close()


@pytest.fixture
def agent(lab, installed):
    a = LabAgent(lab, installed)
    yield a
    a.stop()


def virsh_metadata_live(lab, vm, xml):
    """`virsh metadata --live --set`: libvirt declares the key's prefix on the root itself (and fails
    when the text declares it), so the text uses our namespace as its default one."""
    xml = xml.replace("vp:", "").replace("xmlns:vp=", "xmlns=")
    return lab.virsh("metadata", vm, "--uri", NS, "--key", "vp", "--set", xml, "--live", check=False)


def wait(pred, timeout=10, what="condition"):
    return harness.wait_for(pred, timeout, 0.02, what)


def test_a_pending_forward_is_completed_from_a_real_dhcp_lease(lab, installed, agent):
    vp = installed
    lab.define_vm("vpa-pxe", MAC2, meta(("tcp", 2222, 22, None)), pxe=True)
    lab.start_vm("vpa-pxe")
    ip = wait(lambda: dict(lab.leases()).get(MAC2), 60, "the PXE VM's lease")
    wait(lambda: (vp.elements() or {}).get(("fwd4", "tcp", 2222)) == (ip, 22), 10, "the forward completed from the lease")
    assert vp.mappings() == [("vpa-pxe", "tcp", 2222, 2222, ip, 22, "applied")]
    reasons = [h[6] for h in vp.history()]
    assert reasons[0] == "hook qemu start" and any(r.startswith("agent: DHCP lease on virbr0") for r in reasons[1:]), reasons
    assert agent.syslog.wait_for(f"completed: domain 'vpa-pxe' tcp *:2222 -> {ip}:22, guest address from dhcp-lease")
    vp.assert_forward_rule_first()


def test_live_metadata_edits_and_virtport_add_remove_take_effect_at_once(lab, installed, agent):
    vp, vm = installed, "vpa-edit"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    guest.listen("tcp", 80, "W1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)

    # virsh metadata --live: the metadata-change event makes the agent apply it.
    r = virsh_metadata_live(lab, vm, meta(("tcp", 2222, 22, G1), ("tcp", 8080, 80, G1)))
    assert r.returncode == 0, out(r)
    wait(lambda: client.connect("tcp", HOST, 8080) == answer("W1", 80, CLIENT), 10, "8080 through the live edit")
    assert ("add", vm, "tcp", 8080, G1, 80, "agent: libvirt event, domain metadata changed") in vp.history()

    # An edit that fails validation: refused in the log, nothing applied, the running forwards untouched.
    r = virsh_metadata_live(lab, vm, "<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp'>"
                                     "<vp:range start='0'/></vp:portForward></vp:virtport>")
    assert r.returncode == 0, out(r)
    assert agent.syslog.wait_for(f"refused: domain '{vm}' (agent: libvirt event, domain metadata changed)")
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert client.connect("tcp", HOST, 8080) == answer("W1", 80, CLIENT)
    r = virsh_metadata_live(lab, vm, meta(("tcp", 2222, 22, G1), ("tcp", 8080, 80, G1)))
    assert r.returncode == 0

    # virtport add: written to the definition and the live XML, applied before it returns.
    r = vp.run("add", vm, "tcp", "9090:80", "--guest", G1)
    assert out(r).strip() == f"applied: tcp *:9090 -> {G1}:80 (domain '{vm}')", out(r)
    assert client.connect("tcp", HOST, 9090) == answer("W1", 80, CLIENT)
    assert "9090" in out(lab.virsh("dumpxml", "--inactive", vm)) and "9090" in out(lab.virsh("dumpxml", vm))
    # A conflict: exit 2, one line naming the holder, nothing changed.
    lab.define_vm("vpa-other", "52:54:00:76:70:09", meta(("tcp", 7070, 80, G2)))
    r = vp.run("add", "vpa-other", "tcp", "9090:80", "--guest", G2, check=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and vm in lines[0], r.stderr.decode()
    assert "9090" not in out(lab.virsh("dumpxml", "--inactive", "vpa-other"))
    # A policy refusal names the key.
    r = vp.run("add", vm, "tcp", "22", "--guest", G1, check=False)
    assert r.returncode == 2 and "host_ports" in r.stderr.decode(), r.stderr.decode()

    # virtport remove: gone from both, traffic stops at once.
    r = vp.run("remove", vm, "tcp", "9090")
    assert out(r).startswith("removed: tcp *:9090"), out(r)
    assert client.connect("tcp", HOST, 9090).startswith("ERROR")
    assert "9090" not in out(lab.virsh("dumpxml", "--inactive", vm)) + out(lab.virsh("dumpxml", vm))
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    r = vp.run("remove", vm, "tcp", "9090", check=False)
    assert r.returncode == 2 and "no tcp forward of host port 9090" in r.stderr.decode()


def test_the_agent_reconnects_after_a_libvirtd_restart_and_converges_what_it_missed(lab, installed):
    """An edit made while the agent was down converges when it connects; after libvirtd restarts
    under it, the agent reconnects and live edits work again; libvirtd gone, it says so and waits."""
    vp, vm = installed, "vpa-missed"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    guest.listen("tcp", 80, "W1")
    guest.listen("tcp", 81, "X1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    r = virsh_metadata_live(lab, vm, meta(("tcp", 2222, 22, G1), ("tcp", 8181, 81, G1)))   # no agent yet
    assert r.returncode == 0, out(r)
    assert client.connect("tcp", HOST, 8181).startswith("ERROR")
    a = LabAgent(lab, vp)
    try:
        wait(lambda: client.connect("tcp", HOST, 8181) == answer("X1", 81, CLIENT), 10, "the reconcile at connect")
        assert any("agent: connected to libvirt" in h[6] for h in vp.history() if h[3] == 8181), vp.history()

        lab.restart_libvirtd()
        wait(lambda: a.connects() >= 2, 30, "the agent reconnected")
        assert a.syslog.wait_for("agent: lost the libvirt connection")
        r = virsh_metadata_live(lab, vm, meta(("tcp", 2222, 22, G1), ("tcp", 8181, 81, G1), ("tcp", 8080, 80, G1)))
        assert r.returncode == 0, out(r)
        wait(lambda: client.connect("tcp", HOST, 8080) == answer("W1", 80, CLIENT), 10, "8080 after the restart")
        vp.run("add", vm, "tcp", "9090:80", "--guest", G1)
        assert client.connect("tcp", HOST, 9090) == answer("W1", 80, CLIENT)
        # libvirtd stopped: the agent says so once and keeps retrying; the hooks do not need it.
        lab.stop_libvirtd()
        assert a.syslog.wait_for("agent: cannot reach libvirt at qemu:///system", 10)
        assert a.proc.poll() is None
        lab.restart_libvirtd()
        wait(lambda: a.connects() >= 3, 40, "the agent back once libvirtd is")
    finally:
        a.stop()


def test_an_agent_killed_mid_event_loses_and_leaks_nothing(lab, installed):
    """SIGKILL right after a live edit (the event in flight or half done), then restarted: the
    forward the edit asked for is there exactly once, nothing half-written stays in the journal."""
    vp, vm = installed, "vpa-kill"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 80, "W1")
    client = lab.client()
    lab.start_vm(vm)
    a = LabAgent(lab, vp)
    try:
        r = virsh_metadata_live(lab, vm, meta(("tcp", 2222, 22, G1), ("tcp", 8080, 80, G1)))
        assert r.returncode == 0, out(r)
        a.proc.kill()
        a.proc.wait(timeout=10)
        a.start()
        wait(lambda: client.connect("tcp", HOST, 8080) == answer("W1", 80, CLIENT), 10, "8080 after the restart")
        # The killed agent may have put the element in the kernel before its commit: traffic then
        # flows before the restarted agent's reconcile has marked the intent applied.
        want = [(vm, "tcp", 2222, 2222, G1, 22, "applied"), (vm, "tcp", 8080, 8080, G1, 80, "applied")]
        wait(lambda: vp.mappings() == want, 10, "the 8080 intent completed")
        assert vp.mappings() == want
        assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22), ("fwd4", "tcp", 8080): (G1, 80)}
        adds = [h for h in vp.history() if h[0] == "add" and h[3] == 8080]
        assert len(adds) == 1, vp.history()
        lab.destroy_vm(vm)
        wait(lambda: not vp.elements(), 10, "everything gone at the stop")
        assert vp.mappings() == []
    finally:
        a.stop()
