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
