"""A real libvirtd + QEMU inside a network namespace, for virtport's end-to-end tests.

Facts this is built on: tests/libvirt/README.md "Facts" (Debian 12, libvirt 9.0, no systemd).

Topology (every namespace is named vpl-<id>[-suffix] and removed by teardown(), even after a failure):

    client ns   vpl-<id>-c   eth0 198.51.100.2/24, default via 198.51.100.1
        | veth (vplc0 <-> eth0)
    libvirt ns  vpl-<id>     vplc0 198.51.100.1/24; libvirtd, virtlogd, dnsmasq, qemu, virtport's hooks
                             virbr0 192.168.122.1/24 (libvirt's `default` NAT network) + vnetN taps
        | veth (vplgN enslaved to virbr0 <-> eth0)
    guest ns    vpl-<id>-gN  eth0 192.168.122.x/24, default via 192.168.122.1 (stands in for a VM:
                             the lab's VMs are diskless and run no OS)

Only one lab can run on a machine at a time: libvirtd's sockets and PID file under /run are shared
by every namespace. A lock file guards that; a state file lets the next run clean up after a run
that crashed (SIGKILL, OOM): its namespaces, processes, VMs, hook symlinks and /dev/kvm mode.

Hooks and the environment: libvirt does NOT hand its own environment to hook scripts. A hook sees
exactly LC_ALL=C, PATH, HOME, PWD=/ (plus TMPDIR, USER, LOGNAME, LD_PRELOAD, LD_LIBRARY_PATH when
libvirtd has them). So VIRTPORT_CONFIG in `daemon_env` reaches libvirtd and `install_hooks()`, but
not the hooks. To give the hooks a config, use `etc_files`/`write_etc()`: files under
/etc/netns/<ns>/virtport/ which `ip netns exec` bind-mounts over /etc/virtport for every process
started in the namespace (libvirtd and therefore its hooks), leaving the machine's /etc alone.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid as uuidlib
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
URI = "qemu:///system"
NS_PREFIX = "vpl-"
STATE_DIR = "/run/vpl-lab"
LOCK_FILE = STATE_DIR + "/lock"
STATE_FILE = STATE_DIR + "/state.json"
LIBVIRTD_PID = "/run/libvirtd.pid"
VIRTLOGD_PID = "/run/virtlogd.pid"
HOOKS_DIR = "/etc/libvirt/hooks"
MACHINE_HOOKS = ("daemon", "qemu", "lxc", "libxl", "bhyve", "network")   # libvirt's hook names (+ NAME.d)
HOOKS_ASIDE = "/var/tmp/vpl-lab-machine-hooks"                     # where they wait while a lab runs
DEFAULT_NET_XML = "/usr/share/libvirt/networks/default.xml"
LEASES_FILE = "/var/lib/libvirt/dnsmasq/virbr0.status"   # libvirt's lease list for `default`, kept across runs
LIBVIRTD = shutil.which("libvirtd", path="/usr/sbin:/usr/bin:/sbin:/bin")
VIRTLOGD = shutil.which("virtlogd", path="/usr/sbin:/usr/bin:/sbin:/bin")
IP = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/ip"
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
LOG_FILTERS = "1:util.hook 1:util.firewall 1:network"
BRIDGE = "virbr0"
GATEWAY = "192.168.122.1"
CLIENT_HOST_IP = "198.51.100.1"
CLIENT_IP = "198.51.100.2"

# Every lab of this process appends (label, seconds) here; conftest prints it in the summary.
TIMINGS: list[tuple[str, float]] = []


class LabError(RuntimeError):
    pass


class LabWarning(UserWarning):
    pass


# -- small helpers -------------------------------------------------------------------------------

def sh(*args, check=True, input=None, ns=None, env=None, timeout=60):
    """Run a command (inside netns `ns` if given); on failure raise LabError with its stderr."""
    cmd = [str(a) for a in args]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    if isinstance(input, str):
        input = input.encode()
    r = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return r


def out(r):
    return r.stdout.decode(errors="replace").strip()


def wait_for(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    """True if the process exists and is not a zombie (PID 1 here does not reap orphans)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def netns_id(path):
    """(st_dev, st_ino) of a network namespace handle (/proc/PID/ns/net or /run/netns/NAME)."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return None


def pid_netns(pid):
    return netns_id(f"/proc/{pid}/ns/net")


def lab_namespaces():
    """Every namespace this harness names (vpl-*), from /run/netns."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


def pids_in_netns(name):
    """Live processes whose network namespace is /run/netns/NAME."""
    target = netns_id(f"/run/netns/{name}")
    if target is None:
        return []
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and pid_netns(d) == target and pid_alive(int(d)):
            pids.append(int(d))
    return pids


def kill_pid(pid, timeout=15.0):
    """SIGTERM, wait, then SIGKILL one process by its id. Returns True if it was running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5, 0.05, f"pid {pid} to die after SIGKILL")
    return True


def namespace_of(pid):
    """Name of the vpl-* namespace a process lives in, or None."""
    nid = pid_netns(pid)
    for n in lab_namespaces():
        if netns_id(f"/run/netns/{n}") == nid:
            return n
    return None


def live_libvirtds():
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and comm(d) == "libvirtd" and pid_alive(int(d))]


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from traffic import CLIENT, LISTENER  # noqa: E402  (shared with tests/integration)


def ns_connect(ns, proto, addr, port):
    """Connect from namespace `ns`; the answer line, or a string starting with ERROR."""
    r = sh(sys.executable, "-c", CLIENT, proto, addr, str(port), ns=ns, check=False, timeout=15)
    text = out(r)
    if not text:
        text = "ERROR no output: " + r.stderr.decode(errors="replace").strip()
    return text


STAND_IN = textwrap.dedent("""
    # Stand-in for virtport (written by tests/libvirt/harness.py): `install` / `uninstall` the hook
    # symlinks + SIGHUP libvirtd like the real binary; as a hook, append one JSON line per call to
    # calls.jsonl next to itself and exit 1 when /etc/virtport/standin-fail holds "HOOK OP".
    import json, os, re, signal, sys, time
    HERE = os.path.dirname(os.path.realpath(__file__))
    SELF = os.path.realpath(__file__)
    HOOKS = "/etc/libvirt/hooks"
    def sighup():
        with open("/run/libvirtd.pid") as f:
            os.kill(int(f.read()), signal.SIGHUP)
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None
    args = sys.argv[1:]
    if args[:1] == ["install"]:
        os.makedirs(HOOKS, exist_ok=True)
        for h in ("qemu", "network"):
            p = os.path.join(HOOKS, h)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(SELF, p)
        sighup(); sys.exit(0)
    if args[:1] == ["uninstall"]:
        for h in ("qemu", "network"):
            p = os.path.join(HOOKS, h)
            if os.path.islink(p) and os.path.realpath(p) == SELF:
                os.unlink(p)
        sighup(); sys.exit(0)
    hook = os.path.basename(sys.argv[0])
    xml = sys.stdin.read()
    rec = {"t": time.time(), "hook": hook, "args": args, "pid": os.getpid(),
           "netns": os.readlink("/proc/self/ns/net"), "env": dict(os.environ),
           "config": read("/etc/virtport/virtport.conf"), "xml_bytes": len(xml),
           "target_dev": re.findall(r"<target dev='([^']+)'", xml),
           "bridge": re.findall(r"<bridge name='([^']+)'", xml),
           "macs": re.findall(r"<mac address='([^']+)'", xml)}
    fd = os.open(os.path.join(HERE, "calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(rec) + "\\n").encode()); os.close(fd)
    fail = (read("/etc/virtport/standin-fail") or "").strip()
    if len(args) > 1 and fail == f"{hook} {args[1]}":
        sys.stderr.write(f"stand-in refuses {hook} {args[1]} for {args[0]}\\n"); sys.exit(1)
""")


REAPER = textwrap.dedent("""
    # Parent of the lab's daemons (written by tests/libvirt/harness.py). PID 1 on these machines
    # reaps orphans only every second or two, and libvirt waits for a killed QEMU to vanish, so
    # `virsh destroy` took ~1.5 s. As a child subreaper this process adopts everything the daemons
    # double-fork (libvirtd, virtlogd, dnsmasq, qemu) and reaps it at once.
    # stdin: one JSON command per line {"id", "argv", "env", "log"}; stdout: {"id", "rc"} when that
    # command's own process exits. Exits after stdin closes and its last child is gone.
    import ctypes, json, os, select, sys
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:   # PR_SET_CHILD_SUBREAPER
        print("error prctl", ctypes.get_errno(), flush=True); sys.exit(1)
    print("ready", flush=True)
    pending, buf, eof = {}, b"", False
    while True:
        if select.select([] if eof else [0], [], [], 0.02)[0]:
            chunk = os.read(0, 65536)
            eof = not chunk
            buf += chunk
            while b"\\n" in buf:
                line, buf = buf.split(b"\\n", 1)
                cmd = json.loads(line)
                log = os.open(cmd["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                null = os.open("/dev/null", os.O_RDONLY)
                pid = os.fork()
                if pid == 0:
                    try:
                        os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
                        os.closerange(3, 1024)
                        os.execve(cmd["argv"][0], cmd["argv"], cmd["env"])
                    finally:
                        os._exit(127)
                os.close(log); os.close(null)
                pending[pid] = cmd["id"]
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                if eof:
                    sys.exit(0)
                break
            if pid == 0:
                break
            if pid in pending:
                print(json.dumps({"id": pending.pop(pid), "rc": os.waitstatus_to_exitcode(status)}), flush=True)
""")


class Reaper:
    """Runs the lab's daemons as descendants of a child-subreaper process (see REAPER)."""

    def __init__(self, log):
        # Its stderr must not be the caller's: it outlives a crashed caller while the daemons live,
        # and an inherited pipe would keep a CI step (or `| tail`) waiting for EOF.
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, env=dict(BASE_ENV), start_new_session=True, bufsize=0)
        self.next_id = 0
        self._buf = b""
        line = self._readline(10)
        if line != "ready":
            raise LabError(f"reaper did not start: {line!r}")

    @property
    def pid(self):
        return self.proc.pid

    def _readline(self, timeout):
        import select
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise LabError(f"reaper: no answer within {timeout}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise LabError(f"reaper exited (rc {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def run(self, argv, env, log, timeout=60):
        """Run argv (argv[0] an absolute path) with exactly env, stdio to log; return its exit code."""
        self.next_id += 1
        cmd = {"id": self.next_id, "argv": argv, "env": env, "log": log}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            reply = json.loads(self._readline(timeout))
            if reply["id"] == self.next_id:
                return reply["rc"]

    def close(self, timeout=10):
        """Close stdin; it exits once its adopted children are gone (else it is killed)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class StandInHook:
    """A tiny fake virtport under the lab's workdir, to exercise hooks without the real binary."""

    def __init__(self, lab):
        self.lab = lab
        d = os.path.join(lab.workdir, "stand-in")
        os.makedirs(d, exist_ok=True)
        self.path = os.path.join(d, "virtport")
        self.log = os.path.join(d, "calls.jsonl")
        py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        with open(self.path, "w") as f:
            f.write(f"#!{py}\n" + STAND_IN)
        os.chmod(self.path, 0o755)

    def calls(self):
        try:
            with open(self.log) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def clear(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log)

    def fail_on(self, hook=None, op=None):
        """Make the stand-in exit 1 (stderr one line) for HOOK OP, e.g. ('qemu', 'prepare'); None clears."""
        self.lab.write_etc("virtport/standin-fail", f"{hook} {op}\n" if hook else "")


class Peer:
    """A namespace hanging off the libvirt namespace by a veth: the stand-in guest or the client."""

    def __init__(self, ns, ip, mac=None, host_if=None):
        self.ns, self.ip, self.mac, self.host_if = ns, ip, mac, host_if
        self.procs = []

    def listen(self, proto, port, tag, addr="0.0.0.0"):
        """Start a listener answering 'TAG PORT from PEER' (TCP) or echoing that line (UDP)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", LISTENER,
                              proto, addr, str(port), tag],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        line = p.stdout.readline().decode().strip()
        if line != "ready":
            err = p.stderr.read().decode() if p.poll() is not None else line
            raise LabError(f"listener {proto} {addr}:{port} in {self.ns} failed: {err}")
        return p

    def connect(self, proto, addr, port):
        return ns_connect(self.ns, proto, addr, port)

    def exec(self, *args, check=True, **kw):
        return sh(*args, ns=self.ns, check=check, **kw)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.procs = []
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


# -- the lab ------------------------------------------------------------------------------------

class LibvirtLab:
    """libvirtd + virtlogd in namespace vpl-<id>, the `default` NAT network started, helpers for
    VMs, stand-in guests, a client namespace, hooks, logs and firewall dumps.

    Parameters:
      daemon_env: extra variables for libvirtd's (otherwise `env -i`) environment and for
        install_hooks()/remove_hooks(). NOTE: libvirt filters the environment it gives hooks
        (see the module docstring); use etc_files for anything a hook must read.
      etc_files: {"virtport/virtport.conf": text, ...} placed under /etc/netns/<ns>/, which the
        namespace sees as /etc/... . Only top-level names present at daemon start are mounted;
        "virtport" is always mounted (an empty private /etc/virtport unless given files).
      stp: keep libvirt's `stp='on' delay='0'` on virbr0. The kernel enforces a 2 s minimum forward
        delay with STP on, so each new bridge port (tap or stand-in veth) then passes no traffic for
        ~4 s; by default the lab switches STP off on virbr0 after each net_start()/lab start.
      workdir: where logs, XML and stand-in files go (default: a new /tmp/vpl-lab-* directory,
        deleted by teardown() unless keep_workdir is set or teardown hit errors).
    """

    kind = "9"                      # which lab: "9" (this one) or "11" (lab11.Lab11)
    backend = "iptables"            # libvirt's firewall backend in this lab
    hooks_dir = HOOKS_DIR           # where libvirt looks for hooks, as a path on this machine
    uri = URI                       # virsh's connection URI

    def __init__(self, daemon_env=None, etc_files=None, workdir=None, log_filters=LOG_FILTERS, stp=False):
        self.daemon_env = dict(daemon_env or {})
        self.stp = stp
        self.etc_files = dict(etc_files or {})
        self._workdir_arg = workdir
        self.log_filters = log_filters
        self.keep_workdir = False
        self.timings: list[tuple[str, float]] = []
        self.running = False
        self._lock_fd = None
        self._reset_fields()

    def _reset_fields(self):
        self.id = uuidlib.uuid4().hex[:6]
        self.ns = f"{NS_PREFIX}{self.id}"
        self.namespaces: list[str] = []
        self.vms: list[str] = []
        self.guests: list[Peer] = []
        self._client: Peer | None = None
        self.hooks_binary: str | None = None
        self.kvm_saved = None
        self.created_etc_dirs: list[str] = []
        self.defined_default_net = False
        self.own_virtlogd = False
        self.libvirtd_pid = None
        self.virtlogd_pid = None
        self.leases_backup = None
        self.dhcp_hosts: list[list[str]] = []   # [network, '<host …/>'] added by add_dhcp_host()
        self.reaper: Reaper | None = None

    # -- paths ----------------------------------------------------------------------------------
    @property
    def etc_overlay(self):
        return f"/etc/netns/{self.ns}"

    @property
    def log_path(self):
        return os.path.join(self.logdir, "libvirtd.log")

    def _timed(self, label):
        lab = self

        class _T:
            def __enter__(self):
                self.t0 = time.monotonic()
                return self

            def __exit__(self, *exc):
                dt = time.monotonic() - self.t0
                lab.timings.append((label, dt))
                TIMINGS.append((label, dt))
                return False
        return _T()

    # -- state file (for recovering after a crashed run) ----------------------------------------
    def _save_state(self):
        state = {"owner_pid": os.getpid(), "ns": self.ns, "vms": self.vms, "hooks_binary": self.hooks_binary,
                 "kvm": self.kvm_saved, "created_etc_dirs": self.created_etc_dirs,
                 "defined_default_net": self.defined_default_net, "libvirtd_pid": self.libvirtd_pid,
                 "leases_backup": self.leases_backup, "dhcp_hosts": self.dhcp_hosts,
                 "reaper_pid": self.reaper.pid if self.reaper else None,
                 "workdir": getattr(self, "workdir", None)}
        tmp = STATE_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, STATE_FILE)

    # -- start ----------------------------------------------------------------------------------
    def start(self):
        """Bring the lab up. Raises LabError (after undoing what it did) if it cannot."""
        if self.running:
            return self
        if os.geteuid() != 0:
            raise LabError("the libvirt lab needs root")
        if not LIBVIRTD or not VIRTLOGD:
            raise LabError("libvirtd/virtlogd not installed (scripts/deps.sh --libvirt)")
        os.makedirs(STATE_DIR, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LabError(f"another libvirt lab holds {LOCK_FILE}; only one can run at a time")
        self._lock_fd = fd
        self._reset_fields()
        self.timings = []
        self.keep_workdir = False
        state = {}
        with contextlib.suppress(OSError, ValueError):
            with open(STATE_FILE) as f:
                state = json.load(f)
        try:
            self._refuse_foreign_libvirtd(state)      # before touching anything
        except BaseException:
            os.close(fd)
            self._lock_fd = None
            raise
        try:
            stale = self._recover_stale(state)
            self._start(stale)
        except BaseException:
            errs = self._teardown()
            if errs:
                sys.stderr.write("libvirt lab: cleanup after failed start: " + "; ".join(errs) + "\n")
            raise
        return self

    def _refuse_foreign_libvirtd(self, state):
        pid = read_pid(LIBVIRTD_PID)
        candidates = set(live_libvirtds())
        if pid_alive(pid):
            candidates.add(pid)
        for p in sorted(candidates):
            if p == state.get("libvirtd_pid") and comm(p) == "libvirtd":
                continue                                # a crashed run's daemon (we hold the lock)
            if namespace_of(p) is None:
                raise LabError(f"a libvirtd (pid {p}) is running outside any vpl- namespace "
                               f"(net {os.readlink(f'/proc/{p}/ns/net') if pid_alive(p) else '?'}); "
                               "refusing to start a second one (stop it, or run the lab on a machine without it)")

    # -- the machine's own hooks (issue 22) ------------------------------------------------------
    # A source install's or the package's hooks in /etc/libvirt/hooks: the lab's libvirtd would run
    # them, and the lab's install/uninstall would replace and then remove them. Moved aside while a
    # lab runs (before its libvirtd starts), put back by teardown, or by the next start after a crash.
    def _machine_hooks_aside(self):
        entries = [n for base in MACHINE_HOOKS for n in (base, base + ".d")
                   if os.path.lexists(os.path.join(HOOKS_DIR, n))]
        if not entries:
            return
        os.makedirs(HOOKS_ASIDE, exist_ok=True)
        for n in entries:
            shutil.move(os.path.join(HOOKS_DIR, n), os.path.join(HOOKS_ASIDE, n))

    @staticmethod
    def _machine_hooks_back():
        if not os.path.isdir(HOOKS_ASIDE):
            return
        for n in os.listdir(HOOKS_ASIDE):
            dst = os.path.join(HOOKS_DIR, n)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)                      # what the lab left in their place
            elif os.path.lexists(dst):
                os.unlink(dst)
            shutil.move(os.path.join(HOOKS_ASIDE, n), dst)
        os.rmdir(HOOKS_ASIDE)

    def _recover_stale(self, state):
        """Undo what a crashed run left: processes and namespaces vpl-*, hooks, /dev/kvm mode."""
        self._machine_hooks_back()
        stale_ns = lab_namespaces()
        if not state and not stale_ns:
            return {}
        # libvirtd first, gracefully (it removes its pid file), then everything else in those namespaces.
        for n in stale_ns:
            lv = read_pid(LIBVIRTD_PID)
            if pid_alive(lv) and namespace_of(lv) == n:
                kill_pid(lv)
            for p in pids_in_netns(n):
                kill_pid(p, timeout=5)
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            shutil.rmtree(f"/etc/netns/{n}", ignore_errors=True)
        lv = state.get("libvirtd_pid")                 # its namespace is already gone
        if pid_alive(lv) and comm(lv) == "libvirtd":
            kill_pid(lv)
        rp = state.get("reaper_pid")                   # exits by itself once its children are gone
        if rp and pid_alive(rp) and comm(rp).startswith("python"):
            with contextlib.suppress(LabError):
                wait_for(lambda: not pid_alive(rp), 3, 0.05, "old reaper to exit")
            kill_pid(rp, timeout=2)
        hb = state.get("hooks_binary")
        if hb:
            self._unlink_hooks_pointing_to(hb)
        if state.get("kvm"):
            self._restore_kvm(state["kvm"])
        for d in state.get("created_etc_dirs") or []:
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if state.get("leases_backup"):
            self._restore_leases(state["leases_backup"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(STATE_FILE)
        if state.get("workdir"):
            warnings.warn(LabWarning(f"cleaned up after a libvirt lab that did not finish ({state.get('ns')}); "
                                     f"its logs are in {state['workdir']}"))
        elif stale_ns:
            warnings.warn(LabWarning(f"removed stale lab namespaces {stale_ns}"))
        return state

    def _clear_leases(self):
        """Start `default` with no leases: libvirt keeps them in LEASES_FILE across daemon runs."""
        if self.leases_backup is None:
            self.leases_backup = os.path.join(self.workdir, "virbr0.status.orig")
            if os.path.exists(LEASES_FILE):
                shutil.copy2(LEASES_FILE, self.leases_backup)
            else:
                open(self.leases_backup + ".absent", "w").close()
            self._save_state()
        if os.path.exists(LEASES_FILE):
            with open(LEASES_FILE, "w") as f:
                f.write("[]\n")

    @staticmethod
    def _restore_leases(backup):
        if os.path.exists(backup):
            shutil.copy2(backup, LEASES_FILE)
        elif os.path.exists(backup + ".absent"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(LEASES_FILE)

    def _start(self, stale):
        self.workdir = self._workdir_arg or tempfile.mkdtemp(prefix="vpl-lab-")
        self.logdir = os.path.join(self.workdir, "log")
        os.makedirs(self.logdir, exist_ok=True)
        self._save_state()
        with self._timed("lab: namespace + /dev/kvm"):
            sh("ip", "netns", "add", self.ns)
            self.namespaces.append(self.ns)
            self._save_state()
            sh("ip", "link", "set", "lo", "up", ns=self.ns)
            self._prepare_kvm()
            self._prepare_etc()
        self._machine_hooks_aside()
        with self._timed("lab: virtlogd + libvirtd start"):
            self._start_virtlogd()
            self._start_libvirtd()
        for name in stale.get("vms") or []:           # domains a crashed run left defined
            if self.vm_state(name) is not None:
                self.virsh("destroy", name, check=False)
                self.virsh("undefine", name, check=False)
        if stale.get("defined_default_net"):
            self.defined_default_net = True
        if stale.get("dhcp_hosts"):                    # reservations a crashed run added
            self.dhcp_hosts = stale["dhcp_hosts"]
            errs = []
            self._cleanup_dhcp_hosts(errs)
            if errs:
                warnings.warn(LabWarning("; ".join(errs)))
        with self._timed("lab: default network up"):
            self._ensure_default_network(fresh_leases=True)
        self.running = True
        self._save_state()

    def _prepare_kvm(self):
        if not os.path.exists("/dev/kvm"):
            return
        st = os.stat("/dev/kvm")
        self.kvm_saved = {"mode": st.st_mode & 0o7777, "gid": st.st_gid}
        self._save_state()
        with contextlib.suppress(KeyError):
            import grp
            os.chown("/dev/kvm", -1, grp.getgrnam("kvm").gr_gid)
        os.chmod("/dev/kvm", 0o660)

    @staticmethod
    def _restore_kvm(saved):
        if os.path.exists("/dev/kvm"):
            os.chown("/dev/kvm", -1, saved["gid"])
            os.chmod("/dev/kvm", saved["mode"])

    def _prepare_etc(self):
        files = dict(self.etc_files)
        tops = {p.split("/", 1)[0] for p in files} | {"virtport"}
        for top in sorted(tops):
            target = f"/etc/{top}"
            if not os.path.exists(target):          # ip netns exec can only bind over an existing path
                os.makedirs(target)
                self.created_etc_dirs.append(target)
            os.makedirs(os.path.join(self.etc_overlay, top), exist_ok=True)
        self._save_state()
        for rel, text in files.items():
            self.write_etc(rel, text)

    def write_etc(self, rel, text):
        """Write /etc/REL as seen inside the namespace (e.g. 'virtport/virtport.conf'). Live for
        files under a directory mounted at daemon start ('virtport/…'); returns the real path."""
        path = os.path.join(self.etc_overlay, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _daemon_env(self, extra=None):
        env = dict(BASE_ENV)
        env.update({"LIBVIRT_LOG_OUTPUTS": f"1:file:{self.log_path}", "LIBVIRT_LOG_FILTERS": self.log_filters})
        env.update(self.daemon_env)
        env.update(extra or {})
        return env

    def _start_virtlogd(self):
        pid = read_pid(VIRTLOGD_PID)
        if pid_alive(pid):
            if namespace_of(pid) is None:           # someone else's: use it, never stop it
                self.own_virtlogd = False
                self.virtlogd_pid = pid
                return
            kill_pid(pid)
        env = dict(BASE_ENV, LIBVIRT_LOG_OUTPUTS=f"1:file:{os.path.join(self.logdir, 'virtlogd.log')}")
        self._daemon("virtlogd", [VIRTLOGD, "-d"], env)
        self.virtlogd_pid = wait_for(lambda: self._pid_in_ns(VIRTLOGD_PID), 10, 0.05, "virtlogd pid file")
        self.own_virtlogd = True

    def _pid_in_ns(self, pidfile):
        pid = read_pid(pidfile)
        if pid_alive(pid) and pid_netns(pid) == netns_id(f"/run/netns/{self.ns}"):
            return pid
        return None

    def _daemon(self, name, argv, env):
        """`ip netns exec NS argv` with exactly env (like `env -i`), stdio detached into the log
        dir, as a descendant of the lab's reaper."""
        if self.reaper is None:
            self.reaper = Reaper(os.path.join(self.logdir, "reaper.stderr"))
            self._save_state()
        log = os.path.join(self.logdir, f"{name}.stdio")
        rc = self.reaper.run([IP, "netns", "exec", self.ns] + argv, env, log)
        if rc != 0:
            with open(log, errors="replace") as f:
                raise LabError(f"{' '.join(argv)} in {self.ns}: exit {rc}: {f.read()[-2000:].strip()}")

    def _start_libvirtd(self):
        self._daemon("libvirtd", [LIBVIRTD, "-d"], self._daemon_env())
        # The first start probes QEMU's capabilities (8-12 s); the pid file appears before the API answers.
        self.libvirtd_pid = wait_for(lambda: self._pid_in_ns(LIBVIRTD_PID), 60, 0.05,
                                     f"libvirtd pid file in {self.ns} (see {self.logdir})")
        self._save_state()

        def answers():
            if not pid_alive(self.libvirtd_pid):
                raise LabError(f"libvirtd exited during start; see {self.logdir}/libvirtd.stdio and libvirtd.log")
            return sh("virsh", "-c", URI, "version", check=False, timeout=30).returncode == 0
        wait_for(answers, 120, 0.1, "libvirtd to answer `virsh version`")

    def _ensure_default_network(self, fresh_leases=False):
        if self.virsh("net-info", "default", check=False).returncode != 0:
            self.virsh("net-define", DEFAULT_NET_XML)
            self.defined_default_net = True
            self._save_state()
        info = out(self.virsh("net-info", "default"))
        active = re.search(r"^Active:\s+yes", info, re.M) is not None
        if active and (fresh_leases or not self._link_exists(BRIDGE)):  # status left from another namespace
            self.virsh("net-destroy", "default", check=False)
            active = False
        if fresh_leases:
            self._clear_leases()
        if not active:
            self.virsh("net-start", "default")
        wait_for(lambda: self._link_exists(BRIDGE), 10, 0.05, f"{BRIDGE} in {self.ns}")
        self._bridge_stp()

    def _bridge_stp(self):
        if not self.stp:
            self.exec("ip", "link", "set", BRIDGE, "type", "bridge", "stp_state", "0")

    def _link_exists(self, name):
        return sh("ip", "link", "show", name, ns=self.ns, check=False).returncode == 0

    # -- daemon control -------------------------------------------------------------------------
    def stop_libvirtd(self):
        """SIGTERM the libvirtd of the PID file (only if it lives in this lab's namespace); wait."""
        pid = read_pid(LIBVIRTD_PID)
        if not pid_alive(pid):
            return
        if pid_netns(pid) != netns_id(f"/run/netns/{self.ns}"):
            raise LabError(f"{LIBVIRTD_PID} names pid {pid}, which is not in {self.ns}; not touching it")
        kill_pid(pid, timeout=30)
        # libvirtd removes its pid file on a clean exit; drop a stale one after SIGKILL.
        if read_pid(LIBVIRTD_PID) == pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(LIBVIRTD_PID)

    def restart_libvirtd(self, daemon_env=None):
        """Stop libvirtd and start it again in the same namespace (optionally with a new daemon_env).
        Running VMs keep running; libvirt replays network port-created + qemu reconnect."""
        if daemon_env is not None:
            self.daemon_env = dict(daemon_env)
        with self._timed("libvirtd restart"):
            mark = self.log_mark()
            self.stop_libvirtd()
            self._start_libvirtd()
            self._wait_reconnect_hooks(mark)

    def _wait_reconnect_hooks(self, mark, timeout=20):
        """libvirt reconnects to running domains in threads of their own, after its API already
        answers: with a qemu hook in place, wait until each running domain's `reconnect` hook was
        called and no hook process is left, so callers see the state the hooks leave."""
        if not any(os.path.exists(os.path.join(self.hooks_dir, p)) for p in ("qemu", "qemu.d")):
            return
        running = out(self.virsh("list", "--name", "--state-running", check=False)).split()
        for name in running:
            wait_for(lambda: ("qemu", name, "reconnect", "begin") in self.hook_calls(mark), timeout, 0.05,
                     f"libvirt's reconnect hook for {name}")
        self.wait_hooks_idle(timeout)

    @staticmethod
    def hook_processes():
        """PIDs of hook processes running now: libvirt runs /etc/libvirt/hooks/KIND…, which is
        argv[0] of a binary and argv[1] of a script (behind its interpreter)."""
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0", 2)[:2]
                except OSError:
                    continue
                if any(a.decode(errors="replace").startswith(HOOKS_DIR + "/") for a in argv):
                    pids.append(int(d))
        return pids

    def wait_hooks_idle(self, timeout=20):
        """Until no hook process was seen in three polls in a row (one runs for ~10-50 ms)."""
        idle = []

        def settled():
            idle.append(not self.hook_processes())
            return idle[-3:] == [True] * 3
        wait_for(settled, timeout, 0.05, "libvirt's hook processes to finish")

    def sighup_libvirtd(self, wait=True):
        """SIGHUP libvirtd like `virtport install` does: it rescans the hook files and reloads its
        drivers (libvirt 9.0 deletes and re-inserts every iptables rule of each active network;
        no hook is called). With wait, return once that reload has finished."""
        self.wait_reload_idle()
        mark = self.log_mark()
        os.kill(self._pid_in_ns(LIBVIRTD_PID), signal.SIGHUP)
        if wait:
            self._wait_reload(mark, "virHookCheck")

    def _reload_threads(self):
        """libvirtd runs each SIGHUP reload in a thread named daemon-reload."""
        pid = self._pid_in_ns(LIBVIRTD_PID)
        n = 0
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{t}/comm") as f:
                    n += f.read().strip() == "daemon-reload"
        return n

    def wait_reload_idle(self, timeout=15):
        """Wait until no SIGHUP reload is running: libvirtd IGNORES a SIGHUP that arrives during
        one ("Drivers are not initialized, reload ignored"), hook rescan included."""
        wait_for(lambda: self._reload_threads() == 0, timeout, 0.02, "libvirtd's SIGHUP reload to finish")

    def _wait_reload(self, mark, needle):
        def seen():
            lines = self.log_lines(mark)
            if any("reload ignored" in l for l in lines):
                raise LabError("libvirtd ignored a SIGHUP (another reload was still running)")
            return any(needle in l for l in lines)
        wait_for(seen, 10, 0.02, f"libvirtd to reload after SIGHUP ('{needle}' in its log; was it sent?)")
        self.wait_reload_idle()

    def virsh(self, *args, check=True, input=None, timeout=60):
        return sh("virsh", "-c", self.uri, *args, check=check, input=input, timeout=timeout)

    def exec(self, *args, check=True, **kw):
        """Run a command inside the libvirt namespace."""
        return sh(*args, ns=self.ns, check=check, **kw)

    def cmd(self, *args):
        """The argv that runs ARGS where exec() runs it (for Popen)."""
        return ["ip", "netns", "exec", self.ns] + [str(a) for a in args]

    def connect(self, proto, addr, port):
        """Connect from the libvirt namespace itself (the 'host')."""
        return ns_connect(self.ns, proto, addr, port)

    # -- hooks ----------------------------------------------------------------------------------
    def _hook_env(self, env):
        e = dict(BASE_ENV)
        # `install`/`uninstall` would edit the machine's AppArmor override and disable the machine's
        # virtport units (host files, not libvirt's): a fake host tree of the lab's instead. (AppArmor
        # is not active on these kernels; tests/integration/test_apparmor_policy.py covers it.)
        e["VIRTPORT_SYSROOT"] = os.path.join(self.workdir, "sysroot")
        e.update(self.daemon_env)
        e.update(env or {})
        return e

    def install_hooks(self, binary, *args, env=None, check=True, wait_rescan=True):
        """Run `BINARY install ARGS…` inside the namespace (env: BASE_ENV + daemon_env + env).
        With wait_rescan, wait until libvirtd has rescanned its hooks and finished the reload that
        the binary's SIGHUP starts (so a test never races libvirt's firewall reload)."""
        self.wait_reload_idle()
        mark = self.log_mark()
        self.hooks_binary = os.path.abspath(binary)
        self._save_state()
        r = sh(binary, "install", *args, ns=self.ns, env=self._hook_env(env), check=check)
        if r.returncode == 0 and wait_rescan:
            self._wait_rescan(mark, "Found hook script /etc/libvirt/hooks/qemu")
        return r

    def remove_hooks(self, binary=None, *args, env=None, check=True, wait_rescan=True):
        """Run `BINARY uninstall ARGS…` inside the namespace."""
        binary = binary or self.hooks_binary
        self.wait_reload_idle()
        mark = self.log_mark()
        r = sh(binary, "uninstall", *args, ns=self.ns, env=self._hook_env(env), check=check)
        if r.returncode == 0:
            if wait_rescan:
                self._wait_rescan(mark, "No hook script /etc/libvirt/hooks/qemu")
            self.hooks_binary = None
            self._save_state()
        return r

    def _wait_rescan(self, mark, needle):
        self._wait_reload(mark, needle)

    @staticmethod
    def _unlink_hooks_pointing_to(binary):
        removed = []
        for h in ("qemu", "network"):
            p = os.path.join(HOOKS_DIR, h)
            with contextlib.suppress(OSError):
                if os.path.islink(p) and os.path.realpath(p) == os.path.realpath(binary):
                    os.unlink(p)
                    removed.append(p)
        return removed

    def hooks_installed(self):
        d = self.hooks_dir
        return {h: (os.readlink(os.path.join(d, h)) if os.path.islink(os.path.join(d, h))
                    else os.path.exists(os.path.join(d, h)))
                for h in ("qemu", "network")}

    def stand_in_hook(self):
        """A StandInHook in this lab's workdir (install it with lab.install_hooks(h.path))."""
        return StandInHook(self)

    # -- logs -----------------------------------------------------------------------------------
    def log_mark(self):
        """Current size of libvirtd.log; pass to log_lines()/hook_log()/hook_calls() for 'since'."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_lines(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def hook_log(self, since=0):
        """libvirtd log lines about hooks: rescans, calls, hook failures."""
        return [l for l in self.log_lines(since) if "hook" in l.lower()]

    _CALL = re.compile(r"Calling hook (\S+) id=(\S+) op=(\S+) subop=(\S+) extra=(\S+)")

    def hook_calls(self, since=0):
        """[(driver, object, op, subop), …] in call order, e.g. ('qemu', 'vm1', 'prepare', 'begin')."""
        calls = []
        for l in self.log_lines(since):
            m = self._CALL.search(l)
            if m:
                calls.append((os.path.basename(m.group(1)), m.group(2), m.group(3), m.group(4)))
        return calls

    def firewall(self):
        """libvirt's and everyone's rules inside the namespace, as text."""
        return {
            "iptables": out(self.exec("iptables", "-S", check=False)),
            "iptables-nat": out(self.exec("iptables", "-t", "nat", "-S", check=False)),
            "nft": out(self.exec("nft", "list", "ruleset", check=False)),
        }

    def iptables(self, *args, check=True):
        return self.exec("iptables", *args, check=check)

    # -- networks -------------------------------------------------------------------------------
    def net_destroy(self, name="default"):
        with self._timed(f"net-destroy {name}"):
            return self.virsh("net-destroy", name)

    def net_start(self, name="default"):
        with self._timed(f"net-start {name}"):
            r = self.virsh("net-start", name)
            if name == "default":
                self._bridge_stp()
            return r

    def add_dhcp_host(self, mac, ip, network="default"):
        """A static DHCP reservation `<host mac ip>`: `virsh net-update NETWORK add ip-dhcp-host …
        --live --config` (the live network, and its definition, which may be the machine's own).
        reset()/teardown() delete it again, and so does the next lab start after a crashed run."""
        entry = [network, f"<host mac='{mac}' ip='{ip}'/>"]
        self.dhcp_hosts.append(entry)
        self._save_state()
        return self.virsh("net-update", network, "add", "ip-dhcp-host", entry[1], "--live", "--config")

    def remove_dhcp_hosts(self):
        """Delete every reservation add_dhcp_host() made (reset() and teardown() do it too)."""
        errs = []
        self._cleanup_dhcp_hosts(errs)
        if errs:
            raise LabError("; ".join(errs))

    def _cleanup_dhcp_hosts(self, errs):
        """Delete the reservations add_dhcp_host() made, from the definition and (if active) the live network."""
        for entry in list(self.dhcp_hosts):
            network, xml = entry
            mac = re.search(r"mac='([^']+)'", xml).group(1)
            try:
                if self.virsh("net-info", network, check=False).returncode == 0:
                    for scope, dump in (("--config", ["--inactive"]), ("--live", [])):
                        if scope == "--live" and not re.search(r"^Active:\s+yes", out(self.virsh("net-info", network)), re.M):
                            continue
                        if f"mac='{mac}'" in out(self.virsh("net-dumpxml", network, *dump)):
                            self.virsh("net-update", network, "delete", "ip-dhcp-host", xml, scope)
                self.dhcp_hosts.remove(entry)
            except Exception as e:
                errs.append(f"dhcp host {xml} in {network}: {e}")
        self._save_state()

    def leases(self, network="default"):
        """[(mac, ip)] from `virsh net-dhcp-leases`."""
        rows = []
        for line in out(self.virsh("net-dhcp-leases", network)).splitlines():
            m = re.search(r"([0-9a-f:]{17})\s+ipv4\s+([\d.]+)/\d+", line)
            if m:
                rows.append((m.group(1), m.group(2)))
        return rows

    # -- VMs ------------------------------------------------------------------------------------
    @staticmethod
    def domain_xml(name, mac, metadata_xml="", pxe=False, memory_mib=64, extra_devices="", bridge=None):
        """A diskless domain: TCG, no disk/graphics, one virtio NIC on `default` (bridge: an
        `<interface type='bridge'>` on that bridge instead, no libvirt network involved).
        pxe=False adds <rom enabled='no'/>: otherwise SeaBIOS/iPXE DHCPs on the NIC (the VM then
        gets a real lease from dnsmasq a few seconds after start and answers ARP for it)."""
        meta = f"<metadata>{metadata_xml}</metadata>" if metadata_xml else ""
        rom = "" if pxe else "<rom enabled='no'/>"
        source = f"<interface type='bridge'><source bridge='{bridge}'/>" if bridge else \
            "<interface type='network'><source network='default'/>"
        return (f"<domain type='qemu'><name>{name}</name>{meta}"
                f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
                f"<os><type arch='x86_64'>hvm</type></os>"
                f"<devices>{source}<mac address='{mac}'/>"
                f"<model type='virtio'/>{rom}</interface>{extra_devices}</devices></domain>")

    def define_vm(self, name, mac, metadata_xml="", pxe=False, **kw):
        xml = self.domain_xml(name, mac, metadata_xml, pxe=pxe, **kw)
        path = os.path.join(self.workdir, f"{name}.xml")
        with open(path, "w") as f:
            f.write(xml)
        if name not in self.vms:
            self.vms.append(name)
            self._save_state()
        self.virsh("define", path)
        return name

    def start_vm(self, name, check=True):
        """`virsh start`; with check=False returns the result (a refusing hook: rc 1, its stderr)."""
        with self._timed("vm start"):
            return self.virsh("start", name, check=check)

    def destroy_vm(self, name, check=True):
        with self._timed("vm destroy"):
            return self.virsh("destroy", name, check=check)

    def undefine_vm(self, name, check=True):
        r = self.virsh("undefine", name, check=check)
        if r.returncode == 0 and name in self.vms:
            self.vms.remove(name)
            self._save_state()
        return r

    def vm_state(self, name):
        """'running', 'shut off', … or None when no such domain."""
        r = self.virsh("domstate", name, check=False)
        return out(r) if r.returncode == 0 else None

    def dumpxml(self, name):
        return out(self.virsh("dumpxml", name))

    def vm_tap(self, name):
        m = re.search(r"<target dev='([^']+)'", self.dumpxml(name))
        return m.group(1) if m else None

    # -- stand-ins ------------------------------------------------------------------------------
    def stand_in_guest(self, ip, mac=None, prefix=24, gateway=GATEWAY):
        """A 'guest' namespace on virbr0 holding ip/prefix (default route via the gateway)."""
        n = len(self.guests)
        gns = f"{self.ns}-g{n}"
        hif = f"vplg{n}"
        sh("ip", "netns", "add", gns)
        self.namespaces.append(gns)
        g = Peer(gns, ip, mac, hif)
        self.guests.append(g)
        sh("ip", "link", "set", "lo", "up", ns=gns)
        self._drop_leftover_link(hif)
        sh("ip", "link", "add", hif, "netns", self.ns, "type", "veth", "peer", "name", "eth0", "netns", gns)
        sh("ip", "link", "set", hif, "master", BRIDGE, ns=self.ns)
        sh("ip", "link", "set", hif, "up", ns=self.ns)
        if mac:
            sh("ip", "link", "set", "eth0", "address", mac, ns=gns)
        sh("ip", "addr", "add", f"{ip}/{prefix}", "dev", "eth0", ns=gns)
        sh("ip", "link", "set", "eth0", "up", ns=gns)
        sh("ip", "route", "add", "default", "via", gateway, ns=gns)
        # virbr0 has STP on with delay 0: the port forwards at once, but wait for it to be sure.
        wait_for(lambda: "forwarding" in out(sh("bridge", "link", "show", "dev", hif, ns=self.ns, check=False)),
                 10, 0.05, f"{hif} forwarding on {BRIDGE}")
        return g

    def _drop_leftover_link(self, name):
        """A previous test's stand-in namespace is deleted by name at once, but the kernel frees it
        (and the veth into this namespace) only when nothing holds it: an orphaned TCP socket
        retransmitting its FIN to a client a source filter now drops lives for minutes. Its host
        side goes now, so the name can be used again (the orphan dies with the veth's other end)."""
        sh("ip", "link", "del", name, ns=self.ns, check=False)

    def client(self):
        """The client namespace (created once per lab start), routed via the libvirt namespace."""
        if self._client:
            return self._client
        cns = f"{self.ns}-c"
        sh("ip", "netns", "add", cns)
        self.namespaces.append(cns)
        c = Peer(cns, CLIENT_IP, host_if="vplc0")
        self._client = c
        sh("ip", "link", "set", "lo", "up", ns=cns)
        self._drop_leftover_link("vplc0")
        sh("ip", "link", "add", "vplc0", "netns", self.ns, "type", "veth", "peer", "name", "eth0", "netns", cns)
        sh("ip", "addr", "add", f"{CLIENT_HOST_IP}/24", "dev", "vplc0", ns=self.ns)
        sh("ip", "link", "set", "vplc0", "up", ns=self.ns)
        sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0", ns=cns)
        sh("ip", "link", "set", "eth0", "up", ns=cns)
        sh("ip", "route", "add", "default", "via", CLIENT_HOST_IP, ns=cns)
        return c

    # -- teardown -------------------------------------------------------------------------------
    def reset(self):
        """Between tests sharing one lab: stand-ins gone, VMs destroyed+undefined, hooks removed,
        `default` active. Raises LabError listing what failed."""
        errs = []
        self._cleanup_peers(errs)
        self._cleanup_vms(errs)
        self._cleanup_hooks(errs)
        self._cleanup_dhcp_hosts(errs)
        try:
            self._ensure_default_network()
        except Exception as e:
            errs.append(f"default network: {e}")
        if errs:
            raise LabError("lab reset: " + "; ".join(errs))

    def _cleanup_peers(self, errs):
        for p in self.guests + ([self._client] if self._client else []):
            try:
                p.cleanup()
                if p.ns in self.namespaces:
                    self.namespaces.remove(p.ns)
            except Exception as e:
                errs.append(f"{p.ns}: {e}")
        self.guests, self._client = [], None

    def _cleanup_vms(self, errs):
        for name in list(self.vms):
            try:
                st = self.vm_state(name)
                if st is None:
                    self.vms.remove(name)
                    continue
                if st != "shut off":
                    self.virsh("destroy", name)
                self.undefine_vm(name)
            except Exception as e:
                errs.append(f"vm {name}: {e}")

    def _cleanup_hooks(self, errs):
        if not self.hooks_binary:
            return
        try:
            if any(isinstance(v, str) for v in self.hooks_installed().values()):
                if os.path.exists(self.hooks_binary) and self.running:
                    self.remove_hooks(self.hooks_binary, check=False, wait_rescan=False)
                left = self._unlink_hooks_pointing_to(self.hooks_binary)
                if left:
                    errs.append(f"`{self.hooks_binary} uninstall` left {left}; removed them")
            self.hooks_binary = None
        except Exception as e:
            errs.append(f"hooks: {e}")

    def teardown(self):
        """Undo everything, collecting failures; raise LabError listing them at the end."""
        errs = self._teardown()
        if errs:
            raise LabError("lab teardown: " + "; ".join(errs))

    def _teardown(self):
        errs = []
        daemon_up = self._pid_in_ns(LIBVIRTD_PID) is not None

        def step(what, fn):
            try:
                fn()
            except Exception as e:
                errs.append(f"{what}: {e}")

        if self._lock_fd is None:
            return errs
        self._cleanup_peers(errs)
        if daemon_up:
            self._cleanup_vms(errs)
        elif self.vms and self.running:
            errs.append(f"libvirtd is not running: VMs {self.vms} stay defined until the next lab start")
        self._cleanup_hooks(errs)
        if daemon_up:
            self._cleanup_dhcp_hosts(errs)
        elif self.dhcp_hosts and self.running:
            errs.append(f"libvirtd is not running: DHCP reservations {self.dhcp_hosts} stay in the network "
                        "definition until the next lab start")
        if daemon_up:
            # Stop dnsmasq and drop libvirt's status for `default` while its namespace still exists.
            step("net-destroy default", lambda: self.virsh("net-destroy", "default", check=False))
            if self.defined_default_net:
                step("net-undefine default", lambda: self.virsh("net-undefine", "default"))
            step("stop libvirtd", self.stop_libvirtd)
        if self.own_virtlogd:
            def stop_virtlogd():
                pid = self._pid_in_ns(VIRTLOGD_PID)
                if pid:
                    kill_pid(pid)
            step("stop virtlogd", stop_virtlogd)
        for n in list(self.namespaces):
            def clear_ns(n=n):
                left = pids_in_netns(n)                # orphaned dnsmasq, qemu, listeners: by pid
                for p in left:
                    kill_pid(p, timeout=5)
                if left and n == self.ns:
                    sys.stderr.write(f"libvirt lab: killed leftovers in {n}: "
                                     f"{[(p, comm(p)) for p in left]}\n")
                sh("ip", "netns", "del", n)
                self.namespaces.remove(n)
            step(f"namespace {n}", clear_ns)
        if self.reaper:
            step("reaper", self.reaper.close)
            self.reaper = None
        step("etc overlay", lambda: shutil.rmtree(self.etc_overlay, ignore_errors=True))
        with contextlib.suppress(OSError):
            os.rmdir("/etc/netns")
        for d in reversed(self.created_etc_dirs):
            step(f"rmdir {d}", lambda d=d: os.rmdir(d) if os.path.isdir(d) else None)
        if self.kvm_saved:
            step("/dev/kvm", lambda: self._restore_kvm(self.kvm_saved))
        if self.leases_backup:
            step("leases", lambda: self._restore_leases(self.leases_backup))
        step("the machine's hooks", self._machine_hooks_back)
        if errs:
            self.keep_workdir = True
            with contextlib.suppress(Exception):
                self._save_state()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(STATE_FILE)
        wd = getattr(self, "workdir", None)
        if wd and not self.keep_workdir and not self._workdir_arg:
            shutil.rmtree(wd, ignore_errors=True)
        self.running = False
        os.close(self._lock_fd)
        self._lock_fd = None
        return errs


def leftovers():
    """What a finished lab must not leave behind: [] when clean."""
    found = []
    for n in lab_namespaces():
        found.append(f"namespace {n}")
    pid = read_pid(LIBVIRTD_PID)
    if pid_alive(pid):
        found.append(f"{LIBVIRTD_PID} -> live pid {pid} ({comm(pid)}, net {namespace_of(pid)})")
    pid = read_pid(VIRTLOGD_PID)
    if pid_alive(pid) and namespace_of(pid):
        found.append(f"{VIRTLOGD_PID} -> live pid {pid} in {namespace_of(pid)}")
    for p in live_libvirtds():
        found.append(f"live libvirtd pid {p}")
    if os.path.exists(STATE_FILE):
        found.append(STATE_FILE)
    if os.path.isdir("/etc/netns") and any(n.startswith(NS_PREFIX) for n in os.listdir("/etc/netns")):
        found.append("/etc/netns/vpl-*")
    return found
