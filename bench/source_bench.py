#!/usr/bin/env python3
"""Source filter cost (issue 24): new TCP connections per second through a real forward whose
`source=` lists 1,000 prefixes (the client's address among them), against the same forward
without `source=` (no `table inet virtport_src` at all).

    client ns  c0 203.0.113.2 ── h0 203.0.113.1  host ns  br0 192.168.122.1 ── vnet0 ── guest ns eth0 192.168.122.10
                                                 (virtport: tcp 2222 -> 192.168.122.10:22)       (vpbench serve :22)

States, alternated round by round (switched by a `start` hook with the other XML: the live-edit path):
  none     the forward without source=
  filter   source= with 1,000 prefixes (999 /24s of 10.0.0.0/8, then 203.0.113.2): the first
           packet of every measured connection is judged by the interval sets (the table's nat
           chain; a table of an older virtport, `--bin`, may judge every packet)
Each round: `vpbench connect 203.0.113.1 2222 SECONDS` in the client namespace (one connection at a
time: handshake then RST). Prints a table: median rate per state, ratio, and the median of the
round-by-round ratios. Target (issue 24): >= 0.95x.

Run: sudo python3 bench/source_bench.py [--rounds 10] [--seconds 2] [--prefixes 1000] [--bin .build/release/virtport]
(builds bench/results/bin/vpbench with cc when it is missing).
"""
import time
from pathlib import Path

import netlab
from netlab import sh

ROOT = Path(__file__).resolve().parent.parent
U1 = "24242424-2424-4242-8242-c5c5c5c5c5c5"


def main():
    a = netlab.forward_args(ROOT, lambda p: p.add_argument("--prefixes", type=int, default=1000))
    netlab.need_root_and_helper("source_bench", a, ROOT)
    with netlab.ForwardLab("vpsb") as lab:
        h, c, env = lab.h, lab.c, lab.env
        many = " ".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(a.prefixes - 1)) + " 203.0.113.2"

        def xml(source):
            return netlab.forward_xml(U1, f" source='{source}'" if source else "")

        def switch(source):
            sh(a.bin, "hook", "qemu", "bench", "start", "begin", "-", ns=h, env=env, input=xml(source))
            present = "virtport_src" in sh("nft", "list", "tables", ns=h).stdout.decode()
            assert present == bool(source), "source filter table not as expected"

        lab.start(a, xml(None))

        def rate():
            # Both states start from the same quiet (a table deleted by the switch is freed by the
            # kernel in an RCU grace period).
            return netlab.connect_rate(c, a.helper, a.seconds)

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
        netlab.print_comparison(a, samples["none"], samples["filter"], "", "no source=",
                                f"source= with {a.prefixes:,} prefixes", ">= 0.95x")

if __name__ == "__main__":
    main()
