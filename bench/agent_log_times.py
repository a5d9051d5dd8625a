#!/usr/bin/env python3
"""The agent's own time per timed request, from the `agent.log` of a `bench/agent_scale.py` run
(its `--verbose` lines `qemu VM start begin: exit 0 in N µs`, and with work after the answer
`… (then M µs after the answer)`): no process start, no hyperfine, timed commands only.

  python3 bench/agent_log_times.py OUT/agent.log --bins A,B --runs 40 [--levels 1] [--warmup 3]

agent_scale.py gives every (round, level, binary) a fresh agent, appending to one log: a segment
starts at "listening on". In a segment: one untimed start and stopped, then the `start` cell
(warmup + runs pairs of prepare `stopped`, timed `start`), then the `stopped` cell (prepare `start`,
timed `stopped`). Warm-up pairs are left out."""
import argparse
import re
import statistics

LINE = re.compile(r"qemu \S+ (start|stopped) \S+: exit \d+ in (\d+) µs(?: \(then (\d+) µs after the answer\))?")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--bins", default="A,B", help="labels, in agent_scale.py's order")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--levels", type=int, default=1, help="levels of other forwards per round")
    a = ap.parse_args()
    labels = a.bins.split(",")
    segments, cur = [], None
    for line in open(a.log, encoding="utf-8", errors="replace"):
        if "listening on" in line:
            cur = []
            segments.append(cur)
            continue
        m = LINE.search(line)
        if m and cur is not None:
            cur.append((m.group(1), int(m.group(2)), int(m.group(3) or 0)))
    pairs = a.warmup + a.runs
    print("| binary | round | op | answered: median / p95 | after the answer: median | total: median | requests |")
    print("|---|---|---|---|---|---|---|")
    for i, seg in enumerate(segments):
        label = labels[i % len(labels)]
        rnd = i // (len(labels) * a.levels) + 1
        # The cells meet where two starts follow each other (the start cell's last timed start,
        # the stopped cell's first prepare); a hook the agent did not serve shifts nothing then.
        cut = next((i + 1 for i in range(2, len(seg) - 1) if seg[i][0] == seg[i + 1][0] == "start"), 2 + 2 * pairs)
        cells = (("start", seg[2:cut]), ("stopped", seg[cut:]))
        for op, cell in cells:
            # A timed request is the one after its prepare (the other operation).
            timed = [cell[i] for i in range(1, len(cell)) if cell[i][0] == op and cell[i - 1][0] != op][a.warmup:]
            if not timed:
                continue
            ans = [x[1] / 1000 for x in timed]
            after = [x[2] / 1000 for x in timed]
            total = [(x[1] + x[2]) / 1000 for x in timed]
            print(f"| {label} | {rnd} | `{op}` | {statistics.median(ans):.2f} / {pct(ans, 95):.2f} ms "
                  f"| {statistics.median(after):.2f} ms | {statistics.median(total):.2f} ms | {len(timed)} |")


if __name__ == "__main__":
    main()
