"""The harness itself works: a real libvirtd in a namespace, a diskless VM, a stand-in guest behind
libvirt's own firewall, hooks observed through a stand-in virtport, and a teardown that leaves
nothing behind. No virtport binary needed."""
import os
import shutil
import time

import pytest

import harness

GUEST_IP = "192.168.122.10"
MAC = "52:54:00:5e:00:01"


def reject_count(lab):
    """Packets counted by libvirt's `LIBVIRT_FWI -o virbr0 -j REJECT` rule."""
    text = lab.iptables("-L", "LIBVIRT_FWI", "-v", "-n", "-x").stdout.decode()
    for line in text.splitlines():
        if "REJECT" in line and "virbr0" in line:
            return int(line.split()[0])
    raise AssertionError(f"no REJECT rule for virbr0 in LIBVIRT_FWI:\n{text}")


def print_timings(lab, title):
    print(f"\n{title}")
    for label, dt in lab.timings:
        print(f"  {label:34s} {dt:6.3f} s")


def test_smoke(libvirt_lab):
    lab = libvirt_lab
    if not lab.running:
        lab.start()
    t0 = time.monotonic()
    assert lab.vm_state("vpl-smoke") is None

    # A diskless VM with no metadata runs; its tap is on virbr0 inside the lab namespace.
    lab.define_vm("vpl-smoke", MAC)
    lab.start_vm("vpl-smoke")
    assert lab.vm_state("vpl-smoke") == "running"
    tap = lab.vm_tap("vpl-smoke")
    assert tap and tap.startswith("vnet")
    assert f"master {harness.BRIDGE}" in lab.exec("ip", "-o", "link", "show", tap).stdout.decode()
    assert harness.sh("ip", "link", "show", tap, check=False).returncode != 0, "tap leaked into the host namespace"

    # The stand-in guest on virbr0 answers the host (libvirt namespace) directly.
    guest = lab.stand_in_guest(GUEST_IP, mac=MAC)
    guest.listen("tcp", 8080, "GUEST")
    guest.listen("udp", 5353, "GUEST")
    assert lab.connect("tcp", GUEST_IP, 8080) == "GUEST 8080 from 192.168.122.1"
    assert lab.connect("udp", GUEST_IP, 5353) == "GUEST 5353 from 192.168.122.1"

    # The client cannot open a new connection to the guest: libvirt's LIBVIRT_FWI rejects it.
    client = lab.client()
    before = reject_count(lab)
    answer = client.connect("tcp", GUEST_IP, 8080)
    assert answer.startswith("ERROR ConnectionRefusedError"), answer
    assert reject_count(lab) == before + 1, "the refusal did not come from libvirt's REJECT rule"
    # ... and only that rule: let exactly this flow through it, and the same connection works
    # (routing both ways is right, no masquerade: the guest sees the client's address).
    rule = ["LIBVIRT_FWI", "-s", harness.CLIENT_IP, "-d", GUEST_IP, "-o", harness.BRIDGE, "-j", "ACCEPT"]
    lab.iptables("-I", *rule[:1], "1", *rule[1:])
    try:
        assert client.connect("tcp", GUEST_IP, 8080) == f"GUEST 8080 from {harness.CLIENT_IP}"
    finally:
        lab.iptables("-D", *rule)
    assert client.connect("tcp", GUEST_IP, 8080).startswith("ERROR ConnectionRefusedError")
    assert reject_count(lab) == before + 2

    lab.destroy_vm("vpl-smoke")
    assert lab.vm_state("vpl-smoke") == "shut off"
    assert lab.exec("ip", "link", "show", tap, check=False).returncode != 0
    kvm = lab.kvm_saved
    print(f"\nfirewall in {lab.ns} (libvirt 9.0 via iptables-nft):\n{lab.firewall()['iptables']}")
    print_timings(lab, f"timings (lab {lab.ns}, this test {time.monotonic() - t0:.1f} s before teardown)")

    # Teardown leaves nothing: no namespace, no live libvirtd behind /run/libvirtd.pid, /dev/kvm as found.
    t1 = time.monotonic()
    lab.teardown()
    print(f"  teardown {time.monotonic() - t1:6.3f} s")
    assert harness.leftovers() == []
    assert harness.lab_namespaces() == []
    assert not harness.pid_alive(harness.read_pid(harness.LIBVIRTD_PID))
    if kvm:
        st = os.stat("/dev/kvm")
        assert (st.st_mode & 0o7777, st.st_gid) == (kvm["mode"], kvm["gid"])


def _hooks_snapshot():
    """/etc/libvirt/hooks as it is: {name: symlink target, "dir:" + listing, or "file"}."""
    out = {}
    for n in sorted(os.listdir(harness.HOOKS_DIR)):
        p = os.path.join(harness.HOOKS_DIR, n)
        out[n] = (os.readlink(p) if os.path.islink(p) else
                  "dir:" + ",".join(sorted(os.listdir(p))) if os.path.isdir(p) else "file")
    return out


def test_machine_hooks_set_aside_while_a_lab_runs(libvirt_lab):
    """Issue 22: the machine's own hooks (a source install's, the package's, an admin's) are out of
    /etc/libvirt/hooks while a lab runs (its libvirtd would run them; its install/uninstall would
    replace and remove them) and exactly back after teardown."""
    lab = libvirt_lab
    if lab.running:
        lab.teardown()
    before = _hooks_snapshot()
    ours = []
    if "daemon" not in before:                       # libvirt's daemon hook, as a source install's link
        os.symlink("/usr/local/bin/virtport", os.path.join(harness.HOOKS_DIR, "daemon"))
        ours.append("daemon")
    if "lxc.d" not in before:                        # an admin's hook directory
        os.mkdir(os.path.join(harness.HOOKS_DIR, "lxc.d"))
        with open(os.path.join(harness.HOOKS_DIR, "lxc.d", "mine"), "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        ours.append("lxc.d")
    machine = _hooks_snapshot()
    try:
        lab.start()
        hooks = [n for n in machine if n.removesuffix(".d") in harness.MACHINE_HOOKS]
        assert set(_hooks_snapshot()).isdisjoint(hooks), "the machine's hooks stayed where the lab's libvirtd reads them"
        assert sorted(os.listdir(harness.HOOKS_ASIDE)) == sorted(hooks)
        lab.teardown()
        assert _hooks_snapshot() == machine and not os.path.exists(harness.HOOKS_ASIDE)
    finally:
        if lab.running:
            lab.teardown()
        for n in ours:
            p = os.path.join(harness.HOOKS_DIR, n)
            if os.path.islink(p) or os.path.isfile(p):
                os.unlink(p)
            elif os.path.isdir(p):
                shutil.rmtree(p)
    assert _hooks_snapshot() == before


def test_hooks_through_stand_in(lab):
    """Hook order, hook environment and refusal, observed with a stand-in for virtport."""
    h = lab.stand_in_hook()
    lab.write_etc("virtport/virtport.conf", "# lab config\n")
    lab.install_hooks(h.path)
    assert lab.hooks_installed() == {"qemu": h.path, "network": h.path}

    lab.define_vm("vpl-hooks", MAC, metadata_xml="<vp:virtport xmlns:vp='urn:virtport:domain:1'/>")
    mark = lab.log_mark()
    lab.start_vm("vpl-hooks")
    assert [(c["hook"], c["args"][1]) for c in h.calls()] == [
        ("qemu", "prepare"), ("network", "port-created"), ("qemu", "start"), ("qemu", "started")]
    assert lab.hook_calls(mark) == [("qemu", "vpl-hooks", "prepare", "begin"),
                                    ("network", "default", "port-created", "begin"),
                                    ("qemu", "vpl-hooks", "start", "begin"),
                                    ("qemu", "vpl-hooks", "started", "begin")]
    tap = lab.vm_tap("vpl-hooks")
    calls = h.calls()
    # Hooks run inside the lab namespace, see the lab's /etc/virtport, and a filtered environment.
    ns_link = os.readlink(f"/proc/{harness.read_pid(harness.LIBVIRTD_PID)}/ns/net")
    assert {c["netns"] for c in calls} == {ns_link}
    assert {c["config"] for c in calls} == {"# lab config\n"}
    assert set(calls[0]["env"]) <= {"LC_ALL", "PATH", "HOME", "PWD", "TMPDIR", "USER", "LOGNAME"}, calls[0]["env"]
    assert calls[0]["target_dev"] == [] and calls[2]["target_dev"] == [tap]

    # Daemon restart with the VM running: port-created replayed, then reconnect.
    h.clear()
    lab.restart_libvirtd()
    assert lab.vm_state("vpl-hooks") == "running"
    assert [(c["hook"], c["args"][1]) for c in h.calls()] == [("network", "port-created"), ("qemu", "reconnect")]

    h.clear()
    lab.destroy_vm("vpl-hooks")
    assert [(c["hook"], c["args"][1]) for c in h.calls()] == [
        ("qemu", "stopped"), ("network", "port-deleted"), ("qemu", "release")]

    # net-destroy / net-start call the network hook.
    h.clear()
    lab.net_destroy()
    lab.net_start()
    ops = [(c["hook"], c["args"][1]) for c in h.calls()]
    assert ops[-2:] == [("network", "start"), ("network", "started")], ops

    # A refusing prepare hook aborts the start with its stderr; libvirt still calls stopped+release.
    h.clear()
    h.fail_on("qemu", "prepare")
    r = lab.start_vm("vpl-hooks", check=False)
    err = r.stderr.decode()
    assert r.returncode != 0 and "stand-in refuses qemu prepare for vpl-hooks" in err, err
    assert lab.vm_state("vpl-hooks") == "shut off"
    assert [(c["hook"], c["args"][1]) for c in h.calls()] == [
        ("qemu", "prepare"), ("qemu", "stopped"), ("qemu", "release")]
    h.fail_on(None)

    lab.remove_hooks(h.path)
    assert lab.hooks_installed() == {"qemu": False, "network": False}
    assert any("No hook script /etc/libvirt/hooks/qemu" in l for l in lab.hook_log(mark))
    print_timings(lab, f"timings (lab {lab.ns})")


def test_real_binary_install_uninstall(lab, tmp_path):
    """install_hooks()/remove_hooks() against the real virtport, once it is built."""
    binary = os.environ.get("VIRTPORT_BIN", os.path.join(harness.ROOT, ".build", "release", "virtport"))
    if not os.access(binary, os.X_OK):
        pytest.skip(f"no virtport binary at {binary} (swift build -c release)")
    # A config of its own: the journal `install` opens (reconcile) stays out of the host's
    # /var/lib/virtport.
    conf = tmp_path / "virtport.conf"
    conf.write_text(f'database = "{tmp_path}/virtport.db"\nlibvirt_uri = ""\n')
    env = {"VIRTPORT_CONFIG": str(conf)}
    r = lab.install_hooks(binary, env=env)       # waits for libvirtd's rescan after its SIGHUP
    assert b"/etc/libvirt/hooks/qemu" in r.stdout, r.stdout   # says what it did (only hooks are silent)
    real = os.path.realpath(binary)
    assert {h: os.path.realpath(os.path.join(harness.HOOKS_DIR, h)) for h in ("qemu", "network")} == \
        {"qemu": real, "network": real}
    lab.install_hooks(binary, env=env)           # idempotent
    lab.remove_hooks(binary, env=env)
    assert lab.hooks_installed() == {"qemu": False, "network": False}
    lab.remove_hooks(binary, env=env)            # idempotent
    assert os.path.exists(tmp_path / "virtport.db")
