#!/usr/bin/env python3
"""Compares full runs of bench/run, cell by cell (medians), for a before/after table.

    bench/compare.py BEFORE/results.json AFTER/results.json [NOISE/results.json]

With a third run of the same binary as BEFORE, a cell's noise is |NOISE - BEFORE| / BEFORE; a cell
is flagged when AFTER is slower than BEFORE by more than that noise (and by more than 5%).
Prints a markdown table of the virtport rows (hook, no-metadata, prepare, agent), then a summary.
"""
import json
import sys


def cells(path):
    return json.load(open(path))["cells"]


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    before, after = cells(sys.argv[1]), cells(sys.argv[2])
    noise = cells(sys.argv[3]) if len(sys.argv) == 4 else None
    keys = [k for k in before if k in after and (k.startswith(("hook-", "nometa-", "floor-version")))]
    print("| cell | before | after | after/before | noise (before vs before) | verdict |")
    print("|---|---|---|---|---|---|")
    worse, total = [], 0
    for k in keys:
        b, a = before[k]["median"], after[k]["median"]
        ratio = a / b
        n = abs(noise[k]["median"] - b) / b if noise and k in noise else None
        limit = max(n or 0, 0.05)
        verdict = "worse" if ratio > 1 + limit else "same or better"
        total += 1
        if verdict == "worse":
            worse.append(k)
        ntext = f"{n * 100:.1f}%" if n is not None else "-"
        print(f"| {k} | {b:.2f} | {a:.2f} | {ratio:.2f}× | {ntext} | {verdict} |")
    print()
    print(f"{total} cells; worse by more than the noise (and 5%): {len(worse)} {worse}")


if __name__ == "__main__":
    main()
