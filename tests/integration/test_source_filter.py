"""`source=` on <portForward> (issue 24 item 1): real nftables in the lab's namespaces, real
connections from the client namespace (two source addresses per family), from a guest (hairpin),
the per-forward drop counter, the policy, bad input, and the table going with the last filter."""
import json
import sys
import textwrap

from conftest import domain_xml, sh
from traffic import ECHO, HOLD

U1 = "a1a1a1a1-0000-4000-8000-000000000001"
U2 = "a1a1a1a1-0000-4000-8000-000000000002"
TABLE = "virtport_src"

# argv: proto addr port source. Like traffic.CLIENT, from a given source address.
CLIENT_FROM = textwrap.dedent("""
    import socket, sys
    proto, addr, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((addr, port), timeout=1.5, source_address=(src, 0))
            s.settimeout(2); print(s.recv(200).decode().strip())
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(1)
            s.sendto(b"ping", (addr, port)); print(s.recvfrom(200)[0].decode().strip())
    except Exception as e:
        print("ERROR", type(e).__name__, e); sys.exit(1)
""")


def connect_from(lab, src, proto, addr, port, ns=None):
    r = sh(sys.executable, "-c", CLIENT_FROM, proto, addr, str(port), src, ns=ns or lab.client, check=False, timeout=15)
    return r.stdout.decode().strip()


def second_addresses(lab):
    """The client gets .3 and ::3 beside .2 and ::2: one allowed, one not."""
    sh("ip", "addr", "add", "203.0.113.3/24", "dev", "c0", ns=lab.client)
    sh("ip", "addr", "add", "2001:db8:1::3/64", "dev", "c0", "nodad", ns=lab.client)


def web(source=None, start=2222, to=22, guest="192.168.122.10", extra=""):
    attr = f" source='{source}'" if source is not None else ""
    return domain_xml("web1", U1, f"<vp:portForward proto='tcp' guest='{guest}'{attr}>"
                                  f"<vp:range start='{start}' to='{to}'/></vp:portForward>{extra}")


def counters(lab):
    r = sh("nft", "-j", "list", "counters", "table", "inet", TABLE, ns=lab.host, check=False)
    if r.returncode != 0:
        return None
    return {o["counter"]["name"]: o["counter"]["packets"] for o in json.loads(r.stdout)["nftables"] if "counter" in o}


def table_exists(lab):
    return f"table inet {TABLE}" in sh("nft", "list", "tables", ns=lab.host).stdout.decode()


def test_allowed_prefixes_connect_others_are_dropped_and_counted(lab):
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.listen(lab.guest, "tcp", "fd00:122::10", 22, "G6")
    # Baseline: without source= both client addresses of each family reach the guest.
    open_xml = web()
    lab.start(open_xml)
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222) == "G1 22 from 203.0.113.3"
    assert not table_exists(lab)
    lab.stop(open_xml)

    v6 = ("<vp:portForward proto='tcp' guest='fd00:122::10' source='203.0.113.2 2001:db8:1::2'>"
          "<vp:range start='2223' to='22'/></vp:portForward>")
    xml = web(source="203.0.113.2 2001:db8:1::2/128 198.51.100.0/24", extra=v6)
    lab.start(xml)
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222) == "G1 22 from 203.0.113.2"
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert connect_from(lab, "2001:db8:1::2", "tcp", "2001:db8:1::1", 2223) == "G6 22 from 2001:db8:1::2"
    assert connect_from(lab, "2001:db8:1::3", "tcp", "2001:db8:1::1", 2223).startswith("ERROR")
    c = counters(lab)
    assert c["tcp4_2222"] >= 1 and c["tcp6_2223"] >= 1, c
    assert c["tcp6_2222"] == 0 and c["tcp4_2223"] == 0, c
    # list shows the list and the drops; plan shows the list.
    listing = {m["host_port_start"]: m for m in json.loads(lab.virtport("list", "--json", check=True).stdout)}
    assert listing[2222]["source"] == ["203.0.113.2", "2001:db8:1::2", "198.51.100.0/24"]
    assert listing[2222]["source_dropped"] >= 1
    assert listing[2223]["source"] == ["203.0.113.2", "2001:db8:1::2"]
    table = lab.virtport("list", check=True).stdout.decode()
    assert "SOURCE" in table and "dropped)" in table, table
    csv = lab.virtport("list", "--csv", check=True).stdout.decode().splitlines()
    assert csv[0].endswith(",source,source_dropped") and "203.0.113.2 2001:db8:1::2 198.51.100.0/24" in csv[1], csv
    plan = json.loads(lab.virtport("plan", input=xml, check=True).stdout)
    assert plan["forwards"][0]["source"] == ["203.0.113.2", "2001:db8:1::2", "198.51.100.0/24"]
    # A stop takes the filters, and the table with the last one; history says so.
    lab.stop(xml)
    assert not table_exists(lab)
    events = json.loads(lab.virtport("history", "--sources", "--json", check=True).stdout)
    assert [(e["action"], e["host_ports"]) for e in events] == [("on", "2222"), ("on", "2223"), ("off", "2222"), ("off", "2223")]
    assert events[0]["source"] == ["203.0.113.2", "2001:db8:1::2", "198.51.100.0/24"]


def test_hairpin_from_a_guest_is_judged_by_the_same_list(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    xml = web(source="192.168.122.11")
    lab.start(xml)
    # guest2 (allowed) reaches guest through the host's public address; the client does not.
    assert lab.connect(lab.guest2, "tcp", "203.0.113.1", 2222) == "G1 22 from 192.168.122.1"
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    lab.stop(xml)
    xml = web(source="203.0.113.0/24")
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1 22 from 203.0.113.2")
    assert lab.connect(lab.guest2, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert counters(lab)["tcp4_2222"] >= 1


def test_changed_list_applies_at_once_and_keeps_the_counter(lab):
    """A running domain's new list (the agent's or `add`'s path: the lifecycle with a new plan)."""
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.start(web(source="203.0.113.2"))
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222).startswith("ERROR")
    dropped = counters(lab)["tcp4_2222"]
    assert dropped >= 1
    # The same start again with another list: what a live edit does.
    lab.start(web(source="203.0.113.3"))
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222) == "G1 22 from 203.0.113.3"
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert counters(lab)["tcp4_2222"] > dropped
    events = json.loads(lab.virtport("history", "--sources", "--json", check=True).stdout)
    assert [e["action"] for e in events] == ["on", "change"]
    # Without source= the forward is open again and the table goes.
    lab.start(web())
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222) == "G1 22 from 203.0.113.2"
    assert not table_exists(lab)


def test_table_deleted_by_someone_is_healed_by_reconcile(lab):
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    xml = web(source="198.51.100.0/24")
    lab.write_status(xml)
    lab.start(xml)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    sh("nft", "delete", "table", "inet", TABLE, ns=lab.host)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")  # the attack, once the filter is gone
    found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "source filters"]
    assert len(found) == 1 and found[0]["status"] == "fail", found
    assert "open to every client" in found[0]["problem"] + found[0].get("why", "") + json.dumps(found[0]), found
    r = lab.virtport("reconcile")
    assert r.returncode == 0, r.stderr.decode()
    assert "table inet virtport_src" in r.stdout.decode() + r.stderr.decode()
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "source filters"] == []


def test_policy_requires_a_list_on_some_ports(lab):
    lab.write_config('require_source_ports = [2222, "3000-3100"]')
    for xml, fragment in ((web(), "portForward[1]: host port tcp 2222 needs source= ([policy] require_source_ports = [\"2222\", \"3000-3100\"])"),
                          (web(source="0.0.0.0/0", start=3050), "may not be open to every address (source= names 0.0.0.0/0")):
        r = lab.hook(xml, "prepare")
        lines = r.stderr.decode().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], (r.returncode, lines)
        assert r.stdout == b""
        r = lab.virtport("plan", input=xml)
        assert r.returncode == 2 and fragment in r.stderr.decode()
    assert lab.nft_json() is None and not table_exists(lab)
    # With a list the same port is fine.
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.start(web(source="203.0.113.0/24"))
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")


def test_bad_lists_are_refused_with_one_line_and_nothing_applied(lab):
    cases = [
        ("10.0.0.1/8", 'portForward[1]: source="10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)'),
        ("", 'portForward[1]: source="" names no prefix'),
        ("10.0.0.0/8,192.0.2.1", "is not an IPv4 or IPv6 address or prefix (separate prefixes with spaces)"),
        ("203.0.113.0/33", 'source="203.0.113.0/33" is not an IPv4 or IPv6 address or prefix'),
        ("10.0.0.0/8 10.0.0.0/8", "source= names 10.0.0.0/8 twice"),
        (" ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(1025)), "source= names 1025 prefixes, more than 1024"),
    ]
    for source, fragment in cases:
        xml = web(source=source)
        for op in ("prepare", "start"):
            r = lab.hook(xml, op)
            lines = r.stderr.decode().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], (source[:40], op, r.returncode, lines)
    v6only = domain_xml("web1", U1, "<vp:portForward proto='tcp' address='203.0.113.1' guest='192.168.122.10' "
                                    "source='2001:db8::/32'><vp:range start='2222' to='22'/></vp:portForward>")
    r = lab.virtport("plan", input=v6only)
    assert r.returncode == 2 and "source= names no IPv4 prefix" in r.stderr.decode(), r.stderr.decode()
    assert lab.nft_json() is None and not table_exists(lab)
    assert lab.db_rows() == []


def test_a_thousand_prefixes_and_two_domains(lab):
    """1,000 prefixes in one list (the benchmark's size), another domain's filter beside it."""
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "G2")
    many = " ".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(999)) + " 203.0.113.2"
    lab.start(web(source=many))
    other = domain_xml("web2", U2, "<vp:portForward proto='tcp' guest='192.168.122.11' source='198.51.100.1'>"
                                   "<vp:range start='2224' to='22'/></vp:portForward>")
    lab.start(other)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2224).startswith("ERROR")
    ports = lambda: sh("nft", "list", "set", "inet", TABLE, "ports4", ns=lab.host).stdout.decode()
    assert "2222" in ports() and "2224" in ports()
    lab.stop(other)
    assert table_exists(lab)
    assert "2222" in ports() and "2224" not in ports()
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("G1")
    assert set(counters(lab)) == {"tcp4_2222", "tcp6_2222"}


class Held:
    """One open connection from `src` in the client namespace; `ask()` exchanges one line on it."""

    def __init__(self, lab, proto, port, src, addr="203.0.113.1"):
        import subprocess
        self.p = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", HOLD, proto, addr, str(port), src],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        lab.procs.append(self.p)
        assert self.p.stdout.readline().strip() == "open"

    def ask(self):
        self.p.stdin.write("x\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()


def echo(lab):
    """A TCP echo service on the guest's port 7 (the held connections' far end)."""
    import subprocess
    p = subprocess.Popen(["ip", "netns", "exec", lab.guest, sys.executable, "-c", ECHO], stdout=subprocess.PIPE)
    lab.procs.append(p)
    assert p.stdout.readline().decode().strip() == "ready"


def test_removing_a_prefix_cuts_its_established_connection(lab):
    """README: the table judges a connection's first packet only, and a list that loses a prefix
    deletes the conntrack entries of that prefix's open connections, so their next packet is judged
    (and dropped) like a first one. Only those: another listed client's open connection goes on.
    Baseline: both connections work before the change."""
    second_addresses(lab)
    echo(lab)
    lab.start(web(source="203.0.113.2 203.0.113.3", to=7))
    stays, leaves = Held(lab, "tcp", 2222, "203.0.113.2"), Held(lab, "tcp", 2222, "203.0.113.3")
    assert (stays.ask(), leaves.ask()) == ("ok", "ok")
    lab.start(web(source="203.0.113.2", to=7))      # .3 leaves the list
    assert leaves.ask() == "dropped"
    assert stays.ask() == "ok"
    assert leaves.ask() == "dropped"                 # its next packets meet the filter again
    assert counters(lab)["tcp4_2222"] >= 1


def test_a_list_given_to_a_forward_cuts_open_connections_of_clients_it_does_not_list(lab):
    """A forward without source= gets a list while connections are open (a live edit): the
    connection of a client the list does not hold is cut at once, a listed client's goes on."""
    second_addresses(lab)
    echo(lab)
    lab.start(web(to=7))
    listed, unlisted = Held(lab, "tcp", 2222, "203.0.113.2"), Held(lab, "tcp", 2222, "203.0.113.3")
    assert (listed.ask(), unlisted.ask()) == ("ok", "ok")   # baseline: no list, both open
    lab.start(web(source="203.0.113.2", to=7))
    assert unlisted.ask() == "dropped"
    assert listed.ask() == "ok"
    assert counters(lab)["tcp4_2222"] >= 1
    # A connection opened after the list is judged on its first packet.
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222).startswith("ERROR")


def test_a_removed_prefix_cuts_open_udp_flows_too(lab):
    second_addresses(lab)
    lab.listen(lab.guest, "udp", "0.0.0.0", 53, "G1")
    xml = lambda source: domain_xml("web1", U1, f"<vp:portForward proto='udp' guest='192.168.122.10' source='{source}'>"
                                                "<vp:range start='5353' to='53'/></vp:portForward>")
    lab.start(xml("203.0.113.2 203.0.113.3"))
    stays, leaves = Held(lab, "udp", 5353, "203.0.113.2"), Held(lab, "udp", 5353, "203.0.113.3")
    assert (stays.ask(), leaves.ask()) == ("ok", "ok")
    lab.start(xml("203.0.113.2"))
    assert leaves.ask() == "dropped"
    assert stays.ask() == "ok"
    assert counters(lab)["udp4_5353"] >= 1


OLD_LAYOUT = """
flush chain inet virtport_src prerouting
delete chain inet virtport_src prerouting
add chain inet virtport_src prerouting { type filter hook prerouting priority dstnat - 10; }
add rule inet virtport_src prerouting meta nfproto ipv4 ct direction original th dport @ports4 jump filter4
add rule inet virtport_src prerouting meta nfproto ipv6 ct direction original th dport @ports6 jump filter6
"""


def test_a_table_in_the_first_layout_is_rebuilt_in_one_batch(lab):
    """A host upgraded from the first layout (a filter chain judging every packet): it still
    filters; doctor names it, and the next change of a filtered domain, or reconcile, rebuilds the
    table in this version's layout (one batch: the old table goes in the batch that makes the new
    one, so no moment without the filter)."""
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    listing = lambda: sh("nft", "list", "table", "inet", TABLE, ns=lab.host).stdout.decode()
    for fix in ("change", "reconcile"):
        xml = web(source="203.0.113.2") if fix == "change" else web(source="203.0.113.2 198.51.100.0/24")
        lab.write_status(xml)
        lab.start(xml)
        assert "type nat hook prerouting priority dstnat - 10" in listing()
        sh("nft", "-f", "-", input=OLD_LAYOUT.encode(), ns=lab.host)
        assert "type filter hook prerouting" in listing() and "ct direction original" in listing()
        assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222).startswith("G1")
        assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222).startswith("ERROR")
        found = [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "source filters"]
        assert len(found) == 1 and "older virtport" in json.dumps(found[0]), found
        if fix == "change":
            edited = web(source="203.0.113.2 198.51.100.0/24")   # a live edit of the list
            lab.write_status(edited)
            lab.start(edited)
        else:
            r = lab.virtport("reconcile")
            assert r.returncode == 0, r.stderr.decode()
        assert "type nat hook prerouting" in listing() and "ct direction" not in listing(), (fix, listing())
        assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222).startswith("G1")
        assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222).startswith("ERROR")
        assert [f for f in json.loads(lab.virtport("doctor", "--json").stdout) if f["check"] == "source filters"] == []


def test_the_agent_heals_a_deleted_source_filter_table(lab):
    """The agent watches the kinds' tables: `nft delete table inet virtport_src` (or a flush) and the
    filter is back from the journal within moments; the attack works in between."""
    import time
    from test_agent_watch import start_agent
    log = lab.syslog()
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    lab.start(web(source="198.51.100.0/24"))
    start_agent(lab)
    for cmd in (("delete", "table", "inet", TABLE), ("flush", "ruleset")):
        sh("nft", *cmd, ns=lab.host)
        deadline = time.monotonic() + 5
        while not (table_exists(lab) and counters(lab) == {"tcp4_2222": counters(lab).get("tcp4_2222", 0), "tcp6_2222": 0}):
            assert time.monotonic() < deadline, f"not healed after nft {' '.join(cmd)}"
            time.sleep(0.05)
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert log.wait_for("source filters: table inet virtport_src is missing")


def test_dev_and_pending_forwards_are_filtered(lab):
    """dev= (the interface in the key) and a pending forward (no guest address yet: the filter is
    in before its DNAT ever is)."""
    second_addresses(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "G1")
    xml = domain_xml("web1", U1, "<vp:portForward proto='tcp' dev='h0' guest='192.168.122.10' source='203.0.113.3'>"
                                 "<vp:range start='2222' to='22'/></vp:portForward>"
                                 "<vp:portForward proto='tcp' dev='br0' guest='192.168.122.10'>"
                                 "<vp:range start='2222' to='22'/></vp:portForward>"
                                 "<vp:portForward proto='tcp' source='203.0.113.0/24'>"
                                 "<vp:range start='2230' to='22'/></vp:portForward>")
    lab.start(xml)
    assert connect_from(lab, "203.0.113.3", "tcp", "203.0.113.1", 2222) == "G1 22 from 203.0.113.3"
    assert connect_from(lab, "203.0.113.2", "tcp", "203.0.113.1", 2222).startswith("ERROR")
    # The same port on br0 has no list: guest2 reaches it.
    assert lab.connect(lab.guest2, "tcp", "192.168.122.1", 2222).startswith("G1 22")
    c = counters(lab)
    assert c["tcp4_2222_h0"] >= 1 and "tcp4_2222_br0" not in c, c
    # The pending forward (no address for the NIC): filtered already, both families.
    assert {"tcp4_2230", "tcp6_2230"} <= set(c), c
    pending = [m for m in json.loads(lab.virtport("list", "--json", check=True).stdout) if m["host_port_start"] == 2230]
    assert pending[0]["state"] == "pending" and pending[0]["source"] == ["203.0.113.0/24"], pending


def test_udp_forward_is_filtered_too(lab):
    second_addresses(lab)
    lab.listen(lab.guest, "udp", "0.0.0.0", 53, "G1")
    lab.start(domain_xml("web1", U1, "<vp:portForward proto='udp' guest='192.168.122.10' source='203.0.113.3'>"
                                     "<vp:range start='5353' to='53'/></vp:portForward>"))
    assert connect_from(lab, "203.0.113.3", "udp", "203.0.113.1", 5353) == "G1 53 from 203.0.113.3"
    assert connect_from(lab, "203.0.113.2", "udp", "203.0.113.1", 5353).startswith("ERROR")
    assert counters(lab)["udp4_5353"] >= 1
