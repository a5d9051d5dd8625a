"""`virtport install` / `uninstall`: hooks in place, foreign hooks never overwritten, idempotent."""
import os

from conftest import BIN, require_root, sh


def run(lab, *args):
    r = lab.virtport(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_install_uninstall_fresh_and_idempotent(lab, tmp_path):
    hooks = tmp_path / "hooks"
    out = run(lab, "install", "--no-reconcile")
    for kind in ("qemu", "network"):
        assert os.readlink(hooks / kind) == os.path.realpath(BIN)
    assert "installed" in out
    out2 = run(lab, "install", "--no-reconcile")
    assert "in place" in out2 and sorted(os.listdir(hooks)) == ["network", "qemu"]
    run(lab, "uninstall")
    assert os.listdir(hooks) == []
    assert "no virtport hooks" in run(lab, "uninstall")


def test_foreign_hook_is_never_overwritten(lab, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    foreign = "#!/bin/sh\n# the admin's own hook\nexit 0\n"
    (hooks / "qemu").write_text(foreign)
    os.chmod(hooks / "qemu", 0o755)
    out = run(lab, "install", "--no-reconcile")
    assert (hooks / "qemu").read_text() == foreign
    assert os.readlink(hooks / "qemu.d" / "virtport") == os.path.realpath(BIN)
    assert os.readlink(hooks / "network") == os.path.realpath(BIN)
    assert "not virtport's" in out and "qemu.d/virtport" in out
    run(lab, "install", "--no-reconcile")
    assert os.listdir(hooks / "qemu.d") == ["virtport"]
    run(lab, "uninstall")
    assert (hooks / "qemu").read_text() == foreign
    assert not (hooks / "qemu.d").exists() and not (hooks / "network").exists()


def test_hook_installed_in_qemu_d_dispatches_by_directory(lab, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "qemu").write_text("#!/bin/sh\nexit 0\n")
    run(lab, "install", "--no-reconcile")
    xml = ("<domain><name>d</name><uuid>66666666-6666-4666-8666-666666666666</uuid><metadata>"
           "<x:virtport xmlns:x='urn:virtport:domain:1'><x:portForward proto='tcp' guest='192.168.122.10'>"
           "<x:range start='2222' to='22'/></x:portForward></x:virtport></metadata>"
           "<devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface>"
           "</devices></domain>")
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "g")
    r = sh(str(hooks / "qemu.d" / "virtport"), "d", "start", "begin", "-", input=xml.encode(), ns=lab.host,
           env=lab.env(), check=False)
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "g 22 from 203.0.113.2"


# A private mount namespace (inside the lab's network namespace) with empty tmpfs over /etc and /run:
# the host files install/uninstall may touch, made up here, so the test never writes the machine's
# own. In it: libvirtd's AppArmor profile and a local override holding the admin's line and a source
# install's virtport rule, virtport's agent unit enabled, and a stand-in "libvirtd" (sleep under that
# name, its pid file where libvirt's is: it dies of the SIGHUP a rescan sends). Prints the state after
# `virtport ARGS…`: the override, whether the unit is still enabled, whether "libvirtd" lives.
SANDBOX = r"""
set -e
tmp=$1; shift
mount -t tmpfs vp-etc /etc
mount -t tmpfs vp-run /run
cd /etc
mkdir -p apparmor.d/local systemd/system/multi-user.target.wants libvirt/hooks
printf 'profile libvirtd /usr/sbin/libvirtd {\n  /usr/sbin/* PUx,\n  #include <local/usr.sbin.libvirtd>\n}\n' > apparmor.d/usr.sbin.libvirtd
printf '# admin\n/opt/mine/** r,\n# virtport: libvirt'"'"'s hooks are symlinks to /usr/local/bin/virtport (x)\n/usr/local/bin/virtport PUx,\n' > apparmor.d/local/usr.sbin.libvirtd
printf '[Service]\nExecStart=/usr/local/bin/virtport agent\n[Install]\nWantedBy=multi-user.target\n' > systemd/system/virtport-agent.service
ln -s ../virtport-agent.service systemd/system/multi-user.target.wants/virtport-agent.service
cp /bin/sleep "$tmp/libvirtd"
env --default-signal=HUP "$tmp/libvirtd" 60 &  # SIGHUP as libvirtd has it, even under nohup
echo $! > /run/libvirtd.pid
sleep 0.1
"$@" >"$tmp/out" 2>&1 || { cat "$tmp/out"; exit 1; }
cat "$tmp/out"
echo "--- override"; cat apparmor.d/local/usr.sbin.libvirtd
echo "--- enabled: $(test -L systemd/system/multi-user.target.wants/virtport-agent.service && echo yes || echo no)"
sleep 0.2
echo "--- libvirtd: $(kill -0 $! 2>/dev/null && echo alive || echo gone)"
kill $! 2>/dev/null || true
"""
ADMIN_ONLY = "# admin\n/opt/mine/** r,\n"
SOURCE_RULE = "/usr/local/bin/virtport PUx,\n"


def sandboxed(lab, tmp_path, *args):
    env = lab.env()
    del env["VIRTPORT_SYSROOT"]                      # the sandbox's /etc is the host tree here
    r = sh("unshare", "-m", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(tmp_path), BIN, *args,
           ns=lab.host, env=env, check=False)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    text = r.stdout.decode()
    out, override = text.split("--- override\n")
    override, rest = override.split("--- enabled: ")
    return out, override, rest.startswith("yes"), "libvirtd: alive" in rest


def test_hooks_dir_elsewhere_touches_nothing_outside_it(lab, tmp_path):
    """Issue 22: `install`/`uninstall --hooks-dir DIR` (DIR not libvirt's /etc/libvirt/hooks) work on
    DIR and what the config names only: no AppArmor override edited, no unit disabled, no libvirt
    daemon signalled, and one line says so. Baseline: the same commands on libvirt's own directory
    do all three (so the sandbox shows a change when there is one)."""
    elsewhere = str(tmp_path / "elsewhere")
    out, override, enabled, alive = sandboxed(lab, tmp_path, "install", "--no-reconcile", "--hooks-dir", elsewhere)
    assert os.readlink(f"{elsewhere}/qemu") == os.path.realpath(BIN), out
    assert override == ADMIN_ONLY + "# virtport: libvirt's hooks are symlinks to /usr/local/bin/virtport (x)\n" + SOURCE_RULE
    assert enabled and alive, out
    assert f"{elsewhere} is not libvirt's hooks directory (/etc/libvirt/hooks)" in out, out
    out, override2, enabled, alive = sandboxed(lab, tmp_path, "uninstall", "--hooks-dir", elsewhere)
    assert override2 == override and enabled and alive, out
    assert not os.path.exists(f"{elsewhere}/qemu") and "is not libvirt's hooks directory" in out, out

    # Baseline: libvirt's own directory (inside the sandbox's /etc): override rewritten, "libvirtd"
    # SIGHUPed; then uninstall leaves the admin's line only and disables the unit.
    out, override, enabled, alive = sandboxed(lab, tmp_path, "install", "--no-reconcile", "--hooks-dir", "/etc/libvirt/hooks")
    assert override.startswith(ADMIN_ONLY) and f"\n{os.path.realpath(BIN)} PUx,\n" in override, out
    assert SOURCE_RULE not in override and not alive and "told to rescan" in out, out
    out, override, enabled, alive = sandboxed(lab, tmp_path, "uninstall", "--hooks-dir", "/etc/libvirt/hooks")
    assert override == ADMIN_ONLY and not enabled and not alive, out
