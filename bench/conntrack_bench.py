#!/usr/bin/env python3
"""Conntrack deletion cost when a VM stops (issue 21 "Speed": <= 2 ms per stopped VM with 100,000
unrelated entries in the table). BENCHMARKS.md "Connection tracking".

Namespaces: client (203.0.113.2) -- host (203.0.113.1; br0 192.168.122.1/24) -- guest
(192.168.122.10 behind br0, a UDP listener on ports 5000-5009). The VM has 10 UDP forwards
(host 7000-7009 -> guest 5000-5009); before each `stopped`, the client opens one live UDP flow
through each forward (10 DNATed conntrack entries), so every stop has 10 entries to delete.
The host's conntrack table also holds N unrelated UDP entries (0 or 100,000, inserted over
ctnetlink before the rounds).

Per round: `virtport hook qemu start` (untimed), 10 flows, then `virtport hook qemu stopped`, timed
from outside (wall clock of the process) and from inside (the hook's own syslog line
"conntrack: K flows of 10 removed forwards deleted in X us"). A reference row times one
filtered kernel walk (IPCTNL_MSG_CT_DELETE with CTA_FILTER on the guest address: what a
deletion without the flow record costs) at the same table size.

  sudo python3 bench/conntrack_bench.py [--rounds 30] [--unrelated 100000] [--bin PATH]
"""
import argparse
import os
import pathlib
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import ctnl  # noqa: E402
import netlab  # noqa: E402
from syslog_catcher import SyslogCatcher  # noqa: E402

UUID = "c0c0c0c0-1111-4111-8111-111111111111"


def sh(*a, ns=None, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(a)
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def setns(path):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def domain():
    fw = "<vp:portForward proto='udp' guest='192.168.122.10'><vp:range start='7000' end='7009' to='5000'/></vp:portForward>"
    return ("<domain type='qemu'><name>ctbench</name><uuid>" + UUID + "</uuid><metadata>"
            "<vp:virtport xmlns:vp='urn:virtport:domain:1'>" + fw + "</vp:virtport></metadata>"
            "<memory unit='KiB'>65536</memory><devices><interface type='network'><mac address='52:54:00:aa:bb:01'/>"
            "<source network='default'/><model type='virtio'/></interface></devices></domain>")


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[max(0, int(round(0.95 * len(xs))) - 1)], xs[0], xs[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--unrelated", type=int, nargs="*", default=[0, 100000])
    ap.add_argument("--bin", default=os.environ.get("VIRTPORT_BIN", str(ROOT / ".build/release/virtport")))
    args = ap.parse_args()
    tag = f"vpct{os.getpid()}"
    host, client, guest = tag + "h", tag + "c", tag + "g"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="vp-ctbench-"))
    procs = []
    try:
        netlab.topology(host, client, guest)
        run = tmp / "run"
        netlab.default_network(run)
        (run / "qemu").mkdir()
        conf = tmp / "virtport.conf"
        conf.write_text(f'database = "{tmp}/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{run}"\n'
                        f'libvirt_config_dir = "{tmp}/etc"\nlibvirt_state_dir = "{tmp}/state"\nhooks_dir = "{tmp}/hooks"\n'
                        f'[log]\nsyslog_socket = "{tmp}/log.sock"\n')
        log = SyslogCatcher(str(tmp / "log.sock"))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": str(conf)}
        echo = ("import socket, select\nss = []\nfor p in range(5000, 5010):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', p)); ss.append(s)\n"
                "print('ready', flush=True)\nwhile True:\n    for s in select.select(ss, [], [])[0]:\n"
                "        d, a = s.recvfrom(100); s.sendto(d, a)\n")
        p = subprocess.Popen(["ip", "netns", "exec", guest, sys.executable, "-c", echo], stdout=subprocess.PIPE)
        procs.append(p)
        assert p.stdout.readline().strip() == b"ready"
        xml = domain().encode()

        def hook(op, sub):
            t = time.perf_counter()
            r = subprocess.run(["ip", "netns", "exec", host, args.bin, "hook", "qemu", "ctbench", op, sub, "-"],
                               input=xml, env=env, capture_output=True)
            dt = time.perf_counter() - t
            assert r.returncode == 0, r.stderr
            return dt

        # One client socket per forward, reused every round with a fresh source port.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        results = []
        for unrelated in args.unrelated:
            setns(f"/run/netns/{host}")
            ct = ctnl.Ct()
            # Flush the table (walk) and fill it to the level.
            ct.s.send(ctnl.msg(ctnl.CT_DELETE, ctnl.NLM_F_REQUEST | ctnl.NLM_F_ACK, socket.AF_INET, b"", 1))
            ct._acks(1)
            if unrelated:
                ct.create_udp(ctnl.unrelated(unrelated), timeout=3600)
            walk = []
            for _ in range(args.rounds):
                m = ctnl.nest(ctnl.CTA_TUPLE_REPLY, ctnl.nest(ctnl.CTA_TUPLE_IP, ctnl.attr(1, bytes([192, 168, 122, 99]))))
                m += ctnl.nest(ctnl.CTA_FILTER, ctnl.attr(1, struct.pack("=I", 0)), ctnl.attr(2, struct.pack("=I", 1)))
                t = time.perf_counter()
                ct.s.send(ctnl.msg(ctnl.CT_DELETE, ctnl.NLM_F_REQUEST | ctnl.NLM_F_ACK, socket.AF_INET, m, 2))
                ct._acks(1)
                walk.append(time.perf_counter() - t)
            setns(f"/proc/self/fd/{home}")
            setns(f"/run/netns/{client}")
            wall, inside, deleted = [], [], []
            for i in range(args.rounds):
                hook("prepare", "begin")
                hook("start", "begin")
                socks = []
                for k in range(10):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.settimeout(2)
                    s.sendto(b"x", ("203.0.113.1", 7000 + k))
                    s.recvfrom(10)
                    socks.append(s)
                before = len(log.messages)
                wall.append(hook("stopped", "end"))
                hook("release", "end")
                for s in socks:
                    s.close()
                deadline = time.time() + 2
                line = None
                while time.time() < deadline and line is None:
                    for text in log.messages[before:]:
                        if text.startswith("conntrack: "):
                            line = text
                    time.sleep(0.001)
                assert line, "no conntrack line in the log"
                w = line.split()
                deleted.append(int(w[1]))
                inside.append(int(w[w.index("in") + 1]) / 1e6)
            setns(f"/proc/self/fd/{home}")
            results.append((unrelated, wall, inside, deleted, walk))
            ct.s.close()
        ms = lambda v: f"{v * 1000:.3f}"
        print(f"\nvirtport {args.bin}; {args.rounds} rounds per row; kernel {os.uname().release}\n")
        print("| unrelated entries | entries deleted per stop | deletion inside the hook, median / p95 / min-max (ms) "
              "| hook `stopped` wall, median / p95 (ms) | one filtered walk (no record), median / p95 (ms) |")
        print("|---:|---:|---|---|---|")
        for unrelated, wall, inside, deleted, walk in results:
            m, p95, lo, hi = stats(inside)
            wm, wp, _, _ = stats(wall)
            km, kp, _, _ = stats(walk)
            print(f"| {unrelated:,} | {statistics.median(deleted):.0f} | {ms(m)} / {ms(p95)} / {ms(lo)}-{ms(hi)} "
                  f"| {ms(wm)} / {ms(wp)} | {ms(km)} / {ms(kp)} |")
    finally:
        for p in procs:
            p.kill()
        netlab.delete_namespaces((host, client, guest))


if __name__ == "__main__":
    main()
