#!/usr/bin/env python3
"""`start`/`stopped` of 10 forwards with the agent, with 10,000 other forwards installed vs none,
measured A/B and interleaved (BENCHMARKS.md "Agent at 10,000 forwards"): for a noisy, shared machine.

    sudo python3 bench/agent_scale.py --bin NEW [--bin OLD ...] [--rounds 3] [--runs 40]

Each round visits 0 and then 10,000 other forwards (the order flips every round); at each visit
every binary in turn gets a fresh `virtport agent --verbose` and two hyperfine cells, exactly as
bench.py's agent rows (`start` with `stopped` as prepare, and the reverse; vpbench settle). Besides
the wall times it reads the agent's CPU time (utime + stime of all its threads, /proc/PID/stat) over
each cell (/proc/PID/task/*/schedstat): CPU per timed command, its prepare included, which load on
the other core barely moves; and the hook process's own CPU (hyperfine's user + system).
Same topology, config and helper as bench.py (imported); its own namespaces, removed on exit.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402



def cpu_ms(pid):
    """CPU time of every thread of `pid` so far (schedstat: nanoseconds on a CPU)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", action="append", required=True, help="a virtport binary (repeat for A/B)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--others", type=int, default=10000)
    p.add_argument("--levels", default=None, help="comma-separated levels of other forwards (default: 0 and --others)")
    p.add_argument("--alone", action="store_true", help="also time the hook alone (no agent) at each visit")
    p.add_argument("--baselines", action="store_true",
                   help="at 0 other forwards, each round: bench.py's baselines for 10 forwards (nft -f, one iptables "
                        "process per rule, the classic Python hook), for the ratios of issue 24's speed table")
    p.add_argument("--peer-hook", default=None,
                   help="with --baselines: saschpe/libvirt-hook-qemu's `hooks` file (hooks.schema.json beside it), "
                        "timed as the peer row; the cycle ratios are then given against it too")
    p.add_argument("--out", default=None, help="directory for JSON, hyperfine files and agent logs")
    a = p.parse_args()
    if os.getuid() != 0:
        sys.exit("agent_scale.py: needs root (network namespaces, nftables)")
    tmp = tempfile.mkdtemp(prefix="vpscale.", dir="/var/tmp")
    out = a.out or os.path.join(HERE, "results", "agent-scale-" + B.datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(out, exist_ok=True)
    helper = os.path.join(HERE, "results", "bin", "vpbench")
    if not os.path.exists(helper) or os.path.getmtime(helper) < os.path.getmtime(os.path.join(HERE, "vpbench.c")):
        os.makedirs(os.path.dirname(helper), exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-o", helper, os.path.join(HERE, "vpbench.c")], check=True)
    bins = [os.path.realpath(x) for x in a.bin]
    labels = [f"{chr(65 + i)}" for i in range(len(bins))]
    ns = argparse.Namespace(mode="full", bin=bins[0], helper=helper, tmp=tmp, out=out, ns_prefix=f"vps-{os.getpid()}",
                            peer_hook=a.peer_hook)
    b = B.Bench(ns)
    b.size = dict(b.size, warmup=3, base_forwards=[10], base_runs=a.runs, slow_runs={10: 30})
    b.visits = {0: 1}
    rows = []
    try:
        b.build_topology()
        vm = b.measured(10)
        for r in range(a.rounds):
            levels = [int(x) for x in a.levels.split(",")] if a.levels else [0, a.others]
            for level in (levels if r % 2 == 0 else levels[::-1]):
                b.bin = bins[0]
                b.set_others(level)
                for label, binary in zip(labels, bins):
                    b.bin = binary
                    if a.alone:
                        for op, cmd, prep in (("start", vm.start, vm.stopped), ("stopped", vm.stopped, vm.start)):
                            key = f"{label}-r{r + 1}-o{level}-{op}-alone"
                            b.hyperfine(key, cmd, prepare=prep, runs=a.runs)
                            s = b.stats(key)
                            with open(os.path.join(out, b.cells[key]["files"][-1])) as f:
                                h = json.load(f)["results"][0]
                            rows.append(dict(bin=label, path=binary, round=r + 1, others=level, op=op + "-alone",
                                             median=s["median"], p95=s["p95"], max=s["max"], runs=s["runs"], agent_cpu_ms=0.0,
                                             hook_cpu_ms=(h["user"] + h["system"]) * 1000))
                    with b.agent() as agent:
                        b.must(vm.start, "start (agent)")
                        b.must(vm.stopped, "stopped (agent)")
                        for op, cmd, prep in (("start", vm.start, vm.stopped), ("stopped", vm.stopped, vm.start)):
                            key = f"{label}-r{r + 1}-o{level}-{op}"
                            c0 = cpu_ms(agent.pid)
                            b.hyperfine(key, cmd, prepare=prep, runs=a.runs)
                            cpu = (cpu_ms(agent.pid) - c0) / (a.runs + b.size["warmup"])
                            s = b.stats(key)
                            with open(os.path.join(out, b.cells[key]["files"][-1])) as f:
                                h = json.load(f)["results"][0]
                            rows.append(dict(bin=label, path=binary, round=r + 1, others=level, op=op, median=s["median"],
                                             p95=s["p95"], max=s["max"], runs=s["runs"], agent_cpu_ms=cpu,
                                             hook_cpu_ms=(h["user"] + h["system"]) * 1000))
                    b.expect_count(level, "after the agent cells")
                if a.baselines and level == 0:
                    b.baselines()
                    for key in ("nft-add-f10", "nft-del-f10", "classic-start-f10", "classic-stopped-f10",
                                "peer-start-f10", "peer-stopped-f10"):
                        c = b.cells.get(key)
                        if c is None:
                            continue
                        rows.append(dict(bin="-", path="", round=r + 1, others=0, op=key, median=c["visit_medians"][-1],
                                         p95=0.0, max=0, runs=0, agent_cpu_ms=0.0, hook_cpu_ms=0.0))
    finally:
        b.cleanup()
        subprocess.run(["rm", "-rf", tmp])
    with open(os.path.join(out, "agent-scale.json"), "w") as f:
        json.dump(dict(bins=dict(zip(labels, bins)), rows=rows), f, indent=1)
    print(report(rows, labels, bins, a.others))


def report(rows, labels, bins, others):
    w = []
    for label, binary in zip(labels, bins):
        w.append(f"{label} = {binary}")
    w.append("")
    w.append(f"| binary | round | op | none: median / p95 | {others:,}: median / p95 | ratio median / p95 | agent CPU per command, none / {others:,} | hook process CPU, none / {others:,} |")
    w.append("|---|---|---|---|---|---|---|---|")
    get = {(x["bin"], x["round"], x["others"], x["op"]): x for x in rows}
    rounds = sorted({x["round"] for x in rows})
    for label in labels:
        for op in ("start", "stopped"):
            for r in rounds:
                lo, hi = get.get((label, r, 0, op)), get.get((label, r, others, op))
                if not lo or not hi:
                    continue
                w.append(f"| {label} | {r} | `{op}` | {lo['median']:.2f} / {lo['p95']:.2f} ms | {hi['median']:.2f} / {hi['p95']:.2f} ms "
                         f"| {hi['median'] / lo['median']:.2f}× / {hi['p95'] / lo['p95']:.2f}× "
                         f"| {lo['agent_cpu_ms']:.2f} / {hi['agent_cpu_ms']:.2f} ms | {lo['hook_cpu_ms']:.2f} / {hi['hook_cpu_ms']:.2f} ms |")
    base = {(x["round"], x["op"]): x["median"] for x in rows if x["bin"] == "-"}
    if base:
        w += ["", "| binary | round | cycle vs classic hook, hook alone | cycle vs classic hook, with the agent | agent `start` / `nft -f` add | agent `stopped` / `nft -f` delete |",
              "|---|---|---|---|---|---|"]
        for label in labels:
            for r in rounds:
                m = {x["op"]: x["median"] for x in rows if x["bin"] == label and x["round"] == r and x["others"] == 0}
                if (r, "classic-start-f10") not in base or "start" not in m:
                    continue
                classic = base[(r, "classic-start-f10")] + base[(r, "classic-stopped-f10")]
                alone = f"{classic / (m['start-alone'] + m['stopped-alone']):.1f}×" if "start-alone" in m else "—"
                w.append(f"| {label} | {r} | {alone} | {classic / (m['start'] + m['stopped']):.1f}× "
                         f"| {m['start'] / base[(r, 'nft-add-f10')]:.2f}× | {m['stopped'] / base[(r, 'nft-del-f10')]:.2f}× |")
        if any(op == "peer-start-f10" for (_, op) in base):
            w += ["", "Against saschpe/libvirt-hook-qemu itself (`--peer-hook`), same rounds:", "",
                  "| binary | round | peer cycle (start + stopped) | virtport cycle, hook alone | ratio | virtport cycle, with the agent | ratio |",
                  "|---|---|---|---|---|---|---|"]
            for label in labels:
                for r in rounds:
                    m = {x["op"]: x["median"] for x in rows if x["bin"] == label and x["round"] == r and x["others"] == 0}
                    if (r, "peer-start-f10") not in base or "start" not in m:
                        continue
                    peer = base[(r, "peer-start-f10")] + base[(r, "peer-stopped-f10")]
                    alone = m.get("start-alone", 0) + m.get("stopped-alone", 0)
                    agent = m["start"] + m["stopped"]
                    w.append(f"| {label} | {r} | {peer:.1f} ms | {alone:.2f} ms | "
                             + (f"{peer / alone:.1f}×" if alone else "—")
                             + f" | {agent:.2f} ms | {peer / agent:.1f}× |")
    w += ["", "| binary | round | others | op | median | p95 | agent CPU per command | hook process CPU |", "|---|---|---|---|---|---|---|---|"]
    for x in sorted(rows, key=lambda x: (x["op"], x["others"], x["round"], x["bin"])):
        w.append(f"| {x['bin']} | {x['round']} | {x['others']:,} | `{x['op']}` | {x['median']:.2f} ms | {x['p95']:.2f} ms "
                 f"| {x['agent_cpu_ms']:.2f} ms | {x['hook_cpu_ms']:.2f} ms |")
    return "\n".join(w)


if __name__ == "__main__":
    main()
