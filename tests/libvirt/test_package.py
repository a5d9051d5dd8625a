"""Issue 14: the Debian package (packaging/build-deb) installed with apt next to the real libvirtd of
the lab: a VM started through the packaged hooks gets its forward; an upgrade from the previous
version with the VM running keeps the forward and the journal; remove takes hooks and forwards
away and leaves nothing enabled; purge leaves nothing at all.

apt/dpkg run inside the lab's namespace, so the maintainer scripts' `virtport install/uninstall`
(reconcile, forwards) act on the namespace's kernel, as on a host where libvirtd runs. /etc/virtport
there is the lab's overlay; the journal is the package's default, /var/lib/virtport.

The previous version: the same release binary packaged as VERSION~prev (319e96c, the last release,
is this branch's base: its binary and journal schema are those of this one, and it has no
build-deb). $VIRTPORT_PREV_BIN packages another binary as the previous version instead.
"""
import os
import re
import shutil
import subprocess

import pytest

import harness
from harness import out
from test_virtport_libvirt import BIN, CLIENT, G1, HOST, MAC1, answer, meta

UNITS = ("virtport-agent.service", "virtport-reconcile.service")
APT_ENV = dict(harness.BASE_ENV, DEBIAN_FRONTEND="noninteractive")


def build_deb(tmp, binary, version):
    r = subprocess.run([os.path.join(harness.ROOT, "packaging", "build-deb"), "--fast", "--binary", binary,
                        "--version", version, "--out", tmp], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    deb = r.stdout.decode().strip().splitlines()[-1]
    assert deb.endswith(f"virtport_{version}_amd64.deb") and os.path.exists(deb), r.stdout
    return deb


@pytest.fixture
def debs(tmp_path_factory):
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no release binary at {BIN}")
    if not shutil.which("dpkg-deb") or not shutil.which("apt-get"):
        pytest.skip("dpkg-deb/apt-get not installed")
    # Never on a machine where virtport is installed for real: purge would delete its journal.
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "virtport"], capture_output=True).stdout
    if b"installed" in installed or os.path.exists("/usr/sbin/virtport") or os.path.exists("/var/lib/virtport"):
        pytest.skip("virtport is installed on this machine (package, /usr/sbin/virtport or /var/lib/virtport)")
    tmp = str(tmp_path_factory.mktemp("debs"))
    version = out(subprocess.run([BIN, "version"], capture_output=True)).split()[1]
    prev = build_deb(tmp, os.environ.get("VIRTPORT_PREV_BIN") or BIN, f"{version}~prev-1")
    cur = build_deb(tmp, BIN, f"{version}-1")
    return prev, cur, f"{version}-1"


@pytest.fixture
def pkg_lab(lab, debs):
    """The lab without a virtport.conf of an earlier test; afterwards the package purged (in the
    namespace), whatever the test did."""
    with_conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    if os.path.exists(with_conf):
        os.unlink(with_conf)
    yield lab
    if lab.running:
        for n in list(lab.vms):
            if lab.vm_state(n) not in (None, "shut off"):
                lab.destroy_vm(n, check=False)
    dpkg(lab, "--purge", "virtport", check=False)
    lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
    assert not os.path.exists("/var/lib/virtport")


def dpkg(lab, *args, check=True):
    return lab.exec("dpkg", *args, env=APT_ENV, check=check, timeout=300)


def apt_install(lab, deb):
    mark = lab.log_mark()
    r = lab.exec("apt-get", "install", "-y", "-q", "--no-install-recommends", deb, env=APT_ENV, timeout=300)
    return out(r) + "\n" + r.stderr.decode(), mark


def unit_state(unit):
    """systemctl's enablement answer, offline (`--root=/`: no systemd is needed)."""
    r = subprocess.run(["systemctl", "--root=/", "is-enabled", unit], capture_output=True)
    return out(r) or r.stderr.decode().strip()


def listed_units():
    r = subprocess.run(["systemctl", "--root=/", "list-unit-files", "virtport*"], capture_output=True)
    return [l.split()[0] for l in out(r).splitlines() if l.startswith("virtport")]


def hooks():
    return {h: os.readlink(f"{harness.HOOKS_DIR}/{h}") if os.path.islink(f"{harness.HOOKS_DIR}/{h}") else None
            for h in ("qemu", "network")}


def history(lab):
    import json
    r = lab.exec("/usr/sbin/virtport", "history", "--json")
    return [(e["action"], e["domain"], e["host_port_start"], e["reason"]) for e in json.loads(r.stdout)]


def table_handles(lab):
    """The handles of table inet virtport's chains and maps: a rebuilt table gets new ones."""
    r = lab.exec("nft", "-a", "list", "table", "inet", "virtport", check=False)
    return sorted(re.findall(r"(?:chain|map|set) (\S+) \{ # handle (\d+)", out(r)))


def test_package_install_vm_upgrade_remove_purge(pkg_lab, debs):
    lab = pkg_lab
    prev, cur, version = debs
    vm = "vpe-pkg"

    # 1. Install the previous version with apt: hooks, rescan, units enabled, no forwards yet.
    text, mark = apt_install(lab, prev)
    assert hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}, text
    harness.wait_for(lambda: any("Found hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after the postinst's SIGHUP")
    lab.wait_reload_idle()
    assert {u: unit_state(u) for u in UNITS} == {u: "enabled" for u in UNITS}
    conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    assert open(conf).read() == open(os.path.join(harness.ROOT, "packaging", "virtport.conf")).read()
    assert os.stat("/var/lib/virtport").st_mode & 0o777 == 0o700

    # 2. A VM started through the packaged hooks gets its forward (real traffic).
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    guest.listen("tcp", 22, "G1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert history(lab) == [("add", vm, 2222, "hook qemu start")]
    db_inode = os.stat("/var/lib/virtport/virtport.db").st_ino
    handles = table_handles(lab)
    assert handles

    # 3. Upgrade with the VM running: the forward never goes down, the journal stays.
    text, _ = apt_install(lab, cur)
    assert out(dpkg(lab, "-s", "virtport")).count(f"Version: {version}") == 1
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert table_handles(lab) == handles, "the upgrade rebuilt or removed the table"
    assert history(lab) == [("add", vm, 2222, "hook qemu start")], "the upgrade took the forward down"
    assert os.stat("/var/lib/virtport/virtport.db").st_ino == db_inode
    assert hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}
    assert {u: unit_state(u) for u in UNITS} == {u: "enabled" for u in UNITS}
    # The new binary serves the hooks: a restart of the VM goes through them again.
    lab.destroy_vm(vm)
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)

    # 4. Remove with the VM running: hooks out, forward down (history says why), nothing enabled;
    # the conffile and the journal stay until purge.
    mark = lab.log_mark()
    dpkg(lab, "--remove", "virtport")
    assert hooks() == {"qemu": None, "network": None}
    harness.wait_for(lambda: any("No hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after the prerm's uninstall")
    lab.wait_reload_idle()
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert lab.exec("nft", "list", "table", "inet", "virtport", check=False).returncode != 0
    assert "virtport" not in out(lab.iptables("-S", "FORWARD"))
    assert listed_units() == [] and not any(os.path.lexists(f"/etc/systemd/system/multi-user.target.wants/{u}") for u in UNITS)
    left = out(dpkg(lab, "-L", "virtport")).splitlines()
    assert "/etc/virtport/virtport.conf" in left and set(left) <= {"/.", "/etc", "/etc/virtport", "/etc/virtport/virtport.conf"}, left
    assert not os.path.exists("/usr/sbin/virtport")
    with open("/var/lib/virtport/virtport.db", "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
    mark = lab.log_mark()
    lab.destroy_vm(vm)
    assert lab.hook_calls(mark) == []

    # 5. Purge: nothing left.
    dpkg(lab, "--purge", "virtport")
    assert dpkg(lab, "-L", "virtport", check=False).returncode != 0
    assert not os.path.exists("/var/lib/virtport") and not os.path.exists(conf)
    assert listed_units() == []
    assert not [p for p in os.listdir("/var/lib/systemd/deb-systemd-helper-enabled") if "virtport" in p] \
        if os.path.isdir("/var/lib/systemd/deb-systemd-helper-enabled") else True
    assert "virtport" not in out(lab.exec("nft", "list", "tables"))
