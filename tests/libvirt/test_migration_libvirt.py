"""Two hosts (issue 22 scope 6): two libvirt 11 lab instances, A and B, each its own virtqemud +
virtnetworkd + virtlogd in its own root, mount and network namespace, each with virtport installed
(its own journal), linked by a veth (10.77.0.1 A, 10.77.0.2 B) that carries QEMU's migration stream.
A diskless VM migrates live A -> B with `virsh migrate --live --persistent --undefinesource` (the client-driven kind: virsh talks to
both daemons over their unix sockets; QEMU on A connects to QEMU on B at --migrateuri):

- its forward leaves A and comes up on B; history on both (A: removed at `stopped`; B: added with
  reason `hook qemu start (incoming migration)`), traffic to B's host port reaches the guest (a stand-in
  guest on B's virbr0 with the guest's address: the VM runs no OS);
- with the port taken on B by another VM, B's `migrate begin` hook refuses it: virsh fails with
  virtport's one line, the guest never left A, and A keeps its forward and its traffic.

Two lab-11 instances because the libvirt 9.0 lab is one per machine (its daemon's /run is the host's).
"""
import os
import re

import pytest

import harness
from conftest import LAB
from harness import out
from test_virtport_libvirt import BIN, CLIENT, G1, G2, HOST, MAC1, MAC2, Virtport, answer, install, meta

pytestmark = pytest.mark.only_lab("11", why="two daemons need two lab roots")
LINK_A, LINK_B = "10.77.0.1", "10.77.0.2"


@pytest.fixture(scope="module")
def hosts():
    if LAB != "11":
        pytest.skip("libvirt 11 lab only")
    import lab11
    a, b = lab11.Lab11(name="A"), lab11.Lab11(name="B")
    try:
        a.start()
        b.start()
        # the migration link: veth vpmig (A) <-> vpmig (B)
        harness.sh("ip", "link", "add", "vpmig", "netns", a.ns, "type", "veth", "peer", "name", "vpmig", "netns", b.ns)
        for lab, ip in ((a, LINK_A), (b, LINK_B)):
            lab.exec("ip", "addr", "add", f"{ip}/24", "dev", "vpmig")
            lab.exec("ip", "link", "set", "vpmig", "up")
        yield a, b
    finally:
        errs = []
        for lab in (b, a):
            try:
                lab.teardown()
            except Exception as e:
                errs.append(str(e))
        assert not errs, errs


@pytest.fixture
def pair(hosts, request):
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no virtport binary at {BIN}")
    vps = []
    for lab in hosts:
        if not lab.running:
            lab.start()
        vp = Virtport(lab, os.path.join(lab.workdir, f"virtport-{request.node.name}.db"))
        lab.write_etc("virtport/virtport.conf", vp.config)
        vp.clear_kernel()
        install(lab)
        vps.append(vp)
    yield hosts, vps
    errs = []
    for lab in hosts:
        try:
            lab.reset()
        except Exception as e:
            errs.append(str(e))
    assert not errs, errs


def migrate(a, b, vm, check=True):
    """`virsh migrate --live VM B` driven from the client, QEMU's stream over the veth."""
    return a.virsh("migrate", "--live", "--persistent", "--undefinesource", "--verbose", vm, b.uri, "--migrateuri", f"tcp://{LINK_B}:49152",
                   check=check, timeout=120)


def test_live_migration_moves_the_forward_with_history_on_both_hosts(pair):
    (a, b), (vpa, vpb) = pair
    vm = "vpm-mover"
    a.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest_a = a.stand_in_guest(G1)
    guest_a.listen("tcp", 22, "on-A")
    ca = a.client()
    guest_b = b.stand_in_guest(G1)              # the same guest once it runs on B
    guest_b.listen("tcp", 22, "on-B")
    cb = b.client()
    a.start_vm(vm)
    assert ca.connect("tcp", HOST, 2222) == answer("on-A", 22, CLIENT)
    assert cb.connect("tcp", HOST, 2222).startswith("ERROR")
    uuid = out(a.virsh("domuuid", vm))

    mark_a, mark_b = a.log_mark(), b.log_mark()
    r = migrate(a, b, vm)
    assert r.returncode == 0, r.stderr.decode()
    b.vms.append(vm)                           # B's reset destroys and undefines it
    assert b.vm_state(vm) == "running" and out(b.virsh("domuuid", vm)) == uuid
    assert a.vm_state(vm) is None               # --persistent --undefinesource: the definition moved too
    calls_b = [c[2] for c in b.hook_calls(mark_b) if c[:2] == ("qemu", vm)]
    assert calls_b[:4] == ["migrate", "prepare", "start", "started"], calls_b
    calls_a = [c[2] for c in a.hook_calls(mark_a) if c[:2] == ("qemu", vm)]
    assert "stopped" in calls_a and "release" in calls_a, calls_a

    # The forward left A and came up on B; traffic to B's host port reaches the guest.
    assert ca.connect("tcp", HOST, 2222).startswith("ERROR")
    assert cb.connect("tcp", HOST, 2222) == answer("on-B", 22, CLIENT)
    assert not vpa.elements() and vpa.mappings() == []
    assert vpb.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    assert vpb.mappings() == [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    vpb.assert_forward_rule_first()
    vpa.assert_no_forward_rule()
    assert [(h[0], h[6]) for h in vpa.history("--domain", uuid)] == [("add", "hook qemu start"),
                                                                  ("remove", "hook qemu stopped")]
    assert [(h[0], h[6]) for h in vpb.history("--domain", uuid)] == [("add", "hook qemu start (incoming migration)")]


def test_a_conflict_on_the_destination_refuses_the_migration_and_the_source_keeps_its_forward(pair):
    (a, b), (vpa, vpb) = pair
    vm, holder = "vpm-mover2", "vpm-holder"
    a.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest_a = a.stand_in_guest(G1)
    guest_a.listen("tcp", 22, "on-A")
    ca = a.client()
    b.define_vm(holder, MAC2, meta(("tcp", 2222, 22, G2)))     # B's own VM holds tcp/2222
    guest_b = b.stand_in_guest(G2)
    guest_b.listen("tcp", 22, "B-holder")
    cb = b.client()
    a.start_vm(vm)
    b.start_vm(holder)
    hist_a, hist_b = vpa.history(), vpb.history()

    mark_b = b.log_mark()
    r = migrate(a, b, vm, check=False)
    err = r.stderr.decode().strip()
    assert r.returncode != 0, err
    m = re.search(r"unexpected exit status 2: (.*)\Z", err, re.S)
    assert m, err
    line = m.group(1)
    assert "\n" not in line and line.startswith(
        f"virtport: domain '{vm}' migrate: host port tcp/2222 is already forwarded to domain '{holder}'"), line
    calls_b = [c[2] for c in b.hook_calls(mark_b) if c[:2] == ("qemu", vm)]
    assert calls_b and calls_b[0] == "migrate" and "start" not in calls_b, calls_b   # before the guest moved
    assert b.vm_state(vm) in (None, "shut off")
    if b.vm_state(vm) is not None:
        b.vms.append(vm)

    # A keeps the guest and its forward; B keeps its own.
    assert a.vm_state(vm) == "running"
    assert ca.connect("tcp", HOST, 2222) == answer("on-A", 22, CLIENT)
    assert vpa.mappings() == [(vm, "tcp", 2222, 2222, G1, 22, "applied")]
    vpa.assert_forward_rule_first()
    assert cb.connect("tcp", HOST, 2222) == answer("B-holder", 22, CLIENT)
    assert vpa.history() == hist_a and vpb.history() == hist_b
