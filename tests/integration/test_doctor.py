"""`virtport doctor [--json]` (issue 14): a healthy host, then each broken state it claims to detect,
made real (files, kernel settings, nftables tables and legacy iptables tables in the test's own
network namespace), with the fix it names applied and checked. Host files outside libvirt's
directories (AppArmor, SELinux, alternatives) come from a fake tree: VIRTPORT_SYSROOT."""
import json
import os
import socket
import sqlite3

import pytest

from conftest import BIN, domain_xml, sh

U1 = "14141414-1414-4141-8141-141414141414"
WEB = domain_xml("web1", U1, "<vp:portForward proto='tcp' guest='192.168.122.10'>"
                             "<vp:range start='2222' to='22'/></vp:portForward>")
PENDING = domain_xml("lazy", "14141414-1414-4141-8141-141414141415",
                     "<vp:portForward proto='tcp'><vp:range start='2300' to='22'/></vp:portForward>")


@pytest.fixture
def doc(lab, tmp_path):
    """The lab with hooks installed (its own hooks dir) and an empty fake sysroot."""
    root = tmp_path / "sysroot"
    root.mkdir()
    lab.sysroot = str(root)
    r = lab.virtport("install", "--no-reconcile", VIRTPORT_SYSROOT=lab.sysroot)
    assert r.returncode == 0, r.stderr
    return lab


def up(lab, xml):
    """A running VM as reconcile (and so doctor) sees it: hooks run and libvirt's status file."""
    lab.start(xml)
    lab.write_status(xml)


def doctor(lab, **env):
    env.setdefault("VIRTPORT_SYSROOT", lab.sysroot)
    r = lab.virtport("doctor", "--json", **env)
    assert r.returncode in (0, 1), r.stderr
    findings = json.loads(r.stdout)
    for f in findings:
        assert set(f) == {"check", "status", "problem", "why", "fix", "detail"}, f
        assert f["status"] in ("ok", "warn", "fail"), f
        if f["status"] != "ok":
            assert f["problem"] and f["why"] and f["fix"], f
    assert r.returncode == (1 if any(f["status"] == "fail" for f in findings) else 0), (r.returncode, findings)
    return r.returncode, findings


def bad(findings, check):
    """Findings (not ok) whose check starts with `check`."""
    return [f for f in findings if f["check"].startswith(check) and f["status"] != "ok"]


def test_healthy_host_exits_0_and_text_output_names_each_check(doc):
    doc.listen(doc.guest, "tcp", "0.0.0.0", 22, "g")
    up(doc, WEB)
    rc, findings = doctor(doc)
    assert rc == 0, findings
    assert [f for f in findings if f["status"] == "fail"] == []
    checks = {f["check"] for f in findings}
    for c in ("hook qemu", "hook network", "apparmor", "selinux", "firewall backend", "iptables-legacy",
              "firewalld", "ip_forward", "br_netfilter", "journal", "agent", "forwards"):
        assert c in checks, (c, checks)
    assert [f["detail"] for f in findings if f["check"] == "forwards"] == [
        "1 applied mapping(s); kernel, journal and running VMs agree"]
    text = doc.virtport("doctor", VIRTPORT_SYSROOT=doc.sysroot)
    notok = sum(f["status"] != "ok" for f in findings)    # each with a why and a fix line
    assert text.returncode == 0 and text.stdout.decode().count("\n") == len(findings) + 2 * notok, text.stdout.decode()
    assert doc.virtport("doctor", "--bogus").returncode == 2


def test_missing_and_foreign_hooks(doc, tmp_path):
    hooks = tmp_path / "hooks"
    os.unlink(hooks / "network")
    rc, f = doctor(doc)
    assert rc == 1 and [x["fix"] for x in bad(f, "hook network")] == ["virtport install"], f
    other = tmp_path / "other" / "virtport"
    other.parent.mkdir()
    other.write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(other, 0o755)
    os.symlink(str(other), hooks / "network")
    rc, f = doctor(doc)
    [x] = bad(f, "hook network")
    assert rc == 1 and "points at" in x["problem"] and str(other) in x["problem"] and x["fix"].endswith(" install"), x
    assert doc.virtport("install", "--no-reconcile").returncode == 0
    rc, f = doctor(doc)
    assert bad(f, "hook") == [] and rc == 0, f


def test_apparmor_profile_without_rule_then_install_adds_the_override(doc):
    """A binary outside /usr/bin and /usr/sbin under an active libvirtd profile: fail; `install`
    writes the local override (once, idempotent) and doctor is satisfied; `uninstall` removes it and
    leaves the admin's own lines."""
    aa = os.path.join(doc.sysroot, "etc/apparmor.d")
    os.makedirs(aa + "/local")
    os.makedirs(os.path.join(doc.sysroot, "sys/module/apparmor/parameters"))
    with open(os.path.join(doc.sysroot, "sys/module/apparmor/parameters/enabled"), "w") as f:
        f.write("Y\n")
    with open(aa + "/usr.sbin.libvirtd", "w") as f:
        f.write("profile libvirtd /usr/sbin/libvirtd {\n  /usr/sbin/* PUx,\n  /etc/libvirt/hooks/** rmix,\n"
                "  #include <local/usr.sbin.libvirtd>\n}\n")
    admin = "# Site-specific additions\n/opt/mine/** r,\n"
    with open(aa + "/local/usr.sbin.libvirtd", "w") as f:
        f.write(admin)
    exe = os.path.realpath(BIN)
    rc, f = doctor(doc)
    [x] = bad(f, "apparmor")
    assert rc == 1 and "usr.sbin.libvirtd" in x["problem"] and exe in x["problem"] and "install" in x["fix"], x

    r = doc.virtport("install", "--no-reconcile", VIRTPORT_SYSROOT=doc.sysroot)
    assert r.returncode == 0, r.stderr
    local = open(aa + "/local/usr.sbin.libvirtd").read()
    assert local.startswith(admin) and f"\n{exe} PUx,\n" in local and local.count("PUx") == 1, local
    assert doc.virtport("install", "--no-reconcile", VIRTPORT_SYSROOT=doc.sysroot).returncode == 0
    assert open(aa + "/local/usr.sbin.libvirtd").read() == local, "a second install changed the override"
    rc, f = doctor(doc)
    assert bad(f, "apparmor") == [] and rc == 0, f

    assert doc.virtport("uninstall", VIRTPORT_SYSROOT=doc.sysroot).returncode == 0
    assert open(aa + "/local/usr.sbin.libvirtd").read() == admin


def test_selinux_enforcing_is_a_warning_with_the_policy_command(doc):
    os.makedirs(os.path.join(doc.sysroot, "sys/fs/selinux"))
    with open(os.path.join(doc.sysroot, "sys/fs/selinux/enforce"), "w") as f:
        f.write("1")
    rc, f = doctor(doc)
    [x] = bad(f, "selinux")
    assert x["status"] == "warn" and "audit2allow" in x["fix"] and rc == 0, x


def test_iptables_legacy_alternative_and_legacy_tables(doc):
    os.makedirs(os.path.join(doc.sysroot, "etc/alternatives"))
    os.symlink("/usr/sbin/iptables-legacy", os.path.join(doc.sysroot, "etc/alternatives/iptables"))
    rc, f = doctor(doc)
    [x] = bad(f, "iptables-legacy")
    assert rc == 1 and x["status"] == "fail" and "iptables-nft" in x["fix"], x
    os.unlink(os.path.join(doc.sysroot, "etc/alternatives/iptables"))

    # libvirt's chain in x_tables inside the lab's host namespace (what libvirt on legacy writes).
    sh("iptables-legacy", "-t", "filter", "-N", "LIBVIRT_FWI", ns=doc.host)
    sh("iptables-legacy", "-t", "filter", "-A", "LIBVIRT_FWI", "-o", "br0", "-j", "REJECT", ns=doc.host)
    rc, f = doctor(doc)
    [x] = bad(f, "iptables-legacy")
    assert rc == 1 and x["status"] == "fail" and "LIBVIRT_FWI" in x["problem"] and "filter" in x["problem"], x


def test_legacy_tables_make_the_hook_warn_when_libvirt_chain_is_missing(lab, tmp_path):
    """A NAT network whose libvirt rules are not in nf_tables, with legacy tables loaded: the hook
    says so on stderr (and syslog) instead of a forward that silently never works."""
    net = ("<network><name>default</name><forward mode='nat'/><bridge name='br0'/>"
           "<ip address='192.168.122.1' netmask='255.255.255.0'/></network>")
    (lab.run_dir / "network" / "default.xml").write_text(net)
    sh("iptables-legacy", "-t", "filter", "-N", "LIBVIRT_FWI", ns=lab.host)
    r = lab.hook(WEB, "start")
    assert r.returncode == 0 and r.stdout == b""
    err = r.stderr.decode()
    assert "legacy iptables tables are loaded (filter)" in err and "virtport doctor" in err, err


def test_firewalld_without_dnat_accept_blocks_and_is_reported(doc):
    """firewalld's nftables table with a filter_FORWARD that rejects what is not its own: the
    forwarded connection really fails and doctor says why; with `ct status dnat accept` (firewalld's
    default) it arrives and doctor is content."""
    doc.listen(doc.guest, "tcp", "0.0.0.0", 22, "g")
    up(doc, WEB)
    assert doc.connect(doc.client, "tcp", "203.0.113.1", 2222) == "g 22 from 203.0.113.2"
    strict = ("table inet firewalld {\n chain filter_FORWARD {\n  type filter hook forward priority filter + 10; policy accept;\n"
              "  ct state established,related accept\n  %s  reject with icmpx admin-prohibited\n }\n}\n")
    sh("nft", "-f", "-", input=(strict % "").encode(), ns=doc.host)
    assert doc.connect(doc.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    rc, f = doctor(doc)
    [x] = bad(f, "firewalld")
    assert rc == 1 and "StrictForwardPorts" in x["fix"], x
    sh("nft", "delete", "table", "inet", "firewalld", ns=doc.host)
    sh("nft", "-f", "-", input=(strict % "ct status dnat accept\n").encode(), ns=doc.host)
    assert doc.connect(doc.client, "tcp", "203.0.113.1", 2222) == "g 22 from 203.0.113.2"
    rc, f = doctor(doc)
    assert bad(f, "firewalld") == [] and rc == 0, f


def test_ip_forward_off(doc):
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=doc.host)
    rc, f = doctor(doc)
    [x] = bad(f, "ip_forward")
    assert rc == 1 and x["fix"].startswith("sysctl -w net.ipv4.ip_forward=1"), x


def test_journal_corrupt_newer_and_loose_mode(doc):
    up(doc, WEB)
    os.chmod(doc.db, 0o644)
    rc, f = doctor(doc)
    assert [x["status"] for x in bad(f, "journal mode")] == ["warn"], f
    os.chmod(doc.db, 0o600)
    con = sqlite3.connect(doc.db)
    con.execute("PRAGMA user_version = 999")
    con.commit()
    con.close()
    rc, f = doctor(doc)
    [x] = bad(f, "journal")
    assert rc == 1 and "newer virtport" in x["problem"], x
    for p in (doc.db, doc.db + "-wal", doc.db + "-shm"):
        if os.path.exists(p):
            os.unlink(p)
    with open(doc.db, "wb") as fh:
        fh.write(b"this is not a database" * 100)
    os.chmod(doc.db, 0o600)
    rc, f = doctor(doc)
    [x] = bad(f, "journal")
    assert rc == 1 and x["fix"].startswith("virtport reconcile"), x


def test_stale_agent_socket(doc, tmp_path):
    sock = str(tmp_path / "agent.sock")
    with open(doc.config, "a") as f:
        f.write(f'[paths]\nagent_socket = "{sock}"\n')
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.close()                                 # the file stays, nobody listens
    rc, f = doctor(doc)
    [x] = bad(f, "agent")
    assert x["status"] == "warn" and "stale" in x["problem"], x


def test_pending_forward_and_forward_missing_from_the_kernel(doc):
    doc.listen(doc.guest, "tcp", "0.0.0.0", 22, "g")
    up(doc, WEB)
    up(doc, PENDING)                        # no guest=, no reservation, no lease: pending
    sh("nft", "flush", "table", "inet", "virtport", ns=doc.host)
    rc, f = doctor(doc)
    pend = bad(f, "pending lazy")
    assert [x["status"] for x in pend] == ["warn"] and "52:54:00:aa:bb:01" in pend[0]["problem"], f
    fw = bad(f, "forwards")
    assert rc == 1 and fw and all(x["fix"] == "virtport reconcile" for x in fw), f
    assert any("kernel does not" in x["why"] for x in fw), fw
    assert doc.virtport("reconcile").returncode == 0
    assert doc.connect(doc.client, "tcp", "203.0.113.1", 2222) == "g 22 from 203.0.113.2"
    rc, f = doctor(doc)
    assert bad(f, "forwards") == [] and rc == 0, f
