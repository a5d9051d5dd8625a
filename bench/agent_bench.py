#!/usr/bin/env python3
"""The event agent's benchmarks (issue "event agent", BENCHMARKS.md "Agent"): how fast an event
becomes working traffic, and what an idle agent costs.

  lease -> live      dnsmasq's status file replaced (rename) -> the first TCP connection through the
                     forward answered by the guest the lease names (completion, then moves)
  flush -> back      `nft flush ruleset` returned -> the first connection through the forward again
  add -> traffic     `virtport add` started on a running VM (real libvirtd + QEMU) -> first answer
  idle wake-ups      voluntary context switches of all agent threads over an idle period, per 60 s,
                     without libvirt and connected to a real libvirtd
  RSS                the agent's VmRSS with 10,000 journaled mappings

Times are measured on CLOCK_MONOTONIC, shared by every network namespace: the bench takes t0
right after its action, a prober in the client namespace connects in a tight loop (a port not yet
forwarded answers RST at once) and reports when the expected guest answered.

Run by bench/run (after bench.py); alone: sudo python3 bench/agent_bench.py --bin .build/release/virtport
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Both test harnesses (tests/integration's conftest must win over tests/libvirt's: same module name).
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "libvirt"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

PROBER = textwrap.dedent("""
    import socket, sys, time
    addr, port = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        want = line.strip()
        while True:
            try:
                s = socket.create_connection((addr, port), timeout=0.2)
                s.settimeout(0.5)
                got = s.recv(200).decode()
                s.close()
                if got.startswith(want + " "):
                    break
            except OSError:
                pass
            time.sleep(0.0005)
        print(time.monotonic(), flush=True)
""")


class Prober:
    """A connecting loop in namespace `ns`: `wait(tag)` returns the CLOCK_MONOTONIC time at which
    a connection to addr:port was first answered by `tag`."""

    def __init__(self, ns, addr, port):
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PROBER, addr, str(port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def wait(self, tag, timeout=10):
        self.p.stdin.write(tag + "\n")
        self.p.stdin.flush()
        import select
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise RuntimeError(f"no answer from {tag} within {timeout} s")
        return float(self.p.stdout.readline())

    def close(self):
        self.p.kill()
        self.p.wait()


def stats_ms(samples):
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"n": len(s), "median_ms": round(statistics.median(s) * 1000, 2), "p99_ms": round(p99 * 1000, 2),
            "min_ms": round(s[0] * 1000, 2), "max_ms": round(s[-1] * 1000, 2)}


def wakeups(pid):
    """Voluntary context switches of every thread of `pid`."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def agent_pid(proc):
    """The virtport process under `ip netns exec` (which execs it: same pid)."""
    return proc.pid


def idle(pid, seconds):
    time.sleep(1.0)                      # start-up work (reconcile, first reads) is not idle
    w0 = wakeups(pid)
    time.sleep(seconds)
    return (wakeups(pid) - w0) * 60.0 / seconds


# -- namespaced host (no libvirtd) -----------------------------------------------------------------

def namespaced(args, res):
    import conftest
    from test_agent import Agent, agent_socket_config
    from test_agent_watch import PENDING, FIXED, MAC, running, write_leases, domain_xml

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="vpagent-", dir=args.tmp))
    conftest.BIN = args.bin
    import test_agent
    test_agent.BIN = args.bin
    lab = conftest.Lab(tmp)
    try:
        lab.build()
        agent_socket_config(lab)
        lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
        lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "guest2")
        prober = Prober(lab.client, "203.0.113.1", 2222)

        # lease -> live: the first lease completes the pending forward, each next one moves it.
        write_leases(lab, [])
        live = running(lab, PENDING)
        lab.start(live)
        agent = Agent(lab)
        samples = []
        for i in range(args.runs):
            ip, tag = ("192.168.122.10", "guest1") if i % 2 == 0 else ("192.168.122.11", "guest2")
            write_leases(lab, [(MAC, ip)])
            t0 = time.monotonic()
            samples.append(prober.wait(tag) - t0)
        res["lease_to_live"] = stats_ms(samples)
        agent.stop()
        lab.stop(live)
        lab.remove_status(live)

        # flush -> back: a fresh agent each run (three heals a minute would start its back-off).
        lab.start(FIXED)
        samples = []
        for i in range(args.runs):
            agent = Agent(lab)
            time.sleep(0.05)
            conftest.sh("nft", "flush", "ruleset", ns=lab.host)
            t0 = time.monotonic()
            samples.append(prober.wait("guest1") - t0)
            agent.stop()
        res["flush_to_back"] = stats_ms(samples)
        lab.stop(FIXED)
        prober.close()

        # Idle and RSS with 10,000 mappings: 10 domains x 1,000 single-port forwards (not merged).
        lab.write_config('max_forwards_per_domain = 1000\n')
        agent_socket_config(lab)
        for d in range(10):
            fw = "".join(f"<vp:portForward proto='tcp' guest='192.168.122.{20 + d}'><vp:range start='{10000 + 2 * (1000 * d + p)}'/>"
                         "</vp:portForward>" for p in range(1000))
            xml = domain_xml(f"bulk{d}", f"7{d:07d}-1111-4111-8111-111111111111", fw,
                             macs=(f"52:54:00:77:00:{d:02x}",))
            r = lab.hook(xml, "start")
            assert r.returncode == 0, r.stderr.decode()
        n = lab.sql("SELECT count(*) AS n FROM mappings")[0]["n"]
        assert n == 10000, n
        agent = Agent(lab)
        pid = agent_pid(agent.proc)
        res["idle_wakeups_per_60s_no_libvirt"] = round(idle(pid, args.idle), 1)
        res["rss_kib_10000_mappings"] = rss_kib(pid)
        res["mappings"] = n
        agent.stop()
    finally:
        lab.cleanup()


# -- real libvirtd ---------------------------------------------------------------------------------

def with_libvirt(args, res):
    import harness
    from harness import out
    G1, MAC1 = "192.168.122.50", "52:54:00:76:70:01"
    lab = harness.LibvirtLab()
    lab.start()
    agent = None
    try:
        db = os.path.join(lab.workdir, "bench.db")
        sock = os.path.join(lab.workdir, "agent.sock")
        lab.write_etc("virtport/virtport.conf", f'database = "{db}"\n[paths]\nagent_socket = "{sock}"\n')
        lab.install_hooks(args.bin)
        meta = ("<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp' guest='192.168.122.50'>"
                "<vp:range start='2222' to='22'/></vp:portForward></vp:virtport>")
        lab.define_vm("vpb-agent", MAC1, meta)
        guest = lab.stand_in_guest(G1)
        guest.listen("tcp", 80, "W1")
        lab.client()
        lab.start_vm("vpb-agent")
        log = open(os.path.join(lab.workdir, "agent.log"), "w")
        agent = subprocess.Popen(["ip", "netns", "exec", lab.ns, args.bin, "agent", "--verbose"],
                                 stdout=subprocess.DEVNULL, stderr=log)
        harness.wait_for(lambda: "libvirt: connected to" in open(log.name).read(), 20, 0.05, "the agent connected")
        prober = Prober(lab.client().ns, harness.CLIENT_HOST_IP, 9090)
        samples, walls = [], []
        for i in range(args.add_runs):
            t0 = time.monotonic()
            r = lab.exec(args.bin, "add", "vpb-agent", "tcp", "9090:80", "--guest", G1, check=False)
            t1 = time.monotonic()
            assert r.returncode == 0, out(r)
            samples.append(prober.wait("W1") - t0)
            walls.append(t1 - t0)
            r = lab.exec(args.bin, "remove", "vpb-agent", "tcp", "9090", check=False)
            assert r.returncode == 0, out(r)
        prober.close()
        res["add_to_traffic"] = stats_ms(samples)
        res["add_command_wall"] = stats_ms(walls)
        res["idle_wakeups_per_60s_libvirt"] = round(idle(agent.pid, args.idle), 1)
        res["libvirtd_keepalive_interval_s"] = 5
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=10)
        lab.teardown()


def table(res, size):
    rows = [
        ("lease written -> forward live (median / p99)", "lease_to_live", "<= 200 ms / <= 1 s"),
        ("nft flush ruleset -> forwards back (median / p99)", "flush_to_back", "<= 200 ms median"),
        ("virtport add on a running VM -> traffic (median / p99)", "add_to_traffic", "<= 100 ms median"),
        ("virtport add, the command's own wall time (median / p99)", "add_command_wall", ""),
    ]
    out = [f"### Agent ({size})", "", "| measure | result | target |", "|---|---|---|"]
    for label, key, target in rows:
        if key in res:
            s = res[key]
            out.append(f"| {label} | {s['median_ms']} ms / {s['p99_ms']} ms (n={s['n']}) | {target} |")
    if "idle_wakeups_per_60s_no_libvirt" in res:
        out.append(f"| idle agent, wake-ups per 60 s, no libvirt connection | {res['idle_wakeups_per_60s_no_libvirt']} | <= 2 |")
    if "idle_wakeups_per_60s_libvirt" in res:
        out.append(f"| idle agent, wake-ups per 60 s, connected to libvirtd (keepalive every "
                   f"{res['libvirtd_keepalive_interval_s']} s) | {res['idle_wakeups_per_60s_libvirt']} | <= 2 (see BENCHMARKS.md) |")
    if "rss_kib_10000_mappings" in res:
        out.append(f"| agent RSS with {res['mappings']} journaled mappings | {res['rss_kib_10000_mappings'] / 1024:.1f} MiB | reported |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="full", choices=["full", "smoke"])
    p.add_argument("--bin", default=str(ROOT / ".build" / "release" / "virtport"))
    p.add_argument("--out", default=None)
    p.add_argument("--tmp", default="/var/tmp")
    p.add_argument("--no-libvirt", action="store_true", help="skip the part that needs a real libvirtd")
    a = p.parse_args()
    a.bin = os.path.realpath(a.bin)
    a.runs, a.add_runs, a.idle = (50, 20, 60) if a.mode == "full" else (5, 3, 5)
    res = {}
    namespaced(a, res)
    if not a.no_libvirt:
        with_libvirt(a, res)
    text = table(res, f"{a.mode}: {a.runs} lease/flush runs, {a.add_runs} add runs, {a.idle} s idle")
    print(text)
    if a.out:
        pathlib.Path(a.out, "agent.json").write_text(json.dumps(res, indent=2))
        pathlib.Path(a.out, "agent.md").write_text(text)


if __name__ == "__main__":
    main()
