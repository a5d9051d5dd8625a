"""The libvirt 11 lab: libvirt 11.3 + QEMU 10.0 from bookworm-backports, the nftables firewall backend,
modular daemons (virtqemud, virtnetworkd, virtlogd; no libvirtd), optionally firewalld on its own D-Bus
system bus. Same API as harness.LibvirtLab, so the real-libvirt suite runs against either
(VIRTPORT_LAB=11 selects this one; see conftest.py).

The lab root is built once by scripts/lab/build-lab11.sh (cached under /var/tmp). Each lab instance:

    overlay   /run/vp11/<id>/m = the cached root (lower, never written) + /var/tmp/vp11-run/<id>/upper
    netns     vp11-<id>          (client vp11-<id>-c, stand-in guests vp11-<id>-gN as in harness.py)
    mount ns  a holder process (`sleep`), started as
              ip netns exec vp11-<id> unshare --mount --propagation private sh -c '…; pivot_root'
              with its own /proc, /sys (of the lab netns), a tmpfs /dev (null, zero, random, urandom,
              tty, ptmx + devpts newinstance, kvm, net/tun), and the lab's workdir bind-mounted at the
              same path (databases, agent and syslog sockets, VM XML).
    daemons   `nsenter -t HOLDER -m -n -- /usr/sbin/virtqemud -d` etc. (env -i + log variables),
              descendants of the harness's reaper; pid files and sockets under the overlay's /run,
              which the host sees at /run/vp11/<id>/m/run.

Nothing of the host's /run, /etc, /dev or cgroups is touched (libvirt finds no cgroup hierarchy in its
root and runs QEMU without cgroups), so a lab-11 run does not collide with the 9.0 lab (which owns
/run/libvirt, /run/libvirtd.pid, /etc/libvirt/hooks of the host); several lab-11 instances can run
in one process (the two-host migration tests do).

`virsh` runs on the host (libvirt 9.0's client) against the lab's virtqemud socket
(qemu:///system?socket=…/virtqemud-sock); network calls go through virtqemud to virtnetworkd as on any
modular host. Commands given to exec() whose argv[0] is a file outside /usr, /bin, /sbin (the
virtport binary under test) run inside the root (copied there to the same path first); everything
else (nft, ip, bridge) runs from the host inside the lab's network namespace.
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
import time
import warnings

import harness
from harness import LabError, LabWarning, kill_pid, out, pid_alive, read_pid, sh, wait_for

BUILD_SCRIPT = os.path.join(harness.ROOT, "scripts", "lab", "build-lab11.sh")
NS_PREFIX = "vp11-"
RUN_DIR = "/run/vp11"                   # overlay mount points, lock and state file
UPPER_DIR = "/var/tmp/vp11-run"         # overlay upper/work dirs (a disk, not tmpfs)
STATE_FILE = RUN_DIR + "/state.json"
LOCK_FILE = RUN_DIR + "/lock"
NSENTER = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/nsenter"
UNSHARE = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/unshare"
DAEMON_LOG = "/var/log/vpl/daemons.log"     # inside the root; every libvirt daemon appends to it
DAEMONS = ("virtlogd", "virtnetworkd", "virtqemud")      # start order
HOST_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib")

# Lab instances alive in this process (for the process-wide lock and the state file).
_LIVE: list["Lab11"] = []
_LOCK_FD = None

HOLDER = r"""
set -e
M=$1 W=$2
mount -t proc proc "$M/proc"
mount -t sysfs sysfs "$M/sys"
mount -t tmpfs -o mode=0755,size=4m,nosuid dev "$M/dev"
mknod -m 0666 "$M/dev/null" c 1 3; mknod -m 0666 "$M/dev/zero" c 1 5; mknod -m 0666 "$M/dev/full" c 1 7
mknod -m 0666 "$M/dev/random" c 1 8; mknod -m 0666 "$M/dev/urandom" c 1 9; mknod -m 0666 "$M/dev/tty" c 5 0
mkdir "$M/dev/pts" "$M/dev/shm" "$M/dev/net"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777 shm "$M/dev/shm"
[ -c /dev/kvm ] && mknod -m 0666 "$M/dev/kvm" c 10 232
mknod -m 0666 "$M/dev/net/tun" c 10 200
ln -s /proc/self/fd "$M/dev/fd"; ln -s /proc/self/fd/0 "$M/dev/stdin"
ln -s /proc/self/fd/1 "$M/dev/stdout"; ln -s /proc/self/fd/2 "$M/dev/stderr"
mkdir -p "$M$W"; mount --bind "$W" "$M$W"
cd "$M"; mkdir -p .oldroot; pivot_root . .oldroot; cd /
umount -l /.oldroot; rmdir /.oldroot
mkdir -p /var/log/vpl /run/libvirt
setsid sleep infinity </dev/null >/dev/null 2>&1 &
echo $! > /run/vp11-holder.pid
"""


def lab_root():
    """The cached lab root, built by scripts/lab/build-lab11.sh (minutes the first time)."""
    r = subprocess.run(["bash", BUILD_SCRIPT], capture_output=True, timeout=3600)
    if r.returncode != 0:
        raise LabError(f"{BUILD_SCRIPT}: exit {r.returncode}: {r.stderr.decode(errors='replace')[-3000:]}")
    root = r.stdout.decode().strip().splitlines()[-1]
    if not os.path.exists(os.path.join(root, "usr/sbin/virtqemud")):
        raise LabError(f"{root} has no virtqemud")
    return root


def _save_states():
    os.makedirs(RUN_DIR, exist_ok=True)
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"owner_pid": os.getpid(), "labs": [lab._state() for lab in _LIVE]}, f)
    os.replace(tmp, STATE_FILE)


def _acquire_lock():
    """One process at a time runs lab-11 instances (any number of them); the first instance of a
    process takes the lock and cleans up after a process that crashed."""
    global _LOCK_FD
    if _LOCK_FD is not None:
        return
    os.makedirs(RUN_DIR, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LabError(f"another process runs libvirt 11 labs ({LOCK_FILE})")
    _LOCK_FD = fd
    recover_stale()


def _release_lock():
    global _LOCK_FD
    if _LOCK_FD is not None and not _LIVE:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(STATE_FILE)
        os.close(_LOCK_FD)
        _LOCK_FD = None


def lab_namespaces():
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(NS_PREFIX))
    except FileNotFoundError:
        return []


def recover_stale():
    """Undo what a crashed run left: processes in vp11-* namespaces, the namespaces, overlay mounts
    and upper dirs. Call with the lock held."""
    state = {}
    with contextlib.suppress(OSError, ValueError):
        with open(STATE_FILE) as f:
            state = json.load(f)
    stale = lab_namespaces()
    for n in stale:
        for p in harness.pids_in_netns(n):
            kill_pid(p, timeout=5)
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    for lab in state.get("labs", []):
        rp = lab.get("reaper_pid")
        if rp and pid_alive(rp) and harness.comm(rp).startswith("python"):
            kill_pid(rp, timeout=2)
    for d in (RUN_DIR, UPPER_DIR):
        for e in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            p = os.path.join(d, e)
            if os.path.isdir(p):
                _umount_overlay(os.path.join(p, "m"))
                shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(STATE_FILE)
    if state.get("labs") or stale:
        warnings.warn(LabWarning(f"cleaned up after libvirt 11 labs that did not finish: {stale}"))


def _umount_overlay(path):
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


def leftovers():
    """What finished lab-11 instances must not leave behind: [] when clean."""
    found = [f"namespace {n}" for n in lab_namespaces()]
    for d in (RUN_DIR, UPPER_DIR):
        if os.path.isdir(d):
            found += [f"{d}/{e}" for e in os.listdir(d) if e not in ("lock",)]
    return found


class Lab11(harness.LibvirtLab):
    """libvirt 11.3 modular daemons in a pivot_root'ed lab root (see the module docstring).

    Extra parameters: firewalld=True also runs dbus-daemon (system bus) + firewalld (nftables
    backend) in the root before the libvirt daemons, so virtnetworkd puts virbr0 into firewalld's
    `libvirt` zone as on Fedora; name: a label for logs (the two-host tests use "A", "B")."""

    kind = "11"
    backend = "nftables"
    daemons = ("virtqemud", "virtnetworkd")    # what sighup_libvirtd()/restart_libvirtd() act on

    def __init__(self, daemon_env=None, etc_files=None, workdir=None, log_filters=harness.LOG_FILTERS,
                 stp=False, firewalld=False, name=""):
        self.firewalld = firewalld
        self.name = name
        self.lower = None
        super().__init__(daemon_env, etc_files, workdir, log_filters, stp)

    def _reset_fields(self):
        super()._reset_fields()
        self.ns = f"{NS_PREFIX}{self.id}"
        self.holder_pid = None
        self.pids = {}

    # -- paths ----------------------------------------------------------------------------------
    @property
    def mnt(self):
        return f"{RUN_DIR}/{self.id}/m"

    @property
    def upper(self):
        return f"{UPPER_DIR}/{self.id}"

    def path(self, p):
        """Host path of PATH inside the lab root."""
        return self.mnt + p

    @property
    def hooks_dir(self):
        return self.path(harness.HOOKS_DIR)

    @property
    def log_path(self):
        return self.path(DAEMON_LOG)

    @property
    def uri(self):
        return f"qemu:///system?socket={self.path('/run/libvirt/virtqemud-sock')}"

    def pidfile(self, daemon):
        return self.path("/run/dbus/pid" if daemon == "dbus" else f"/run/{daemon}.pid")

    def _state(self):
        return {"ns": self.ns, "id": self.id, "mnt": self.mnt, "upper": self.upper,
                "workdir": getattr(self, "workdir", None), "holder_pid": self.holder_pid,
                "reaper_pid": self.reaper.pid if self.reaper else None}

    def _save_state(self):
        if self in _LIVE:
            _save_states()

    # -- start ----------------------------------------------------------------------------------
    def start(self):
        if self.running:
            return self
        if os.geteuid() != 0:
            raise LabError("the libvirt 11 lab needs root")
        self.lower = lab_root()
        _acquire_lock()
        self._reset_fields()
        self.timings = []
        self.keep_workdir = False
        self._lock_fd = -1                 # the base class's "started" marker; the lock is per process
        _LIVE.append(self)
        try:
            self._start({})
        except BaseException:
            errs = self._teardown()
            if errs:
                sys.stderr.write("libvirt 11 lab: cleanup after failed start: " + "; ".join(errs) + "\n")
            raise
        return self

    def _start(self, stale):
        self.workdir = self._workdir_arg or tempfile.mkdtemp(prefix="vpl-lab-")
        self.logdir = os.path.join(self.workdir, "log")
        os.makedirs(self.logdir, exist_ok=True)
        _save_states()
        with self._timed("lab11: overlay + namespaces"):
            os.makedirs(self.mnt)
            os.makedirs(self.upper + "/upper")
            os.makedirs(self.upper + "/work")
            sh("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={self.lower},upperdir={self.upper}/upper,workdir={self.upper}/work", self.mnt)
            sh("ip", "netns", "add", self.ns)
            self.namespaces.append(self.ns)
            _save_states()
            sh("ip", "link", "set", "lo", "up", ns=self.ns)
            self._start_holder()
            for rel, text in self.etc_files.items():
                self.write_etc(rel, text)
            os.makedirs(self.path("/etc/virtport"), exist_ok=True)
        if self.firewalld:
            with self._timed("lab11: dbus + firewalld start"):
                self.start_firewalld()
        with self._timed("lab11: virtlogd + virtnetworkd + virtqemud start"):
            for d in DAEMONS:
                self.start_daemon(d)
            self._wait_answers()
        with self._timed("lab: default network up"):
            self._ensure_default_network(fresh_leases=True)
        self.running = True
        _save_states()

    def _start_holder(self):
        if self.reaper is None:
            self.reaper = harness.Reaper(os.path.join(self.logdir, "reaper.stderr"))
            _save_states()
        log = os.path.join(self.logdir, "holder.stdio")
        rc = self.reaper.run([harness.IP, "netns", "exec", self.ns, UNSHARE, "--mount", "--propagation", "private",
                              "/bin/sh", "-c", HOLDER, "holder", self.mnt, self.workdir], dict(harness.BASE_ENV), log)
        if rc != 0:
            with open(log, errors="replace") as f:
                raise LabError(f"lab root holder in {self.ns}: exit {rc}: {f.read()[-2000:]}")
        self.holder_pid = wait_for(lambda: read_pid(self.path("/run/vp11-holder.pid")), 10, 0.05, "holder pid")
        _save_states()

    def in_root(self, *argv):
        """argv to run a command inside the lab root (mount + network namespace of the daemons)."""
        return [NSENTER, "-t", str(self.holder_pid), "-m", "-n", "--"] + [str(a) for a in argv]

    def cmd(self, *argv):
        """argv running ARGV where exec() would: in the root for the binary under test, else in the netns."""
        argv = [str(a) for a in argv]
        if self._runs_in_root(argv[0]):
            return self.in_root(*argv)
        return ["ip", "netns", "exec", self.ns] + argv

    def _runs_in_root(self, prog):
        if not (prog.startswith("/") and not prog.startswith(HOST_PREFIXES) and os.path.isfile(prog)):
            return False
        self._copy_in(prog)
        return True

    def _copy_in(self, prog):
        """The program under test at the same absolute path inside the root (copied when changed)."""
        dst = self.path(os.path.realpath(prog))
        st = os.stat(prog)
        with contextlib.suppress(OSError):
            d = os.stat(dst)
            if (d.st_size, int(d.st_mtime)) == (st.st_size, int(st.st_mtime)):
                return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.realpath(prog), dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        if os.path.realpath(prog) != prog:          # a symlink to it too
            link = self.path(prog)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(os.path.realpath(prog), link)

    def _daemon_env(self, extra=None):
        env = dict(harness.BASE_ENV)
        env.update({"LIBVIRT_LOG_OUTPUTS": f"1:file:{DAEMON_LOG}", "LIBVIRT_LOG_FILTERS": self.log_filters})
        env.update(self.daemon_env)
        env.update(extra or {})
        return env

    def start_daemon(self, name):
        """Start one libvirt daemon (virtlogd, virtnetworkd, virtqemud, virtproxyd) in the root."""
        if name == "virtlogd":
            env = dict(harness.BASE_ENV, LIBVIRT_LOG_OUTPUTS="1:file:/var/log/vpl/virtlogd.log")
        else:
            env = self._daemon_env()
        log = os.path.join(self.logdir, f"{name}.stdio")
        rc = self.reaper.run(self.in_root(f"/usr/sbin/{name}", "-d"), env, log)
        if rc != 0:
            with open(log, errors="replace") as f:
                raise LabError(f"{name} -d in {self.ns}: exit {rc}: {f.read()[-2000:].strip()}")
        pid = wait_for(lambda: self.daemon_pid(name), 60, 0.05, f"{name} pid file in {self.ns}")
        self.pids[name] = pid
        if name == "virtqemud":
            self.libvirtd_pid = pid
        _save_states()
        return pid

    def daemon_pid(self, name):
        pid = read_pid(self.pidfile(name))
        if pid_alive(pid) and harness.pid_netns(pid) == harness.netns_id(f"/run/netns/{self.ns}"):
            return pid
        return None

    def _wait_answers(self):
        def answers():
            for d in ("virtqemud", "virtnetworkd"):
                if not pid_alive(self.pids.get(d)):
                    raise LabError(f"{d} exited during start; see {self.logdir} and {self.log_path}")
            return self.virsh("version", check=False, timeout=30).returncode == 0 and \
                self.virsh("net-list", "--all", check=False, timeout=30).returncode == 0
        wait_for(answers, 120, 0.1, "virtqemud + virtnetworkd to answer `virsh version` / `net-list`")

    def stop_daemon(self, name):
        pid = self.daemon_pid(name)
        if pid:
            kill_pid(pid, timeout=30)
        if read_pid(self.pidfile(name)) == pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pidfile(name))

    def restart_daemon(self, name):
        """Stop and start one daemon; for virtqemud, wait for the reconnect hooks of running VMs."""
        with self._timed(f"{name} restart"):
            mark = self.log_mark()
            self.stop_daemon(name)
            self.start_daemon(name)
            self._wait_answers()
            if name == "virtqemud":
                self._wait_reconnect_hooks(mark)
            else:
                self.wait_hooks_idle()

    def sighup_daemon(self, name, wait=True):
        """SIGHUP one daemon (as `virtport install` does); with wait, until its reload finished."""
        self.wait_reload_idle()
        mark = self.log_mark()
        os.kill(self.daemon_pid(name), signal.SIGHUP)
        if wait:
            self._wait_reload(mark, "virHookCheck")

    # The base class's libvirtd verbs act on the modular daemons that replace libvirtd.
    def stop_libvirtd(self):
        for d in ("virtqemud", "virtnetworkd"):
            self.stop_daemon(d)

    def _start_libvirtd(self):
        for d in ("virtnetworkd", "virtqemud"):
            if not self.daemon_pid(d):
                self.start_daemon(d)
        self._wait_answers()

    def restart_libvirtd(self, daemon_env=None):
        """Both modular daemons, virtnetworkd first (as a libvirt upgrade restarts them)."""
        if daemon_env is not None:
            self.daemon_env = dict(daemon_env)
        with self._timed("virtnetworkd + virtqemud restart"):
            mark = self.log_mark()
            self.stop_libvirtd()
            self._start_libvirtd()
            self._wait_reconnect_hooks(mark)

    def sighup_libvirtd(self, wait=True):
        """SIGHUP virtqemud and virtnetworkd, like `virtport install`."""
        for d in self.daemons:
            self.sighup_daemon(d, wait=wait)

    def _reload_threads(self):
        n = 0
        for d in ("virtqemud", "virtnetworkd"):
            pid = self.daemon_pid(d)
            with contextlib.suppress(OSError, TypeError):
                for t in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{t}/comm") as f:
                        n += f.read().strip() == "daemon-reload"
        return n

    # -- firewalld --------------------------------------------------------------------------------
    def start_firewalld(self):
        """dbus-daemon --system + firewalld (its nftables backend) in the root."""
        os.makedirs(self.path("/run/dbus"), exist_ok=True)
        env = dict(harness.BASE_ENV)
        rc = self.reaper.run(self.in_root("/usr/bin/dbus-daemon", "--system", "--fork"), env,
                             os.path.join(self.logdir, "dbus.stdio"))
        if rc != 0:
            raise LabError(f"dbus-daemon --system in {self.ns}: exit {rc}")
        self.pids["dbus"] = wait_for(lambda: self.daemon_pid("dbus"), 10, 0.05, "dbus pid file")
        self.start_firewalld_only()

    def start_firewalld_only(self):
        rc = self.reaper.run(self.in_root("/usr/sbin/firewalld"),
                             dict(harness.BASE_ENV), os.path.join(self.logdir, "firewalld.stdio"))
        if rc != 0:
            raise LabError(f"firewalld in {self.ns}: exit {rc}; see {self.logdir}/firewalld.stdio")
        self.pids["firewalld"] = wait_for(lambda: self.daemon_pid("firewalld"), 30, 0.05, "firewalld pid file")
        wait_for(lambda: self.firewall_cmd("--state", check=False).returncode == 0, 60, 0.2, "firewalld running")

    FIREWALLD_NFT = "/usr/lib/python3/dist-packages/firewall/core/nftables.py"
    STRICT_MARK = "# lab: StrictForwardPorts"

    def backport_strict_forward_ports(self):
        """Give this instance's firewalld 1.3 the effect of firewalld >= 2.3's `StrictForwardPorts=yes`
        in /etc/firewalld/firewalld.conf: filter_FORWARD then has no `ct status dnat accept` (only
        firewalld's own forward-ports pass). A two-line edit of its nftables backend, in this lab's
        overlay only (the cached root keeps Debian's file); takes effect at the next firewalld
        start or `firewall-cmd --reload`."""
        path = self.path(self.FIREWALLD_NFT)
        with open(path) as f:
            src = f.read()
        if self.STRICT_MARK in src:
            return
        # the first FORWARD rule matching `ct status dnat` (the accept that follows established,related)
        fwd = src.index('"chain": "filter_%s" % "FORWARD",\n')
        dnat = src.index('"right": "dnat"}},', fwd)
        fwd = src.rindex('"chain": "filter_%s" % "FORWARD",\n', fwd, dnat)
        end = src.index('{"accept": None}]}}})\n', dnat) + len('{"accept": None}]}}})\n')
        if '"expr"' in src[src.index("\n", fwd):dnat].split('"expr"', 1)[1]:
            raise LabError(f"{self.FIREWALLD_NFT}: not the layout this edit knows")
        patch = ('        if "StrictForwardPorts=yes" in open("/etc/firewalld/firewalld.conf").read():  '
                 f'{self.STRICT_MARK}=yes of firewalld >= 2.3\n'
                 '            default_rules.pop()\n')
        with open(path, "w") as f:
            f.write(src[:end] + patch + src[end:])

    def set_firewalld_conf(self, key, value):
        """KEY=VALUE in the root's /etc/firewalld/firewalld.conf (replaced or appended)."""
        path = self.path("/etc/firewalld/firewalld.conf")
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if not l.startswith(key + "=")]
        with open(path, "w") as f:
            f.write("\n".join(lines + [f"{key}={value}"]) + "\n")

    def wait_network_rebuild(self, mark, timeout=15):
        """Until virtnetworkd has rebuilt its firewall after MARK (networkReloadFirewallRules: on a
        firewalld `Reloaded` signal, SIGHUP or start-up) and applied nothing for 0.3 s since."""
        wait_for(lambda: any("networkReloadFirewallRules" in l for l in self.log_lines(mark)), timeout, 0.05,
                 "virtnetworkd to rebuild its firewall rules")

        def quiet():
            lines = [l for l in self.log_lines(mark) if "virFirewall" in l]
            if not lines or "Done applying groups" not in lines[-1]:
                return False
            stamp = lines[-1][:23]
            time.sleep(0.3)
            later = [l for l in self.log_lines(mark) if "virFirewall" in l]
            return later[-1][:23] == stamp
        wait_for(quiet, timeout, 0.05, "virtnetworkd's firewall rebuild to finish")

    def restart_firewalld(self):
        self.stop_daemon("firewalld")
        self.start_firewalld_only()

    def firewall_cmd(self, *args, check=True):
        return sh(*self.in_root("/usr/bin/firewall-cmd", *args), check=check, timeout=60)

    def stop_firewalld(self):
        self.stop_daemon("firewalld")

    # -- commands ---------------------------------------------------------------------------------
    def virsh(self, *args, check=True, input=None, timeout=60):
        return sh("virsh", "-c", self.uri, *args, check=check, input=input, timeout=timeout)

    def exec(self, *args, check=True, **kw):
        return sh(*self.cmd(*args), check=check, **kw)

    def write_etc(self, rel, text):
        path = self.path("/etc/" + rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def install_hooks(self, binary, *args, env=None, check=True, wait_rescan=True):
        self.wait_reload_idle()
        mark = self.log_mark()
        self.hooks_binary = os.path.abspath(binary)
        self._copy_in(self.hooks_binary)
        r = sh(*self.in_root(binary, "install", *args), env=self._hook_env(env), check=check)
        if r.returncode == 0 and wait_rescan:
            self._wait_rescan(mark, "Found hook script /etc/libvirt/hooks/qemu")
        return r

    def remove_hooks(self, binary=None, *args, env=None, check=True, wait_rescan=True):
        binary = binary or self.hooks_binary
        self.wait_reload_idle()
        mark = self.log_mark()
        r = sh(*self.in_root(binary, "uninstall", *args), env=self._hook_env(env), check=check)
        if r.returncode == 0:
            if wait_rescan:
                self._wait_rescan(mark, "No hook script /etc/libvirt/hooks/qemu")
            self.hooks_binary = None
        return r

    def _unlink_hooks_pointing_to(self, binary):
        removed = []
        for h in ("qemu", "network"):
            p = os.path.join(self.hooks_dir, h)
            with contextlib.suppress(OSError):
                if os.path.islink(p) and os.readlink(p) in (binary, os.path.realpath(binary)):
                    os.unlink(p)
                    removed.append(p)
        return removed

    def hook_processes(self):
        """Hook processes of this lab (in its network namespace)."""
        mine = harness.netns_id(f"/run/netns/{self.ns}")
        return [p for p in harness.LibvirtLab.hook_processes() if harness.pid_netns(p) == mine]

    def _clear_leases(self):
        p = self.path(harness.LEASES_FILE)
        if os.path.exists(p):
            with open(p, "w") as f:
                f.write("[]\n")

    def firewall(self):
        return {"nft": out(self.exec("nft", "list", "ruleset", check=False)), "iptables": "", "iptables-nat": ""}

    def iptables(self, *args, check=True):
        raise LabError("the libvirt 11 lab uses the nftables backend: no iptables rules to read")

    def guest_input(self):
        """Rules of libvirt's `ip libvirt_network guest_input` chain, one text line each (no counters)."""
        r = self.exec("nft", "list", "chain", "ip", "libvirt_network", "guest_input", check=False)
        return [re.sub(r"counter packets \d+ bytes \d+ ", "", l.strip()) for l in out(r).splitlines()
                if l.strip() and not l.strip().startswith(("table", "chain", "}", "type"))]

    # -- teardown ---------------------------------------------------------------------------------
    def _teardown(self):
        errs = []
        if self not in _LIVE:
            return errs

        def step(what, fn):
            try:
                fn()
            except Exception as e:
                errs.append(f"{what}: {e}")

        daemon_up = bool(self.daemon_pid("virtqemud")) and bool(self.daemon_pid("virtnetworkd"))
        self._cleanup_peers(errs)
        if daemon_up:
            self._cleanup_vms(errs)
            step("net-destroy default", lambda: self.virsh("net-destroy", "default", check=False))
        for d in ("virtqemud", "virtnetworkd", "virtlogd", "firewalld", "dbus"):
            step(f"stop {d}", lambda d=d: self.stop_daemon(d))
        for n in list(self.namespaces):
            def clear_ns(n=n):
                for p in harness.pids_in_netns(n):     # dnsmasq, qemu, dbus, the holder, listeners
                    kill_pid(p, timeout=5)
                sh("ip", "netns", "del", n)
                self.namespaces.remove(n)
            step(f"namespace {n}", clear_ns)
        if self.reaper:
            step("reaper", self.reaper.close)
            self.reaper = None
        step("overlay", lambda: _umount_overlay(self.mnt))
        step("overlay dirs", lambda: [shutil.rmtree(d) for d in (os.path.dirname(self.mnt), self.upper)
                                      if os.path.exists(d)])
        if errs:
            self.keep_workdir = True
        wd = getattr(self, "workdir", None)
        if wd and not self.keep_workdir and not self._workdir_arg:
            shutil.rmtree(wd, ignore_errors=True)
        self.running = False
        self._lock_fd = None
        _LIVE.remove(self)
        if _LIVE:
            _save_states()
        _release_lock()
        return errs
