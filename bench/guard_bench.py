#!/usr/bin/env python3
"""The bridge port guard's benchmarks (issue 13 "bridge port guard", BENCHMARKS.md "Guard").

  data plane     new TCP connections per second between two stand-in guests on one bridge (every
                 connection: SYN, SYN-ACK, ACK, RST, each checked at the port it enters by), and the
                 CPU time per connection, with: no guard; two floors (a bridge prerouting chain that
                 does nothing; one that does one ifname set lookup); virtport guarding the two
                 measured ports; virtport guarding all 1,000 ports; an nwfilter-style ruleset of the
                 same protection at 1,000 ports (what libvirt's clean-traffic builds: a per-port
                 chain, reached through one `iifname` test per port in a linear list; the two
                 measured ports last, where a linear list is worst)
  guard apply    `virtport hook qemu start` of one guarded VM with 999 others guarded, against
                 `nft -f` adding the same objects (counters, map entries and set elements, read
                 back from what the hook added)

One lab per state, all built before the first round and measured round-robin (a shared 2-core
machine drifts by tens of percent within minutes; round-by-round ratios cancel most of it):

    host ns    br0 (no address) -- vnet0..vnet999; vnet2..vnet999 are veths whose peers (vpeerN,
               up, in the host ns) send nothing: IPv6 is off in the host ns, so no RS/MLD noise
    guest a    eth0 52:54:00:ee:00:00 10.77.0.1/16 -- vnet0   (vpbench connect)
    guest b    eth0 52:54:00:ee:00:01 10.77.0.2/16 -- vnet1   (vpbench serve)

The guarded labs are guarded through the real hook, `virtport hook qemu start` of one domain per
port (its own config and journal per lab). Every virtport and nft command runs in the host ns from
one worker process started there with `ip netns exec` (so no sample pays for `ip netns exec`
itself; /sys is the host ns's). Run by bench/run (after the agent bench); alone:
  sudo flock /tmp/virtport-bench.lock python3 bench/guard_bench.py [--mode smoke] [--out DIR]
"""
import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PORT = 5201
# MAC, IPv4 or IPv6 address (bare in nft syntax); anything else in an element is a name (quoted).
# Ether types and protocols of the fast-path sets' keys, as `nft -j` names them (bare in nft syntax).
SYMBOLS = {"ip", "ip6", "arp", "tcp", "udp", "icmp", "ipv6-icmp"}
ADDRESS = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}|\d+(\.\d+){3}|[0-9a-f:]*:[0-9a-f:]*")


# What any per-frame guard pays before its own rules, on the same frames (not virtport's code):
# a bridge prerouting base chain that does nothing, and one that does a single ifname set lookup
# (the least a per-port design can do). They split the guard's cost into hook, lookup and rules.
FLOORS = {
    "floor: empty bridge prerouting chain":
        "table bridge vpfloor { chain p { type filter hook prerouting priority -300; policy accept; }; }",
    "floor: one `iifname @set` lookup per frame":
        'table bridge vpfloor { set s { type ifname; elements = { "vnet0", "vnet1" }; }; '
        "chain p { type filter hook prerouting priority -300; policy accept; iifname @s accept; }; }",
}


def sh(*args, ns=None, check=True, input=None, env=None, timeout=600):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, input=input, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return r


def mac(i):
    return f"52:54:00:ee:{i >> 8:02x}:{i & 0xff:02x}"


def ip_of(i):
    return f"10.77.{(i + 1) >> 8}.{(i + 1) & 0xff}"


def stats(samples):
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {"median": statistics.median(s), "p90": p90, "min": s[0], "max": s[-1], "n": len(s)}


# -- the worker: runs steps in the namespace it was started in, times the ones marked -----------
def worker(spec_path):
    spec = json.loads(pathlib.Path(spec_path).read_text())
    env = spec["env"]
    times = {}
    for step in spec["steps"]:
        stdin = open(step["stdin"], "rb") if step.get("stdin") else subprocess.DEVNULL
        t0 = time.perf_counter()
        r = subprocess.run(step["argv"], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t0
        if stdin is not subprocess.DEVNULL:
            stdin.close()
        if r.returncode != 0 or (step.get("quiet") and (r.stdout or r.stderr)):
            sys.stderr.write(f"{' '.join(step['argv'])}: exit {r.returncode}: {r.stdout.decode()}{r.stderr.decode()}\n")
            return 1
        if step.get("label"):
            times.setdefault(step["label"], []).append(dt)
    json.dump(times, sys.stdout)
    return 0


class GuardBench:
    """One lab: a host namespace with br0 and its ports, the two guests, a config and journal."""

    def __init__(self, a, name, res):
        self.a = a
        self.prefix = f"{a.ns_prefix or f'vpg-{os.getpid()}'}-{name}"
        self.host, self.ga, self.gb = f"{self.prefix}-h", f"{self.prefix}-a", f"{self.prefix}-b"
        self.namespaces = []
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="vpguard-", dir=a.tmp))
        self.config = self.tmp / "virtport.conf"
        self.config.write_text(f'database = "{self.tmp}/virtport.db"\nlibvirt_uri = ""\n[paths]\n'
                               f'libvirt_run_dir = "{self.tmp}/run"\nlibvirt_state_dir = "{self.tmp}/state"\n'
                               f'libvirt_config_dir = "{self.tmp}/etc"\nagent_socket = "{self.tmp}/agent.sock"\n'
                               f'hooks_dir = "{self.tmp}/hooks"\n[log]\nsyslog_socket = ""\n')
        (self.tmp / "run" / "qemu").mkdir(parents=True)
        (self.tmp / "xml").mkdir()
        # VIRTPORT_NO_AGENT: the hook does its own work (no agent runs here; it would not be asked anyway).
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": str(self.config), "LANG": "C.UTF-8",
                    "VIRTPORT_NO_AGENT": "1", "VIRTPORT_SYSROOT": str(self.tmp / "sysroot")}
        self.procs = []
        self.res = res  # shared by the labs of one run

    # -- topology -------------------------------------------------------------------------------
    def addns(self, n):
        sh("ip", "netns", "add", n)
        self.namespaces.append(n)
        sh("ip", "link", "set", "lo", "up", ns=n)

    def build(self, ports):
        t0 = time.perf_counter()
        for n in (self.host, self.ga, self.gb):
            self.addns(n)
        for key in ("all", "default"):
            sh("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", ns=self.host)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.host)
        sh("ip", "link", "set", "br0", "up", ns=self.host)
        for i, g in ((0, self.ga), (1, self.gb)):
            sh("ip", "link", "add", f"vnet{i}", "netns", self.host, "type", "veth", "peer", "name", "eth0", "netns", g)
            sh("ip", "link", "set", "eth0", "address", mac(i), ns=g)
            sh("ip", "addr", "add", f"{ip_of(i)}/16", "dev", "eth0", ns=g)
            sh("ip", "link", "set", "eth0", "up", ns=g)
        batch = [f"link add vnet{i} type veth peer name vpeer{i}" for i in range(2, ports)]
        batch += [f"link set vnet{i} master br0 up" for i in range(ports)]
        batch += [f"link set vpeer{i} up" for i in range(2, ports)]
        (self.tmp / "links.batch").write_text("\n".join(batch) + "\n")
        sh("ip", "-n", self.host, "-batch", self.tmp / "links.batch")
        enslaved = sh("ip", "-o", "link", "show", "master", "br0", ns=self.host).stdout.decode().count("\n")
        assert enslaved == ports, f"br0 has {enslaved} ports, expected {ports}"
        self.res["setup_s"].setdefault("topology", []).append(round(time.perf_counter() - t0, 1))
        srv = subprocess.Popen(["ip", "netns", "exec", self.gb, self.a.helper, "serve", ip_of(1), str(PORT)],
                               stdout=subprocess.PIPE)
        self.procs.append(srv)
        assert srv.stdout.readline().decode().strip() == "ready", "vpbench serve did not start"
        # ARP resolved, FDB learned, caches warm before any measurement.
        sh(self.a.helper, "connect", ip_of(1), PORT, "0.5", ns=self.ga)

    def cleanup(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for n in self.namespaces:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- virtport and nft in the host ns --------------------------------------------------------
    def xml_file(self, i):
        path = self.tmp / "xml" / f"guard{i}.xml"
        if not path.exists():
            u = f"{i:08d}-0000-4000-8000-{i:012d}"
            path.write_text(
                f"<domain type='kvm' id='{i + 1}'><name>guard{i}</name><uuid>{u}</uuid><metadata>"
                f"<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:guard ip='{ip_of(i)}'/></vp:virtport>"
                f"</metadata><devices><interface type='bridge'><mac address='{mac(i)}'/><source bridge='br0'/>"
                f"<target dev='vnet{i}'/><model type='virtio'/></interface></devices></domain>")
        return path

    def hook_step(self, i, op, label=None):
        sub = "end" if op in ("stopped", "release") else "begin"
        return {"argv": [self.a.bin, "hook", "qemu", f"guard{i}", op, sub, "-"], "stdin": str(self.xml_file(i)),
                "label": label, "quiet": True}

    def nft_step(self, path, label=None):
        return {"argv": ["nft", "-f", str(path)], "label": label, "quiet": True}

    def run_steps(self, steps):
        """Runs `steps` in the host ns in one worker process; returns {label: [seconds]}."""
        spec = self.tmp / "steps.json"
        spec.write_text(json.dumps({"env": self.env, "steps": steps}))
        r = sh(sys.executable, __file__, "--worker", spec, ns=self.host, check=False, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"worker in {self.host}: {r.stderr.decode(errors='replace').strip()}")
        return json.loads(r.stdout)

    def hooks(self, indices, op, key):
        """Hook `op` of each VM in `indices`, one process each (their total time is setup, not a target)."""
        t0 = time.perf_counter()
        self.run_steps([self.hook_step(i, op) for i in indices])
        self.res["setup_s"].setdefault(key, []).append(round(time.perf_counter() - t0, 1))

    def listing(self):
        r = sh("nft", "-j", "list", "table", "bridge", "virtport", ns=self.host, check=False)
        return json.loads(r.stdout)["nftables"] if r.returncode == 0 else []

    def guarded_count(self):
        for o in self.listing():
            if "set" in o and o["set"]["name"] == "guarded":
                return len(o["set"].get("elem", []))
        return 0

    # -- measures -------------------------------------------------------------------------------
    def server_cpu(self):
        """CPU seconds (user + system) of vpbench serve so far."""
        f = pathlib.Path(f"/proc/{self.procs[0].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rate(self, label):
        """One round: connections per second, and the CPU time client and server spend per
        connection (the frames are forwarded, bridge and guard, in the sending process's system time)."""
        s0 = self.server_cpu()
        p = subprocess.Popen(["ip", "netns", "exec", self.ga, self.a.helper, "connect", ip_of(1), str(PORT),
                              str(self.a.seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.stdout.read(), p.stderr.read()  # a few bytes each
        _, status, ru = os.wait4(p.pid, 0)  # not p.wait(): wait4 also gives its CPU time
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"vpbench connect in {self.ga}: exit {p.returncode}: {err.decode().strip()}")
        n, _, r = out.split()
        cell = self.res["rates"].setdefault(label, {"samples": [], "cpu_us": []})
        cell["samples"].append(float(r))
        cell["cpu_us"].append((ru.ru_utime + ru.ru_stime + self.server_cpu() - s0) / int(n) * 1e6)

    def added_by_start(self, i):
        """What `hook qemu start` of VM `i` adds, as nft statements: counters, then set and map
        elements (the map entries refer to the counters), and the statements that delete them."""
        def snapshot():
            objs, elems = set(), {}
            for o in self.listing():
                if "counter" in o:
                    objs.add(o["counter"]["name"])
                for kind in ("set", "map"):
                    if kind in o:
                        elems[(kind, o[kind]["name"])] = [json.dumps(e, sort_keys=True) for e in o[kind].get("elem", [])]
            return objs, elems
        objs0, elems0 = snapshot()
        self.run_steps([self.hook_step(i, "start")])
        objs1, elems1 = snapshot()
        self.run_steps([self.hook_step(i, "stopped")])
        counters = sorted(objs1 - objs0)
        add = [f"add counter bridge virtport {c}" for c in counters]
        delete, n = [], len(counters)
        for (kind, name), es in sorted(elems1.items()):
            new = [json.loads(e) for e in es if e not in set(elems0.get((kind, name), []))]
            if not new:
                continue
            n += len(new)
            add.append(f"add element bridge virtport {name} {{ {', '.join(self.nft_elem(e) for e in new)} }}")
            keys = [self.nft_elem(e[0] if kind == "map" else e) for e in new]
            delete.append(f"delete element bridge virtport {name} {{ {', '.join(keys)} }}")
        delete += [f"delete counter bridge virtport {c}" for c in counters]
        assert counters and n > len(counters), f"start of guard{i} added no counters or no elements"
        return add, delete, n

    @staticmethod
    def nft_elem(e):
        """One element of `nft -j` output in nft's own syntax."""
        if isinstance(e, list):  # map: [key, value]
            return f"{GuardBench.nft_elem(e[0])} : {GuardBench.nft_elem(e[1])}"
        if isinstance(e, dict) and "elem" in e:
            return GuardBench.nft_elem(e["elem"]["val"])
        if isinstance(e, dict) and "concat" in e:
            return " . ".join(GuardBench.nft_elem(x) for x in e["concat"])
        if isinstance(e, str) and (ADDRESS.fullmatch(e) or e in SYMBOLS):
            return e
        return json.dumps(e) if isinstance(e, str) else str(e)  # interface and counter names quoted

    def apply_timing(self, i):
        """The start hook of VM `i` (others guarded) against `nft -f` of what it adds, n times
        each, alternating which goes first; each followed (untimed) by its own undo."""
        add, delete, n = self.added_by_start(i)
        add_f, del_f = self.tmp / "guard-add.nft", self.tmp / "guard-del.nft"
        add_f.write_text("\n".join(add) + "\n")
        del_f.write_text("\n".join(delete) + "\n")
        # The file is right: it adds what the hook adds, and the delete file takes it away again.
        before = self.guarded_count()
        self.run_steps([self.nft_step(add_f)])
        assert self.guarded_count() == before + 1, "guard-add.nft did not add the port to set guarded"
        self.run_steps([self.nft_step(del_f)])
        steps = []
        for k in range(self.a.apply_runs):
            pair = [[self.hook_step(i, "start", "hook"), self.hook_step(i, "stopped")],
                    [self.nft_step(add_f, "nft"), self.nft_step(del_f)]]
            for p in (pair if k % 2 == 0 else pair[::-1]):
                steps += p
        t = self.run_steps(steps)
        self.res["apply"] = {"hook_ms": stats([x * 1000 for x in t["hook"]]), "nft_f_ms": stats([x * 1000 for x in t["nft"]]),
                             "statements": add, "elements": n, "others_guarded": before}

    def nwfilter_style(self, ports):
        """clean-traffic's protection laid out the way nwfilter does it (ebtables' per-port chains):
        one chain per port, reached through a linear list of `iifname` tests, the two measured ports
        last; in the port's chain MAC, IPv4 (DHCP discovery from 0.0.0.0 allowed), ARP, no DHCP
        server replies, no other ethertype (clean-traffic drops IPv6). Only frames from the VM:
        nwfilter's per-port chains for frames to the VM (allow-incoming-ipv4) are left out, which
        only flatters it."""
        order = list(range(2, ports)) + [0, 1]
        lines = ["table bridge vpnwfilter {",
                 "  chain prerouting {", "    type filter hook prerouting priority -300; policy accept;"]
        lines += [f'    iifname "vnet{i}" jump port{i}' for i in order]
        lines.append("  }")
        for i in order:
            lines += [f"  chain port{i} {{",
                      f"    ether saddr != {mac(i)} drop",
                      "    ether type ip udp sport 67 drop",
                      "    ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
                      f"    ether type ip ip saddr != {ip_of(i)} drop",
                      "    ether type ip accept",
                      f"    ether type arp arp htype 1 arp ptype ip arp saddr ether {mac(i)} arp saddr ip {{ 0.0.0.0, {ip_of(i)} }} accept",
                      "    drop", "  }"]
        lines.append("}")
        path = self.tmp / "nwfilter.nft"
        path.write_text("\n".join(lines) + "\n")
        return path


class Suite:
    """One lab (host ns with br0 and 1,000 ports, two guests) per state, all built first and kept:
    the rounds then go round-robin over the states, so that each state's samples sit seconds from
    the others' and a shared machine's drift reaches all alike; ratios are taken round by round."""

    def __init__(self, a):
        self.a = a
        self.res = {"rates": {}, "setup_s": {}, "ports": a.ports}
        ports = a.ports
        self.labels = ["unguarded", *FLOORS, "virtport, the 2 measured ports guarded",
                       f"virtport, {ports} ports guarded", f"nwfilter-style linear, {ports} ports"]
        self.ung, self.two, self.many, self.nw = self.labels[0], *self.labels[-3:]
        self.labs = {}

    def setup(self):
        ports = self.a.ports
        for k, label in enumerate(self.labels):
            lab = self.labs[label] = GuardBench(self.a, str(k), self.res)
            lab.build(ports)
            if label in FLOORS:
                sh("nft", "-f", "-", input=FLOORS[label].encode(), ns=lab.host)
            elif label == self.two:
                lab.hooks((0, 1), "start", "start the 2 measured")
                assert lab.guarded_count() == 2
            elif label == self.many:
                lab.hooks((0, 1), "start", "start the 2 measured")
                lab.hooks(range(2, ports - 1), "start", f"start {ports - 3} more")
                lab.apply_timing(ports - 1)
                lab.hooks((ports - 1,), "start", "start the last")
                assert lab.guarded_count() == ports, f"{lab.guarded_count()} ports in set guarded, expected {ports}"
            elif label == self.nw:
                t0 = time.perf_counter()
                sh("nft", "-f", lab.nwfilter_style(ports), ns=lab.host)
                self.res["setup_s"]["nwfilter-style nft -f"] = [round(time.perf_counter() - t0, 1)]

    def measure(self):
        n = len(self.labels)
        for r in range(self.a.rounds):
            for label in self.labels[r % n:] + self.labels[:r % n]:
                self.labs[label].rate(label)
            print(f"[guard] round {r + 1}: " + ", ".join(f"{self.res['rates'][k]['samples'][-1]:.0f}" for k in self.labels),
                  file=sys.stderr)
        many = self.labs[self.many]
        many.hooks(range(self.a.ports), "stopped", f"stopped {self.a.ports}")
        assert many.guarded_count() == 0
        rates = self.res["rates"]
        for v in rates.values():
            v["median"], v["cpu_median"] = statistics.median(v["samples"]), statistics.median(v["cpu_us"])
        for k in self.labels:
            v = rates[k]
            v["ratios"] = {}
            for base in (self.ung, self.two):
                b = rates[base]
                v["ratios"][base] = {
                    "of_medians": v["median"] / b["median"],
                    "per_round_median": statistics.median(x / y for x, y in zip(v["samples"], b["samples"])),
                    "cpu": b["cpu_median"] / v["cpu_median"]}

    def cleanup(self):
        for lab in self.labs.values():
            lab.cleanup()

    def table(self):
        a, res = self.a, self.res
        rows = ["### Guard: bridged data plane and apply at VM start", "",
                f"New TCP connections per second between two stand-in guests on one bridge with {a.ports} ports "
                f"(vpbench connect: handshake then RST, one at a time), one lab per state, {a.rounds} rounds of "
                f"{a.seconds} s per state, round-robin. Rate: median of the rounds; ratio: of the medians, "
                f"and in brackets the median of the round-by-round ratios; CPU: user + system time of client and "
                f"server per connection (forwarding and the guard run in the sender's system time), as a ratio "
                f"base / state (higher is better, like the rates):", "",
                "| state | connections/s | vs unguarded | vs 2 guarded | CPU µs/conn | CPU vs unguarded | CPU vs 2 guarded | target |",
                "|---|---|---|---|---|---|---|---|"]
        for k in self.labels:
            v = res["rates"][k]
            u, t = v["ratios"][self.ung], v["ratios"][self.two]
            target = ">= 0.9x both" if k == self.many else ""
            rows.append(f"| {k} | {v['median']:.0f} | {u['of_medians']:.2f}x ({u['per_round_median']:.2f}x) "
                        f"| {t['of_medians']:.2f}x ({t['per_round_median']:.2f}x) | {v['cpu_median']:.1f} "
                        f"| {u['cpu']:.2f}x | {t['cpu']:.2f}x | {target} |")
        ap = res["apply"]
        h, n = ap["hook_ms"], ap["nft_f_ms"]
        rows += ["", f"Guard apply at VM start, {ap['others_guarded']} other ports guarded, the VM's {ap['elements']} "
                     f"objects (counters, map entries, set elements); hook alone (no agent); n={h['n']} each, alternating:", "",
                 "| command | median ms | p90 ms | min–max ms |", "|---|---|---|---|",
                 f"| `virtport hook qemu start` (whole process: config, journal, lock, one batch) | {h['median']:.2f} | "
                 f"{h['p90']:.2f} | {h['min']:.2f}–{h['max']:.2f} |",
                 f"| `nft -f` of the same objects | {n['median']:.2f} | {n['p90']:.2f} | {n['min']:.2f}–{n['max']:.2f} |",
                 f"| ratio (median / p90) | {h['median'] / n['median']:.2f}x / {h['p90'] / n['p90']:.2f}x | | target <= 1.5x |",
                 "", "Setup (not a target; hooks one process per VM): "
                 + ", ".join(f"{k} {' / '.join(map(str, v))} s" for k, v in res["setup_s"].items())]
        return "\n".join(rows) + "\n"


def machine():
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "nproc": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(), "nft": out("nft", "--version"), "load": " ".join(open("/proc/loadavg").read().split()[:3])}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="full", choices=["full", "smoke"])
    p.add_argument("--bin", default=str(ROOT / ".build" / "release" / "virtport"))
    p.add_argument("--helper", default=str(ROOT / "bench" / "results" / "bin" / "vpbench"))
    p.add_argument("--out", default=None)
    p.add_argument("--tmp", default="/var/tmp")
    p.add_argument("--ns-prefix", help="namespace names: PREFIX-LAB-h/-a/-b (default vpg-PID)")
    a = p.parse_args()
    if a.worker:
        sys.exit(worker(a.worker))
    a.bin, a.helper = os.path.realpath(a.bin), os.path.realpath(a.helper)
    for path in (a.bin, a.helper):
        if not os.access(path, os.X_OK):
            sys.exit(f"guard_bench: {path} is missing (bench/run builds both)")
    a.ports, a.rounds, a.seconds, a.apply_runs = (1000, 20, 2, 30) if a.mode == "full" else (50, 3, 0.5, 3)
    # SIGTERM (bench/run's cleanup) unwinds like an exception: namespaces and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Suite(a)
    m0 = machine()
    try:
        b.setup()
        b.measure()
    finally:
        b.cleanup()
    b.res["machine"] = m0
    b.res["load_at_end"] = machine()["load"]
    text = b.table() + f"\nMachine: {m0['cpu']}, {m0['nproc']} cores, kernel {m0['kernel']}, {m0['nft']}; " \
                       f"load average {m0['load']} at start, {b.res['load_at_end']} at end; {m0['date']}.\n"
    print(text)
    if a.out:
        pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.out, "guard.json").write_text(json.dumps(b.res, indent=2))
        pathlib.Path(a.out, "guard.md").write_text(text)


if __name__ == "__main__":
    main()
