#!/usr/bin/env python3
"""libvirt's firewall rebuild -> forwards answer again, with the agent running (issue 22 item 3,
BENCHMARKS.md "libvirt's rebuilds").

libvirt's nftables ruleset (tests/fixtures, libvirt 10.4) in the integration lab's host namespace, a
forward applied, then libvirt's rebuild replayed as virtnetworkd does it (its rules deleted and
inserted again at the top of its chains, which leaves libvirt's reject in front of virtport's
accept): as one `nft -f` transaction, and as one `nft` process per rule. t0 = the rebuild's end
(CLOCK_MONOTONIC, shared by all namespaces); a prober in the client namespace connects in a tight
loop (10 ms per attempt: libvirt's reject answers with ICMP errors the kernel rate-limits, so most
refused attempts get no answer) until the guest answers. A fresh agent every 5 runs (ten
order restorations a minute would, correctly, start its back-off).

  sudo python3 bench/reload_bench.py --bin .build/release/virtport [--runs 30]
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / ".build" / "release" / "virtport"))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    import conftest
    conftest.BIN = args.bin
    import test_agent
    test_agent.BIN = args.bin
    import agent_bench
    from agent_bench import stats_ms
    # libvirt's reject answers a SYN with an ICMP error, which the kernel rate-limits (icmp_ratelimit):
    # most refused attempts get no answer at all, so each attempt waits 10 ms, not agent_bench's 200.
    agent_bench.PROBER = agent_bench.PROBER.replace("timeout=0.2", "timeout=0.01")
    Prober = agent_bench.Prober
    from test_agent import Agent, agent_socket_config
    import test_libvirt_reload as t

    res = {}
    lab = conftest.Lab(pathlib.Path(tempfile.mkdtemp(prefix="vpreload-", dir=args.tmp)))
    try:
        lab.build()
        agent_socket_config(lab)
        t.nft_setup(lab)
        prober = Prober(lab.client, "203.0.113.1", 2222)
        for name, rebuild in (("one_transaction", t.rebuild_nftables), ("per_process", t.rebuild_nftables_per_process)):
            samples, took = [], []
            agent = None
            for i in range(args.runs):
                if i % 5 == 0:
                    if agent:
                        agent.stop()
                    agent = Agent(lab)
                    time.sleep(0.2)       # its watchers start after "listening on"
                t0 = time.monotonic()
                rebuild(lab)
                end = time.monotonic()
                samples.append(prober.wait("guest1") - end)
                took.append(end - t0)
                assert t.in_front(lab), t.chain_rules(lab)
                time.sleep(0.1)
            agent.stop()
            res[f"{name}_rebuild_end_to_traffic"] = stats_ms(samples)
            res[f"{name}_rebuild_duration"] = stats_ms(took)
        prober.close()
    finally:
        lab.cleanup()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
