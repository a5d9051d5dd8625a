"""firewalld for real (issue 22 scope 4): Debian's firewalld 1.3 (nftables backend) on its own D-Bus
system bus inside a libvirt 11 lab (lab11.Lab11(firewalld=True)); virtnetworkd puts virbr0 into
firewalld's `libvirt` zone, as on Fedora. Forwards carry real traffic with firewalld active, across
`firewall-cmd --reload` and a firewalld restart (within 1 s, with the agent running); doctor
explains a firewalld that blocks DNATed traffic and its fix works.

firewalld >= 2.3's `StrictForwardPorts=yes` drops `ct status dnat accept` from filter_FORWARD. Debian
12's 1.3 has no such option; Lab11.backport_strict_forward_ports() gives this lab's firewalld that
effect, driven by the same firewalld.conf key (see there).

Its own lab instance (module scope), so it runs beside the session's lab; only in the libvirt 11 run.
"""
import json

import pytest

import harness
from conftest import LAB
from harness import out
from test_agent_libvirt import LabAgent
from test_daemons_libvirt import flows_within
from test_virtport_libvirt import BIN, CLIENT, G1, HOST, MAC1, Virtport, answer, install, meta

pytestmark = pytest.mark.only_lab("11", why="firewalld runs in the libvirt 11 lab root")


@pytest.fixture(scope="module")
def fw_lab():
    if LAB != "11":
        pytest.skip("libvirt 11 lab only")
    import lab11
    lab = lab11.Lab11(firewalld=True, name="firewalld")
    try:
        lab.start()
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def fw(fw_lab, request):
    """The firewalld lab with virtport installed and its agent running, a VM forwarding tcp 2222->22
    to a stand-in guest; afterwards everything removed and firewalld's config as Debian ships it."""
    import os
    lab = fw_lab
    if not lab.running:
        lab.start()
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no virtport binary at {BIN}")
    vp = Virtport(lab, os.path.join(lab.workdir, f"virtport-{request.node.name}.db"))
    lab.write_etc("virtport/virtport.conf", vp.config)
    vp.clear_kernel()
    agent = LabAgent(lab, vp)
    try:
        install(lab)
        lab.define_vm("vpf-web", MAC1, meta(("tcp", 2222, 22, G1)))
        guest = lab.stand_in_guest(G1)
        guest.listen("tcp", 22, "G1")
        client = lab.client()
        lab.start_vm("vpf-web")
        yield lab, vp, agent, client
    finally:
        agent.stop()
        try:
            lab.reset()
        finally:
            lab.set_firewalld_conf("StrictForwardPorts", "no")
            lab.firewall_cmd("--permanent", "--delete-policy", "virtport", check=False)
            lab.restart_firewalld()


def zones(lab):
    return out(lab.firewall_cmd("--get-active-zones"))


def settle(lab, vp, mark):
    """After firewalld reloaded or restarted: virtnetworkd's rebuild done, then `virtport reconcile`,
    which puts virtport's accept back above libvirt's reject whether or not the agent did (that
    is test_forwards_carry_traffic_with_firewalld_across_reload_and_restart's business)."""
    lab.wait_network_rebuild(mark)
    vp.run("reconcile")
    vp.assert_forward_rule_first()


def firewalld_finding(vp):
    r = vp.run("doctor", "--json", check=False)
    return r.returncode, {f["check"]: f for f in json.loads(r.stdout)}["firewalld"]


def test_forwards_carry_traffic_with_firewalld_across_reload_and_restart(fw):
    lab, vp, agent, client = fw
    assert out(lab.firewall_cmd("--state")) == "running"
    assert "libvirt\n  interfaces: virbr0" in zones(lab), zones(lab)
    assert "ct status dnat accept" in out(lab.exec("nft", "list", "chain", "inet", "firewalld", "filter_FORWARD"))
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    code, f = firewalld_finding(vp)
    assert code == 0 and f["status"] == "ok" and "ct status dnat accept" in f["detail"], f

    # firewall-cmd --reload: firewalld rebuilds its table; libvirt hears firewalld's Reloaded signal
    # and rebuilds its own (reject on top again); the agent must put virtport's accept back.
    mark = lab.log_mark()
    lab.firewall_cmd("--reload")
    lab.wait_network_rebuild(mark)
    took = flows_within(client, 1.0)
    assert took is not None, "no traffic 1 s after firewall-cmd --reload:\n" + "\n".join(vp.forward_chain())
    harness.wait_for(lambda: "virbr0" in zones(lab), 5, 0.1, "virbr0 back in the libvirt zone")
    vp.assert_forward_rule_first()

    # firewalld restarted (stopped: its table goes; started: built again, Reloaded signal again).
    mark = lab.log_mark()
    lab.restart_firewalld()
    lab.wait_network_rebuild(mark)
    took = flows_within(client, 1.0)
    assert took is not None, "no traffic 1 s after a firewalld restart:\n" + "\n".join(vp.forward_chain())
    vp.assert_forward_rule_first()
    assert vp.elements() == {("fwd4", "tcp", 2222): (G1, 22)}
    assert [h[0] for h in vp.history()] == ["add"]


def test_doctor_explains_strict_forward_ports_and_both_fixes_work(fw):
    lab, vp, agent, client = fw
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)

    # StrictForwardPorts=yes (firewalld >= 2.3's option, backported to this lab's 1.3): firewalld
    # now rejects the DNATed connection before libvirt's chains (and virtport's accept) see it.
    lab.backport_strict_forward_ports()
    lab.set_firewalld_conf("StrictForwardPorts", "yes")
    mark = lab.log_mark()
    lab.restart_firewalld()
    settle(lab, vp, mark)
    assert "ct status dnat accept" not in out(lab.exec("nft", "list", "chain", "inet", "firewalld", "filter_FORWARD"))
    harness.wait_for(lambda: client.connect("tcp", HOST, 2222).startswith("ERROR"), 5, 0.1, "firewalld blocking")
    vp.assert_forward_rule_first()          # virtport's side is intact: it is firewalld's policy
    code, f = firewalld_finding(vp)
    assert code == 1 and f["status"] == "fail", f
    assert "StrictForwardPorts=yes" in f["problem"] and "admin-prohibited" in f["why"], f
    assert "StrictForwardPorts=no" in f["fix"] and "firewall-cmd --reload" in f["fix"], f
    human = out(vp.run("doctor", check=False))
    assert "fail  firewalld:" in human and "fix: set StrictForwardPorts=no" in human, human

    # Fix 1, as doctor gives it: a policy into libvirt's zone (StrictForwardPorts stays on).
    policy = f["fix"].split("accept forwarded traffic into libvirt's zone")[1].split(": ", 1)[1]
    mark = lab.log_mark()
    for cmd in policy.split(" && "):
        argv = cmd.split()
        assert argv[0] == "firewall-cmd", policy
        lab.firewall_cmd(*argv[1:])
    settle(lab, vp, mark)
    assert flows_within(client, 3.0) is not None, "the policy doctor gives did not let the forward through"
    code, f = firewalld_finding(vp)
    assert code == 0 and f["status"] == "ok" and "policy virtport accepts forwarded traffic to virbr0" in f["detail"], f

    # Fix 2: StrictForwardPorts=no and a reload, without the policy.
    lab.firewall_cmd("--permanent", "--delete-policy", "virtport")
    mark = lab.log_mark()
    lab.firewall_cmd("--reload")
    settle(lab, vp, mark)
    harness.wait_for(lambda: client.connect("tcp", HOST, 2222).startswith("ERROR"), 5, 0.1, "blocked again")
    lab.set_firewalld_conf("StrictForwardPorts", "no")
    mark = lab.log_mark()
    lab.firewall_cmd("--reload")
    settle(lab, vp, mark)
    assert flows_within(client, 3.0) is not None, "StrictForwardPorts=no + reload did not let the forward through"
    code, f = firewalld_finding(vp)
    assert code == 0 and f["status"] == "ok", f
