#!/usr/bin/env python3
"""Source filter cost (issue 24): new TCP connections per second through a real forward whose
`source=` lists 1,000 prefixes (the client's address among them), against the same forward
without `source=` (no `table inet virtport_src` at all).

    client ns  c0 203.0.113.2 ── h0 203.0.113.1  host ns  br0 192.168.122.1 ── vnet0 ── guest ns eth0 192.168.122.10
                                                 (virtport: tcp 2222 -> 192.168.122.10:22)       (vpbench serve :22)

States, alternated round by round (switched by a `start` hook with the other XML: the live-edit path):
  none     the forward without source=
  filter   source= with 1,000 prefixes (999 /24s of 10.0.0.0/8, then 203.0.113.2): every packet
           of every measured connection is judged (ct direction original) by the interval sets
Each round: `vpbench connect 203.0.113.1 2222 SECONDS` in the client namespace (one connection at a
time: handshake then RST). Prints a table: median rate per state, ratio, and the median of the
round-by-round ratios. Target (issue 24): >= 0.95x.

Run: sudo python3 bench/source_bench.py [--rounds 10] [--seconds 2] [--prefixes 1000] [--bin .build/release/virtport]
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
U1 = "24242424-2424-4242-8242-c5c5c5c5c5c5"


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
    p.add_argument("--prefixes", type=int, default=1000)
    p.add_argument("--bin", default=str(ROOT / ".build" / "release" / "virtport"))
    p.add_argument("--helper", default=str(ROOT / "bench" / "results" / "bin" / "vpbench"))
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("source_bench: needs root (network namespaces, nftables)")
    if not os.path.exists(a.helper):
        os.makedirs(os.path.dirname(a.helper), exist_ok=True)
        sh("cc", "-O2", "-o", a.helper, ROOT / "bench" / "vpbench.c")
    tag = uuid.uuid4().hex[:6]
    h, c, g = f"vpsb-{tag}-h", f"vpsb-{tag}-c", f"vpsb-{tag}-g"
    work = tempfile.mkdtemp(prefix="vpsb-")
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
        many = " ".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(a.prefixes - 1)) + " 203.0.113.2"

        def xml(source):
            attr = f" source='{source}'" if source else ""
            return (f"<domain type='kvm'><name>bench</name><uuid>{U1}</uuid><metadata>"
                    f"<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp' guest='192.168.122.10'{attr}>"
                    "<vp:range start='2222' to='22'/></vp:portForward></vp:virtport></metadata><devices>"
                    "<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface>"
                    "</devices></domain>").encode()

        def switch(source):
            sh(a.bin, "hook", "qemu", "bench", "start", "begin", "-", ns=h, env=env, input=xml(source))
            present = "virtport_src" in sh("nft", "list", "tables", ns=h).stdout.decode()
            assert present == bool(source), "source filter table not as expected"

        for op in ("prepare", "start", "started"):
            sh(a.bin, "hook", "qemu", "bench", op, "begin", "-", ns=h, env=env, input=xml(None))
        srv = subprocess.Popen(["ip", "netns", "exec", g, a.helper, "serve", "0.0.0.0", "22"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(srv)
        assert srv.stdout.readline().decode().strip() == "ready", "vpbench serve did not start"
        sh(a.helper, "connect", "203.0.113.1", "2222", "0.5", ns=c)   # warm-up, and the path works

        def rate():
            # Both states start from the same quiet (a table deleted by the switch is freed by the
            # kernel in an RCU grace period).
            time.sleep(0.5)
            out = sh(a.helper, "connect", "203.0.113.1", "2222", a.seconds, ns=c).stdout.split()
            return float(out[2])

        # The filter works: the client is allowed, another address would not be.
        switch(many)
        sh(a.helper, "connect", "203.0.113.1", "2222", "0.5", ns=c)
        samples = {"none": [], "filter": []}
        for i in range(a.rounds):
            order = ["none", "filter"] if i % 2 == 0 else ["filter", "none"]
            for state in order:
                switch(many if state == "filter" else None)
                samples[state].append(rate())
        switch(None)
        samples["trace"] = samples["filter"]
        base = statistics.median(samples["none"])
        traced = statistics.median(samples["trace"])
        pairs = statistics.median(t / n for t, n in zip(samples["trace"], samples["none"]))
        print(f"New TCP connections per second through one forward (tcp 2222 -> guest :22), vpbench connect, "
              f"{a.rounds} rounds of {a.seconds:g} s per state, alternating:")
        print()
        print("| state | connections/s (median) | min–max | vs none (median of round ratios) | target |")
        print("|---|---|---|---|---|")
        print(f"| no source= | {base:.0f} | {min(samples['none']):.0f}–{max(samples['none']):.0f} | 1.00x | |")
        print(f"| source= with {a.prefixes:,} prefixes | {traced:.0f} | {min(samples['filter']):.0f}–{max(samples['filter']):.0f} "
              f"| {traced / base:.3f}x ({pairs:.3f}x) | >= 0.95x |")
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
        for n in (h, c, g):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
