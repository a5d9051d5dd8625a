"""The Debian package (packaging/build-deb) installed with apt INSIDE the libvirt 11 lab root, next to
its virtqemud + virtnetworkd (issue 22 scope 2): install of the previous release, a VM forwarding
through the packaged hooks, an upgrade to the current release with the VM running (a connection
held open across it, new ones after it), remove (hooks out, forward down, both daemons told), purge
(nothing left). dpkg, apt, /usr/sbin/virtport, /var/lib/virtport, /etc/virtport and the units are the
root's, so the machine's own are never touched; no systemd there, so the units are only enabled.

The upgrade's postinst runs `virtport install`, which SIGHUPs virtnetworkd: libvirt 11 then puts
its reject above virtport's accept, and install must wait for that rebuild and put the rule back
(issue 22 scope 3; no agent runs here): new connections get through within 1 s of the upgrade.

(tests/libvirt/test_package.py is the same story against the machine's libvirt 9.0.)
"""
import contextlib
import json
import os
import shutil
import subprocess
import time

import pytest

import harness
from harness import out
from test_package import (APT_ENV, PREV_COMMIT, PREV_CONF, binary_version, build_deb, echo_service, held_connection,
                          prev_release_binary, say)
from test_virtport_libvirt import BIN, CLIENT, G1, HOST, MAC1, answer, meta

pytestmark = pytest.mark.only_lab("11", why="the package installed inside the lab root")
UNITS = ("virtport-agent.service", "virtport-reconcile.service")


@pytest.fixture
def debs(lab, tmp_path_factory):
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no release binary at {BIN}")
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    prev_bin = prev_release_binary()
    tmp = str(tmp_path_factory.mktemp("debs"))
    version = f"{binary_version(BIN)}-1"
    prev_version = f"{binary_version(prev_bin)}~git{PREV_COMMIT}-1"
    prev_conf = os.path.join(tmp, "prev-virtport.conf")   # a conffile the previous release can read
    with open(prev_conf, "w") as f:
        f.write(PREV_CONF)
    made = []
    for b, v, conf in ((prev_bin, prev_version, prev_conf), (BIN, version, None)):
        deb = build_deb(tmp, b, v, conf)
        inside = os.path.join(lab.workdir, os.path.basename(deb))     # the workdir is visible in the root
        shutil.copy2(deb, inside)
        made.append(inside)
    yield made[0], prev_version, made[1], version
    if lab.running:
        for n in list(lab.vms):
            if lab.vm_state(n) not in (None, "shut off"):
                lab.destroy_vm(n, check=False)
        root(lab, "dpkg", "--purge", "virtport", check=False)
        lab.exec("nft", "delete", "table", "inet", "virtport", check=False)


def root(lab, *argv, check=True):
    """A command of the lab root (its dpkg, apt-get, systemctl), in its namespaces."""
    return harness.sh(*lab.in_root(*argv), env=APT_ENV, check=check, timeout=300)


def apt_install(lab, deb, *options):
    mark = lab.log_mark()
    r = root(lab, "apt-get", "install", "-y", "-q", "--no-install-recommends", *options, deb)
    return out(r) + "\n" + r.stderr.decode(), mark


def rescans(lab, mark, needle):
    """How many daemons logged NEEDLE since MARK (each libvirt daemon rescans all hooks on SIGHUP)."""
    return sum(needle in l for l in lab.log_lines(mark))


def with_rescan(lab, mark, needle, text):
    """Both modular daemons logged NEEDLE since MARK (the maintainer script SIGHUPed each)."""
    try:
        harness.wait_for(lambda: rescans(lab, mark, needle) >= 2, 10, 0.05, "both daemons to rescan")
    except harness.LabError:
        pytest.fail(f"{rescans(lab, mark, needle)} daemon(s) logged '{needle}' after the maintainer script; "
                    f"its output:\n{text}")


def hooks(lab):
    d = lab.hooks_dir
    return {h: os.readlink(f"{d}/{h}") if os.path.islink(f"{d}/{h}") else None for h in ("qemu", "network")}


def unit_state(lab, unit):
    r = subprocess.run(["systemctl", f"--root={lab.path('/')}", "is-enabled", unit], capture_output=True)
    return out(r) or r.stderr.decode().strip()


def history(lab):
    r = root(lab, "/usr/sbin/virtport", "history", "--json")
    return [(e["action"], e["domain"], e["host_port_start"], e["reason"]) for e in json.loads(r.stdout)]


def new_connection_within(client, seconds, tag="G1"):
    t0 = time.monotonic()
    while time.monotonic() - t0 <= seconds:
        if client.connect("tcp", HOST, 2222) == answer(tag, 22, CLIENT):
            return True
        time.sleep(0.05)
    return False


def test_package_in_the_lab_root_install_vm_upgrade_remove_purge(lab, debs):
    prev, prev_version, cur, version = debs
    vm = "vpk-pkg"
    assert not os.path.exists(lab.path("/var/lib/virtport"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lab.path("/etc/virtport/virtport.conf"))      # the conffile comes from the package

    # 1. Install the previous release: hooks, units enabled. It predates modular daemons (it looks
    # for libvirtd only and says it is not running): the daemons are SIGHUPed by hand, as its user
    # would have had to.
    text, mark = apt_install(lab, prev)
    assert f"Version: {prev_version}" in out(root(lab, "dpkg", "-s", "virtport"))
    assert hooks(lab) == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}, text
    assert "libvirtd is not running" in text, text
    lab.sighup_libvirtd()
    assert {u: unit_state(lab, u) for u in UNITS} == {u: "enabled" for u in UNITS}
    assert os.stat(lab.path("/var/lib/virtport")).st_mode & 0o777 == 0o700

    # 2. A VM through the previous release's hooks: real traffic.
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    echo_service(guest, 22, "G1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert history(lab) == [("add", vm, 2222, "hook qemu start")]
    held = held_connection(client, HOST, 2222)
    assert held.stdout.readline().decode().strip() == answer("G1", 22, CLIENT)
    assert say(held, "before") == "G1 echo before"

    # 3. Upgrade with the VM running: the current release's postinst SIGHUPs both daemons; the held
    # connection survives; the journal is the same.
    text, mark = apt_install(lab, cur)
    assert f"Version: {version}" in out(root(lab, "dpkg", "-s", "virtport"))
    with_rescan(lab, mark, "Found hook script /etc/libvirt/hooks/qemu", text)
    lab.wait_reload_idle()
    assert say(held, "after") == "G1 echo after", "the connection held across the upgrade broke"
    assert history(lab) == [("add", vm, 2222, "hook qemu start")], "the upgrade took the forward down"
    assert hooks(lab) == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}
    assert new_connection_within(client, 1.0), "new connections refused after the upgrade:\n" + "\n".join(lab.guest_input())
    held.stdin.close()

    # 4. Remove with the VM running: hooks out (both daemons rescan), forward down.
    mark = lab.log_mark()
    text = out(root(lab, "dpkg", "--remove", "virtport"))
    assert hooks(lab) == {"qemu": None, "network": None}
    with_rescan(lab, mark, "No hook script /etc/libvirt/hooks/qemu", text)
    lab.wait_reload_idle()
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert lab.exec("nft", "list", "table", "inet", "virtport", check=False).returncode != 0
    assert not any("virtport" in l for l in lab.guest_input()), lab.guest_input()
    assert not os.path.exists(lab.path("/usr/sbin/virtport"))
    with open(lab.path("/var/lib/virtport/virtport.db"), "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
    mark = lab.log_mark()
    lab.destroy_vm(vm)
    assert lab.hook_calls(mark) == []

    # 5. Purge: nothing left in the root.
    root(lab, "dpkg", "--purge", "virtport")
    assert root(lab, "dpkg", "-L", "virtport", check=False).returncode != 0
    assert not os.path.exists(lab.path("/var/lib/virtport"))
    assert not os.path.exists(lab.path("/etc/virtport/virtport.conf"))
    assert "virtport" not in out(lab.exec("nft", "list", "tables"))
