"""Issue 14: the Debian package (packaging/build-deb) installed with apt next to the real libvirtd of
the lab: a VM started through the packaged hooks gets its forward; an upgrade from the previous
release with the VM running keeps the forward and the journal; remove takes hooks and forwards
away and leaves nothing enabled; purge leaves nothing at all.

apt/dpkg run inside the lab's namespace, so the maintainer scripts' `virtport install/uninstall`
(reconcile, forwards) act on the namespace's kernel, as on a host where libvirtd runs. /etc/virtport
there is the lab's overlay; the journal is the package's default, /var/lib/virtport.

The previous release is commit 319e96c (PREV_COMMIT), the last one before the package existed. Its
release binary is built once from a detached `git worktree` of that commit and cached in
/var/tmp/virtport-prev-319e96c/ (a rerun reuses it; ~1-1.5 min on CI's machine the first time); the
current packaging/build-deb packages it as the previous version. $VIRTPORT_PREV_BIN names an
already built binary of that release instead. Without the commit (a shallow clone, a tarball) the
test is skipped and says so.

Between the two versions the agent's protocol changed (request magic VPA1 → VPA2 and a claim
byte) and the table's DNAT rules did (`fib daddr type local` on the address-keyed rules too, and a
shorter loopback test in the output chain): the test runs each binary's hook against the other's
agent, and checks that the upgrade rebuilds the table for that reason only.
"""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import harness
from harness import out
from test_virtport_libvirt import BIN, CLIENT, G1, HOST, MAC1, answer, meta

UNITS = ("virtport-agent.service", "virtport-reconcile.service")
APT_ENV = dict(harness.BASE_ENV, DEBIAN_FRONTEND="noninteractive")
PREV_COMMIT = "319e96c"
PREV_CACHE = f"/var/tmp/virtport-prev-{PREV_COMMIT}"
SWIFT_PATH = "/opt/swift/usr/bin"


def prev_release_binary():
    """The release binary of PREV_COMMIT: $VIRTPORT_PREV_BIN, the cached build, or a new build
    (a detached worktree of the commit, `swift build -c release` there, the binary copied into the
    cache, the worktree removed). Skips when the commit is not in the clone; fails when it does not
    build."""
    given = os.environ.get("VIRTPORT_PREV_BIN")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"VIRTPORT_PREV_BIN={given} is not an executable")
        return given
    cached = os.path.join(PREV_CACHE, "virtport")
    if os.access(cached, os.X_OK):
        return cached
    git = shutil.which("git")
    if not git or subprocess.run([git, "-C", harness.ROOT, "rev-parse", "--git-dir"], capture_output=True).returncode:
        pytest.skip(f"the previous release {PREV_COMMIT} cannot be built: {harness.ROOT} is not a git checkout "
                    "(set VIRTPORT_PREV_BIN to its release binary)")
    r = subprocess.run([git, "-C", harness.ROOT, "rev-parse", "--verify", "--quiet", f"{PREV_COMMIT}^{{commit}}"],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"the previous release {PREV_COMMIT} is not in this clone (shallow? CI clones the full "
                    "history; or set VIRTPORT_PREV_BIN to its release binary)")
    os.makedirs(PREV_CACHE, mode=0o755, exist_ok=True)
    with open(os.path.join(PREV_CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)             # two runs at once: one builds, the other waits
        if os.access(cached, os.X_OK):
            return cached
        work = tempfile.mkdtemp(prefix=f"virtport-prev-{PREV_COMMIT}-", dir="/var/tmp")
        tree = os.path.join(work, "tree")
        log = os.path.join(PREV_CACHE, "build.log")
        try:
            subprocess.run([git, "-C", harness.ROOT, "worktree", "add", "--detach", tree, PREV_COMMIT],
                           check=True, capture_output=True, timeout=120)
            env = dict(os.environ, PATH=f"{SWIFT_PATH}:{os.environ.get('PATH', '/usr/bin:/bin')}")
            t0 = time.monotonic()
            with open(log, "wb") as f:
                b = subprocess.run(["swift", "build", "-c", "release"], cwd=tree, env=env, stdout=f,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800)
            harness.TIMINGS.append((f"build of {PREV_COMMIT} (release)", time.monotonic() - t0))
            if b.returncode:
                with open(log, errors="replace") as f:
                    tail = "".join(f.readlines()[-30:])
                pytest.fail(f"swift build -c release of {PREV_COMMIT} failed (exit {b.returncode}; {log}):\n{tail}")
            shutil.copy2(os.path.join(tree, ".build", "release", "virtport"), cached + ".new")
            os.rename(cached + ".new", cached)
        finally:
            subprocess.run([git, "-C", harness.ROOT, "worktree", "remove", "--force", tree], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    return cached


# The previous release's conffile: the keys that release reads (it predates [guard], [agent], [log]
# and refuses a file naming them). The current package ships packaging/virtport.conf.
PREV_CONF = """# virtport configuration (TOML subset). Every key is optional; the values shown are the defaults.

# database = "/var/lib/virtport/virtport.db"
# table = "virtport"
# agent_socket = "/run/virtport/agent.sock"

[policy]
# host_ports = ["1024-65535"]
# listen_addresses = ["any"]
# on_internal_error = "warn"
"""


def build_deb(tmp, binary, version, conffile=None):
    extra = ["--conffile", conffile] if conffile else []
    r = subprocess.run([os.path.join(harness.ROOT, "packaging", "build-deb"), "--fast", "--binary", binary,
                        "--version", version, "--out", tmp] + extra, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    deb = r.stdout.decode().strip().splitlines()[-1]
    assert deb.endswith(f"virtport_{version}_amd64.deb") and os.path.exists(deb), r.stdout
    return deb


def binary_version(binary):
    return out(subprocess.run([binary, "version"], capture_output=True)).split()[1]


@pytest.fixture
def journal_aside():
    """/var/lib/virtport as it was before the test, moved aside and restored afterwards (the package
    creates, and purge deletes, the journal there; /etc/virtport is the lab's own, see pkg_lab)."""
    moved = []
    for path in ("/var/lib/virtport",):
        if os.path.lexists(path):
            aside = f"{path}.before-package-test-{os.getpid()}"
            os.rename(path, aside)
            moved.append((path, aside))
    yield
    for path, aside in moved:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
        os.rename(aside, path)


# -- Over a source install (issue 22) -------------------------------------------------------------
# What scripts/install.sh leaves on a machine besides the hooks and the journal (README "Debian
# package", "Over a source install"); the package takes all of it over, scripts/uninstall.sh removes it.
SRC_BIN = "/usr/local/bin/virtport"
SRC_DOCS = ("/usr/local/share/man/man8/virtport.8", "/usr/local/share/man/man5/virtport.conf.5",
            "/usr/local/share/bash-completion/completions/virtport", "/usr/local/share/zsh/site-functions/_virtport",
            "/usr/local/share/fish/vendor_completions.d/virtport.fish")
UNIT_DIR = "/etc/systemd/system"
SRC_UNITS = tuple(f"{UNIT_DIR}/{u}" for u in UNITS)
SRC_WANTS = tuple(f"{UNIT_DIR}/multi-user.target.wants/{u}" for u in UNITS)
SRC_FILES = (SRC_BIN,) + SRC_DOCS + SRC_UNITS + SRC_WANTS
AA_PROFILE = "/etc/apparmor.d/usr.sbin.libvirtd"
AA_LOCAL = "/etc/apparmor.d/local/usr.sbin.libvirtd"


def package_preconditions():
    """Skips unless the release binary and dpkg/apt are here and the package is not installed for real."""
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no release binary at {BIN}")
    if not shutil.which("dpkg-deb") or not shutil.which("apt-get"):
        pytest.skip("dpkg-deb/apt-get not installed")
    # Never on a machine where the package is installed for real: purge would delete its journal.
    # (A journal a source install or a manual run left in /var/lib/virtport is moved aside for the
    # test and put back: `journal_aside`.)
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "virtport"], capture_output=True).stdout
    if b"installed" in installed or os.path.exists("/usr/sbin/virtport"):
        pytest.skip("virtport is installed on this machine (package or /usr/sbin/virtport)")


@pytest.fixture
def debs(tmp_path_factory, journal_aside):
    """(previous .deb, its version, current .deb, its version, the previous release's binary)."""
    package_preconditions()
    prev_bin = prev_release_binary()
    tmp = str(tmp_path_factory.mktemp("debs"))
    version = f"{binary_version(BIN)}-1"
    # Both print 0.1.0: the previous one is the git snapshot before it, as Debian orders "~".
    prev_version = f"{binary_version(prev_bin)}~git{PREV_COMMIT}-1"
    assert subprocess.run(["dpkg", "--compare-versions", prev_version, "lt", version]).returncode == 0
    prev_conf = os.path.join(tmp, "virtport.conf.prev")
    with open(prev_conf, "w") as f:
        f.write(PREV_CONF)
    return (build_deb(tmp, prev_bin, prev_version, prev_conf), prev_version, build_deb(tmp, BIN, version), version,
            prev_bin)


@pytest.fixture
def cur_deb(tmp_path_factory, journal_aside):
    """(None, None, current .deb, its version, None): the current release only (no previous build)."""
    package_preconditions()
    version = f"{binary_version(BIN)}-1"
    return None, None, build_deb(str(tmp_path_factory.mktemp("debs")), BIN, version), version, None


@pytest.fixture
def pkg_lab(lab, journal_aside):
    """The lab without a virtport.conf of an earlier test, and the machine's own source install (if
    the README's first command ran here: the package would take it over) moved aside with the
    AppArmor override's text saved. Afterwards, whatever the test did: a source install it left
    taken out (scripts/uninstall.sh --purge in the namespace), the package purged (in the
    namespace), the machine's files put back — the test neither depends on nor changes them."""
    package_preconditions()                         # before anything here could purge a real package
    with_conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    if os.path.exists(with_conf):
        os.unlink(with_conf)
    moved = []
    for path in SRC_FILES:
        if os.path.lexists(path):
            aside = f"{path}.before-package-test-{os.getpid()}"
            os.rename(path, aside)
            moved.append((path, aside))
    saved = open(AA_LOCAL).read() if os.path.exists(AA_LOCAL) else None
    yield lab
    if lab.running:
        for n in list(lab.vms):
            if lab.vm_state(n) not in (None, "shut off"):
                lab.destroy_vm(n, check=False)
    if os.path.exists(SRC_BIN) and not os.path.exists("/usr/sbin/virtport"):
        lab.exec("bash", os.path.join(harness.ROOT, "scripts", "uninstall.sh"), "--purge", env=APT_ENV, check=False)
    dpkg(lab, "--purge", "virtport", check=False)
    lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
    for path in SRC_FILES:
        if os.path.lexists(path):
            os.unlink(path)
    for path, aside in moved:
        os.rename(aside, path)
    if saved is not None:
        with open(AA_LOCAL, "w") as f:
            f.write(saved)
    elif os.path.exists(AA_LOCAL):
        os.unlink(AA_LOCAL)
    assert not os.path.exists("/var/lib/virtport")


def dpkg(lab, *args, check=True):
    return lab.exec("dpkg", *args, env=APT_ENV, check=check, timeout=300)


def apt_install(lab, deb, *options):
    mark = lab.log_mark()
    r = lab.exec("apt-get", "install", "-y", "-q", "--no-install-recommends", *options, deb, env=APT_ENV, timeout=300)
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
    r = lab.exec("/usr/sbin/virtport", "history", "--json")
    return [(e["action"], e["domain"], e["host_port_start"], e["reason"]) for e in json.loads(r.stdout)]


def listing(lab):
    """`virtport list --json` of the installed binary: what both versions print."""
    keys = ("domain", "uuid", "proto", "host_port_start", "guest_address", "guest_port_start", "state", "since")
    return [{k: row[k] for k in keys} for row in json.loads(lab.exec("/usr/sbin/virtport", "list", "--json").stdout)]


def table_handles(lab):
    """The handles of table inet virtport, its chains, maps and rules. A rebuilt table gets a new
    table handle (the namespace's counter); the others count from 1 again in each new table, so
    they tell only a change inside it."""
    r = lab.exec("nft", "-a", "list", "table", "inet", "virtport", check=False)
    return sorted(re.findall(r"(?:table|chain|map|set) (\S+(?: \S+)?) \{ # handle (\d+)", out(r))
                  + re.findall(r"(dnat .*|masquerade) # handle (\d+)", out(r)))


def map_elements(lab):
    """{map: its elements as nft prints them} of table inet virtport."""
    text = out(lab.exec("nft", "list", "table", "inet", "virtport"))
    return {m: " ".join(e.split()) for m, e in re.findall(r"map (\S+) \{[^}]*?elements = \{([^}]*)\}", text)}


def dnat_rules(lab):
    """The table's DNAT rules (prerouting and output chains), one line each."""
    text = out(lab.exec("nft", "list", "table", "inet", "virtport"))
    return [l.strip() for l in text.splitlines() if re.search(r"(^|\s)dnat ip6? to ", l)]


# The stand-in guest's service: the LISTENER's greeting on connect, then an echo of every line, so a
# connection can be held open across the upgrade.
ECHO = textwrap.dedent("""
    import socket, sys, threading
    port, tag = int(sys.argv[1]), sys.argv[2]
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); print("ready", flush=True)
    def serve(c, peer):
        with c:
            c.sendall(f"{tag} {port} from {peer[0]}\\n".encode())
            for line in c.makefile("rb"):
                c.sendall(tag.encode() + b" echo " + line)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
""")

# One TCP connection held open: prints the greeting, then sends each stdin line and prints the answer.
HELD = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    f = s.makefile("rb")
    print(f.readline().decode().strip(), flush=True)
    for line in sys.stdin:
        s.sendall(line.encode()); print(f.readline().decode().strip(), flush=True)
""")


def echo_service(guest, port, tag):
    p = subprocess.Popen(["ip", "netns", "exec", guest.ns, sys.executable, "-c", ECHO, str(port), tag],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guest.procs.append(p)                              # the lab's reset kills it
    assert p.stdout.readline().decode().strip() == "ready", p.stderr.read().decode() if p.poll() is not None else ""
    return p


def held_connection(client, addr, port):
    p = subprocess.Popen(["ip", "netns", "exec", client.ns, sys.executable, "-c", HELD, addr, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client.procs.append(p)
    return p


def say(conn, line):
    conn.stdin.write(line.encode() + b"\n")
    conn.stdin.flush()
    return conn.stdout.readline().decode().strip()


class Agent:
    """`BINARY agent --verbose` started by hand inside the lab's namespace (no systemd here), on a
    socket of the test's: the lab's /etc/virtport/virtport.conf says `agent_socket` for the hooks
    libvirtd runs too. Stopped, and the configuration put back, on leaving."""

    def __init__(self, lab, binary, name, libvirt=True):
        """libvirt=False: the agent does not connect to libvirt (`libvirt_uri = ""`, which hooks do
        not read), so it does not converge the VMs whose events it would see."""
        self.lab, self.binary, self.libvirt = lab, binary, libvirt
        self.sock = os.path.join(lab.workdir, f"{name}.sock")
        self.log = os.path.join(lab.workdir, f"{name}.log")
        self.conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")

    def __enter__(self):
        with open(self.conf) as f:
            self.saved = f.read()
        # Only keys both releases read (the current conffile names sections the previous one refuses).
        with open(self.conf, "w") as f:
            f.write(("" if self.libvirt else 'libvirt_uri = ""\n') + f'\n[paths]\nagent_socket = "{self.sock}"\n')
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.ns, self.binary, "agent", "--verbose"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
        harness.wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 10, 0.02,
                         f"{self.binary} agent's socket")
        assert self.proc.poll() is None, self.lines()
        return self

    def lines(self):
        with open(self.log, errors="replace") as f:
            return f.read().splitlines()

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        with open(self.conf, "w") as f:
            f.write(self.saved)
        return False


# The qemu operations whose work a hook of either version hands to an agent (`started` and the
# others have none).
HANDED_OVER = ("prepare", "start", "reconnect", "stopped", "release")


def handed_over(lab, mark, vm):
    """libvirtd's calls of the qemu hook for `vm` since `mark` that offer their work to an agent."""
    return [c for c in lab.hook_calls(mark) if c[0] == "qemu" and c[1] == vm and c[2] in HANDED_OVER]


def test_package_install_vm_upgrade_remove_purge(pkg_lab, debs):
    lab = pkg_lab
    prev, prev_version, cur, version, prev_bin = debs
    vm = "vpe-pkg"

    # 1. Install the previous release with apt: hooks, rescan, units enabled, no forwards yet.
    text, mark = apt_install(lab, prev)
    assert out(dpkg(lab, "-s", "virtport")).count(f"Version: {prev_version}") == 1
    assert hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}, text
    harness.wait_for(lambda: any("Found hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after the postinst's SIGHUP")
    lab.wait_reload_idle()
    assert {u: unit_state(u) for u in UNITS} == {u: "enabled" for u in UNITS}
    conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    assert open(conf).read() == PREV_CONF
    assert os.stat("/var/lib/virtport").st_mode & 0o777 == 0o700
    # The postinst's reconcile (the previous binary) created the journal: the same file to the end.
    db_inode = os.stat("/var/lib/virtport/virtport.db").st_ino

    # 2. A VM started through the previous release's hooks gets its forward (real traffic), while
    # the current release's agent runs: the old hook's VPA1 request is dropped by the new agent,
    # and the old hook does the work itself. (The agent is kept off libvirt here: its event
    # handling would converge the VM with the current code and upgrade the table early.)
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    echo_service(guest, 22, "G1")
    client = lab.client()
    with Agent(lab, BIN, "agent-current", libvirt=False) as agent:
        mark = lab.log_mark()
        lab.start_vm(vm)
        calls = handed_over(lab, mark, vm)
        dropped = [l for l in agent.lines() if "dropped a malformed" in l]
        assert len(dropped) == len(calls) and calls, (calls, agent.lines())
        assert not [l for l in agent.lines() if ": exit " in l], agent.lines()
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert history(lab) == [("add", vm, 2222, "hook qemu start")]
    listed = listing(lab)
    assert [(r["domain"], r["host_port_start"], r["state"]) for r in listed] == [(vm, 2222, "applied")]
    handles, elements, rules = table_handles(lab), map_elements(lab), dnat_rules(lab)
    assert handles and "2222" in elements.get("fwd4", ""), elements
    # The previous release's table: its address-keyed DNAT rules do not test `fib daddr type local`.
    assert len(rules) == 12 and [r for r in rules if "@fwd4_addr" in r and "fib daddr type local" not in r], rules
    held = held_connection(client, HOST, 2222)
    assert held.stdout.readline().decode().strip() == answer("G1", 22, CLIENT)
    assert say(held, "before") == "G1 echo before"

    # 3. Upgrade with the VM running: the forward never goes down (a connection held open through it
    # and new ones), the journal stays and the new binary reads it as the old one did.
    text, _ = apt_install(lab, cur)
    assert out(dpkg(lab, "-s", "virtport")).count(f"Version: {version}") == 1
    # The current binary prints its man pages and completions: the package carries them.
    files = set(out(dpkg(lab, "-L", "virtport")).splitlines())
    for f in ("/usr/share/man/man8/virtport.8.gz", "/usr/share/man/man5/virtport.conf.5.gz",
              "/usr/share/bash-completion/completions/virtport", "/usr/share/zsh/vendor-completions/_virtport",
              "/usr/share/fish/vendor_completions.d/virtport.fish"):
        assert f in files, f"{f} not in the package"
    assert say(held, "after") == "G1 echo after", "the connection held across the upgrade broke"
    # The unchanged conffile became the new version's, without a question (stdin is /dev/null).
    assert open(conf).read() == open(os.path.join(harness.ROOT, "packaging", "virtport.conf")).read()
    assert "Configuration file" not in text, text
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert history(lab) == [("add", vm, 2222, "hook qemu start")], "the upgrade took the forward down"
    assert listing(lab) == listed, "the new binary reads the old journal differently"
    assert os.stat("/var/lib/virtport/virtport.db").st_ino == db_inode
    assert hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}
    assert {u: unit_state(u) for u in UNITS} == {u: "enabled" for u in UNITS}
    # The postinst's reconcile rebuilt the table, in one batch, because its rules changed (every
    # DNAT rule now tests `fib daddr type local`): same elements, new handles, new rules.
    assert map_elements(lab) == elements
    assert len(dnat_rules(lab)) == 12 and all("fib daddr type local" in r for r in dnat_rules(lab)), dnat_rules(lab)
    old_handles, handles = handles, table_handles(lab)
    assert [h for h in old_handles if h[0] == "inet virtport"] != [h for h in handles if h[0] == "inet virtport"], handles
    # An upgrade whose rules did not change does not rebuild it: the same .deb again.
    apt_install(lab, cur, "--reinstall")
    assert table_handles(lab) == handles, "a reinstall rebuilt the table though its rules had not changed"
    assert say(held, "reinstalled") == "G1 echo reinstalled"
    held.stdin.close()

    # 4. The current release's hooks with the previous release's agent running: the new hook's VPA2
    # request is dropped by the old agent, and the new hook does the work itself — the stop takes
    # the forward down, the start puts it back (history of both).
    with Agent(lab, prev_bin, "agent-previous") as agent:
        mark = lab.log_mark()
        lab.destroy_vm(vm)
        assert client.connect("tcp", HOST, 2222).startswith("ERROR")
        assert "2222" not in map_elements(lab).get("fwd4", "")
        lab.start_vm(vm)
        assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
        calls = handed_over(lab, mark, vm)
        dropped = [l for l in agent.lines() if "dropped a malformed" in l]
        assert len(dropped) == len(calls) and calls, (calls, agent.lines())
    assert history(lab) == [("add", vm, 2222, "hook qemu start"), ("remove", vm, 2222, "hook qemu stopped"),
                            ("add", vm, 2222, "hook qemu start")]

    # 5. Remove with the VM running: hooks out, forward down (history says why), nothing enabled;
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

    # 6. Purge: nothing left.
    dpkg(lab, "--purge", "virtport")
    assert dpkg(lab, "-L", "virtport", check=False).returncode != 0
    assert not os.path.exists("/var/lib/virtport") and not os.path.exists(conf)
    assert listed_units() == []
    assert not [p for p in os.listdir("/var/lib/systemd/deb-systemd-helper-enabled") if "virtport" in p] \
        if os.path.isdir("/var/lib/systemd/deb-systemd-helper-enabled") else True
    assert "virtport" not in out(lab.exec("nft", "list", "tables"))




def source_install(lab):
    """scripts/install.sh --binary BIN inside the lab's namespace (its `virtport install` acts on the
    lab's libvirtd and /etc/virtport); waits for libvirtd's rescan."""
    mark = lab.log_mark()
    r = lab.exec("bash", os.path.join(harness.ROOT, "scripts", "install.sh"), "--binary", BIN, env=APT_ENV,
                 check=False, timeout=120)
    assert r.returncode == 0, out(r) + r.stderr.decode()
    assert hooks() == {"qemu": SRC_BIN, "network": SRC_BIN}, out(r)
    harness.wait_for(lambda: any("Found hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after install.sh")
    lab.wait_reload_idle()
    for f in (SRC_BIN,) + SRC_DOCS + SRC_UNITS:
        assert os.path.exists(f), f"install.sh did not install {f}"
    if os.path.exists(AA_PROFILE):
        assert f"\n{SRC_BIN} PUx,\n" in open(AA_LOCAL).read()
    return out(r)


def conf_copies(conf):
    """dpkg's and preinst's copies beside the config (.dpkg-new, .dpkg-old, .source-install, …)."""
    return [f for f in os.listdir(os.path.dirname(conf)) if f.startswith("virtport.conf.")]


def source_left():
    """The source install's files still here (enablement links count when they lead to its units)."""
    return ([f for f in (SRC_BIN,) + SRC_DOCS + SRC_UNITS if os.path.lexists(f)]
            + [w for w in SRC_WANTS if os.path.lexists(w) and not os.readlink(w).startswith("/lib/systemd/system/")])


def test_package_takes_over_a_source_install(pkg_lab, cur_deb):
    """README's source install, a VM forwarded through its hooks, then `apt-get install` of the
    package with stdin closed: no conffile prompt, the forward stays, and what the source install left
    is replaced — hooks on /usr/sbin/virtport, the package's units (the source ones gone), the source
    binary, man pages and completions gone, its AppArmor rule gone, the default config now the
    package's conffile. A changed config is kept. Then scripts/uninstall.sh removes a source install
    entirely."""
    lab = pkg_lab
    _, _, cur, version, _ = cur_deb
    conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    default = open(os.path.join(harness.ROOT, "packaging", "virtport.conf")).read()

    # 1. The source install and a VM forwarded through its hooks.
    source_install(lab)
    assert open(conf).read() == default, "`virtport install` wrote another default than the package's conffile"
    db_inode = os.stat("/var/lib/virtport/virtport.db").st_ino if os.path.exists("/var/lib/virtport/virtport.db") else None
    vm = "vpe-src"
    lab.define_vm(vm, MAC1, meta(("tcp", 2222, 22, G1)))
    guest = lab.stand_in_guest(G1)
    echo_service(guest, 22, "G1")
    client = lab.client()
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)

    # 2. The package over it, nobody answering (stdin is /dev/null): no prompt, nothing left over.
    text, mark = apt_install(lab, cur)
    assert out(dpkg(lab, "-s", "virtport")).count(f"Version: {version}") == 1
    assert "Configuration file" not in text and "removed the source install's" in text, text
    assert hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}, text
    harness.wait_for(lambda: any("Found hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after the postinst's SIGHUP")
    lab.wait_reload_idle()
    assert source_left() == [], text
    assert {u: unit_state(u) for u in UNITS} == {u: "enabled" for u in UNITS}
    assert all(os.path.exists(f"/lib/systemd/system/{u}") for u in UNITS)
    if os.path.exists(AA_PROFILE):
        assert SRC_BIN not in open(AA_LOCAL).read(), "the source binary's AppArmor rule outlived the takeover"
    assert open(conf).read() == default and conf_copies(conf) == []
    if db_inode is not None:
        assert os.stat("/var/lib/virtport/virtport.db").st_ino == db_inode, "the journal was replaced"
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    assert history(lab) == [("add", vm, 2222, "hook qemu start")], "the takeover took the forward down"
    lab.destroy_vm(vm)

    # 3. A source install whose config the admin changed: kept over the package's default, no prompt.
    dpkg(lab, "--purge", "virtport")
    source_install(lab)
    edited = open(conf).read() + "# the admin's line\n"
    with open(conf, "w") as f:
        f.write(edited)
    text, _ = apt_install(lab, cur)
    assert "Configuration file" not in text and "kept your /etc/virtport/virtport.conf" in text, text
    assert open(conf).read() == edited and conf_copies(conf) == []
    assert source_left() == [] and hooks() == {"qemu": "/usr/sbin/virtport", "network": "/usr/sbin/virtport"}
    lab.wait_reload_idle()

    # 4. The reverse: a source install removed entirely by scripts/uninstall.sh --purge, with a
    # forward up (taken down, its history closed by `virtport uninstall`).
    dpkg(lab, "--purge", "virtport")
    source_install(lab)
    lab.start_vm(vm)
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    mark = lab.log_mark()
    r = lab.exec("bash", os.path.join(harness.ROOT, "scripts", "uninstall.sh"), "--purge", env=APT_ENV, check=False)
    assert r.returncode == 0, out(r) + r.stderr.decode()
    harness.wait_for(lambda: any("No hook script /etc/libvirt/hooks/qemu" in l for l in lab.log_lines(mark)),
                     10, 0.05, "libvirtd to rescan after uninstall.sh")
    lab.wait_reload_idle()
    assert hooks() == {"qemu": None, "network": None} and source_left() == [], out(r)
    assert client.connect("tcp", HOST, 2222).startswith("ERROR")
    assert lab.exec("nft", "list", "table", "inet", "virtport", check=False).returncode != 0
    if os.path.exists(AA_PROFILE):
        assert SRC_BIN not in open(AA_LOCAL).read()
    assert not os.path.exists(conf) and not os.path.exists("/var/lib/virtport"), out(r)
    assert subprocess.run(["systemctl", "--root=/", "list-unit-files", "virtport*"], capture_output=True).stdout.count(b"virtport") == 0
# ---- cockpit-virtport (issue 25) -----------------------------------------------------------------
# packaging/build-deb also builds cockpit-virtport (the Cockpit page, Architecture: all) next to the
# virtport .deb. Installed with apt beside the current virtport package, upgraded from an earlier
# version of itself (the same tree packaged as VERSION~prev), removed and purged: cockpit-bridge
# finds the page while it is installed, and nothing is left after.

@pytest.fixture
def cockpit_debs(tmp_path_factory, journal_aside):
    """(virtport .deb, cockpit-virtport .deb of an earlier version, cockpit-virtport .deb, version)."""
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"no release binary at {BIN}")
    if not shutil.which("cockpit-bridge"):
        pytest.skip("cockpit-bridge not installed (scripts/deps.sh --test)")
    for pkg in ("virtport", "cockpit-virtport"):
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True).stdout
        if b"installed" in st or os.path.exists("/usr/sbin/virtport"):
            pytest.skip(f"{pkg} is installed on this machine")
    tmp = str(tmp_path_factory.mktemp("cockpit-debs"))
    version = f"{binary_version(BIN)}-1"
    prev_dir = os.path.join(tmp, "prev")
    build_deb(prev_dir, BIN, f"{binary_version(BIN)}~prev-1")
    deb = build_deb(tmp, BIN, version)
    prev = os.path.join(prev_dir, f"cockpit-virtport_{binary_version(BIN)}~prev-1_all.deb")
    cur = os.path.join(tmp, f"cockpit-virtport_{version}_all.deb")
    assert os.path.exists(prev) and os.path.exists(cur), os.listdir(tmp)
    return deb, prev, cur, version


def test_cockpit_package_install_upgrade_remove_purge(pkg_lab, cockpit_debs):
    lab = pkg_lab                                  # (the machine's own source install set aside)
    deb, prev, cur, version = cockpit_debs
    page = "/usr/share/cockpit/virtport"
    with_conf = os.path.join(lab.etc_overlay, "virtport", "virtport.conf")
    if os.path.exists(with_conf):
        os.unlink(with_conf)
    try:
        apt_install(lab, deb)
        control = out(lab.exec("dpkg-deb", "-f", cur, "Package", "Architecture", "Depends"))
        assert control.splitlines() == ["Package: cockpit-virtport", "Architecture: all",
                                        "Depends: cockpit-bridge, virtport"], control
        apt_install(lab, prev)
        assert "Version: " + os.path.basename(prev).split("_")[1] in out(dpkg(lab, "-s", "cockpit-virtport"))
        apt_install(lab, cur)
        assert f"Version: {version}" in out(dpkg(lab, "-s", "cockpit-virtport"))
        assert sorted(os.listdir(page)) == ["index.html", "manifest.json", "virtport.css", "virtport.js"]
        for f in os.listdir(page):
            with open(os.path.join(page, f), "rb") as a, open(os.path.join(harness.ROOT, "cockpit", "virtport", f), "rb") as b:
                assert a.read() == b.read(), f
        # Cockpit's bridge finds it (what the shell's menu and /cockpit/@localhost/virtport/ use).
        listed = out(subprocess.run(["cockpit-bridge", "--packages"], capture_output=True))
        assert any(l.split()[:1] == ["virtport"] for l in listed.splitlines()), listed
        # virtport cannot go while the page depends on it; the page can.
        assert dpkg(lab, "--remove", "virtport", check=False).returncode != 0
        dpkg(lab, "--remove", "cockpit-virtport")
        assert not os.path.exists(page)
        dpkg(lab, "--purge", "cockpit-virtport")
        assert dpkg(lab, "-L", "cockpit-virtport", check=False).returncode != 0
        assert not os.path.exists("/usr/share/doc/cockpit-virtport")
        assert os.path.exists("/usr/sbin/virtport")
    finally:
        dpkg(lab, "--purge", "cockpit-virtport", check=False)
        dpkg(lab, "--purge", "virtport", check=False)
        lab.exec("nft", "delete", "table", "inet", "virtport", check=False)
    assert not os.path.exists("/var/lib/virtport")
# ---- end cockpit-virtport --------------------------------------------------------------------------
