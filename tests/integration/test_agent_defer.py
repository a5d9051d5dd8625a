"""The agent answers a hook before the work its caller does not wait for (README "Agent: what is
done after the answer"): decision logs, the conntrack cleanups of a start that takes back released
ports and of a stop, the skeleton self-check. That work still happens (entries deleted, lines in
syslog), and a domain's next change waits for it. Real agent, real kernel nftables and conntrack in
the lab's namespaces. `VIRTPORT_DEFER_DELAY_MS` (the agent's environment) makes the work after the
answer start that late, so "answered first" is seen in wall time."""
import subprocess
import time

from conftest import domain_xml, sh
from test_agent import BIN, WEB, Agent, agent_socket_config
from test_conntrack import UA, UB, ctnl_in

DELAY = 1.5  # seconds the agent sleeps before its work after the answer

FOUR = domain_xml("cta", UA, "".join("<vp:portForward proto='udp' guest='192.168.122.10'>"
                                     f"<vp:range start='{p}' to='{p - 2000}'/></vp:portForward>"
                                     for p in (7000, 7002, 7006, 7008)),
                  macs=("52:54:00:aa:bb:01",))
OTHER = domain_xml("ctb", UB, "<vp:portForward proto='tcp' guest='192.168.122.11'>"
                              "<vp:range start='2300' to='22'/></vp:portForward>",
                   macs=("52:54:00:aa:bb:02",))


class SlowAgent(Agent):
    """`virtport agent --verbose` whose work after each answer starts `DELAY` late."""

    def __init__(self, lab):
        super().__init__(lab, VIRTPORT_DEFER_DELAY_MS=str(int(DELAY * 1000)))


def timed_hook(lab, xml, op, sub="begin"):
    t = time.monotonic()
    r = lab.hook(xml, op, sub)
    assert r.returncode == 0 and r.stdout == b"", r.stderr.decode()
    return time.monotonic() - t


def untranslated(lab):
    """Destination ports of the client's untranslated UDP entries to the host's address."""
    with ctnl_in(lab.host) as ct:
        return sorted(e[0][4] for e in ct.dump() if e[0][0] == "203.0.113.2" and e[0][1] == "203.0.113.1")


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_start_is_answered_before_its_conntrack_cleanup_and_logs_which_still_happen(lab):
    agent_socket_config(lab)
    log = lab.syslog()
    agent = SlowAgent(lab)
    lab.start(FOUR)
    lab.stop(FOUR)  # its release waits for the stop's work after the answer
    # What the client's packets left while no forward held the ports: untranslated entries.
    with ctnl_in(lab.host) as ct:
        ct.create_udp([("203.0.113.2", "203.0.113.1", 40001, 7000), ("203.0.113.2", "203.0.113.1", 40002, 7002),
                       ("203.0.113.2", "203.0.113.1", 40003, 7004), ("203.0.113.2", "203.0.113.1", 40004, 7006)])
    assert untranslated(lab) == [7000, 7002, 7004, 7006]
    applied = len(log.lines("applied: domain 'cta'"))
    assert applied == 4, log.lines()

    timed_hook(lab, FOUR, "prepare")
    took = timed_hook(lab, FOUR, "start")
    # Answered: the forwards are in the kernel; the cleanup and the log lines are not done yet.
    assert took < DELAY - 0.3, f"the start's hook took {took:.2f} s: it waited for the work after the answer"
    assert untranslated(lab) == [7000, 7002, 7004, 7006]
    assert len(log.lines("applied: domain 'cta'")) == applied
    assert {k[1] for _, k, _ in lab.kernel_forwards()} == {7000, 7002, 7006, 7008}

    # Then done: the released ports' entries deleted (7004 was never forwarded: kept), logged.
    wait_until(lambda: untranslated(lab) == [7004], DELAY + 5, "the released ports' untranslated entries deleted")
    wait_until(lambda: len(log.lines("applied: domain 'cta'")) == applied + 4, 5, "the start's log lines")
    wait_until(lambda: agent.served()[-1] == ("start", 0), 5, "the agent's line about the start")
    line = [l for l in agent.text().splitlines() if "qemu cta start" in l and ": exit 0 in" in l][-1]
    after = int(line.split("(then ")[1].split()[0])
    assert after >= DELAY * 1e6, line


def test_a_domains_next_change_waits_for_the_work_after_its_previous_answer(lab):
    agent_socket_config(lab)
    log = lab.syslog()
    agent = SlowAgent(lab)
    lab.start(FOUR)
    lab.start(OTHER)
    # The starts' own work after their answers (the agent logs a request once that is done).
    wait_until(lambda: agent.served().count(("start", 0)) == 2, DELAY + 5, "both starts finished")
    # The stop is answered at once; its work (flows, log lines) starts DELAY later.
    assert timed_hook(lab, FOUR, "stopped", "end") < DELAY - 0.3
    # Another domain's change does not wait for it.
    assert timed_hook(lab, OTHER, "stopped", "end") < DELAY - 0.3
    # The same domain's next change does: libvirt's release, then its next start.
    t = time.monotonic()
    timed_hook(lab, FOUR, "release", "end")
    assert time.monotonic() - t >= DELAY - 0.3
    # So the stop's lines all come before the next start's.
    lab.start(FOUR)
    wait_until(lambda: len(log.lines("applied: domain 'cta'")) == 8, DELAY + 5, "the second start's log lines")
    lines = [l for l in log.lines("domain 'cta'") if l.startswith(("applied:", "removed:"))]
    assert [l.split(":")[0] for l in lines] == ["applied"] * 4 + ["removed"] * 4 + ["applied"] * 4, lines


def test_a_flushed_chain_found_by_the_check_after_the_answer_is_rebuilt_and_logged(lab):
    """The skeleton self-check of a start runs after the answer; what it finds broken is still
    rebuilt from the journal (under the exclusive change lock) and logged. The chain is flushed
    while no agent runs, so the agent's self-heal never saw it go: only the check can find it."""
    agent_socket_config(lab)
    log = lab.syslog()
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)  # no agent yet: the hook does it
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    sh("nft", "flush", "chain", "inet", "virtport", "prerouting", ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    SlowAgent(lab)
    # libvirt's `start` again (a reconnecting libvirtd does the same with `reconnect`): the
    # elements go in, the answer comes, the chain is still empty.
    assert timed_hook(lab, WEB, "start") < DELAY - 0.3
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert not log.lines("healed: table inet virtport")
    found = log.wait_for("healed: table inet virtport had chains, maps or rules missing", timeout=DELAY + 5)
    assert "rebuilt from the journal in one batch, 1 elements" in found[0], found
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"


def test_a_hook_without_the_agent_keeps_doing_it_all_before_it_exits(lab):
    """Baseline: the same restart in the hook process: the entries are gone when the hook returns."""
    lab.start(FOUR)
    lab.stop(FOUR)
    with ctnl_in(lab.host) as ct:
        ct.create_udp([("203.0.113.2", "203.0.113.1", 40001, 7000), ("203.0.113.2", "203.0.113.1", 40003, 7004)])
    lab.start(FOUR)
    assert untranslated(lab) == [7004]
