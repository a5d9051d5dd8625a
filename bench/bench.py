#!/usr/bin/env python3
"""virtport benchmark suite. Run it through bench/run (which builds, compiles the helper, and cleans
up the namespaces even when this script dies); BENCHMARKS.md explains the method.
`python3 bench/bench.py --report bench/results/RUN/results.json` prints a run's tables again.

Topology (namespaces <prefix>-h, -c, -g):

    client ns  c0 203.0.113.2/24 ------- h0 203.0.113.1/24   host ns: virtport's table, the hooks,
                                         br0 192.168.122.1/24 nft -f, iptables, the classic hook
    guest ns   eth0 192.168.122.10/24 -- vnet0 (in br0)

The host namespace looks like a Debian 12 host running libvirt 9.0's `default` NAT network on br0:
the live network XML in <run_dir>/network/default.xml and libvirt's iptables rules (LIBVIRT_FWI
rejects new inbound connections to the guests), so the hook takes its production path: hairpin
subnet, and its accept rule at the top of FORWARD (inserted over netlink when the first forward on
the network appears, deleted when the last one goes).

Every timed command runs in the host namespace under hyperfine -N (no shell), started as
`vpbench stdin FILE CMD...` (an exec that puts FILE on stdin: hyperfine 1.15 has no --input). The
baselines are started the same way (stdin /dev/null), so every sample carries the same one extra
exec; the "floor" rows measure it.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

HOST_IP, CLIENT_IP, GUEST_IP = "203.0.113.1", "203.0.113.2", "192.168.122.10"
DP_PORT = 8080  # data plane: host 8080 -> guest 8080

SIZES = {
    # CI: every code path of the suite once, small; the numbers are not a verdict.
    "smoke": dict(forwards=[1, 10], others=[0, 50], per_domain=50, runs=5, warmup=1,
                  base_forwards=[10], base_runs=5, slow_runs={10: 3}, mem_runs=2,
                  reconcile_runs=3, dp_rounds=1, dp_seconds=0.3),
    # By hand; results go to BENCHMARKS.md.
    "full": dict(forwards=[1, 10, 100], others=[0, 100, 1000, 10000], per_domain=100, runs=100, warmup=3,
                 base_forwards=[1, 10, 100], base_runs=100, slow_runs={1: 40, 10: 40, 100: 10}, mem_runs=5,
                 reconcile_runs=20, dp_rounds=5, dp_seconds=2.0),
}


NETWORK_XML = """<networkstatus>
  <class_id bitmap='0-2' next='3'/>
  <floor sum='0'/>
  <network>
    <name>default</name>
    <uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>
    <forward mode='nat'>
      <nat>
        <port start='1024' end='65535'/>
      </nat>
    </forward>
    <bridge name='br0' stp='on' delay='0'/>
    <mac address='52:54:00:0b:7e:01'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/>
      </dhcp>
    </ip>
  </network>
</networkstatus>
"""


class Failure(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args, ns=None, input=None, check=True, env=None, timeout=600):
    cmd = list(map(str, args))
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise Failure(f"{shlex.join(cmd)}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[-2000:]}")
    return r


def stats_ms(times_s):
    t = sorted(x * 1000 for x in times_s)
    n = len(t)
    p95 = t[max(0, -(-95 * n // 100) - 1)]  # nearest rank
    return dict(median=statistics.median(t), p95=p95, min=t[0], max=t[-1], mean=statistics.fmean(t), runs=n)


# --------------------------------------------------------------------------------------------
# Domain XML: the shape libvirt 9.0 passes at qemu `start` (Tests/.../Fixtures/libvirt-9.0/qemu-start.xml)

def domain_xml(name, uuid, mac, forwards=None, guest=GUEST_IP):
    meta = ""
    if forwards is not None:
        ranges = "".join(f"\n        <vp:range start='{h}' to='{g}'/>" for h, g in forwards)
        meta = (f"\n  <metadata>\n    <vp:virtport xmlns:vp='urn:virtport:domain:1'>\n"
                f"      <vp:portForward proto='tcp' guest='{guest}'>{ranges}\n      </vp:portForward>\n"
                f"    </vp:virtport>\n  </metadata>")
    return f"""<domain type='kvm' id='6'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>{meta}
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2' index='1'/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'>
      <alias name='usb'/>
    </controller>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='default' portid='f5ed157d-06d2-412c-b9d8-8371cb836434' bridge='virbr0'/>
      <target dev='vnet5'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
      <alias name='serial0'/>
    </console>
    <memballoon model='virtio'>
      <alias name='balloon0'/>
    </memballoon>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>
"""


class VM:
    """A domain the bench starts and stops through the hook: its XML file and its forwards."""

    def __init__(self, bench, name, uuid, mac, forwards, guest=GUEST_IP):
        self.name, self.uuid, self.forwards, self.guest = name, uuid, forwards, guest
        self.xml = os.path.join(bench.tmp, f"{name}.xml")
        with open(self.xml, "w") as f:
            f.write(domain_xml(name, uuid, mac, forwards, guest))
        self.bench = bench

    def hook(self, op, subop):
        b = self.bench
        return [b.helper, "stdin", self.xml, b.bin, "hook", "qemu", self.name, op, subop, "-"]

    @property
    def start(self):
        return self.hook("start", "begin")

    @property
    def stopped(self):
        return self.hook("stopped", "end")


class Bench:
    def __init__(self, a):
        self.mode, self.size = a.mode, SIZES[a.mode]
        self.bin, self.helper, self.tmp, self.out = a.bin, a.helper, a.tmp, a.out
        self.prefix = a.ns_prefix
        self.host, self.client, self.guest = f"{self.prefix}-h", f"{self.prefix}-c", f"{self.prefix}-g"
        self.namespaces, self.procs = [], []
        self.cells = {}  # key -> {"times": [s...], "command", "prepare", "what"}: samples merged over visits
        self.visits = {}  # others level -> how many times the run passes it (samples are split between visits)
        self.results = {"memory": [], "dataplane": {}, "findings": []}
        self.db = os.path.join(self.tmp, "virtport.db")
        self.run_dir = os.path.join(self.tmp, "run-libvirt")
        os.makedirs(os.path.join(self.run_dir, "qemu"), exist_ok=True)
        os.makedirs(os.path.join(self.run_dir, "network"), exist_ok=True)
        self.config = os.path.join(self.tmp, "virtport.conf")
        self.env = {"PATH": SYS_PATH, "LANG": "C.UTF-8", "VIRTPORT_CONFIG": self.config,
                    "CLASSIC_HOOK_CONFIG": os.path.join(self.tmp, "classic-hook.json")}
        # The peer itself (--peer-hook): saschpe/libvirt-hook-qemu's `hooks`, unmodified, with the
        # schema file beside it (it validates its config with jsonschema when that module exists).
        self.peer = os.path.realpath(a.peer_hook) if getattr(a, "peer_hook", None) else None
        if self.peer:
            self.env.update(CONFIG_FILENAME=os.path.join(self.tmp, "peer-hooks.json"),
                            CONFIG_SCHEMA_FILENAME=os.path.join(os.path.dirname(self.peer), "hooks.schema.json"))
        # Everything virtport touches lives in the scratch directory; `libvirt_uri = ""`: reconcile
        # reads the bench's status files, never a libvirtd that happens to run on this machine.
        for uri in ('libvirt_uri = ""\n', ""):  # (binaries from before libvirt_uri existed refuse the key)
            self.write_config(uri)
            r = run([self.bin, "list", "--json"], env=self.env, check=False)
            if r.returncode == 0:
                break
        else:
            raise Failure(f"virtport refuses the bench config: {r.stderr.decode().strip()}")

    def write_config(self, extra):
        max_fwd = max(self.size["forwards"] + [self.size["per_domain"]])
        with open(self.config, "w") as f:
            f.write(f'database = "{self.db}"\n{extra}[paths]\nlibvirt_run_dir = "{self.run_dir}"\n'
                    f'libvirt_config_dir = "{self.tmp}/etc-libvirt"\nlibvirt_state_dir = "{self.tmp}/var-lib-libvirt"\n'
                    f'hooks_dir = "{self.tmp}/hooks"\nagent_socket = "{self.tmp}/agent.sock"\n'
                    f'[policy]\nhost_ports = ["1024-65535"]\nmax_forwards_per_domain = {max_fwd}\n'
                    f'max_ports_per_domain = 65535\n')
        self.others = []  # VMs whose forwards are "already installed"
        self.others_up = 0

    # ---- plumbing ---------------------------------------------------------------------------
    def sh(self, *args, ns="host", **kw):
        ns = {"host": self.host, "client": self.client, "guest": self.guest, None: None}[ns]
        return run(args, ns=ns, env=self.env, **kw)

    def nft(self, *args, check=True):
        return self.sh("nft", *args, check=check)

    def nft_file(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def count(self, map_name="fwd4"):
        r = self.nft("-j", "list", "map", "inet", "virtport", map_name, check=False)
        if r.returncode != 0:
            return None
        for item in json.loads(r.stdout)["nftables"]:
            if "map" in item:
                return len(item["map"].get("elem", []))
        return 0

    def expect_count(self, n, what):
        c = self.count()
        if c is None and n == 0:  # no table yet
            return
        if c != n:
            raise Failure(f"{what}: expected {n} elements in map fwd4, the kernel holds {c}")

    def must(self, cmd, what):
        """Runs cmd once (untimed) in the host ns: exit 0 and nothing on stderr, or the run fails."""
        r = self.sh(*cmd, check=False)
        if r.returncode != 0 or r.stderr.strip():
            raise Failure(f"{what}: {shlex.join(map(str, cmd))}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        return r

    def hyperfine(self, key, cmd, prepare=None, runs=None, visits=1, what=None, warmup=None):
        """Times cmd with hyperfine in the host ns; the samples join those of earlier visits of `key`.
        `runs` is the total over all `visits`, or (min, max) to let hyperfine choose (its 3 s budget)."""
        runs = runs or self.size["runs"]
        count = ["--min-runs", runs[0], "--max-runs", runs[1]] if isinstance(runs, tuple) else ["--runs", -(-runs // visits)]
        cell = self.cells.setdefault(key, {"times": [], "command": shlex.join(map(str, cmd)),
                                           "prepare": shlex.join(map(str, prepare)) if prepare else None, "what": what})
        out = os.path.join(self.out, "hyperfine", f"{key}-{len(cell.setdefault('files', [])) + 1}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        warmup = self.size["warmup"] if warmup is None else warmup
        args = ["hyperfine", "-N", "--style", "none", *count, "--warmup", warmup, "--export-json", out]
        if prepare:
            # settle: the timed command starts once the kernel has finished destroying what the
            # prepare deleted, and the agent its work after the prepare's answer (it holds the
            # change lock shared until then), so no row pays for its prepare (vpbench.c).
            args += ["--prepare", shlex.join(map(str, [self.helper, "settle", "-l", self.db + ".lock", *prepare]))]
        args.append(shlex.join(map(str, cmd)))
        self.sh(*args, timeout=3600)
        with open(out) as f:
            times = json.load(f)["results"][0]["times"]
        cell["times"] += times
        cell["files"].append(os.path.relpath(out, self.out))
        cell.setdefault("visit_medians", []).append(statistics.median(times) * 1000)
        s = stats_ms(times)
        log(f"{key}: median {s['median']:.2f} ms  p95 {s['p95']:.2f}  min {s['min']:.2f}  max {s['max']:.2f}  ({s['runs']} runs)")

    def stats(self, key):
        c = self.cells.get(key)
        if not c:
            return None
        s = stats_ms(c["times"])
        s.update(key=key, command=c["command"], prepare=c["prepare"], what=c["what"],
                 visit_medians=c.get("visit_medians", []))
        return s

    # ---- topology ---------------------------------------------------------------------------
    def addns(self, name):
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "link", "set", "lo", "up"], ns=name)

    def build_topology(self):
        for n in (self.host, self.client, self.guest):
            self.addns(n)
        h, c, g = self.host, self.client, self.guest
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=h)
        run(["ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c])
        run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", "h0"], ns=h)
        run(["ip", "link", "set", "h0", "up"], ns=h)
        run(["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "c0"], ns=c)
        run(["ip", "link", "set", "c0", "up"], ns=c)
        run(["ip", "link", "add", "br0", "type", "bridge"], ns=h)
        run(["ip", "addr", "add", "192.168.122.1/24", "dev", "br0"], ns=h)
        run(["ip", "link", "set", "br0", "up"], ns=h)
        run(["ip", "link", "add", "vnet0", "netns", h, "type", "veth", "peer", "name", "eth0", "netns", g])
        run(["ip", "link", "set", "vnet0", "master", "br0"], ns=h)
        run(["ip", "link", "set", "vnet0", "up"], ns=h)
        run(["ip", "addr", "add", f"{GUEST_IP}/24", "dev", "eth0"], ns=g)
        run(["ip", "link", "set", "eth0", "up"], ns=g)
        run(["ip", "route", "add", "default", "via", "192.168.122.1"], ns=g)
        # The classic hook looks up the default route's address, as on a real host.
        run(["ip", "route", "add", "default", "via", CLIENT_IP], ns=h)
        self.libvirt_network()

    def libvirt_network(self):
        """libvirt 9.0's `default` network on br0: its live XML and its iptables rules (LIBVIRT-LAB.md)."""
        with open(os.path.join(self.run_dir, "network", "default.xml"), "w") as f:
            f.write(NETWORK_XML)
        ipt = lambda *a: run(["iptables", "-w", *a], ns=self.host)
        for table, chains in (("filter", ["LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"]), ("nat", ["LIBVIRT_PRT"])):
            for c in chains:
                ipt("-t", table, "-N", c)
        for c in ("LIBVIRT_FWX", "LIBVIRT_FWI", "LIBVIRT_FWO"):
            ipt("-A", "FORWARD", "-j", c)
        ipt("-t", "nat", "-A", "POSTROUTING", "-j", "LIBVIRT_PRT")
        ipt("-A", "LIBVIRT_FWI", "-d", "192.168.122.0/24", "-o", "br0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        ipt("-A", "LIBVIRT_FWI", "-o", "br0", "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        ipt("-A", "LIBVIRT_FWO", "-s", "192.168.122.0/24", "-i", "br0", "-j", "ACCEPT")
        ipt("-A", "LIBVIRT_FWO", "-i", "br0", "-j", "REJECT")
        ipt("-A", "LIBVIRT_FWX", "-i", "br0", "-o", "br0", "-j", "ACCEPT")
        ipt("-t", "nat", "-A", "LIBVIRT_PRT", "-s", "192.168.122.0/24", "!", "-d", "192.168.122.0/24", "-j", "MASQUERADE")

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for n in self.namespaces:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    # ---- the VMs ------------------------------------------------------------------------------
    def measured(self, n):
        """The VM whose hooks are timed. Its host ports lie above every other VM's: the journal's
        conflict check is a range scan over (proto, host_port_start), longest for the highest ports."""
        return VM(self, f"bench-f{n}", f"10000000-0000-4000-8000-{n:012d}", f"52:54:00:10:{n >> 8 & 255:02x}:{n & 255:02x}",
                  [(40000 + i, 30000 + 2 * i) for i in range(n)])

    def other(self, k):
        per = self.size["per_domain"]
        return VM(self, f"other-{k:04d}", f"20000000-0000-4000-8000-{k:012d}", f"52:54:00:20:{k >> 8 & 255:02x}:{k & 255:02x}",
                  [(20000 + k * per + j, 8000 + 2 * j) for j in range(per)], guest=f"192.168.122.{100 + k % 100}")

    def set_others(self, total):
        """Starts (or stops) other VMs through the hook until `total` of their forwards are installed."""
        per = self.size["per_domain"]
        assert total % per == 0
        while len(self.others) * per < total:
            vm = self.other(len(self.others))
            self.must(vm.start, f"installing {vm.name}")
            self.others.append(vm)
        while len(self.others) * per > total:
            vm = self.others.pop()
            self.must(vm.stopped, f"removing {vm.name}")
        self.expect_count(total, f"with {total} other forwards")

    # ---- measurements -------------------------------------------------------------------------
    def floors(self):
        h = self.helper
        vm = self.measured(10)
        for key, what, cmd in [
            ("true", "`/bin/true`, started directly", ["/bin/true"]),
            ("stdin-true", "`/bin/true` through the stdin exec (the cost every row below carries)", [h, "stdin", "/dev/null", "/bin/true"]),
            ("version", "`virtport version` (process start of the hook binary)", [h, "stdin", vm.xml, self.bin, "version"]),
        ]:
            self.hyperfine(f"floor-{key}", cmd, visits=self.visits[0], what=what)

    def hook_matrix(self, others):
        v = self.visits[others]
        for n in self.size["forwards"]:
            vm = self.measured(n)
            self.must(vm.start, f"{vm.name} start")
            self.expect_count(others + n, f"{vm.name} started")
            self.must(vm.stopped, f"{vm.name} stopped")
            self.expect_count(others, f"{vm.name} stopped")
            self.hyperfine(f"hook-start-f{n}-o{others}", vm.start, prepare=vm.stopped, visits=v)
            self.expect_count(others + n, f"after timing {vm.name} start")
            self.hyperfine(f"hook-stopped-f{n}-o{others}", vm.stopped, prepare=vm.start, visits=v)
            self.expect_count(others, f"after timing {vm.name} stopped")
        # qemu `prepare` (read-only conflict check libvirt runs before start), 10 forwards.
        vm = self.measured(10)
        self.must(vm.hook("prepare", "begin"), "prepare")
        self.hyperfine(f"hook-prepare-f10-o{others}", vm.hook("prepare", "begin"), visits=v)
        # The same hook processes with `virtport agent` running (the installed configuration):
        # the hook hands its work to the agent's warm journal and netlink socket.
        with self.agent():
            self.must(vm.start, f"{vm.name} start (agent)")
            self.expect_count(others + 10, f"{vm.name} started by the agent")
            self.must(vm.stopped, f"{vm.name} stopped (agent)")
            self.expect_count(others, f"{vm.name} stopped by the agent")
            self.hyperfine(f"hook-start-f10-o{others}-agent", vm.start, prepare=vm.stopped, visits=v)
            self.expect_count(others + 10, f"after timing {vm.name} start (agent)")
            self.hyperfine(f"hook-stopped-f10-o{others}-agent", vm.stopped, prepare=vm.start, visits=v)
            self.expect_count(others, f"after timing {vm.name} stopped (agent)")
            self.hyperfine(f"hook-prepare-f10-o{others}-agent", vm.hook("prepare", "begin"), visits=v)

    @contextlib.contextmanager
    def agent(self):
        """`virtport agent --verbose` in the host ns for the duration; checks it served the hooks."""
        log_path = os.path.join(self.out, "agent.log")
        sock = os.path.join(self.tmp, "agent.sock")
        with open(log_path, "a") as log_file:
            p = subprocess.Popen(["ip", "netns", "exec", self.host, self.bin, "agent", "--verbose"], env=self.env,
                                 stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            deadline = time.time() + 10
            while not os.path.exists(sock):
                if p.poll() is not None or time.time() > deadline:
                    raise Failure(f"virtport agent did not start: {open(log_path).read()[-500:]}")
                time.sleep(0.02)
            before = open(log_path).read().count(": exit 0")
            yield p
            if open(log_path).read().count(": exit 0") <= before:
                raise Failure("virtport agent served no hook: the agent rows would measure hooks alone")
        finally:
            p.terminate()
            p.wait()

    def no_metadata(self, others):
        if others not in (0, self.size["others"][-1]):
            return
        vm = VM(self, "bench-plain", "30000000-0000-4000-8000-000000000001", "52:54:00:30:00:01", None)
        self.must(vm.start, "no-metadata start")
        self.must(vm.stopped, "no-metadata stopped")
        for op, cmd in (("start", vm.start), ("stopped", vm.stopped)):
            self.hyperfine(f"nometa-{op}-o{others}", cmd, visits=self.visits[others])

    def baselines(self):
        h = self.helper
        v = self.visits[0]
        for n in self.size["base_forwards"]:
            vm = self.measured(n)
            fw = vm.forwards
            # nft -f: the same element adds and deletes, one nft process.
            elems = ", ".join(f"tcp . {hp} : {GUEST_IP} . {gp}" for hp, gp in fw)
            keys = ", ".join(f"tcp . {hp}" for hp, _ in fw)
            add = self.nft_file(f"nft-add-{n}.nft", f"add element inet virtport fwd4 {{ {elems} }}\n")
            delete = self.nft_file(f"nft-del-{n}.nft", f"delete element inet virtport fwd4 {{ {keys} }}\n")
            nft_add, nft_del = [h, "stdin", "/dev/null", "/usr/sbin/nft", "-f", add], [h, "stdin", "/dev/null", "/usr/sbin/nft", "-f", delete]
            flush = ["/usr/sbin/nft", "flush", "map", "inet", "virtport", "fwd4"]
            self.expect_count(0, "before the nft -f baseline")
            self.must(nft_add, "nft -f add")
            self.expect_count(n, "nft -f add")
            self.must(nft_del, "nft -f delete")
            self.expect_count(0, "nft -f delete")
            self.hyperfine(f"nft-add-f{n}", nft_add, prepare=flush, visits=v, runs=self.size["base_runs"])
            self.expect_count(n, "after timing nft -f add")
            self.hyperfine(f"nft-del-f{n}", nft_del, prepare=nft_add, visits=v, runs=self.size["base_runs"])
            self.expect_count(0, "after timing nft -f delete")

            # One iptables process per rule: DNAT + FORWARD accept + hairpin masquerade per forward.
            ipt = "/usr/sbin/iptables"
            rules = []
            for hp, gp in fw:
                # (FORWARD: inserted, or libvirt's LIBVIRT_FWI reject would come first)
                rules += [("nat", "-A", f"PREROUTING -d {HOST_IP} -p tcp --dport {hp} -j DNAT --to-destination {GUEST_IP}:{gp}"),
                          ("filter", "-I", f"FORWARD -d {GUEST_IP} -p tcp --dport {gp} -j ACCEPT"),
                          ("nat", "-A", f"POSTROUTING -s 192.168.122.0/24 -d {GUEST_IP} -p tcp --dport {gp} -j MASQUERADE")]

            def lines(delete):
                return "".join(f"{ipt} -t {t} {'-D' if delete else a} {r}\n" for t, a, r in rules)
            ipt_add = self.nft_file(f"ipt-add-{n}.txt", lines(False))
            ipt_del = self.nft_file(f"ipt-del-{n}.txt", lines(True))
            ipt_del_add = self.nft_file(f"ipt-del-add-{n}.txt", lines(True) + lines(False))
            slow = self.size["slow_runs"].get(n, 10)
            cmd_add, cmd_del = [h, "stdin", "/dev/null", h, "each", ipt_add], [h, "stdin", "/dev/null", h, "each", ipt_del]
            base_rules = self.ipt_rules()
            self.must(cmd_add, "iptables per rule: add")
            self.expect_ipt(base_rules + 3 * n, "iptables per rule: add")
            self.must(cmd_del, "iptables per rule: delete")
            self.expect_ipt(base_rules, "iptables per rule: delete")
            self.hyperfine(f"iptables-add-f{n}", cmd_add, prepare=[h, "each", "-k", ipt_del], runs=slow, visits=v, warmup=1)
            self.expect_ipt(base_rules + 3 * n, "after timing iptables add")
            self.hyperfine(f"iptables-del-f{n}", cmd_del, prepare=[h, "each", "-k", ipt_del_add], runs=slow, visits=v, warmup=1)
            self.expect_ipt(base_rules, "after timing iptables delete")

            # The classic Python hook (bench/classic-hook.py), same forwards.
            with open(self.env["CLASSIC_HOOK_CONFIG"], "w") as f:
                json.dump({vm.name: {"private_ip": GUEST_IP, "public_ip": HOST_IP, "port_map": {"tcp": [list(p) for p in fw]}}}, f)
            script = os.path.join(HERE, "classic-hook.py")
            py_start = [h, "stdin", vm.xml, script, vm.name, "start", "begin", "-"]
            py_stopped = [h, "stdin", vm.xml, script, vm.name, "stopped", "end", "-"]
            self.sh(*py_stopped)  # a clean slate (errors about missing chains are expected here)
            self.sh(*py_start)
            self.expect_classic(vm, n, "classic hook start")
            self.sh(*py_stopped)
            self.expect_classic(vm, None, "classic hook stopped")
            self.hyperfine(f"classic-start-f{n}", py_start, prepare=py_stopped, runs=slow, visits=v, warmup=1)
            self.expect_classic(vm, n, "after timing classic start")
            self.sh(*py_stopped)  # its start is not idempotent: the first prepare below must not start it twice
            self.hyperfine(f"classic-stopped-f{n}", py_stopped, prepare=py_start, runs=slow, visits=v, warmup=1)
            self.expect_classic(vm, None, "after timing classic stopped")
            if self.peer:
                self.peer_cells(vm, n, fw, slow, v)

    def peer_cells(self, vm, n, fw, slow, v):
        """saschpe/libvirt-hook-qemu's own `hooks` (--peer-hook), same forwards, same JSON config
        format as the classic hook (its model): the peer row of issue 24's speed table."""
        h = self.helper
        with open(self.env["CONFIG_FILENAME"], "w") as f:
            json.dump({vm.name: {"private_ip": GUEST_IP, "public_ip": HOST_IP, "port_map": {"tcp": [list(p) for p in fw]}}}, f)
        start = [h, "stdin", vm.xml, "/usr/bin/python3", self.peer, vm.name, "start", "begin", "-"]
        stopped = [h, "stdin", vm.xml, "/usr/bin/python3", self.peer, vm.name, "stopped", "end", "-"]
        self.sh(*stopped, check=False)  # a clean slate
        self.sh(*start)
        self.expect_classic(vm, n, "peer hook start")
        self.sh(*stopped)
        self.expect_classic(vm, None, "peer hook stopped")
        self.hyperfine(f"peer-start-f{n}", start, prepare=stopped, runs=slow, visits=v, warmup=1)
        self.expect_classic(vm, n, "after timing peer start")
        self.sh(*stopped)
        self.hyperfine(f"peer-stopped-f{n}", stopped, prepare=start, runs=slow, visits=v, warmup=1)
        self.expect_classic(vm, None, "after timing peer stopped")

    def ipt_rules(self):
        got = 0
        for t in ("nat", "filter"):
            r = self.sh("iptables", "-w", "-t", t, "-S")
            got += sum(1 for ln in r.stdout.decode().splitlines() if ln.startswith("-A "))
        return got

    def expect_ipt(self, n, what):
        got = self.ipt_rules()
        if got != n:
            raise Failure(f"{what}: expected {n} iptables rules, found {got}")

    def expect_classic(self, vm, n, what):
        r = self.sh("iptables", "-t", "nat", "-S")
        out = r.stdout.decode()
        dnat = sum(1 for ln in out.splitlines() if ln.startswith(f"-A DNAT-{vm.name} "))
        present = f"-N DNAT-{vm.name}" in out
        if n is None and present:
            raise Failure(f"{what}: chain DNAT-{vm.name} still there")
        if n is not None and dnat != n:
            raise Failure(f"{what}: expected {n} DNAT rules in DNAT-{vm.name}, found {dnat}")

    def memory(self, others):
        """Peak RSS (/usr/bin/time %M, KiB) of one hook process."""
        h = self.helper
        cases = []
        for n in sorted({10, max(self.size["forwards"])}):
            vm = self.measured(n)
            cases.append((f"hook start, {n} forwards", vm.start, vm.stopped, vm.stopped))
            cases.append((f"hook stopped, {n} forwards", vm.stopped, vm.start, None))
        plain = VM(self, "bench-plain", "30000000-0000-4000-8000-000000000001", "52:54:00:30:00:01", None)
        cases.append(("hook start, no metadata", plain.start, None, None))
        for what, cmd, prepare, after in cases:
            rss = []
            for _ in range(self.size["mem_runs"]):
                if prepare:
                    self.must(prepare, f"memory: prepare {what}")
                r = self.sh("/usr/bin/time", "-f", "%M", *cmd)
                rss.append(int(r.stderr.decode().strip().splitlines()[-1]))
            if after:
                self.must(after, f"memory: after {what}")
            self.results["memory"].append(dict(what=what, others=others, max_kib=max(rss), median_kib=statistics.median(rss)))
            log(f"memory {what}, {others} others: max RSS {max(rss)} KiB")
        self.expect_count(others, "after the memory runs")

    def reconcile(self, others):
        """`virtport reconcile` with every other VM running (libvirt status files, pid alive)."""
        pid = os.getpid()
        for vm in self.others:
            with open(vm.xml) as f:
                xml = f.read()
            with open(os.path.join(self.run_dir, "qemu", f"{vm.name}.xml"), "w") as f:
                f.write(f"<domstatus state='running' reason='booted' pid='{pid}'>\n"
                        f"  <monitor path='/var/lib/libvirt/qemu/domain-6-{vm.name}/monitor.sock' type='unix'/>\n"
                        f"{xml}</domstatus>\n")
        h = self.helper
        cmd = [h, "stdin", "/dev/null", self.bin, "reconcile"]
        r = self.sh(self.bin, "reconcile", "--json", check=False)
        if r.returncode != 0:
            raise Failure(f"reconcile: exit {r.returncode}: {r.stderr.decode()}")
        fixes = json.loads(r.stdout)["fixes"]
        if fixes:
            raise Failure(f"reconcile with nothing to fix fixed something: {json.dumps(fixes[:5])}")
        self.expect_count(others, "reconcile, nothing to fix")
        runs = (3, self.size["reconcile_runs"])  # hyperfine picks within these: reconcile may take seconds
        for key, what, prepare in [
            ("nothing", "nothing to fix", None),
            ("flush-map", f"after `nft flush map inet virtport fwd4`: re-adds {others} elements",
             ["/usr/sbin/nft", "flush", "map", "inet", "virtport", "fwd4"]),
            ("delete-table", f"after `nft delete table inet virtport`: rebuilds the table with {others} elements",
             ["/usr/sbin/nft", "delete", "table", "inet", "virtport"]),
        ]:
            self.hyperfine(f"reconcile-{key}-o{others}", cmd, prepare=prepare, runs=runs, what=what, warmup=0)
            self.expect_count(others, f"after timing reconcile ({what})")
        rss = []
        for _ in range(min(2, self.size["mem_runs"])):
            self.nft("flush", "map", "inet", "virtport", "fwd4")
            r = self.sh("/usr/bin/time", "-f", "%M", *cmd)
            rss.append(int(r.stderr.decode().strip().splitlines()[-1]))
        self.results["memory"].append(dict(what=f"reconcile re-adding {others} elements", others=others,
                                           max_kib=max(rss), median_kib=statistics.median(rss)))
        self.expect_count(others, "after reconcile memory runs")
        # Correctness probe (not timed): `nft flush table` removes the rules but keeps the map
        # elements. Does reconcile notice?
        self.nft("flush", "table", "inet", "virtport")
        self.sh(self.bin, "reconcile", check=False)
        rules = self.nft("list", "chain", "inet", "virtport", "prerouting").stdout.decode().count("dnat")
        if rules == 0:
            self.results["findings"].append(
                "`nft flush table inet virtport` (removes the rules, keeps the map elements) is not repaired by "
                "`virtport reconcile`: it compares map elements only, finds all of them, and reports nothing to do; "
                "every forward stays broken until the table is deleted or a hook rebuilds it.")
            log("finding: reconcile does not restore flushed rules; deleting the table and reconciling to go on")
            self.nft("delete", "table", "inet", "virtport")
            self.must([self.bin, "reconcile"], "reconcile after delete")
        self.expect_count(others, "after the flush-table probe")
        for vm in self.others:  # no longer "running": the data plane starts a VM without a status file
            os.unlink(os.path.join(self.run_dir, "qemu", f"{vm.name}.xml"))

    def dataplane(self, others):
        """New TCP connections per second through one forward: 1 forward installed, 1 + `others`
        in virtport's maps, and the same forwards as one DNAT rule each (the measured one last)."""
        h = self.helper
        vm = VM(self, "bench-dp", "40000000-0000-4000-8000-000000000001", "52:54:00:40:00:01", [(DP_PORT, DP_PORT)])
        self.must(vm.start, "data-plane VM start")
        self.expect_count(others + 1, "data-plane VM started")
        srv = subprocess.Popen(["ip", "netns", "exec", self.guest, h, "serve", GUEST_IP, str(DP_PORT)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(srv)
        with open(os.path.join(self.tmp, "pids"), "a") as f:
            f.write(f"{srv.pid}\n")
        if srv.stdout.readline().decode().strip() != "ready":
            raise Failure(f"listener in the guest ns: {srv.stderr.read().decode()}")
        full = self.nft_file("dp-full.nft", self.nft("list", "table", "inet", "virtport").stdout.decode())
        other_fw = [(hp, vm2.guest, gp) for vm2 in self.others for hp, gp in vm2.forwards]
        add = self.nft_file("dp-others-add.nft", "add element inet virtport fwd4 { "
                            + ", ".join(f"tcp . {hp} : {g} . {gp}" for hp, g, gp in other_fw) + " }\n")
        delete = self.nft_file("dp-others-del.nft", "delete element inet virtport fwd4 { "
                               + ", ".join(f"tcp . {hp}" for hp, _, _ in other_fw) + " }\n")
        rules = ["table ip vpbench_rules {", "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
        rules += [f"    ip daddr {HOST_IP} tcp dport {hp} dnat to {g}:{gp}" for hp, g, gp in other_fw]
        rules += [f"    ip daddr {HOST_IP} tcp dport {DP_PORT} dnat to {GUEST_IP}:{DP_PORT}", "  }", "}"]
        rules = self.nft_file("dp-rules.nft", "\n".join(rules) + "\n")
        n_rules = len(other_fw) + 1

        def state(name):
            if name == "maps-1":
                self.nft("-f", delete)
                self.expect_count(1, "data plane: 1 forward")
            elif name == "maps-all":
                self.nft("-f", add)
                self.expect_count(others + 1, "data plane: all forwards")
            elif name == "rules":
                self.nft("delete", "table", "inet", "virtport")
                self.nft("-f", rules)
            elif name == "back":
                self.nft("delete", "table", "ip", "vpbench_rules")
                self.nft("-f", full)
                self.expect_count(others + 1, "data plane: table restored")

        def measure(seconds):
            r = self.sh(h, "connect", HOST_IP, DP_PORT, seconds, ns="client")
            n, secs, rate = r.stdout.decode().split()
            if int(n) == 0:
                raise Failure("data plane: no connection went through")
            return float(rate)

        rates = {"maps-1": [], "maps-all": [], "rules": []}
        for name in rates:  # every state carries traffic before anything is timed
            state(name)
            measure(0.05)
            if name == "rules":
                state("back")
        for rnd in range(self.size["dp_rounds"]):
            for name in rates:
                state(name)
                rates[name].append(measure(self.size["dp_seconds"]))
                if name == "rules":
                    state("back")
            log(f"data plane round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
        srv.kill()
        srv.wait()
        self.must(vm.stopped, "data-plane VM stopped")
        self.results["dataplane"] = dict(
            others=others, rules=n_rules, seconds=self.size["dp_seconds"], rounds=self.size["dp_rounds"],
            states={k: dict(median=statistics.median(v), min=min(v), max=max(v), samples=v) for k, v in rates.items()})

    # ---- the run ------------------------------------------------------------------------------
    def run(self):
        """Up the levels of other forwards and back down (0, 100, 1000, 10000, 1000, 100, 0): every
        level but the top is measured twice, half the runs each time, so slow drift in the machine's
        load hits the 0 and the 10,000 columns alike. The baselines run at both visits of level 0."""
        log(f"mode {self.mode}: namespaces {self.host}, {self.client}, {self.guest}; scratch {self.tmp}")
        self.build_topology()
        up = self.size["others"]
        path = up + up[-2::-1]
        self.visits = {o: path.count(o) for o in up}
        top = up[-1]
        for i, others in enumerate(path):
            self.set_others(others)
            log(f"--- {others} other forwards installed")
            if others == 0:
                self.floors()
            self.no_metadata(others)
            self.hook_matrix(others)
            if others == 0:
                self.baselines()
            if i == 0 or others == top:
                self.memory(others)
            if others == top:
                self.reconcile(top)
                self.dataplane(top)


# ------------------------------------------------------------------------------------------------
# Report

def shown_path(path):
    """The binary's path as the results show it: relative to the repository when inside it (a
    results file must not name the machine's directories)."""
    full = os.path.realpath(path)
    root = os.path.realpath(ROOT)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else os.path.basename(full)


def sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def machine_facts(a):
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # a fact we cannot read is reported, not fatal
            return f"? ({e})"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    git = out("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
    dirty = out("git", "-C", ROOT, "status", "--porcelain", "--", "Sources", "Package.swift")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": a.mode,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{int(mem) // 1024} MiB",
        "kernel": platform.release(),
        "os": out("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "virtport": f"{out(a.bin, 'version')}, {shown_path(a.bin)} (sha256 {sha256(a.bin)[:12]}); "
                    + (f"built by bench/run from repo HEAD {git}{' + uncommitted changes in Sources' if dirty else ''}"
                       if os.environ.get("BENCH_BUILT") else f"given as VIRTPORT_BIN (repo HEAD is {git})"),
        "swift": out("swift", "--version").splitlines()[0] if out("swift", "--version") else "?",
        "nft": out("nft", "--version"),
        "iptables": out("iptables", "--version"),
        "python3": out("/usr/bin/python3", "--version"),
        "hyperfine": out("hyperfine", "--version"),
        "filesystem (scratch, journal)": out("findmnt", "-n", "-o", "FSTYPE", "-T", a.tmp),
    }


def f2(x):
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def disagree(s):
    """The visits of a level measured this cell with medians more than 30% apart: the load changed."""
    v = s.get("visit_medians") or []
    return len(v) > 1 and max(v) > 1.3 * min(v)


def cell(s):
    if not s:
        return "– | – | –"
    mark = " †" if disagree(s) else ""
    return f"{f2(s['median'])}{mark} | {f2(s['p95'])} | {f2(s['min'])}–{f2(s['max'])}"


def targets(st, res, size):
    """Every target of issue 5: dicts (target, measured, limit, met, note). `st(key)` gives a cell's stats."""
    rows = []
    up = size["others"]
    top, near = up[-1], up[1]  # `near`: one other VM's forwards on the network

    def add(target, measured, limit, met, note=""):
        rows.append(dict(target=target, measured=measured, limit=limit, met=met, note=note))

    def ratio(a, b):
        return st(a)["median"] / st(b)["median"]

    first = ("at 0 other forwards the VM is alone on its network: the hook also inserts (at start) or "
             "deletes (at stopped) its accept rule in libvirt's iptables filter table (over netlink, no process)")
    wrap = st("floor-stdin-true")["median"] - st("floor-true")["median"] if st("floor-true") else 0
    # Each comparison twice: the hook process alone, and with `virtport agent` running (installed by
    # scripts/install.sh; the hook hands it the work). The same hook command is timed in both.
    for sfx, how in (("", "hook alone"), ("-agent", "with the agent")):
        if not (st(f"hook-start-f10-o0{sfx}") and st("nft-add-f10")):
            continue
        for op, base, verb in (("start", "nft-add-f10", "adding the same 10 elements"),
                               ("stopped", "nft-del-f10", "deleting them")):
            r = ratio(f"hook-{op}-f10-o0{sfx}", base)
            rn = ratio(f"hook-{op}-f10-o{near}{sfx}", base)
            add(f"hook `{op}`, 10 forwards ≤ 1.5× `nft -f` {verb} ({how})",
                f"{f2(st(f'hook-{op}-f10-o0{sfx}')['median'])} / {f2(st(base)['median'])} ms = {r:.2f}×", "≤ 1.5×",
                r <= 1.5, f"{first}; with another VM on the network (rule already there): "
                f"{f2(st(f'hook-{op}-f10-o{near}{sfx}')['median'])} ms = {rn:.2f}×")
        s, st_ = st(f"hook-start-f10-o0{sfx}")["median"], st(f"hook-stopped-f10-o0{sfx}")["median"]
        ps, pst = st("classic-start-f10")["median"], st("classic-stopped-f10")["median"]
        add(f"`start` ≥ 50× faster than the classic Python hook, 10 forwards ({how})",
            f"{f2(ps)} / {f2(s)} ms = {ps / s:.1f}×", "≥ 50×", ps / s >= 50)
        add(f"`start`+`stopped` cycle ≥ 30× faster than the classic Python hook ({how})",
            f"{f2(ps + pst)} / {f2(s + st_)} ms = {(ps + pst) / (s + st_):.1f}×", "≥ 30×", (ps + pst) / (s + st_) >= 30)
        ia, idel = st("iptables-add-f10")["median"], st("iptables-del-f10")["median"]
        add(f"`start` ≥ 5× faster than one `iptables` process per rule, 30 processes ({how})",
            f"{f2(ia)} / {f2(s)} ms = {ia / s:.1f}×", "≥ 5×", ia / s >= 5)
        add(f"`stopped` ≥ 5× faster than one `iptables -D` process per rule ({how})",
            f"{f2(idel)} / {f2(st_)} ms = {idel / st_:.1f}×", "≥ 5×", idel / st_ >= 5)
        for op in ("start", "stopped"):
            if st(f"hook-{op}-f10-o{top}{sfx}"):
                r = ratio(f"hook-{op}-f10-o{top}{sfx}", f"hook-{op}-f10-o0{sfx}")
                rn = ratio(f"hook-{op}-f10-o{top}{sfx}", f"hook-{op}-f10-o{near}{sfx}")
                add(f"`{op}`, 10 forwards, with {top:,} other forwards ≤ 1.2× with none ({how})",
                    f"{f2(st(f'hook-{op}-f10-o{top}{sfx}')['median'])} / {f2(st(f'hook-{op}-f10-o0{sfx}')['median'])} ms"
                    f" = {r:.2f}×", "≤ 1.2×", r <= 1.2,
                    f"{first}; against {near:,} other forwards (the accept rule already there): {rn:.2f}×")
    for op in ("start", "stopped"):
        x = st(f"nometa-{op}-o0")
        if x:
            add(f"VM without metadata, `{op}` ≤ 5 ms", f"median {f2(x['median'])} ms (p95 {f2(x['p95'])})", "≤ 5 ms",
                x["median"] <= 5, f"as measured, with the harness's extra exec ({f2(wrap)} ms, floor table); "
                f"without it ≈ {f2(x['median'] - wrap)} ms (never contacts the agent)")
    dp = res["dataplane"]
    if dp:
        a, m = dp["states"]["maps-1"]["median"], dp["states"]["maps-all"]["median"]
        add(f"connections/s with {dp['others'] + 1:,} forwards ≥ 0.9× with 1",
            f"{m:,.0f} / {a:,.0f} = {m / a:.2f}×", "≥ 0.9×", m / a >= 0.9)
    return rows


def report(cells, res, facts, size):
    st = cells.get
    L = []
    w = L.append
    up = size["others"]
    w(f"### Machine ({facts['mode']} run)\n")
    w("| fact | value |\n|---|---|")
    for k, v in facts.items():
        w(f"| {k} | {v} |")
    w("")
    w("Times in ms: median | p95 | min–max over the runs shown. Every timed process is started by "
      "`hyperfine -N` through `vpbench stdin FILE CMD…` (one extra exec, see the floor); levels of other "
      "forwards below the top are measured on the way up and again on the way down, half the runs each.\n")
    flagged = [s for s in cells.values() if s and disagree(s)]
    if flagged:
        w("† marks a cell whose two visits disagree by more than 30% (medians " + "; ".join(
            f"{s['key']}: " + " / ".join(f2(m) for m in s["visit_medians"]) for s in flagged)
          + " ms): the machine's load changed meanwhile; read those medians with care.\n")
    w("#### Floor\n")
    w("| what | median | p95 | min–max | runs |\n|---|---|---|---|---|")
    for k in ("true", "stdin-true", "version"):
        s = st(f"floor-{k}")
        w(f"| {s['what']} | {cell(s)} | {s['runs']} |")
    w("")
    w("#### virtport hook: qemu `start` and `stopped` of one VM, timed separately\n")
    w("| VM forwards | other forwards installed | `start` median | p95 | min–max | `stopped` median | p95 | min–max | runs |")
    w("|---|---|---|---|---|---|---|---|---|")
    for n in size["forwards"]:
        for o in up:
            a, b = st(f"hook-start-f{n}-o{o}"), st(f"hook-stopped-f{n}-o{o}")
            w(f"| {n} | {o:,} | {cell(a)} | {cell(b)} | {a['runs']} |")
    w("")
    if st("hook-start-f10-o0-agent"):
        w("The same hook processes with `virtport agent` running (README \"Agent\": the hook hands its work "
          "to the agent's open journal and netlink socket):\n")
        w("| VM forwards | other forwards installed | `start` median | p95 | min–max | `stopped` median | p95 | min–max | runs |")
        w("|---|---|---|---|---|---|---|---|---|")
        for o in up:
            a, b = st(f"hook-start-f10-o{o}-agent"), st(f"hook-stopped-f10-o{o}-agent")
            if a:
                w(f"| 10 | {o:,} | {cell(a)} | {cell(b)} | {a['runs']} |")
        w("")
    w("| qemu `prepare` (read-only conflict check), 10 forwards | median | p95 | min–max | runs |\n|---|---|---|---|---|")
    for o in up:
        s = st(f"hook-prepare-f10-o{o}")
        w(f"| {o:,} other forwards installed | {cell(s)} | {s['runs']} |")
    for o in up:
        s = st(f"hook-prepare-f10-o{o}-agent")
        if s:
            w(f"| {o:,} other forwards installed, agent running | {cell(s)} | {s['runs']} |")
    w("")
    w("#### VM without virtport metadata\n")
    w("| hook | other forwards installed | median | p95 | min–max | runs |\n|---|---|---|---|---|---|")
    for o in (0, up[-1]):
        for op in ("start", "stopped"):
            s = st(f"nometa-{op}-o{o}")
            w(f"| `{op}` | {o:,} | {cell(s)} | {s['runs']} |")
    w("")
    w("#### The same forwards by other means (no other forwards installed)\n")
    w("| forwards | way | processes | add / `start` median | p95 | min–max | delete / `stopped` median | p95 | min–max | runs |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for n in size["base_forwards"]:
        h = (st(f"hook-start-f{n}-o0"), st(f"hook-stopped-f{n}-o0"))
        if h[0]:
            w(f"| {n} | virtport hook | 1 | {cell(h[0])} | {cell(h[1])} | {h[0]['runs']} |")
        h = (st(f"hook-start-f{n}-o0-agent"), st(f"hook-stopped-f{n}-o0-agent"))
        if h[0]:
            w(f"| {n} | virtport hook, agent running | 1 (+ the agent) | {cell(h[0])} | {cell(h[1])} | {h[0]['runs']} |")
        a, b = st(f"nft-add-f{n}"), st(f"nft-del-f{n}")
        w(f"| {n} | `nft -f`, the same elements into virtport's map | 1 | {cell(a)} | {cell(b)} | {a['runs']} |")
        a, b = st(f"iptables-add-f{n}"), st(f"iptables-del-f{n}")
        w(f"| {n} | one `iptables` per rule: DNAT, FORWARD accept, hairpin masquerade | 1+{3 * n} | {cell(a)} | {cell(b)} | {a['runs']} |")
        a, b = st(f"classic-start-f{n}"), st(f"classic-stopped-f{n}")
        # python + which + two 5-process shell pipelines + 3 chains + 4 rules per forward + 4 jumps; stopped: 4 + 6
        w(f"| {n} | classic Python hook, `bench/classic-hook.py` | {4 * n + 19} / 22 | {cell(a)} | {cell(b)} | {a['runs']} |")
        a, b = st(f"peer-start-f{n}"), st(f"peer-stopped-f{n}")
        if a:
            w(f"| {n} | saschpe/libvirt-hook-qemu's `hooks` (--peer-hook) | — | {cell(a)} | {cell(b)} | {a['runs']} |")
    w("")
    w("#### Peak memory (max RSS from /usr/bin/time: the process and the children it waited for)\n")
    w("| process | other forwards installed | max RSS | median |\n|---|---|---|---|")
    for m in res["memory"]:
        w(f"| {m['what']} | {m['others']:,} | {m['max_kib'] / 1024:.1f} MiB | {m['median_kib'] / 1024:.1f} MiB |")
    w("")
    w(f"#### `virtport reconcile`, {up[-1]:,} mappings, every VM running\n")
    w("| case | median | p95 | min–max | runs |\n|---|---|---|---|---|")
    for k in ("nothing", "flush-map", "delete-table"):
        s = st(f"reconcile-{k}-o{up[-1]}")
        w(f"| {s['what']} | {cell(s)} | {s['runs']} |")
    w("")
    dp = res["dataplane"]
    if dp:
        w(f"#### Data plane: new TCP connections per second through one forward\n")
        w(f"One client connection at a time (`vpbench connect`: connect, then close with RST), "
          f"{dp['rounds']} rounds × {dp['seconds']} s per state, the states interleaved.\n")
        w("| kernel holds | median conn/s | min–max |\n|---|---|---|")
        names = {"maps-1": "virtport's maps, 1 forward",
                 "maps-all": f"virtport's maps, {dp['others'] + 1:,} forwards",
                 "rules": f"{dp['rules']:,} DNAT rules, one per forward (the measured one last), no virtport table"}
        for k, s in dp["states"].items():
            w(f"| {names[k]} | {s['median']:,.0f} | {s['min']:,.0f}–{s['max']:,.0f} |")
        w("")
    w("#### Targets\n")
    if facts["mode"] != "full":
        w("(smoke sizes: these verdicts are about small numbers and mean nothing)\n")
    w("| target | measured | limit | | note |\n|---|---|---|---|---|")
    for t in targets(st, res, size):
        w(f"| {t['target']} | {t['measured']} | {t['limit']} | {'met' if t['met'] else '**missed**'} | {t['note']} |")
    w("")
    if res["findings"]:
        w("#### Findings\n")
        for f in res["findings"]:
            w(f"- {f}")
        w("")
    return "\n".join(L)


def rereport(path):
    """Prints the markdown table again from a run's results.json (after a change to the report)."""
    with open(path) as f:
        r = json.load(f)
    res = {"memory": r["memory"], "dataplane": r["dataplane"], "findings": r["findings"]}
    print(report(r["cells"], res, r["facts"], SIZES[r["facts"]["mode"]]))
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return rereport(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=SIZES, default="full")
    p.add_argument("--bin", required=True)
    p.add_argument("--helper", required=True)
    p.add_argument("--tmp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ns-prefix", required=True)
    p.add_argument("--peer-hook", default=None,
                   help="saschpe/libvirt-hook-qemu's `hooks` file (hooks.schema.json beside it): also time the peer itself")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(a.out, exist_ok=True)
    facts = machine_facts(a)
    facts["load average at start"] = open("/proc/loadavg").read().split(" ", 3)[:3]
    b = Bench(a)
    t0 = time.monotonic()
    try:
        b.run()
    except Failure as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        b.cleanup()
    facts["load average at end"] = open("/proc/loadavg").read().split(" ", 3)[:3]
    facts["duration"] = f"{time.monotonic() - t0:.0f} s"
    for k in ("load average at start", "load average at end"):
        facts[k] = " ".join(facts[k])
    cells = {k: b.stats(k) for k in b.cells}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"facts": facts, "cells": cells, "samples_ms": {k: [t * 1000 for t in c["times"]] for k, c in b.cells.items()},
                   "memory": b.results["memory"], "dataplane": b.results["dataplane"], "findings": b.results["findings"],
                   "targets": targets(cells.get, b.results, b.size)}, f, indent=1)
    md = report(cells, b.results, facts, b.size)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
