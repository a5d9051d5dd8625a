#!/usr/bin/env python3
"""Lease file cost (issue 21 item 8: "with a 65,536-lease status file, a hook's prepare+start stays
<= 50 ms and the agent follows one change in <= 200 ms"). BENCHMARKS.md "Lease files".

One host namespace with br0 (10.100.0.1/15, libvirt network `default` in the bench's run dir) and
dnsmasq's status file `br0.status` holding N leases (0 or 65,536; random MACs, addresses in the
/15, expiry an hour ahead) plus the VM's own. The VM has one forward whose guest address comes
from its lease (no guest=, no reservation).

  hook       `virtport hook qemu bench prepare` + `start` (both timed, wall clock of the processes,
             including `ip netns exec`), `stopped` + `release` between rounds (untimed)
  agent      `virtport agent` running, the VM running (status file); the status file is replaced
             by rename (as leaseshelper does) with the VM's lease moved to a new address; timed
             from the rename until the kernel's map element points at the new address (polled
             with `nft -j list map`, ~3 ms a poll)

  sudo python3 bench/lease_bench.py [--rounds 20] [--leases 0 65536]
"""
import argparse
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAC = "52:54:00:be:00:01"
UUID = "1ea5e000-1111-4111-8111-111111111111"


def sh(*a, ns=None, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(a)
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def domain(bridge=False):
    src = "<source network='default' bridge='br0'/>" if bridge else "<source network='default'/>"
    return ("<domain type='qemu'><name>bench</name><uuid>" + UUID + "</uuid><metadata>"
            "<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp'>"
            "<vp:range start='2222' to='22'/></vp:portForward></vp:virtport></metadata>"
            "<memory unit='KiB'>65536</memory><devices><interface type='network'>"
            f"<mac address='{MAC}'/>{src}<model type='virtio'/></interface></devices></domain>")


def write_status(path, others, mine, rename=True):
    """Writes the list to BRIDGE.new; renames it over the status file (as leaseshelper does)
    unless `rename` is False (the caller renames, timed)."""
    body = others + [{"ip-address": mine, "mac-address": MAC, "hostname": "bench",
                      "expiry-time": int(time.time()) + 3600}]
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(body, indent=2))
    if rename:
        os.rename(tmp, path)
    return tmp


def others(n):
    rnd = random.Random(21)
    out = []
    for i in range(n):
        a = 2 + i  # 10.100.0.2 ... within the /15
        out.append({"ip-address": f"10.{100 + a // 65536}.{a // 256 % 256}.{a % 256}",
                    "mac-address": "52:54:%02x:%02x:%02x:%02x" % tuple(rnd.randrange(256) for _ in range(4)),
                    "hostname": f"vm{i}", "expiry-time": int(time.time()) + 3600})
    return out


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[max(0, int(round(0.95 * len(xs))) - 1)], xs[0], xs[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--leases", type=int, nargs="*", default=[0, 65536])
    ap.add_argument("--bin", default=os.environ.get("VIRTPORT_BIN", str(ROOT / ".build/release/virtport")))
    args = ap.parse_args()
    host = f"vplease{os.getpid()}"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="vp-leasebench-"))
    agent = None
    rows = []
    try:
        sh("ip", "netns", "add", host)
        sh("ip", "link", "set", "lo", "up", ns=host)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=host)
        sh("ip", "addr", "add", "10.100.0.1/15", "dev", "br0", ns=host)
        sh("ip", "link", "set", "br0", "up", ns=host)
        run = tmp / "run"
        (run / "network").mkdir(parents=True)
        (run / "qemu").mkdir()
        (run / "network" / "default.xml").write_text(
            "<networkstatus><network><name>default</name><forward mode='nat'/><bridge name='br0'/>"
            "<ip address='10.100.0.1' netmask='255.254.0.0'><dhcp/></ip></network></networkstatus>")
        state = tmp / "state"
        (state / "dnsmasq").mkdir(parents=True)
        status = state / "dnsmasq" / "br0.status"
        conf = tmp / "virtport.conf"
        conf.write_text(f'database = "{tmp}/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{run}"\n'
                        f'libvirt_config_dir = "{tmp}/etc"\nlibvirt_state_dir = "{state}"\nhooks_dir = "{tmp}/hooks"\n'
                        f'agent_socket = "{tmp}/agent.sock"\n[log]\nsyslog_socket = "{tmp}/log.sock"\n'
                        f'[agent]\nmetrics_file = "{tmp}/virtport.prom"\n')
        metrics = tmp / "virtport.prom"

        def lease_events():
            """(count, sum seconds) of the agent's own lease event durations (received -> converged)."""
            count = total = 0.0
            try:
                for line in metrics.read_text().splitlines():
                    if line.startswith('virtport_event_duration_seconds_count{source="lease"}'):
                        count = float(line.split()[-1])
                    if line.startswith('virtport_event_duration_seconds_sum{source="lease"}'):
                        total = float(line.split()[-1])
            except FileNotFoundError:
                pass
            return count, total
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": str(conf)}
        xml = domain().encode()

        cpu = []

        def hook(op, sub, agent_on=False):
            e = dict(env)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            r = subprocess.run(["ip", "netns", "exec", host, args.bin, "hook", "qemu", "bench", op, sub, "-"],
                               input=xml, env=e, capture_output=True)
            dt = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            assert r.returncode == 0, r.stderr
            return dt

        def guest():
            r = subprocess.run(["ip", "netns", "exec", host, "nft", "-j", "list", "map", "inet", "virtport", "fwd4"],
                               capture_output=True)
            if r.returncode:
                return None
            for item in json.loads(r.stdout)["nftables"]:
                for e in (item.get("map") or {}).get("elem", []):
                    return e[1]["concat"][0]
            return None

        for n in args.leases:
            crowd = others(n)
            write_status(status, crowd, "10.101.255.200")
            hooks, hooks_cpu = [], []
            for _ in range(args.rounds):
                hooks.append(hook("prepare", "begin") + hook("start", "begin"))
                hooks_cpu.append(cpu[-1] + cpu[-2])
                hook("stopped", "end")
                hook("release", "end")
            # The agent: the VM runs, its lease moves, time until the kernel follows.
            live = (domain(bridge=True).replace("<domain type='qemu'>", "<domain type='qemu' id='1'>"))
            sleeper = subprocess.Popen(["sleep", "3600"])
            (run / "qemu" / "bench.xml").write_text(f"<domstatus state='running' reason='booted' pid='{sleeper.pid}'>"
                                                     f"{live}</domstatus>")
            agent = subprocess.Popen(["ip", "netns", "exec", host, args.bin, "agent"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 10
            while not (tmp / "agent.sock").exists():
                assert time.time() < deadline and agent.poll() is None, "agent did not start"
                time.sleep(0.02)
            hook("prepare", "begin")
            hook("start", "begin")
            follow, inside = [], []
            addresses = ["10.101.255.201", "10.101.255.202"]
            for i in range(args.rounds):
                want = addresses[i % 2]
                before = lease_events()
                ready = write_status(status, crowd, want, rename=False)  # the bench's own JSON, untimed
                t = time.perf_counter()
                os.rename(ready, status)
                while guest() != want:
                    assert time.perf_counter() - t < 30, f"agent did not follow to {want}"
                    time.sleep(0.005)
                follow.append(time.perf_counter() - t)
                deadline = time.time() + 5
                while lease_events()[0] <= before[0] and time.time() < deadline:
                    time.sleep(0.05)
                after = lease_events()
                if after[0] > before[0]:
                    inside.append((after[1] - before[1]) / (after[0] - before[0]))
            hook("stopped", "end")
            hook("release", "end")
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)
            agent = None
            sleeper.kill()
            (run / "qemu" / "bench.xml").unlink()
            rows.append((n, hooks, hooks_cpu, follow, inside, status.stat().st_size))
        print(f"\nvirtport {args.bin}; {args.rounds} rounds per row; lease file {status}\n")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| leases in br0.status | file size | hook prepare+start, median / p95 / min-max (ms) "
              "| its CPU time (user+sys, incl. `ip netns exec`), median (ms) | agent follows one lease change: rename to kernel, median / p95 / min-max (ms) "
              "| the agent's own event duration (inotify to converged), median / p95 (ms) |")
        print("|---:|---:|---|---:|---|---|")
        ms = lambda v: f"{v * 1000:.1f}"
        for n, hooks, hooks_cpu, follow, inside, size in rows:
            a, b = stats(hooks), stats(follow)
            c = stats(inside) if inside else (float("nan"),) * 4
            print(f"| {n + 1:,} | {size / 1e6:.1f} MB | {ms(a[0])} / {ms(a[1])} / {ms(a[2])}-{ms(a[3])} "
                  f"| {ms(statistics.median(hooks_cpu))} "
                  f"| {ms(b[0])} / {ms(b[1])} / {ms(b[2])}-{ms(b[3])} | {ms(c[0])} / {ms(c[1])} |")
    finally:
        if agent:
            agent.kill()
        subprocess.run(["ip", "netns", "del", host], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
