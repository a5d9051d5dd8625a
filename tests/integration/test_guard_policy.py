"""Issue 21 item 5: policy on plain bridges. Under `[guard] bridges`, a guard's `ip=` may not name
the host's own addresses on that bridge, its router there, or an address another running VM's
guard or forward owns: the domain is refused at `prepare` with one line naming the policy key
(exit 2), and nothing is applied. Plain bridge only (a libvirt network's subnet checks apply on
virbr0 already). The baseline: the same guard is accepted without the policy key's bridge."""
import json

import pytest

from conftest import BIN, require_root, sh
from test_guard import MAC1, MAC2, GuardLab

U1 = "7a3c1e52-0c55-4a31-9d7e-6f1b2a3c4d01"
U2 = "7a3c1e52-0c55-4a31-9d7e-6f1b2a3c4d02"


@pytest.fixture
def blab(tmp_path):
    require_root()
    lab = GuardLab(tmp_path)
    lab.layout = "bridged"
    try:
        lab.build_bridge("br0")
        yield lab
    finally:
        lab.cleanup()


def vm(lab, name, uuid, mac, tap, ip):
    nic = f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/><target dev='{tap}'/></interface>"
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><metadata>"
            f"<vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:guard ip='{ip}'/></vp:virtport></metadata>"
            f"<memory unit='KiB'>65536</memory><devices>{nic}</devices></domain>")


def nothing_applied(lab, name):
    rows = [g for g in lab.guards_json() if g.get("domain") == name]
    assert rows == [], rows


def test_ip_naming_the_host_its_router_or_another_vm_is_refused_at_prepare(blab):
    # Baseline: without the policy key the same guards are accepted (the gateway on a plain bridge
    # is not checked: the host knows no subnet there).
    host_ip = vm(blab, "vm1", U1, MAC1, "vnet0", "192.168.122.1")
    assert blab.hook(host_ip, "prepare").returncode == 0
    with open(blab.config, "a") as f:
        f.write('[guard]\nbridges = ["br0"]\n')
    sh("ip", "route", "add", "198.51.100.0/24", "via", "192.168.122.254", "dev", "br0", ns=blab.host)
    other = vm(blab, "vm2", U2, MAC2, "vnet1", "192.168.122.11")
    blab.start(other)
    key = '([guard] bridges = ["br0"])'
    for ip, why in [("192.168.122.1", "is one of the host's own addresses"),
                    ("fd00:122::1", "is one of the host's own addresses"),
                    ("192.168.122.254", "is the host's router on bridge br0"),
                    ("192.168.122.11", "belongs to domain 'vm2' (mac 52:54:00:aa:bb:02)")]:
        xml = vm(blab, "vm1", U1, MAC1, "vnet0", f"192.168.122.10 {ip}")
        r = blab.hook(xml, "prepare")
        err = r.stderr.decode().strip()
        assert r.returncode == 2, (ip, err)
        assert len(err.splitlines()) == 1 and f'ip="{ip}" {why}' in err and err.endswith(key), err
        nothing_applied(blab, "vm1")
    # Its own address passes; the neighbour is untouched.
    ok = vm(blab, "vm1", U1, MAC1, "vnet0", "192.168.122.10")
    blab.start(ok)
    assert sorted(g["domain"] for g in blab.guards_json()) == ["vm1", "vm2"]
