"""Issue 21 item 7: `virtport uninstall` (and package removal, whose prerm runs it) takes down
every kind of rule virtport made: forwards (table inet virtport), port guards (table bridge
virtport), the isolated flags it set (never libvirt's own), conntrack entries of its forwards;
guard rows are closed with history; the hooks directory keeps nothing of virtport. Both bridge
layouts (NAT network's virbr0, plain br0)."""
import json

from conftest import sh
from test_guard import MAC1, glab, guard_for  # noqa: F401  (fixture)

# With source= (issue 24): the source filter kind's table inet virtport_src goes too.
FORWARD = ("<vp:portForward proto='tcp' guest='192.168.122.10' source='203.0.113.0/24'>"
           "<vp:range start='2222' to='22'/></vp:portForward>")


def group_fwd_mask(glab):
    return sh("cat", "/sys/class/net/vnet0/brport/group_fwd_mask", ns=glab.host).stdout.decode().strip()


def test_uninstall_leaves_nothing_of_virtport_in_the_kernel(glab, tmp_path):
    hooks = tmp_path / "hooks"
    r = glab.virtport("install", "--no-reconcile")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in hooks.iterdir()) == ["network", "qemu"]
    # libvirt's own isolated flag on the other port (<port isolated='yes'/>): not virtport's to clear.
    sh("bridge", "link", "set", "dev", "vnet1", "isolated", "on", ns=glab.host)
    xml = glab.xml(guard_for(glab) + (FORWARD if glab.layout == "nat" else ""), glab.layout)
    glab.start(xml)
    # Every kind is there before: both tables, the flag it set, guard rows.
    ruleset = sh("nft", "list", "ruleset", ns=glab.host).stdout.decode()
    assert "table bridge virtport" in ruleset
    if glab.layout == "nat":
        assert "table inet virtport" in ruleset and "table inet virtport_src" in ruleset
    assert "isolated on" in glab.port_flags("vnet0")
    assert group_fwd_mask(glab) == "0x4001"      # STP/LLDP diverted through the guard
    assert len(glab.guards_json()) == 1

    r = glab.virtport("uninstall")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "1 guarded port(s)" in out, out
    assert f"{1 if glab.layout == 'nat' else 0} source filter(s) and table inet virtport_src" in out, out

    ruleset = sh("nft", "list", "ruleset", ns=glab.host).stdout.decode()
    assert "virtport" not in ruleset, ruleset
    assert "isolated off" in glab.port_flags("vnet0")
    assert "isolated on" in glab.port_flags("vnet1"), "libvirt's own isolated flag must stay"
    assert group_fwd_mask(glab) == "0x0", "the group_fwd_mask bits the guard set must be given back"
    assert list(hooks.iterdir()) == []
    assert glab.guards_json() == []
    hist = json.loads(glab.virtport("history", "--guards", "--json", check=True).stdout)
    offs = [e for e in hist if e.get("reason") == "uninstall" and e.get("event", e.get("action")) == "off"]
    assert offs, hist
    # A second uninstall finds nothing and fails on nothing.
    assert glab.virtport("uninstall").returncode == 0


def test_uninstall_deletes_a_bridge_table_the_journal_does_not_know(glab):
    """A table left by a crash or a moved-aside journal goes too."""
    glab.start(glab.xml(guard_for(glab), glab.layout))
    import os
    os.rename(glab.db, glab.db + ".aside")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(glab.db + suffix):
            os.rename(glab.db + suffix, glab.db + ".aside" + suffix)
    assert glab.virtport("uninstall").returncode == 0
    assert "virtport" not in sh("nft", "list", "ruleset", ns=glab.host).stdout.decode()
