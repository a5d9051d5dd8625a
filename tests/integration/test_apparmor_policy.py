"""Issue 22, AppArmor as far as this kernel allows: Debian's real profiles for libvirt's daemons (as
libvirt-daemon-system ships them), compiled with the local override `virtport install` writes, by
`apparmor_parser -Q -S` (no kernel needed). The compiled policy itself is queried (tests/aa_policy.py
walks its file DFA as the kernel does): libvirt may execute the hook's target — /usr/sbin/virtport by
the profile, /usr/local/bin/virtport only through the override — and a syntax error in the local file
is caught here, not at libvirtd's next profile load. The profile tree is a copy (VIRTPORT_SYSROOT);
the binary runs as /usr/local/bin/virtport in a private mount namespace."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN, require_root

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aa_policy  # noqa: E402

PROFILES = ("usr.sbin.libvirtd", "usr.sbin.virtqemud", "usr.sbin.virtnetworkd")
# Each profile's main profile name in the compiled policy.
NAMES = {"usr.sbin.libvirtd": "libvirtd", "usr.sbin.virtqemud": "virtqemud", "usr.sbin.virtnetworkd": "virtnetworkd"}
SRC = "/usr/local/bin/virtport"
PKG = "/usr/sbin/virtport"


def missing(what):
    if os.environ.get("CI"):
        pytest.fail(f"{what} (scripts/deps.sh --test installs it)")
    pytest.skip(what)


def shipped(profile):
    """The profile's path as Debian's libvirt-daemon-system ships it, or None."""
    r = subprocess.run(["dpkg-query", "-L", "libvirt-daemon-system"], capture_output=True, text=True)
    return next((l for l in r.stdout.splitlines() if l.endswith(f"/apparmor.d/{profile}") and os.path.isfile(l)), None)


@pytest.fixture
def tree(tmp_path):
    """A copy of the machine's AppArmor profile directory under tmp/sysroot, a config and hooks dir."""
    require_root()
    if not shutil.which("apparmor_parser"):
        missing("apparmor_parser not installed (package apparmor)")
    libvirtd = shipped("usr.sbin.libvirtd")
    if not libvirtd:
        missing("libvirt-daemon-system with its AppArmor profile not installed")
    base = os.path.dirname(libvirtd)
    root = tmp_path / "sysroot"
    copy = str(root) + base
    shutil.copytree(base, copy, symlinks=True)
    # The local overrides as libvirt-daemon-system's postinst creates them (empty), whatever this
    # machine's hold (a source install's rule, an admin's lines): the test starts from Debian's state.
    for p in PROFILES:
        if os.path.exists(os.path.join(copy, p)):
            os.makedirs(os.path.join(copy, "local"), exist_ok=True)
            open(os.path.join(copy, "local", p), "w").close()
    conf = tmp_path / "virtport.conf"
    conf.write_text(f'database = "{tmp_path}/vp.db"\n'
                    f'[paths]\nagent_socket = "{tmp_path}/agent.sock"\nhooks_dir = "{tmp_path}/hooks"\n')
    return {"tmp": tmp_path, "root": str(root), "base": copy, "conf": str(conf)}


def virtport_as_source_install(tree, *args):
    """`/usr/local/bin/virtport ARGS…` with the release binary bind-mounted there (private mount
    namespace), on the copied tree."""
    bindir = tree["tmp"] / "bin"
    bindir.mkdir(exist_ok=True)
    shutil.copy2(BIN, bindir / "virtport")
    script = 'mount --bind "$1" /usr/local/bin && shift && exec /usr/local/bin/virtport "$@"'
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "VIRTPORT_CONFIG": tree["conf"],
           "VIRTPORT_SYSROOT": tree["root"]}
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(bindir), *args],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def compiled(tree, profile):
    rc, blob, err = aa_policy.compile_profile(os.path.join(tree["base"], profile), tree["base"])
    assert rc == 0, err
    dfas = aa_policy.file_dfas(blob)
    assert NAMES[profile] in dfas, (list(dfas), err)
    return dfas[NAMES[profile]]


@pytest.mark.parametrize("profile", PROFILES)
def test_compiled_profile_lets_libvirt_execute_the_hook_target(tree, profile):
    if not os.path.exists(os.path.join(tree["base"], profile)):
        pytest.skip(f"{profile} is not shipped here (Debian 12's libvirt 9.0 has only usr.sbin.libvirtd)")
    local = os.path.join(tree["base"], "local", profile)

    # The profile as shipped: the package's binary may be executed (PUx: its own profile if one
    # exists, else unconfined, environment scrubbed), a source install's may not.
    dfa = compiled(tree, profile)
    pkg = aa_policy.exec_perms(dfa, PKG)
    assert pkg == {"owner": (True, "PU"), "other": (True, "PU")}, pkg
    assert aa_policy.exec_perms(dfa, SRC)["owner"][0] is False, "the stock profile already allows /usr/local/bin"

    # `virtport install` from /usr/local/bin writes the override: now allowed, exactly as /usr/sbin/*
    # is, and only that path.
    out = virtport_as_source_install(tree, "install", "--no-reconcile")
    assert f"{SRC} PUx," in open(local).read(), out
    dfa = compiled(tree, profile)
    assert aa_policy.exec_perms(dfa, SRC) == pkg
    assert aa_policy.exec_perms(dfa, "/usr/local/bin/virtport-other")["owner"][0] is False
    assert aa_policy.exec_perms(dfa, "/usr/local/sbin/virtport")["owner"][0] is False

    # `uninstall` takes the rule out: the compiled policy denies it again, the file is as shipped.
    virtport_as_source_install(tree, "uninstall", "--keep-forwards")
    assert open(local).read() == ""
    assert aa_policy.exec_perms(compiled(tree, profile), SRC)["owner"][0] is False


def test_syntax_error_in_the_local_override_is_caught(tree):
    profile = os.path.join(tree["base"], "usr.sbin.libvirtd")
    local = os.path.join(tree["base"], "local", "usr.sbin.libvirtd")
    virtport_as_source_install(tree, "install", "--no-reconcile")
    assert aa_policy.compile_profile(profile, tree["base"])[0] == 0
    with open(local, "a") as f:
        f.write("/usr/local/bin/virtport PUx\n")        # the comma forgotten
    rc, _, err = aa_policy.compile_profile(profile, tree["base"])
    # (reported at the end of the profile that includes it: the rule runs on into its closing brace)
    assert rc != 0 and "syntax error" in err, err
