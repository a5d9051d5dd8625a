"""Issue 2: forwards declared in a VM's XML become real DNAT, proven with real traffic."""
import json
import os
import subprocess

from conftest import BIN, domain_xml, sh

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"

WEB = domain_xml("web1", U1, """
  <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>
  <vp:portForward proto='udp' guest='192.168.122.10'><vp:range start='5353' to='53'/></vp:portForward>
""")


def test_tcp_and_udp_reach_guest_and_stop_removes(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.listen(lab.guest, "udp", "0.0.0.0", 53, "guest1")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")  # nothing before start
    lab.start(WEB)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    assert lab.connect(lab.client, "udp", "203.0.113.1", 5353) == "guest1 53 from 203.0.113.2"
    assert len(lab.elements()) == 2
    lab.stop(WEB)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert lab.elements() == []
    # release after stopped is a no-op, and so is a second stopped
    assert lab.hook(WEB, "release", "end").returncode == 0
    assert lab.hook(WEB, "stopped", "end").returncode == 0


def test_two_vms_coexist_and_removing_one_keeps_the_other(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "guest2")
    vm2 = domain_xml("web2", U2, "<vp:portForward proto='tcp' guest='192.168.122.11'>"
                                 "<vp:range start='2223' to='22'/></vp:portForward>")
    lab.start(WEB)
    lab.start(vm2)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2223) == "guest2 22 from 203.0.113.2"
    lab.stop(WEB)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2223) == "guest2 22 from 203.0.113.2"
    elems = lab.elements()
    assert len(elems) == 1 and "2223" in json.dumps(elems)


def test_start_twice_is_harmless(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    before = lab.nft_json()
    lab.start(WEB)
    assert lab.nft_json() == before  # same rules, same elements: nothing duplicated
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    listing = json.loads(lab.virtport("list", "--json", check=True).stdout)
    assert len(listing) == 2 and {m["state"] for m in listing} == {"applied"}


def test_ranges_offsets_and_exclude(lab):
    xml = domain_xml("ranges", U1, """
      <vp:portForward proto='tcp' guest='192.168.122.10'>
        <vp:range start='8000' end='8003'/>
        <vp:range start='8002' exclude='yes'/>
        <vp:range start='9000' end='9001' to='7000'/>
      </vp:portForward>""")
    for p in (8000, 8001, 8003, 7000, 7001, 8002):
        lab.listen(lab.guest, "tcp", "0.0.0.0", p, "g")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 8001) == "g 8001 from 203.0.113.2"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 8003) == "g 8003 from 203.0.113.2"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 9001) == "g 7001 from 203.0.113.2"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 8002).startswith("ERROR")  # excluded
    assert len(lab.elements()) == 5


def test_ipv6_and_specific_host_address(lab):
    xml = domain_xml("v6", U1, """
      <vp:portForward proto='tcp' guest='fd00:122::10'><vp:range start='2222' to='22'/></vp:portForward>
      <vp:portForward proto='tcp' address='203.0.113.1' guest='192.168.122.10'><vp:range start='8080' to='80'/></vp:portForward>""")
    lab.listen(lab.guest, "tcp", "::", 22, "g6")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 80, "g4")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "2001:db8:1::1", 2222) == "g6 22 from 2001:db8:1::2"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 8080) == "g4 80 from 203.0.113.2"
    # address= binds the forward to that address only: the bridge address does not forward 8080
    assert lab.connect(lab.guest2, "tcp", "192.168.122.1", 8080).startswith("ERROR")


def test_local_process_on_host_is_forwarded(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    assert lab.connect(lab.host, "tcp", "203.0.113.1", 2222).startswith("guest1 22 from ")


def test_loopback_service_on_same_port_keeps_working(lab):
    """A host service bound to 127.0.0.1:PORT is not a conflict and keeps its local clients:
    forwards never apply to loopback destinations."""
    lab.listen(lab.host, "tcp", "127.0.0.1", 4444, "hostsvc")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 4444, "guest1")
    xml = domain_xml("lo", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='4444'/></vp:portForward>")
    lab.start(xml)
    assert lab.connect(lab.host, "tcp", "127.0.0.1", 4444) == "hostsvc 4444 from 127.0.0.1"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 4444) == "guest1 4444 from 203.0.113.2"


def test_invalid_metadata_refused_at_prepare_and_nothing_applied(lab):
    bad = domain_xml("bad", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'>"
                                "<vp:range start='70000'/></vp:portForward>")
    r = lab.hook(bad, "prepare")
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "70000" in err[0] and "range" in err[0], err
    assert r.stdout == b""
    r = lab.hook(bad, "start")
    assert r.returncode == 2
    assert lab.nft_json() is None  # no table was even created
    assert json.loads(lab.virtport("list", "--json", check=True).stdout) == []


def test_domain_without_metadata_is_ignored(lab):
    xml = domain_xml("plain", U1)
    lab.start(xml)
    lab.stop(xml)
    assert lab.nft_json() is None
    assert not os.path.exists(lab.db)


def test_hook_by_argv0_writes_nothing_to_stdout(lab, tmp_path):
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    os.symlink(BIN, hooks / "qemu")
    os.symlink(BIN, hooks / "qemu.d" / "virtport")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    for path in (hooks / "qemu", hooks / "qemu.d" / "virtport"):
        r = sh(str(path), "web1", "start", "begin", "-", input=WEB.encode(), ns=lab.host, env=lab.env(), check=False)
        assert r.returncode == 0 and r.stdout == b"", r.stderr
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
        r = sh(str(path), "web1", "stopped", "end", "-", input=WEB.encode(), ns=lab.host, env=lab.env(), check=False)
        assert r.returncode == 0 and r.stdout == b""
        assert lab.elements() == []


def test_history_records_add_and_remove(lab):
    lab.start(WEB)
    lab.stop(WEB)
    hist = json.loads(lab.virtport("history", "--json", "--domain", "web1", check=True).stdout)
    actions = sorted((h["action"], h["proto"], h["host_port_start"]) for h in hist)
    assert actions == [("add", "tcp", 2222), ("add", "udp", 5353), ("remove", "tcp", 2222), ("remove", "udp", 5353)]
    assert all(h["uuid"] == U1 and h["guest_address"] == "192.168.122.10" for h in hist)
    assert oct(os.stat(lab.db).st_mode & 0o777) == "0o600"


def test_plan_prints_json_and_touches_nothing(lab):
    r = lab.virtport("plan", input=WEB, check=False)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["domain"]["name"] == "web1"
    f = plan["forwards"][0]
    assert (f["proto"], f["host_port_start"], f["guest_address"], f["guest_port_start"], f["guest_source"]) == \
        ("tcp", 2222, "192.168.122.10", 22, "guest-attribute")
    assert lab.nft_json() is None and not os.path.exists(lab.db)
    r = lab.virtport("plan", input="<domain><name>x</name", check=False)
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1
