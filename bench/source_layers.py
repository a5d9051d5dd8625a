#!/usr/bin/env python3
"""Where a source filter's per-connection cost goes (issue 24, BENCHMARKS.md "Source filter: first
packets only"): the forward of `source_bench.py` without `source=`, and beside it a copy of the
`table inet virtport_src` that virtport builds for 1,000 prefixes, loaded with `nft -f` as `table
inet exp` in one of three states, rotated round by round:

  none         no copy
  jump-accept  the copy with its IPv4 allow rule replaced by `accept`: the nat chain, the port
               look-up and the jump, no allow-set look-up
  full         the copy as virtport builds it

Each round: `vpbench connect` for SECONDS per state; prints per state the median rate, the median
of the round ratios against `none`, and the ratios.

Run: sudo python3 bench/source_layers.py [--rounds 12] [--seconds 2] [--bin .build/release/virtport]
"""
import statistics
from pathlib import Path

import netlab
from netlab import sh

ROOT = Path(__file__).resolve().parent.parent
U1 = "24242424-2424-4242-8242-c5c5c5c5c5c5"


def main():
    a = netlab.forward_args(ROOT)
    netlab.need_root_and_helper("source_layers", a, ROOT)
    with netlab.ForwardLab("vpsl") as lab:
        h, c, env = lab.h, lab.c, lab.env
        many = " ".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(999)) + " 203.0.113.2"
        xml = lambda src: netlab.forward_xml(U1, f" source='{src}'" if src else "")
        lab.start(a, xml(many))
        full = sh("nft", "list", "table", "inet", "virtport_src", ns=h).stdout.decode()
        sh(a.bin, "hook", "qemu", "bench", "start", "begin", "-", ns=h, env=env, input=xml(None))
        full = full.replace("table inet virtport_src", "table inet exp")
        jump = full.replace("ip saddr . th dport . meta l4proto . ip daddr @allow4 accept", "accept")
        assert jump != full, "the allow rule is not where it was"
        states = {"none": None, "jump-accept": jump, "full": full}
        samples = {k: [] for k in states}
        for i in range(a.rounds):
            names = list(states)
            for s in names[i % 3:] + names[:i % 3]:
                sh("nft", "delete", "table", "inet", "exp", ns=h, check=False)
                if states[s]:
                    sh("nft", "-f", "-", ns=h, input=states[s].encode())
                samples[s].append(netlab.connect_rate(c, a.helper, a.seconds))
        for s in states:
            r = [x / n for x, n in zip(samples[s], samples["none"])]
            print(f"{s:12} median {statistics.median(samples[s]):.0f} conn/s, median round ratio "
                  f"{statistics.median(r):.3f}; ratios " + " ".join(f"{x:.3f}" for x in r))


if __name__ == "__main__":
    main()
