#!/usr/bin/env python3
"""Trace overhead on untraced traffic (issue 24): new TCP connections per second through a real
forward while a `virtport trace` runs on *another* port, against none running.

    client ns  c0 203.0.113.2 ── h0 203.0.113.1  host ns  br0 192.168.122.1 ── vnet0 ── guest ns eth0 192.168.122.10
                                                 (virtport: tcp 2222 -> 192.168.122.10:22)       (vpbench serve :22)

States, alternated round by round (a trace started before and stopped after each of its rounds):
  none     no trace running
  trace    `virtport trace tcp 2223 --timeout 600` running (its tables mark tcp/2223 only: every
           packet of the measured connections crosses its two base chains without a match)
Each round: `vpbench connect 203.0.113.1 2222 SECONDS` in the client namespace (one connection at a
time: handshake then RST). Prints a table: median rate per state, ratio, and the median of the
round-by-round ratios. Target (issue 24): overhead <= 2 %.

Run: sudo python3 bench/trace_bench.py [--rounds 10] [--seconds 2] [--bin .build/release/virtport]
(builds bench/results/bin/vpbench with cc when it is missing).
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
U1 = "24242424-2424-4242-8242-b3b3b3b3b3b3"


def sh(*args, ns=None, check=True, env=None, input=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, env=env, input=input, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode().strip()}")
    return r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--bin", default=str(ROOT / ".build" / "release" / "virtport"))
    p.add_argument("--helper", default=str(ROOT / "bench" / "results" / "bin" / "vpbench"))
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("trace_bench: needs root (network namespaces, nftables)")
    if not os.path.exists(a.helper):
        os.makedirs(os.path.dirname(a.helper), exist_ok=True)
        sh("cc", "-O2", "-o", a.helper, ROOT / "bench" / "vpbench.c")
    tag = uuid.uuid4().hex[:6]
    h, c, g = f"vptb-{tag}-h", f"vptb-{tag}-c", f"vptb-{tag}-g"
    work = tempfile.mkdtemp(prefix="vptb-")
    procs = []
    try:
        for n in (h, c, g):
            sh("ip", "netns", "add", n)
            sh("ip", "link", "set", "lo", "up", ns=n)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=h)
        sh("ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c)
        sh("ip", "addr", "add", "203.0.113.1/24", "dev", "h0", ns=h)
        sh("ip", "link", "set", "h0", "up", ns=h)
        sh("ip", "addr", "add", "203.0.113.2/24", "dev", "c0", ns=c)
        sh("ip", "link", "set", "c0", "up", ns=c)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=h)
        sh("ip", "addr", "add", "192.168.122.1/24", "dev", "br0", ns=h)
        sh("ip", "link", "set", "br0", "up", ns=h)
        sh("ip", "link", "add", "vnet0", "netns", h, "type", "veth", "peer", "name", "eth0", "netns", g)
        sh("ip", "link", "set", "vnet0", "master", "br0", ns=h)
        sh("ip", "link", "set", "vnet0", "up", ns=h)
        sh("ip", "addr", "add", "192.168.122.10/24", "dev", "eth0", ns=g)
        sh("ip", "link", "set", "eth0", "up", ns=g)
        sh("ip", "route", "add", "default", "via", "192.168.122.1", ns=g)
        run_dir = Path(work) / "run-libvirt"
        (run_dir / "network").mkdir(parents=True)
        (run_dir / "network" / "default.xml").write_text(
            "<networkstatus><network><name>default</name><forward mode='nat'/><bridge name='br0'/>"
            "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
        config = Path(work) / "virtport.conf"
        config.write_text(f'database = "{work}/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{run_dir}"\n'
                          f'hooks_dir = "{work}/hooks"\n[log]\nsyslog_socket = ""\n')
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": str(config)}
        xml = (f"<domain type='kvm'><name>bench</name><uuid>{U1}</uuid><metadata>"
               "<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp' guest='192.168.122.10'>"
               "<vp:range start='2222' to='22'/></vp:portForward></vp:virtport></metadata><devices>"
               "<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface>"
               "</devices></domain>").encode()
        for op in ("prepare", "start", "started"):
            sh(a.bin, "hook", "qemu", "bench", op, "begin", "-", ns=h, env=env, input=xml)
        srv = subprocess.Popen(["ip", "netns", "exec", g, a.helper, "serve", "0.0.0.0", "22"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(srv)
        assert srv.stdout.readline().decode().strip() == "ready", "vpbench serve did not start"
        sh(a.helper, "connect", "203.0.113.1", "2222", "0.5", ns=c)   # warm-up, and the path works

        def rate():
            # Both states start from the same quiet: the trace's start (or the previous round's
            # teardown, whose table deletion the kernel finishes in an RCU grace period) settles first.
            time.sleep(0.5)
            out = sh(a.helper, "connect", "203.0.113.1", "2222", a.seconds, ns=c).stdout.split()
            return float(out[2])

        def with_trace():
            t = subprocess.Popen(["ip", "netns", "exec", h, a.bin, "trace", "tcp", "2223", "--timeout", "600"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            for _ in range(200):
                if "_trace_" in sh("nft", "list", "tables", ns=h).stdout.decode():
                    break
                time.sleep(0.02)
            else:
                raise RuntimeError(f"trace did not start: {t.communicate()}")
            try:
                return rate()
            finally:
                t.send_signal(signal.SIGTERM)
                t.communicate(timeout=30)
                assert "_trace_" not in sh("nft", "list", "tables", ns=h).stdout.decode(), "trace left its tables"

        samples = {"none": [], "trace": []}
        for i in range(a.rounds):
            order = ["none", "trace"] if i % 2 == 0 else ["trace", "none"]
            for state in order:
                samples[state].append(rate() if state == "none" else with_trace())
        base = statistics.median(samples["none"])
        traced = statistics.median(samples["trace"])
        pairs = statistics.median(t / n for t, n in zip(samples["trace"], samples["none"]))
        print(f"New TCP connections per second through one forward (tcp 2222 -> guest :22), vpbench connect, "
              f"{a.rounds} rounds of {a.seconds:g} s per state, alternating; trace on tcp/2223:")
        print()
        print("| state | connections/s (median) | min–max | vs none (median of round ratios) | target |")
        print("|---|---|---|---|---|")
        print(f"| no trace | {base:.0f} | {min(samples['none']):.0f}–{max(samples['none']):.0f} | 1.00x | |")
        print(f"| `virtport trace tcp 2223` running | {traced:.0f} | {min(samples['trace']):.0f}–{max(samples['trace']):.0f} "
              f"| {traced / base:.3f}x ({pairs:.3f}x) | >= 0.98x |")
        print()
        print(f"overhead: {100 * (1 - traced / base):.1f} % (median of round ratios: {100 * (1 - pairs):.1f} %)")
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
        for n in (h, c, g):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
