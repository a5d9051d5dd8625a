"""The libvirt 11 lab itself (lab11.py): what it runs, that its teardown leaves nothing, that the
machine's /dev is never touched (libvirt enters each QEMU's mount namespace: from a chroot that is
the machine's real root, which once replaced the machine's /dev/ptmx), and that a run killed with
SIGKILL is cleaned up by the next one."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import harness
from harness import LabWarning, out

pytestmark = pytest.mark.only_lab("11", why="the libvirt 11 lab's own checks")
HERE = os.path.dirname(os.path.abspath(__file__))
MAC = "52:54:00:76:71:01"


def dev_state():
    """What the machine's /dev looks like where a wrong mount namespace would show."""
    st = {}
    for p in ("/dev/ptmx", "/dev/kvm", "/dev/null", "/dev/net/tun"):
        with __import__("contextlib").suppress(FileNotFoundError):
            s = os.lstat(p)
            st[p] = (s.st_ino, s.st_mode, s.st_uid, s.st_gid, s.st_rdev)
    st["names"] = sorted(os.listdir("/dev"))
    return st


def qemu_pids(lab):
    return [p for p in harness.pids_in_netns(lab.ns) if harness.comm(p).startswith("qemu-system")]


@pytest.fixture
def no_session_lab(libvirt_lab):
    """This process must hold no lab-11 instance (the session's is torn down; the `lab` fixture
    starts it again for later tests)."""
    import lab11
    if libvirt_lab.running:
        libvirt_lab.teardown()
    assert not lab11._LIVE and lab11._LOCK_FD is None
    return lab11


def test_lab11_runs_modular_daemons_and_teardown_leaves_nothing(no_session_lab):
    lab11 = no_session_lab
    before = dev_state()
    lab = lab11.Lab11()
    lab.start()
    try:
        names = {p: harness.comm(p) for p in harness.pids_in_netns(lab.ns)}
        assert {"virtqemud", "virtnetworkd", "virtlogd"} <= set(names.values()), names
        assert "libvirtd" not in names.values(), names
        ver = out(lab.virsh("version"))
        assert "QEMU 10." in ver, ver
        assert 'firewall_backend = "nftables"' in open(lab.path("/etc/libvirt/network.conf")).read()
        assert any("reject" in l for l in lab.guest_input()), lab.guest_input()
        # The daemons' root is the lab root: their / is not ours.
        qd = lab.daemon_pid("virtqemud")
        assert os.stat(f"/proc/{qd}/root/usr/sbin/virtqemud").st_ino == os.stat(lab.path("/usr/sbin/virtqemud")).st_ino
        assert os.readlink(f"/proc/{qd}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        lab.define_vm("vps-smoke", MAC)
        lab.start_vm("vps-smoke")
        assert lab.vm_state("vps-smoke") == "running" and qemu_pids(lab)
        lab.destroy_vm("vps-smoke")
    finally:
        lab.teardown()
    assert lab11.leftovers() == []
    assert dev_state() == before


CRASH = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import harness, lab11
    lab = lab11.Lab11()
    lab.start()
    lab.define_vm("vps-crash", sys.argv[2])
    lab.start_vm("vps-crash")
    print(json.dumps({"ns": lab.ns, "pids": harness.pids_in_netns(lab.ns), "mnt": lab.mnt, "upper": lab.upper,
                      "workdir": lab.workdir}), flush=True)
    os.kill(os.getpid(), 9)
""")


def test_a_run_killed_mid_lab_is_cleaned_up_by_the_next(no_session_lab):
    lab11 = no_session_lab
    r = subprocess.run([sys.executable, "-c", CRASH, HERE, MAC], capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    left = json.loads(r.stdout.decode().strip().splitlines()[-1])
    try:
        assert [p for p in left["pids"] if harness.pid_alive(p)], "the crash left nothing running?"
        assert left["ns"] in lab11.lab_namespaces() and os.path.ismount(left["mnt"])
        lab = lab11.Lab11()
        with pytest.warns(LabWarning, match="did not finish"):
            lab.start()
        try:
            assert not [p for p in left["pids"] if harness.pid_alive(p)]
            assert left["ns"] not in lab11.lab_namespaces()
            assert not os.path.exists(left["mnt"]) and not os.path.exists(left["upper"])
            assert lab.virsh("domstate", "vps-crash", check=False).returncode != 0   # a fresh root
        finally:
            lab.teardown()
        assert lab11.leftovers() == []
    finally:
        shutil.rmtree(left["workdir"], ignore_errors=True)
