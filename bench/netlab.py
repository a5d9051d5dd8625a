"""The namespace lab the forward benches share: a client, a host bridging a guest, and a
virtport configuration pointing at a fake libvirt run directory with the `default` network.

    client ns  c0 203.0.113.2 ── h0 203.0.113.1  host ns  br0 192.168.122.1 ── vnet0 ── guest ns eth0 192.168.122.10
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def sh(*args, ns=None, check=True, env=None, input=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, env=env, input=input, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode().strip()}")
    return r


def topology(h, c, g):
    """Creates the namespaces host `h`, client `c` and guest `g` and wires them as drawn above."""
    for n in (h, c, g):
        sh("ip", "netns", "add", n)
        sh("ip", "link", "set", "lo", "up", ns=n)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=h)
    sh("ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c)
    addr_up("h0", "203.0.113.1/24", h)
    addr_up("c0", "203.0.113.2/24", c)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=h)
    addr_up("br0", "192.168.122.1/24", h)
    sh("ip", "link", "add", "vnet0", "netns", h, "type", "veth", "peer", "name", "eth0", "netns", g)
    sh("ip", "link", "set", "vnet0", "master", "br0", ns=h)
    sh("ip", "link", "set", "vnet0", "up", ns=h)
    addr_up("eth0", "192.168.122.10/24", g)
    sh("ip", "route", "add", "default", "via", "192.168.122.1", ns=g)


def addr_up(dev, addr, ns):
    sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
    sh("ip", "link", "set", dev, "up", ns=ns)


def default_network(run_dir):
    """Writes `run_dir`/network/default.xml: libvirt's `default` network on br0."""
    (run_dir / "network").mkdir(parents=True)
    (run_dir / "network" / "default.xml").write_text(
        "<networkstatus><network><name>default</name><forward mode='nat'/><bridge name='br0'/>"
        "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")


def delete_namespaces(names):
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


# The forward benches (source_bench, trace_bench): one VM `bench` forwarding tcp 2222 to the guest's
# :22, where `vpbench serve` listens; the client measures new connections per second.

def forward_args(root, own=None):
    """Parses the options of a forward bench: `--rounds`, `--seconds`, the bench's own (`own(parser)`
    adds them), `--bin`, `--helper`."""
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0)
    if own:
        own(p)
    p.add_argument("--bin", default=str(root / ".build" / "release" / "virtport"))
    p.add_argument("--helper", default=str(root / "bench" / "results" / "bin" / "vpbench"))
    return p.parse_args()


def need_root_and_helper(name, a, root):
    """Exits unless root; builds `a.helper` (vpbench) with cc when it is missing."""
    if os.geteuid() != 0:
        sys.exit(f"{name}: needs root (network namespaces, nftables)")
    if not os.path.exists(a.helper):
        os.makedirs(os.path.dirname(a.helper), exist_ok=True)
        sh("cc", "-O2", "-o", a.helper, root / "bench" / "vpbench.c")


def plain_config(work, run_dir):
    """Writes `work`/virtport.conf (journal in `work`, no libvirt, no syslog); returns the hooks' environment."""
    config = Path(work) / "virtport.conf"
    config.write_text(f'database = "{work}/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{run_dir}"\n'
                      f'hooks_dir = "{work}/hooks"\n[log]\nsyslog_socket = ""\n')
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": str(config)}


def forward_xml(uuid, attr=""):
    """The domain `bench`: one forward tcp 2222 -> 192.168.122.10:22 (`attr`: more attributes of it)."""
    return (f"<domain type='kvm'><name>bench</name><uuid>{uuid}</uuid><metadata>"
            f"<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp' guest='192.168.122.10'{attr}>"
            "<vp:range start='2222' to='22'/></vp:portForward></vp:virtport></metadata><devices>"
            "<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface>"
            "</devices></domain>").encode()


class ForwardLab:
    """The lab of a forward bench: namespaces `h`, `c`, `g` (named after `prefix`), a work directory
    with the config (`env`: the hooks' environment) and `procs` to kill at the end."""

    def __init__(self, prefix):
        tag = uuid.uuid4().hex[:6]
        self.h, self.c, self.g = f"{prefix}-{tag}-h", f"{prefix}-{tag}-c", f"{prefix}-{tag}-g"
        self.work = tempfile.mkdtemp(prefix=f"{prefix}-")
        self.procs = []

    def __enter__(self):
        try:
            topology(self.h, self.c, self.g)
            run_dir = Path(self.work) / "run-libvirt"
            default_network(run_dir)
            self.env = plain_config(self.work, run_dir)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for pr in self.procs:
            pr.kill()
            pr.wait()
        delete_namespaces((self.h, self.c, self.g))

    def start(self, a, xml):
        """Runs the hooks prepare, start, started of `xml`, starts `vpbench serve` in the guest and
        connects once (warm-up, and the path works)."""
        for op in ("prepare", "start", "started"):
            sh(a.bin, "hook", "qemu", "bench", op, "begin", "-", ns=self.h, env=self.env, input=xml)
        self.procs.append(serve(self.g, a.helper))
        sh(a.helper, "connect", "203.0.113.1", "2222", "0.5", ns=self.c)


def serve(g, helper):
    """Starts `vpbench serve` on the guest's :22; returns the process once it is ready."""
    srv = subprocess.Popen(["ip", "netns", "exec", g, helper, "serve", "0.0.0.0", "22"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert srv.stdout.readline().decode().strip() == "ready", "vpbench serve did not start"
    return srv


def connect_rate(c, helper, seconds):
    """New connections per second from the client to the forward for `seconds`, after a 0.5 s quiet."""
    time.sleep(0.5)
    out = sh(helper, "connect", "203.0.113.1", "2222", seconds, ns=c).stdout.split()
    return float(out[2])


def print_comparison(a, none, other, states, none_label, other_label, target):
    """Prints the forward benches' table: `none` and `other` (connections/s per round), the medians,
    the ratio and the median of round ratios. Returns (median none, median other, median of ratios)."""
    base = statistics.median(none)
    traced = statistics.median(other)
    pairs = statistics.median(t / n for t, n in zip(other, none))
    print(f"New TCP connections per second through one forward (tcp 2222 -> guest :22), vpbench connect, "
          f"{a.rounds} rounds of {a.seconds:g} s per state, alternating{states}:")
    print()
    print("| state | connections/s (median) | min–max | vs none (median of round ratios) | target |")
    print("|---|---|---|---|---|")
    print(f"| {none_label} | {base:.0f} | {min(none):.0f}–{max(none):.0f} | 1.00x | |")
    print(f"| {other_label} | {traced:.0f} | {min(other):.0f}–{max(other):.0f} "
          f"| {traced / base:.3f}x ({pairs:.3f}x) | {target} |")
    print()
    print("Round ratios (in order): " + " ".join(f"{t / n:.3f}" for t, n in zip(other, none)))
    return base, traced, pairs
