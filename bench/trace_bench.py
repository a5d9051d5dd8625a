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
import signal
import subprocess
import time
from pathlib import Path

import netlab
from netlab import sh

ROOT = Path(__file__).resolve().parent.parent
U1 = "24242424-2424-4242-8242-b3b3b3b3b3b3"


def main():
    a = netlab.forward_args(ROOT)
    netlab.need_root_and_helper("trace_bench", a, ROOT)
    with netlab.ForwardLab("vptb") as lab:
        h, c, env = lab.h, lab.c, lab.env
        xml = netlab.forward_xml(U1)
        lab.start(a, xml)

        def rate():
            # Both states start from the same quiet: the trace's start (or the previous round's
            # teardown, whose table deletion the kernel finishes in an RCU grace period) settles first.
            return netlab.connect_rate(c, a.helper, a.seconds)

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
        base, traced, pairs = netlab.print_comparison(a, samples["none"], samples["trace"], "; trace on tcp/2223",
                                                      "no trace", "`virtport trace tcp 2223` running", ">= 0.98x")
        print()
        print(f"overhead: {100 * (1 - traced / base):.1f} % (median of round ratios: {100 * (1 - pairs):.1f} %)")


if __name__ == "__main__":
    main()
