"""Integration harness: real kernel nftables in fresh network namespaces, real traffic.

Topology per test (all namespaces named vpt-<id>-*, removed by the fixture even on failure):

    client ns  c0 203.0.113.2/24, 2001:db8:1::2/64
        | veth
    host ns    h0 203.0.113.1/24, 2001:db8:1::1/64   <- virtport runs here (table inet virtport)
               br0 192.168.122.1/24, fd00:122::1/64  (stands in for libvirt's virbr0)
        | veth enslaved to br0
    guest ns   eth0 192.168.122.10/24, fd00:122::10/64, default routes via br0  (stands in for a VM)
    guest2 ns  eth0 192.168.122.11/24                                          (a second VM)
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("VIRTPORT_BIN", os.path.join(ROOT, ".build", "release", "virtport"))


def sh(*args, check=True, input=None, ns=None, env=None, timeout=30):
    cmd = list(args)
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return subprocess.run(cmd, input=input, capture_output=True, check=check, env=env, timeout=timeout)


def require_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces, nftables)")


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from traffic import CLIENT, LISTENER  # noqa: E402  (shared with tests/libvirt)
from syslog_catcher import SyslogCatcher  # noqa: E402


class Lab:
    """One test's namespaces, config, database and listeners."""

    def __init__(self, tmp_path):
        self.id = uuidlib.uuid4().hex[:6]
        self.host = f"vpt-{self.id}-h"
        self.client = f"vpt-{self.id}-c"
        self.guest = f"vpt-{self.id}-g"
        self.guest2 = f"vpt-{self.id}-g2"
        self.namespaces = []
        self.procs = []
        self.dir = tmp_path
        self.db = str(tmp_path / "virtport.db")
        self.run_dir = tmp_path / "run-libvirt"
        (self.run_dir / "network").mkdir(parents=True)
        (self.run_dir / "qemu").mkdir(parents=True)
        self.config = str(tmp_path / "virtport.conf")
        self.write_config()
        self.write_default_network()

    def write_default_network(self, hosts=""):
        """libvirt's live XML of network `default` on br0 (guest= is checked against its subnets)."""
        with open(self.run_dir / "network" / "default.xml", "w") as f:
            f.write("<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid>"
                    "<forward mode='nat'/><bridge name='br0'/>"
                    f"<ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>{hosts}</dhcp></ip>"
                    "<ip family='ipv6' address='fd00:122::1' prefix='64'/></network></networkstatus>")

    def write_config(self, policy=""):
        with open(self.config, "w") as f:
            f.write(f'database = "{self.db}"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "{self.run_dir}"\n'
                    f'libvirt_config_dir = "{self.dir}/etc-libvirt"\nlibvirt_state_dir = "{self.dir}/var-lib-libvirt"\n'
                    f'hooks_dir = "{self.dir}/hooks"\n')
            f.write(f'[log]\nsyslog_socket = "{self.dir}/log.sock"\n')
            f.write("[policy]\n" + policy + "\n")

    # -- topology -------------------------------------------------------------------------------
    def addns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        # No duplicate address detection: tentative link-local addresses delay IPv6 neighbour discovery.
        for key in ("all", "default"):
            sh("sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0", ns=name)

    def build(self):
        for n in (self.host, self.client, self.guest, self.guest2):
            self.addns(n)
        h, c = self.host, self.client
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=h)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=h)
        sh("ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c)
        sh("ip", "addr", "add", "203.0.113.1/24", "dev", "h0", ns=h)
        sh("ip", "addr", "add", "2001:db8:1::1/64", "dev", "h0", "nodad", ns=h)
        sh("ip", "link", "set", "h0", "up", ns=h)
        sh("ip", "addr", "add", "203.0.113.2/24", "dev", "c0", ns=c)
        sh("ip", "addr", "add", "2001:db8:1::2/64", "dev", "c0", "nodad", ns=c)
        sh("ip", "link", "set", "c0", "up", ns=c)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=h)
        sh("ip", "addr", "add", "192.168.122.1/24", "dev", "br0", ns=h)
        sh("ip", "addr", "add", "fd00:122::1/64", "dev", "br0", "nodad", ns=h)
        sh("ip", "link", "set", "br0", "up", ns=h)
        for i, (g, v4, v6) in enumerate([(self.guest, "192.168.122.10", "fd00:122::10"),
                                         (self.guest2, "192.168.122.11", "fd00:122::11")]):
            tap = f"vnet{i}"
            sh("ip", "link", "add", tap, "netns", h, "type", "veth", "peer", "name", "eth0", "netns", g)
            sh("ip", "link", "set", tap, "master", "br0", ns=h)
            sh("ip", "link", "set", tap, "up", ns=h)
            sh("ip", "addr", "add", f"{v4}/24", "dev", "eth0", ns=g)
            sh("ip", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad", ns=g)
            sh("ip", "link", "set", "eth0", "up", ns=g)
            sh("ip", "route", "add", "default", "via", "192.168.122.1", ns=g)
            sh("ip", "-6", "route", "add", "default", "via", "fd00:122::1", ns=g)
        return self

    def syslog(self):
        """What virtport logged (`[log] syslog_socket` of the lab's config), caught from now on."""
        if getattr(self, "_syslog", None) is None:
            self._syslog = SyslogCatcher(str(self.dir / "log.sock"))
        return self._syslog

    def cleanup(self):
        if getattr(self, "_syslog", None) is not None:
            self._syslog.close()
        for p in self.procs:
            p.kill()
            p.wait()
        for n in self.namespaces:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    # -- virtport -------------------------------------------------------------------------------
    def env(self, **extra):
        # VIRTPORT_SYSROOT: an empty tree for the host files `install` may touch (AppArmor's local
        # override under /etc/apparmor.d): no test writes the machine's own /etc.
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VIRTPORT_CONFIG": self.config, "LANG": "C.UTF-8",
             "VIRTPORT_SYSROOT": str(self.dir / "sysroot")}
        e.update(extra)
        return e

    def virtport(self, *args, input=None, check=False, ns=None, **env):
        ns = ns or self.host
        if isinstance(input, str):
            input = input.encode()
        return sh(BIN, *args, input=input, ns=ns, env=self.env(**env), check=check)

    def hook(self, xml, op, subop="begin", name=None, **env):
        name = name or domain_name(xml)
        return self.virtport("hook", "qemu", name, op, subop, "-", input=xml, **env)

    def start(self, xml):
        for op in ("prepare", "start", "started"):
            r = self.hook(xml, op)
            assert r.returncode == 0, f"{op}: rc={r.returncode} stderr={r.stderr.decode()}"
            assert r.stdout == b"", f"{op}: hook wrote to stdout: {r.stdout!r}"

    def stop(self, xml):
        for op, sub in (("stopped", "end"), ("release", "end")):
            r = self.hook(xml, op, sub)
            assert r.returncode == 0, f"{op}: rc={r.returncode} stderr={r.stderr.decode()}"
            assert r.stdout == b""

    def nft_json(self):
        r = sh("nft", "-j", "list", "table", "inet", "virtport", ns=self.host, check=False)
        if r.returncode != 0:
            return None
        items = json.loads(r.stdout)["nftables"]
        # flows4/flows6 are the kernel's own record of translated connections (README "Connection
        # tracking"): they change with traffic, not with what virtport programs.
        for item in items:
            m = item.get("set")
            if m and m.get("name") in ("flows4", "flows6"):
                m.pop("elem", None)
        return items

    def elements(self):
        """Every element of every virtport map, as nft prints them (list of (map, element-json))."""
        out = []
        for item in self.nft_json() or []:
            m = item.get("map")
            if m and m.get("elem") and m["name"].startswith("fwd"):
                for e in m["elem"]:
                    out.append((m["name"], e))
        return out

    # -- traffic --------------------------------------------------------------------------------
    def listen(self, ns, proto, addr, port, tag):
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, proto, addr, str(port), tag],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        line = p.stdout.readline().decode().strip()
        assert line == "ready", f"listener {proto} {addr}:{port} failed: {p.stderr.read().decode() if p.poll() is not None else line}"
        return p

    def connect(self, ns, proto, addr, port):
        r = sh(sys.executable, "-c", CLIENT, proto, addr, str(port), ns=ns, check=False, timeout=15)
        return r.stdout.decode().strip()


@pytest.fixture
def lab(tmp_path):
    require_root()
    assert os.path.exists(BIN), f"build first: {BIN} is missing (swift build -c release)"
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.cleanup()


def domain_name(xml):
    s = xml.index("<name>") + 6
    return xml[s:xml.index("</name>")]


def domain_xml(name, uuid, forwards="", macs=("52:54:00:aa:bb:01",), extra_meta=""):
    nics = "".join(
        f"<interface type='network'><mac address='{m}'/><source network='default'/><model type='virtio'/></interface>"
        for m in macs)
    meta = ""
    if forwards or extra_meta:
        meta = (f"<metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>{forwards}</vp:virtport>"
                f"{extra_meta}</metadata>")
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>{meta}"
            f"<memory unit='KiB'>65536</memory><devices>{nics}</devices></domain>")


# -- recovery and audit helpers (issue 4) ---------------------------------------------------------
# Added as Lab methods here, at the end, so the harness above stays as it is.

STATUS_XML = """<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit {name}
-->
<domstatus state='running' reason='booted' pid='{pid}'>
  <taint flag='high-privileges'/>
  <monitor path='/var/lib/libvirt/qemu/domain-1-{name}/monitor.sock' type='unix'/>
  <vcpus>
    <vcpu id='0' pid='{pid}'/>
  </vcpus>
  <qemuCaps><flag name='kvm'/></qemuCaps>
  {domain}
</domstatus>
"""


def _fake_qemu(self):
    """A live process standing in for a VM's QEMU (status files need a live pid)."""
    p = subprocess.Popen(["sleep", "3600"])
    self.procs.append(p)
    return p


def _write_status(self, xml, pid=None):
    """libvirt's status file for a running domain: run_dir/qemu/NAME.xml. Returns the pid."""
    name = domain_name(xml)
    if pid is None:
        pid = self.fake_qemu().pid
    live = xml.replace("<domain type='qemu'>", "<domain type='qemu' id='1'>", 1)
    path = self.run_dir / "qemu" / f"{name}.xml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(STATUS_XML.format(pid=pid, name=name, domain=live))
    os.rename(tmp, path)
    return pid


def _remove_status(self, name_or_xml):
    name = domain_name(name_or_xml) if "<name>" in name_or_xml else name_or_xml
    (self.run_dir / "qemu" / f"{name}.xml").unlink()


def _reconcile(self, *args, **env):
    return self.virtport("reconcile", *args, **env)


def _sql(self, query, args=()):
    """Rows of a query on the journal (Python's sqlite3), as dicts."""
    import sqlite3
    con = sqlite3.connect(self.db, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(query, args)]
    finally:
        con.close()


def _db_rows(self):
    return self.sql("SELECT * FROM mappings ORDER BY id") if os.path.exists(self.db) else []


def _db_history(self):
    return self.sql("SELECT * FROM history ORDER BY id") if os.path.exists(self.db) else []


def _db_snapshot(self):
    """Everything the journal holds (None when there is no database)."""
    if not os.path.exists(self.db):
        return None
    return {"mappings": self.db_rows(), "history": self.db_history(),
            "user_version": self.sql("PRAGMA user_version")[0]["user_version"]}


def _flatten(v):
    if isinstance(v, dict) and "concat" in v:
        return tuple(v["concat"])
    return (v,)


def _kernel_forwards(self):
    """The kernel's forwards as a set of (map, key tuple, value tuple), read back with nft -j."""
    return {(m, _flatten(e[0]), _flatten(e[1])) for m, e in self.elements()}


def forwards_of(*specs):
    """What domains declare, in the form of Lab.kernel_forwards(): specs are lists of
    (proto, host_port, guest_address, guest_port) for forwards without address= or dev=."""
    out = set()
    for spec in specs:
        for proto, hport, guest, gport in spec:
            out.add(("fwd6" if ":" in guest else "fwd4", (proto, hport), (guest, gport)))
    return out


def _journal_forwards(self, states=("applied",)):
    """The journal's rows in `states`, expanded per host port like kernel_forwards()."""
    out = set()
    for r in self.db_rows():
        if r["state"] not in states:
            continue
        fam = "fwd6" if ":" in r["guest_addr"] else "fwd4"
        name = fam + ("_dev" if r["dev"] else "") + ("_addr" if r["host_addr"] else "")
        for i in range(r["host_port_end"] - r["host_port_start"] + 1):
            key = tuple(x for x in (r["dev"] or None, r["host_addr"] or None) if x) + (r["proto"], r["host_port_start"] + i)
            out.add((name, key, (r["guest_addr"], r["guest_port_start"] + i)))
    return out


def _list_json(self, *args):
    r = self.virtport("list", "--json", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _history_json(self, *args):
    r = self.virtport("history", "--json", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


Lab.fake_qemu = _fake_qemu
Lab.write_status = _write_status
Lab.remove_status = _remove_status
Lab.reconcile = _reconcile
Lab.sql = _sql
Lab.db_rows = _db_rows
Lab.db_history = _db_history
Lab.db_snapshot = _db_snapshot
Lab.kernel_forwards = _kernel_forwards
Lab.journal_forwards = _journal_forwards
Lab.list_json = _list_json
Lab.history_json = _history_json
