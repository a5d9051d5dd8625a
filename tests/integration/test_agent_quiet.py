"""Issue 22's smaller findings: the agent logs nothing about things that are normal. `virtport
doctor` probes the agent's socket with a request it declines (no "dropped a malformed…" line per
doctor run), and an empty dnsmasq status file (what libvirt leaves while no guest has a lease) is
no leases, not garbage. Real agent process in the lab's host namespace."""
import json
import socket
import subprocess

from conftest import BIN, domain_xml, sh
from test_agent_watch import FIXED, running, start_agent, wait


def test_doctor_probes_the_agent_without_making_it_log(lab):
    agent = start_agent(lab)
    # The baseline: a client that connects and hangs up without a request is logged.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent.socket)
    s.close()
    wait(lambda: "dropped a malformed" in agent.text(), what="the baseline's log line")
    before = agent.text().count("dropped a malformed")
    for _ in range(3):
        doc = json.loads(lab.virtport("doctor", "--json").stdout)
        [finding] = [f for f in doc if f["check"] == "agent"]
        assert finding["status"] == "ok" and "answering" in finding["detail"], finding
    assert agent.text().count("dropped a malformed") == before, agent.text()
    assert "probe " not in agent.text() and "not served" not in agent.text(), agent.text()


def test_an_empty_lease_file_is_no_warning(lab):
    log = lab.syslog()
    d = lab.dir / "var-lib-libvirt" / "dnsmasq"
    d.mkdir(parents=True)
    (d / "br0.status").write_text("")
    (d / "br1.status").write_text("[ {\"ip-address\": \"192.168")  # the baseline: half-written
    start_agent(lab)
    assert log.wait_for("lease file")
    warned = log.lines("lease file")
    assert any("br1.status" in w for w in warned), warned
    assert not any("br0.status" in w for w in warned), warned


def test_self_heal_names_the_real_culprit_not_the_agents_own_workers(lab):
    """The agent's hook workers commit from their own threads (the kernel names a batch's thread,
    not its process): a VM stop the agent serves while another tool deletes a forward must not be
    named as a culprit of the deletion."""
    log = lab.syslog()
    other = domain_xml("other", "62626262-2222-4222-8222-222222222222",
                       "<vp:portForward proto='tcp' guest='192.168.122.11'><vp:range start='2223' to='22'/></vp:portForward>",
                       macs=("52:54:00:aa:bb:02",))
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    agent = start_agent(lab)
    lab.start(running(lab, FIXED))
    for round_ in range(3):
        lab.start(running(lab, other))
        want = lab.kernel_forwards()
        # the agent's worker removes `other` while nft deletes FIXED's element
        stop = subprocess.Popen(["ip", "netns", "exec", lab.host, BIN,
                                 "hook", "qemu", "other", "stopped", "end", "-"], env=lab.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sh("nft", "delete", "element", "inet", "virtport", "fwd4", "{ tcp . 2222 }", ns=lab.host)
        stop.communicate(other.encode(), timeout=10)
        lab.hook(other, "release", "end")
        wait(lambda: len(log.lines("healed:")) > round_, what=f"heal {round_ + 1}")
        wait(lambda: ("tcp", 2222) in {k for _, k, _ in lab.kernel_forwards()}, what="FIXED's forward back")
    assert ("stopped", 0) in agent.served(), agent.text()
    lines = log.lines("healed:")
    assert all("(nft)" in l and "(virtport)" not in l for l in lines), lines
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("guest1 ")
