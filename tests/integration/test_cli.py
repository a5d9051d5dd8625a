"""The CLI as a new user meets it, with the real binary: help for every command, man pages and
completions installed and working, refusals that say what to change (the policy key and its value,
"run as root"), plan without <uuid>, deprecated config spellings. No namespaces needed; the
permission tests need root to drop to `nobody`."""
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import tempfile

import pytest

from conftest import BIN, ROOT, domain_xml

UUID = "77777777-7777-4777-8777-777777777777"


def vp(*args, input=None, env=None, user=None):
    cmd = [BIN, *args]
    if user:
        cmd = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", *cmd]
    e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    e.update(env or {})
    return subprocess.run(cmd, input=input, capture_output=True, env=e, timeout=30)


def commands():
    """The command names as the binary lists them (`virtport help`)."""
    out = vp("help").stdout.decode()
    names = [m.group(1) for m in re.finditer(r"^  ([a-z]+)", out, re.M)]
    assert len(names) >= 14 and {"plan", "list", "history", "add", "remove", "doctor", "completion"} <= set(names)
    return names


@pytest.fixture
def binary():
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no virtport binary at {BIN} (swift build -c release, or set VIRTPORT_BIN)")


def test_every_command_answers_help(binary):
    for name in commands():
        for flag in ("--help", "-h"):
            r = vp(name, flag)
            assert r.returncode == 0 and r.stderr == b"", (name, flag, r.stderr)
            assert r.stdout.decode().startswith(f"usage: virtport {name}"), (name, r.stdout[:80])
        assert vp("help", name).stdout == vp(name, "--help").stdout
    # The reported failure: `list --help` was "unexpected argument", `help list` the global text.
    assert "--domain D" in vp("help", "list").stdout.decode()
    r = vp("help", "nope")
    assert r.returncode == 2 and r.stdout == b"" and r.stderr.decode().count("\n") == 1


def test_man_pages_and_completions_install_and_work(binary, tmp_path):
    dest = tmp_path / "root"
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install-docs.sh"), BIN, str(dest)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    share = dest / "usr" / "local" / "share"
    man8, man5 = share / "man" / "man8" / "virtport.8", share / "man" / "man5" / "virtport.conf.5"
    for page, title in ((man8, "VIRTPORT(8)"), (man5, "VIRTPORT.CONF(5)")):
        assert oct(page.stat().st_mode & 0o777) == "0o644"
        w = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True)
        assert w.returncode == 0 and w.stderr == b"", w.stderr
        m = subprocess.run(["man", "-l", str(page)], capture_output=True, env={"MANWIDTH": "100", "LC_ALL": "C.UTF-8",
                                                                              "PATH": "/usr/bin:/bin"})
        assert m.returncode == 0 and title in m.stdout.decode() and m.stderr == b"", m.stderr
    text = subprocess.run(["man", "-l", str(man8)], capture_output=True, env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin"}
                          ).stdout.decode()
    for name in commands():
        assert re.search(rf"virtport\s+{name}", text), name
    # `man virtport` finds the installed page through MANPATH (what /usr/local/share/man is in manpath).
    found = subprocess.run(["man", "-w", "virtport"], capture_output=True,
                           env={"MANPATH": str(share / "man"), "PATH": "/usr/bin:/bin"})
    assert found.stdout.decode().strip() == str(man8), found

    bash = share / "bash-completion" / "completions" / "virtport"
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                        f"source '{bash}' && complete -p virtport && COMP_WORDS=(virtport hist); COMP_CWORD=1; "
                        "_virtport; echo \"${COMPREPLY[*]}\""], capture_output=True)
    assert r.returncode == 0 and r.stdout.decode().splitlines() == ["complete -F _virtport virtport", "history"], r
    assert (share / "zsh" / "site-functions" / "_virtport").read_text().startswith("#compdef virtport")
    fish = share / "fish" / "vendor_completions.d" / "virtport.fish"
    assert "complete -c virtport" in fish.read_text()
    for shell, path in (("zsh", share / "zsh" / "site-functions" / "_virtport"), ("fish", fish)):
        if subprocess.run(["sh", "-c", f"command -v {shell}"], capture_output=True).returncode == 0:
            assert subprocess.run([shell, "-n", str(path)], capture_output=True).returncode == 0, shell


def forward_xml(port, uuid=UUID):
    return domain_xml("cli1", uuid, f"<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='{port}'/>"
                                    "</vp:portForward>").encode()


def test_policy_refusal_names_the_key_and_its_value(binary, tmp_path):
    conf = tmp_path / "virtport.conf"
    conf.write_text('[policy]\nhost_ports = [\n  "2000-2999",  # lab\n  "8080",\n]\nmax_forwards_per_domain = 8\n')
    env = {"VIRTPORT_CONFIG": str(conf)}
    r = vp("plan", input=forward_xml(22), env=env)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"" and err.count("\n") == 1, err
    assert '[policy] host_ports = ["2000-2999", "8080"]' in err and "host port 22" in err, err
    assert vp("plan", input=forward_xml(8080), env=env).returncode == 0


def test_plan_without_uuid_and_hook_with_it(binary, tmp_path):
    env = {"VIRTPORT_CONFIG": str(tmp_path / "none.conf")}
    (tmp_path / "none.conf").write_text("")
    xml = re.sub(rb"<uuid>[^<]*</uuid>", b"", forward_xml(2222))
    r = vp("plan", input=xml, env=env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["domain"] == {"name": "cli1", "uuid": None}
    assert [f["host_port_start"] for f in plan["forwards"]] == [2222]
    h = vp("hook", "qemu", "cli1", "prepare", "begin", "-", input=xml, env={**env, "VIRTPORT_NO_AGENT": "1"})
    assert h.returncode == 2 and h.stdout == b"" and b"has no <uuid>" in h.stderr, h.stderr


def test_deprecated_spelling_warns_and_still_works(binary, tmp_path):
    conf = tmp_path / "virtport.conf"
    conf.write_text('agent_socket = "/run/virtport/agent.sock"\n')
    r = vp("plan", input=forward_xml(2222), env={"VIRTPORT_CONFIG": str(conf)})
    assert r.returncode == 0
    assert r.stderr.decode() == (f"virtport: {conf}:1: agent_socket is a deprecated spelling: "
                                 "write [paths] agent_socket\n")
    # A hook stays silent about it: libvirt shows a refusing hook's whole stderr, and that is one line.
    conf.write_text(f'agent_socket = "{tmp_path}/agent.sock"\ndatabase = "{tmp_path}/vp.db"\n'
                    '[policy]\nhost_ports = ["2000-2999"]\n')
    env = {"VIRTPORT_CONFIG": str(conf), "VIRTPORT_NO_AGENT": "1"}
    h = vp("hook", "qemu", "cli1", "prepare", "begin", "-", input=forward_xml(22), env=env)
    assert h.returncode == 2 and h.stdout == b"", h.stderr
    assert h.stderr.decode().count("\n") == 1 and '[policy] host_ports = ["2000-2999"]' in h.stderr.decode(), h.stderr


@pytest.fixture
def open_dir():
    """A directory under /tmp that `nobody` can traverse (pytest's tmp_path is inside a 0700 one)."""
    d = tempfile.mkdtemp(prefix="vp-cli-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_permission_errors_say_run_as_root(binary, open_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    state = open_dir / "state"
    state.mkdir(mode=0o700)
    db = state / "virtport.db"
    conf = open_dir / "virtport.conf"
    conf.write_text(f'database = "{db}"\n')
    os.chmod(conf, 0o644)
    env = {"VIRTPORT_CONFIG": str(conf)}
    sqlite3.connect(db).close()                     # root's journal, as install leaves it: 0600 in 0700
    os.chmod(db, 0o600)
    for args in (("list",), ("history", "--since", "yesterday")):
        r = vp(*args, env=env, user=65534)
        err = r.stderr.decode()
        # Not an empty listing: the journal is there, nobody cannot read it.
        assert r.returncode == 1 and r.stdout == b"" and err.count("\n") == 1, (args, r)
        assert "Permission denied (run as root)" in err and str(db) in err, err
    # Netlink: nf_tables refuses (or ignores) a process without CAP_NET_ADMIN; the same hint.
    shared = open_dir / "open"
    shared.mkdir()
    os.chmod(shared, 0o777)
    conf.write_text(f'database = "{shared}/virtport.db"\nlibvirt_uri = ""\n')
    r = vp("reconcile", "--dry-run", env=env, user=65534)
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"" and err.count("\n") == 1 and err.endswith("(run as root)\n"), err
    journal = shared / "virtport.db"                # a journal nobody may write: the kernel still refuses
    sqlite3.connect(journal).close()
    os.chown(journal, 65534, 65534)
    r = vp("uninstall", "--hooks-dir", str(shared / "hooks"), env=env, user=65534)
    err = r.stderr.decode()
    assert r.returncode == 1 and "cannot delete table inet virtport" in err and err.endswith("(run as root)\n"), err
