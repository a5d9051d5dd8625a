"""Fail-closed across rule kinds (README "Restricting a forward to some sources", "Order and
failure"): a forward with a source= list never goes in the kernel without its filter.

The real condition that makes the kernel refuse the filter table's batches but not the forwards':
another process holds `table inet virtport_src` with `flags owner` (nf_tables refuses every change
to an owned table from any other netlink socket: EPERM, and deletes it when its owner's socket
closes). Real traffic from the client namespace: .2 is in the list, .3 is not."""
import json
import os
import subprocess
import time

from conftest import domain_xml, sh
from test_agent_watch import start_agent, wait
from test_source_filter import connect_from, second_addresses

U1 = "fc000000-0000-4000-8000-000000000001"
FILTERED = 2222   # source='203.0.113.2'
OPEN = 2223       # no list
XML = domain_xml("web1", U1,
                 "<vp:portForward proto='tcp' guest='192.168.122.10' source='203.0.113.2'>"
                 f"<vp:range start='{FILTERED}' to='22'/></vp:portForward>"
                 "<vp:portForward proto='tcp' guest='192.168.122.10'>"
                 f"<vp:range start='{OPEN}' to='80'/></vp:portForward>")


class OwnedTable:
    """`nft -i` in the host namespace holding `table inet virtport_src { flags owner; }` for as long
    as it runs. `take_over`: virtport's table is deleted and the owned one created in one batch."""

    def __init__(self, lab, take_over=False):
        self.lab = lab
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.host, "nft", "-i"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.procs.append(self.proc)
        line = b"add table inet virtport_src { flags owner; }\n"
        if take_over:
            line = b"delete table inet virtport_src; " + line
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        deadline = time.time() + 5
        while "table inet virtport_src" not in tables(lab):
            assert time.time() < deadline, "nft -i did not create the owned table"
            time.sleep(0.05)
        # The kernel refuses anyone else's change to it.
        r = sh("nft", "add", "chain", "inet", "virtport_src", "x", ns=lab.host, check=False)
        assert r.returncode != 0 and b"Operation not permitted" in r.stderr, r.stderr

    def release(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=5)
        deadline = time.time() + 5
        while "table inet virtport_src" in tables(self.lab):
            assert time.time() < deadline, "the owned table outlived its owner"
            time.sleep(0.05)


def tables(lab):
    return sh("nft", "list", "tables", ns=lab.host).stdout.decode()


def guest_and_clients(lab):
    """Clients .2 and .3, the guest listening on 22 (the filtered forward) and 80 (the open one);
    returns the syslog reader."""
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G22")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 80, "G80")
    return lab.syslog()


def listing(lab):
    return {m["host_port_start"]: m for m in json.loads(lab.virtport("list", "--json", check=True).stdout)}


def test_a_filter_the_kernel_refuses_keeps_its_forward_out_until_reconcile(lab):
    log = guest_and_clients(lab)
    owned = OwnedTable(lab)

    # The start: the shared batch (filter + forwards) is refused as a whole (EPERM is nothing a
    # kind recovers from); on_internal_error = "warn": the VM starts, nothing forwarded.
    lab.start(XML)
    lab.write_status(XML)
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")

    # Reconcile: the filter still cannot go in, so its forward is held; the open one is applied.
    r = lab.reconcile()
    assert r.returncode == 1, (r.returncode, r.stderr)
    err = r.stderr.decode()
    assert "domain 'web1' forward tcp *:2222 not applied: source filters not in place" in err, err
    assert "Operation not permitted" in err, err
    # Baseline: the host forwards for every client (the open forward works from outside the list) ...
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", OPEN) == "G80 80 from 203.0.113.3"
    # ... but the filtered forward reaches the guest from nobody, listed or not: its DNAT is not in.
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    assert not any(f"{FILTERED}" in json.dumps(e) for _, e in lab.elements()), lab.elements()
    # The system log names the VM, the forward and the cause.
    held = log.wait_for("domain 'web1' forward tcp *:2222 not applied")
    assert "Operation not permitted" in held[0], held
    # list and doctor: not applied, and why.
    rows = listing(lab)
    assert rows[OPEN]["state"] == "applied"
    assert rows[FILTERED]["state"] == "adding" and rows[FILTERED]["held"]["by"] == "source filters", rows[FILTERED]
    assert "Operation not permitted" in rows[FILTERED]["held"]["cause"]
    table = lab.virtport("list", check=True).stdout.decode()
    assert "held: domain 'web1' forward tcp *:2222 not applied" in table, table
    doctor = json.loads(lab.virtport("doctor", "--json").stdout)
    found = [f for f in doctor if f["check"] == "forwards" and "2222 held" in f["problem"]]
    assert found and found[0]["status"] == "fail" and "not applied" in found[0]["why"], doctor
    # Reconcile again: still held (idempotent, no flapping), nothing of it in the kernel.
    assert lab.reconcile().returncode == 1
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")

    # The cause goes: reconcile puts the filter in, then the forward.
    owned.release()
    r = lab.reconcile()
    assert r.returncode == 0, r.stderr
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", FILTERED) == "G22 22 from 203.0.113.2"
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    rows = listing(lab)
    assert rows[FILTERED]["state"] == "applied" and "held" not in rows[FILTERED], rows[FILTERED]
    assert lab.sql("SELECT COUNT(*) AS n FROM holds")[0]["n"] == 0
    assert lab.reconcile().returncode == 0
    lab.stop(XML)


def test_a_live_source_list_the_kernel_refuses_never_opens_the_forward(lab):
    """A running VM's forward gets a list while the filter table cannot be changed (the agent's and
    `add --source`'s path: the lifecycle with a new plan): the forward, open to all before, goes out."""
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G22")
    open_xml = XML.replace(" source='203.0.113.2'", "")
    lab.start(open_xml)
    lab.write_status(open_xml)
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED) == "G22 22 from 203.0.113.3"
    owned = OwnedTable(lab)
    r = lab.hook(XML, "start")   # the plan now has the list (reconnect-like re-apply)
    assert r.returncode == 0, r.stderr
    lab.write_status(XML)
    lab.reconcile()
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    owned.release()
    assert lab.reconcile().returncode == 0
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", FILTERED) == "G22 22 from 203.0.113.2"
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")


def test_the_agents_self_heal_holds_the_forward_then_completes_it_by_itself(lab):
    """The agent running: someone deletes the filter table and keeps it with `flags owner` (one
    batch). The self-heal cannot put the filter back: it takes the forward out instead of leaving it
    open to every client; once the owner is gone, its retries put the filter, then the forward, back."""
    log = guest_and_clients(lab)
    agent = start_agent(lab)
    lab.start(XML)
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", FILTERED) == "G22 22 from 203.0.113.2"
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    owned = OwnedTable(lab, take_over=True)
    # Without its filter the forward would now be open to .3 (no table judges it): it must be out.
    wait(lambda: not any(f"{FILTERED}" in json.dumps(e) for _, e in lab.elements()), what="the held forward taken out")
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", OPEN) == "G80 80 from 203.0.113.3"
    held = log.wait_for("domain 'web1' forward tcp *:2222 not applied")
    assert "Operation not permitted" in held[0], held
    assert "held" in listing(lab)[FILTERED], listing(lab)
    owned.release()
    # No notification comes for an owner's table going away: the agent's retry (1 s, 2 s, …) does it.
    wait(lambda: connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", FILTERED) == "G22 22 from 203.0.113.2",
         timeout=10, what="the forward back with its filter")
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", FILTERED).startswith("ERROR")
    rows = listing(lab)
    assert rows[FILTERED]["state"] == "applied" and "held" not in rows[FILTERED], rows[FILTERED]
    agent.stop()
