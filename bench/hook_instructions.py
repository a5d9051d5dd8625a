#!/usr/bin/env python3
"""Hook cost of two binaries, side by side (issue 23 "What must not change"; BENCHMARKS.md
"Rule kinds: one lifecycle").

  instructions  callgrind's exact count of one hook process (hook alone, no agent; not the child a hook
                forks to close its netlink socket in the background; the journal's WAL checkpointed
                before each, so the count does not depend on when the last auto-checkpoint happened;
                SWIFT_DETERMINISTIC_HASHING=1, so it does not depend on the process's hash seed): `prepare`,
                `start` (table exists), `stopped` and a domain without metadata, for a VM of 10
                forwards; then `start` and `stopped` of the same VM with a port guard (both tables
                exist): what a guarded start costs in one process
  time          a guarded VM's hook `start` and `stopped` (each pair on host ports no earlier pair
                released: see `fresh`), N pairs, the binaries alternating pair by
                pair in ABBA order (a shared machine drifts; alternation cancels most of it): wall clock and CPU
                time (user + system, the kernel's work on the batches included; tick-sampled, so its mean), ms

One network namespace per run (removed at the end, even on failure): br0 192.168.122.1/24 with vnet0
enslaved (a veth whose peer stays in the namespace): the guard's tap. Each binary gets its own
config and journal in a temporary directory.

  sudo python3 bench/hook_instructions.py --bin A=/path/to/virtport --bin B=.build/release/virtport [--pairs 40] [--agent]
      [--source '203.0.113.0/24 2001:db8::/32']

  --agent       also the same pairs with each binary's `virtport agent` doing the work (each in a
                namespace of its own): the hook's wall clock and the agent's CPU per operation
  --source P    also the instructions of `start`/`stopped` of the 10 forwards with source=P each
                (the source filter kind's share of the one shared batch)
"""
import argparse
import fcntl
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

NS = f"vphi-{os.getpid()}"
UUID = "3f0c8c1e-5c1a-4b7e-9f57-1d2b3c4d5e6f"
BARE = "9a0c8c1e-5c1a-4b7e-9f57-1d2b3c4d5e6f"


def sh(*args, ns=None, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def topology(ns=NS):
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=ns)
    sh("ip", "addr", "add", "192.168.122.1/24", "dev", "br0", ns=ns)
    sh("ip", "link", "set", "br0", "up", ns=ns)
    sh("ip", "link", "add", "vnet0", "type", "veth", "peer", "name", "vpeer0", ns=ns)
    sh("ip", "link", "set", "vnet0", "master", "br0", ns=ns)
    for d in ("vnet0", "vpeer0"):
        sh("ip", "link", "set", d, "up", ns=ns)


def domain(name, uuid, guard, forwards=10, base=41000, source=None):
    meta = ""
    if forwards:
        src = f" source='{source}'" if source else ""
        body = "".join(f"<vp:portForward proto='tcp' guest='192.168.122.10'{src}><vp:range start='{base + i}' to='{22 + i}'/>"
                       "</vp:portForward>" for i in range(forwards))
        if guard:
            body += "<vp:guard ip='192.168.122.10' isolated='yes'/>"
        meta = f"<metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>{body}</vp:virtport></metadata>"
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>{meta}<devices>"
            "<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default' bridge='br0'/>"
            "<target dev='vnet0'/><model type='virtio'/></interface></devices></domain>").encode()


class Binary:
    def __init__(self, label, path):
        self.label, self.path = label, os.path.abspath(path)
        self.dir = tempfile.mkdtemp(prefix="vphi-")  # the same path length for every binary
        run = os.path.join(self.dir, "run")
        os.makedirs(os.path.join(run, "network"))
        with open(os.path.join(run, "network", "default.xml"), "w") as f:
            f.write("<networkstatus><network><name>default</name><forward mode='nat'/><bridge name='br0'/>"
                    "<ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>")
        self.config = os.path.join(self.dir, "virtport.conf")
        with open(self.config, "w") as f:
            f.write(f'database = "{self.dir}/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{run}"\n'
                    f'libvirt_config_dir = "{self.dir}/etc"\nlibvirt_state_dir = "{self.dir}/state"\n'
                    f'hooks_dir = "{self.dir}/hooks"\nagent_socket = "{self.dir}/agent.sock"\n'
                    f'[log]\nsyslog_socket = ""\n')

    def start_agent(self, ns):
        """`virtport agent` in its own namespace `ns` (two agents in one would heal each other's
        deletions); the hooks then hand it their work. Returns once it listens."""
        self.ns = ns
        self.agent_log = os.path.join(self.dir, "agent.log")
        self.agent = subprocess.Popen(["ip", "netns", "exec", ns, self.path, "agent"], env=self.env(),
                                      stdout=subprocess.DEVNULL, stderr=open(self.agent_log, "w"))
        deadline = time.time() + 10
        while not os.path.exists(os.path.join(self.dir, "agent.sock")):
            if self.agent.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{self.label}: agent did not come up: {open(self.agent_log).read()[-400:]}")
            time.sleep(0.02)
        time.sleep(0.3)

    def agent_cpu_ms(self):
        """The agent's CPU so far, every thread, from the scheduler's own account (schedstat, ns:
        not tick-sampled like rusage), ms. Threads that exited already are not counted: the agent's
        workers and its loop live as long as it does."""
        pid = self.agent_pid()
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total / 1e6

    def settle_agent(self):
        """Returns once the agent's work after its last answer is done: it holds the journal's
        change lock shared until then (README "Agent: what is done after the answer")."""
        lock = os.path.join(self.dir, "virtport.db.lock")
        if os.path.exists(lock):
            with open(lock) as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                fcntl.flock(f, fcntl.LOCK_UN)

    def agent_pid(self):
        """The agent's own pid (`ip netns exec` execs it, so the Popen pid is the agent's)."""
        return self.agent.pid

    def stop_agent(self):
        self.agent.terminate()
        self.agent.wait(timeout=10)

    def env(self):
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": self.config, "LANG": "C.UTF-8"}

    def hook(self, op, xml, name="web", prefix=(), env=None):
        r = subprocess.run(["ip", "netns", "exec", getattr(self, "ns", NS), *prefix, self.path, "hook", "qemu", name, op,
                            "begin", "-"],
                           input=xml, capture_output=True, env={**self.env(), **(env or {})})
        if r.returncode != 0 or (not prefix and r.stderr):
            raise SystemExit(f"{self.label} {op}: rc={r.returncode} {r.stderr.decode()[-400:]}")
        return r

    def checkpoint(self):
        """Empties the journal's WAL: a hook that opens the journal reads (and checksums) every frame in
        it, so without this the count depends on when the last auto-checkpoint happened, not on the op."""
        db = os.path.join(self.dir, "virtport.db")
        if os.path.exists(db):
            subprocess.run(["sqlite3", db, "PRAGMA wal_checkpoint(TRUNCATE);"], check=True, capture_output=True)

    def timed(self, op, xml, name="web"):
        """Wall clock and CPU time (user + system, from the process's rusage: the kernel's work on its
        netlink batches included) of one hook process, in ms."""
        t = time.perf_counter()
        p = subprocess.Popen(["ip", "netns", "exec", getattr(self, "ns", NS), self.path, "hook", "qemu", name, op, "begin", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env())
        p.stdin.write(xml)
        p.stdin.close()
        _, status, usage = os.wait4(p.pid, 0)
        wall = (time.perf_counter() - t) * 1000
        err = p.stderr.read()
        p.stderr.close()
        if status != 0 or err:
            raise SystemExit(f"{self.label} {op}: status {status} {err.decode()[-400:]}")
        return wall, (usage.ru_utime + usage.ru_stime) * 1000

    def instructions(self, op, xml, name="web"):
        self.checkpoint()
        # Swift seeds its hashing per process: Set and Dictionary work then varies by ±0.2% from
        # one run of the same binary to the next. A fixed seed makes the count the same every time.
        r = self.hook(op, xml, name, prefix=("valgrind", "--tool=callgrind", "--child-silent-after-fork=yes",
                                                      "--callgrind-out-file=/dev/null"),
                      env={"SWIFT_DETERMINISTIC_HASHING": "1"})
        m = re.search(rb"Collected : (\d+)", r.stderr)
        if not m:
            raise SystemExit(f"{self.label} {op}: no callgrind count: {r.stderr.decode()[-400:]}")
        return int(m.group(1))

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def fresh(i):
    """The guarded VM of timing pair `i`: host ports no earlier pair released. A start on ports
    released in the last 3 minutes deletes their untranslated conntrack entries, one filtered walk
    of the whole conntrack table per port — on a shared machine 3–40 ms each, depending on every
    namespace's entries — which would swamp what is measured here."""
    return domain("web", UUID, True, base=20000 + 10 * i)


def agent_phase(bins, guarded, pairs):
    """The same guarded start/stopped pairs, each binary's agent doing the work in a namespace of
    its own: the hook's wall clock (median / p90) and the agent's CPU per operation (its total over
    the run from /proc, divided: precise where one process's rusage is not)."""
    for i, b in enumerate(bins):
        ns = f"{NS}-a{i}"
        topology(ns)
        b.start_agent(ns)
        b.hook("start", guarded)
        b.hook("stopped", guarded)
    wall = {b.label: {"start": [], "stopped": []} for b in bins}
    cpu = {b.label: {"start": 0.0, "stopped": 0.0} for b in bins}
    for i in range(pairs):
        for b in (bins if i % 2 == 0 else bins[::-1]):
            for op in ("start", "stopped"):
                before = b.agent_cpu_ms()
                # Ports the hook-alone pairs (same journal) did not release either.
                w, _ = b.timed(op, fresh(pairs + i))
                # The agent's work after its answer (it holds the change lock shared until that is
                # done) counts for this op, and the next op does not wait for it.
                b.settle_agent()
                cpu[b.label][op] += b.agent_cpu_ms() - before
                wall[b.label][op].append(w)
    for b in bins:
        b.stop_agent()
    print(f"\nWith the agent: guarded VM, {pairs} start/stopped pairs in ABBA order: the hook's wall clock "
          "(median / p90) and the agent's CPU per operation (mean, from schedstat), ms:\n")
    print_wall_cpu(bins, wall, "agent CPU", lambda label, op: cpu[label][op] / pairs)


def print_wall_cpu(bins, wall, cpu_title, cpu_ms):
    """The table of hook wall clock (median / p90 of `wall[label][op]`) and CPU (`cpu_ms(label, op)`)."""
    print("| op | " + " | ".join(f"{b.label} wall | {b.label} {cpu_title}" for b in bins) + " |")
    print("|---|" + "---|---|" * len(bins))
    for op in ("start", "stopped"):
        cells = []
        for b in bins:
            v = sorted(wall[b.label][op])
            cells.append(f"{statistics.median(v):.2f} / {v[int(len(v) * 0.9) - 1]:.2f}")
            cells.append(f"{cpu_ms(b.label, op):.2f}")
        print(f"| hook `{op}` | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH, twice or more")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--agent", action="store_true",
                    help="also time the hooks with each binary's agent doing the work (its own namespace)")
    ap.add_argument("--source", metavar="PREFIXES",
                    help="also count `start`/`stopped` of the 10 forwards each with source=PREFIXES (the source "
                         "filter kind in the shared batch; its table is created by the start, deleted by the stop)")
    args = ap.parse_args()
    bins = [Binary(*b.split("=", 1)) for b in args.bin]
    plain, guarded, bare = domain("web", UUID, False), domain("web", UUID, True), domain("bare", BARE, False, forwards=0)
    topology()
    try:
        rows = {}
        for b in bins:
            # Tables exist: one start and stop of each shape first (nft tables stay, empty).
            for xml in (plain, guarded):
                b.hook("start", xml)
                b.hook("stopped", xml)
            counts = {"prepare": b.instructions("prepare", plain)}
            counts["start"] = b.instructions("start", plain)
            counts["stopped"] = b.instructions("stopped", plain)
            counts["no metadata"] = b.instructions("start", bare, name="bare")
            counts["guarded start"] = b.instructions("start", guarded)
            counts["guarded stopped"] = b.instructions("stopped", guarded)
            if args.source:
                filtered = domain("web", UUID, False, source=args.source)
                b.hook("start", filtered)
                b.hook("stopped", filtered)
                counts["filtered start"] = b.instructions("start", filtered)
                counts["filtered stopped"] = b.instructions("stopped", filtered)
            rows[b.label] = counts
            # The next binary starts from tables of its own making.
            sh("nft", "delete", "table", "inet", "virtport", ns=NS)
            sh("nft", "delete", "table", "bridge", "virtport", ns=NS)
        print("Instructions (callgrind, one hook process, 10 forwards, hook alone):\n")
        print("| op | " + " | ".join(b.label for b in bins) + " | change |")
        print("|---|" + "---|" * len(bins) + "---|")
        for op in rows[bins[0].label]:
            vals = [rows[b.label][op] for b in bins]
            change = f"{(vals[-1] / vals[0] - 1) * 100:+.2f}%"
            print(f"| {op} | " + " | ".join(f"{v / 1e6:.3f} M" for v in vals) + f" | {change} |")
        # Wall clock: each binary's own journal, tables shared in turn (a stop leaves them empty).
        times = {b.label: {"start": [], "stopped": []} for b in bins}
        cpu = {b.label: {"start": [], "stopped": []} for b in bins}
        for b in bins:
            b.hook("start", guarded)
            b.hook("stopped", guarded)
        for i in range(args.pairs):
            # ABBA: each binary's start follows the other's stop as often as its own (a stop leaves a
            # child closing its netlink socket, which the next start competes with).
            for b in (bins if i % 2 == 0 else bins[::-1]):
                for op in ("start", "stopped"):
                    wall, used = b.timed(op, fresh(i))
                    times[b.label][op].append(wall)
                    cpu[b.label][op].append(used)
        print(f"\nGuarded VM (10 forwards + 1 port guard), {args.pairs} start/stopped pairs alternating binaries: "
              "wall clock of the hook process (median / p90) and its CPU, user + system (mean: rusage is tick-sampled), ms:\n")
        # rusage of a process this short is sampled at the scheduler tick: only the mean means something.
        print_wall_cpu(bins, times, "CPU", lambda label, op: statistics.mean(cpu[label][op]))
        if args.agent:
            agent_phase(bins, guarded, args.pairs)
    finally:
        for b in bins:
            if getattr(b, "agent", None) is not None:
                b.agent.kill()
            if getattr(b, "ns", None):
                subprocess.run(["ip", "netns", "del", b.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        for b in bins:
            b.cleanup()


if __name__ == "__main__":
    main()
