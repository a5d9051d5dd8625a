"""`source=` against the real libvirtd and QEMU (issue 24 item 1): a VM started by `virsh start`
gets its forwards' source filters (the listed client reaches the guest, a forward whose list does
not name it drops it and counts), `virtport add --source` adds a filtered forward to the running
VM, `virsh destroy` takes every filter and `table inet virtport_src` away, and a list given live
(`virsh metadata --live`, the agent) cuts a client's open connection at once."""
import json
import subprocess
import sys

import harness
from test_agent_libvirt import agent, virsh_metadata_live  # noqa: F401 (fixture)
from test_virtport_libvirt import CLIENT, G1, HOST, MAC1, answer, installed, vp  # noqa: F401 (fixtures)
from traffic import ECHO, HOLD

VM = "vpe-src"


def counters(lab):
    r = lab.exec("nft", "-j", "list", "counters", "table", "inet", "virtport_src", check=False)
    if r.returncode != 0:
        return None
    return {o["counter"]["name"]: o["counter"]["packets"] for o in json.loads(r.stdout)["nftables"] if "counter" in o}


def test_vm_start_applies_source_filters_and_destroy_removes_them(lab, installed):
    vp = installed
    lab.define_vm(VM, MAC1, "<vp:virtport xmlns:vp='urn:virtport:domain:1'>"
                            f"<vp:portForward proto='tcp' guest='{G1}' source='{CLIENT} 2001:db8::/32'>"
                            "<vp:range start='2222' to='22'/></vp:portForward>"
                            f"<vp:portForward proto='tcp' guest='{G1}' source='203.0.113.0/24'>"
                            "<vp:range start='2223' to='22'/></vp:portForward></vp:virtport>")
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    client = lab.client()
    lab.start_vm(VM)

    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert client.connect("tcp", HOST, 2223).startswith("ERROR")
    c = counters(lab)
    assert c["tcp4_2223"] >= 1 and c["tcp4_2222"] == 0, c
    listing = {m["host_port_start"]: m for m in vp.json("list")}
    assert listing[2222]["source"] == [CLIENT, "2001:db8::/32"] and listing[2223]["source_dropped"] >= 1, listing

    # A live edit: add --source on the running VM applies at once, the list is in both definitions.
    r = vp.run("add", VM, "tcp", "2224:22", "--guest", G1, "--source", f"{CLIENT}/32", "--source", "192.0.2.0/24")
    assert r.stdout.decode().startswith(f"applied: tcp *:2224 -> {G1}:22"), r.stdout
    assert client.connect("tcp", HOST, 2224) == answer("G1", 22, CLIENT)
    assert f"source=\"{CLIENT} 192.0.2.0/24\"" in lab.dumpxml(VM) or f"source='{CLIENT} 192.0.2.0/24'" in lab.dumpxml(VM)
    r = vp.run("add", VM, "tcp", "2225:22", "--guest", G1, "--source", "10.0.0.1/8", check=False)
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 1, r
    assert "--source=\"10.0.0.1/8\" has host bits set" in r.stderr.decode(), r.stderr

    lab.destroy_vm(VM)
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert counters(lab) is None   # the table went with the last filter
    events = vp.json("history", "--sources")
    assert [(e["action"], e["host_ports"]) for e in events if e["action"] == "off"] == [
        ("off", "2222"), ("off", "2223"), ("off", "2224")], events


def test_a_list_given_live_cuts_an_open_connection_at_once(lab, installed, agent):
    """A running VM's forward without source= carries an open connection; `virsh metadata --live`
    gives it a list without the client: the agent applies it at the metadata-change event and the
    connection is cut at once (its conntrack entry deleted, its next packet judged and dropped).
    Baseline: the connection works before the edit."""
    vp, vm = installed, "vpe-srccut"
    forward = f"<vp:portForward proto='tcp' guest='{G1}'{{}}><vp:range start='2226' to='7'/></vp:portForward>"
    meta = lambda attr="": "<vp:virtport xmlns:vp='urn:virtport:domain:1'>" + forward.format(attr) + "</vp:virtport>"
    lab.define_vm(vm, MAC1, meta())
    guest = lab.stand_in_guest(G1)
    echo = subprocess.Popen(["ip", "netns", "exec", guest.ns, sys.executable, "-c", ECHO], stdout=subprocess.PIPE)
    guest.procs.append(echo)
    assert echo.stdout.readline().decode().strip() == "ready"
    client = lab.client()
    lab.start_vm(vm)
    held = subprocess.Popen(["ip", "netns", "exec", client.ns, sys.executable, "-c", HOLD, "tcp", HOST, "2226", CLIENT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client.procs.append(held)
    assert held.stdout.readline().strip() == "open"

    def ask():
        held.stdin.write("x\n")
        held.stdin.flush()
        return held.stdout.readline().strip()

    assert ask() == "ok"
    r = virsh_metadata_live(lab, vm, meta(" source='192.0.2.0/24'"))
    assert r.returncode == 0, r.stderr
    harness.wait_for(lambda: (counters(lab) or {}).get("tcp4_2226") is not None, 10, 0.02, "the agent applied the list")
    assert ask() == "dropped"
    assert client.connect("tcp", HOST, 2226).startswith("ERROR")
    assert counters(lab)["tcp4_2226"] >= 1
    lab.destroy_vm(vm)
