"""Issue 21 item 2: lease following cannot be steered by a guest. A real dnsmasq 2.90 runs as
libvirt runs it (the options libvirt's network driver generates, `--leasefile-ro
--dhcp-script=/usr/lib/libvirt/libvirt_leaseshelper`, VIR_BRIDGE_NAME), in the lab's host
namespace and a private mount namespace whose /var/lib/libvirt/dnsmasq is the lab's directory
(the helper's path is compiled in), so the status file it writes is the one `virtport agent`
watches. Two running VMs whose forwards follow their leases; the attacker (no guard) releases its own
lease and the victim's (DHCPRELEASE with the victim's MAC in chaddr, Ethernet source its own), then
sends a DHCPREQUEST with the victim's MAC in chaddr for its own address. dnsmasq moves the victim's lease (the attack works at dnsmasq: checked); virtport
refuses to follow it (syslog), and the victim's published port still reaches the victim."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import domain_xml, sh
from test_agent_watch import running, start_agent, wait

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(TESTS, "dhcp_client.py")
HELPER = "/usr/lib/libvirt/libvirt_leaseshelper"
VICTIM_MAC, ATTACKER_MAC = "52:54:00:aa:bb:01", "52:54:00:aa:bb:02"
VICTIM = domain_xml("victim", "d1d1d1d1-1111-4111-8111-111111111111",
                    "<vp:portForward proto='tcp'><vp:range start='2222' to='22'/></vp:portForward>", macs=(VICTIM_MAC,))
ATTACKER = domain_xml("attacker", "d2d2d2d2-2222-4222-8222-222222222222",
                      "<vp:portForward proto='tcp'><vp:range start='2223' to='22'/></vp:portForward>",
                      macs=(ATTACKER_MAC,))


def dnsmasq(lab):
    if not (os.path.exists("/usr/sbin/dnsmasq") and os.path.exists(HELPER)):
        pytest.skip("dnsmasq-base and libvirt-daemon (libvirt_leaseshelper) are needed (scripts/deps.sh)")
    state = lab.dir / "var-lib-libvirt" / "dnsmasq"
    state.mkdir(parents=True, exist_ok=True)
    run = lab.dir / "dnsmasq-run"
    run.mkdir()
    conf = lab.dir / "default.conf"
    # What libvirt 9.0 writes for the default network (networkDnsmasqConfContents), on br0; DNS off
    # (port=0): only DHCP is under test.
    conf.write_text("strict-order\nexcept-interface=lo\nbind-dynamic\ninterface=br0\n"
                    "dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0\ndhcp-no-override\n"
                    "dhcp-authoritative\ndhcp-lease-max=253\nport=0\n"
                    f"pid-file={run}/default.pid\n")
    script = (f"mount --make-rprivate / && mount --bind {state} /var/lib/libvirt/dnsmasq && "
              f"mount -t tmpfs tmpfs /run && exec env VIR_BRIDGE_NAME=br0 /usr/sbin/dnsmasq --keep-in-foreground "
              f"--conf-file={conf} --leasefile-ro --dhcp-script={HELPER} --log-dhcp --log-facility={run}/log")
    p = subprocess.Popen(["ip", "netns", "exec", lab.host, "unshare", "-m", "sh", "-c", script],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.procs.append(p)
    time.sleep(0.5)
    assert p.poll() is None, p.stderr.read().decode()
    return state / "br0.status", run / "log"


def leases(status):
    try:
        return {e["mac-address"]: e["ip-address"] for e in json.loads(status.read_text())}
    except (FileNotFoundError, ValueError):
        return {}


def dhcp(lab, ns, *args):
    sh(sys.executable, CLIENT, "eth0", *args, ns=ns)


def guest_of(lab, port):
    for name, key, value in lab.kernel_forwards():
        if key == ("tcp", port):
            return value[0]
    return None


def test_a_hijacked_lease_is_not_followed(lab):
    sh("ip", "link", "set", "eth0", "address", VICTIM_MAC, ns=lab.guest)
    sh("ip", "link", "set", "eth0", "address", ATTACKER_MAC, ns=lab.guest2)
    status, log = dnsmasq(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "victim")
    lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "attacker")
    # Each guest takes its lease the normal way (INIT-REBOOT request for its address).
    dhcp(lab, lab.guest, "request", VICTIM_MAC, "192.168.122.10")
    dhcp(lab, lab.guest2, "request", ATTACKER_MAC, "192.168.122.11")
    wait(lambda: leases(status) == {VICTIM_MAC: "192.168.122.10", ATTACKER_MAC: "192.168.122.11"},
         what=f"both leases in {status} ({log.read_text() if log.exists() else ''})")
    catcher = lab.syslog()
    agent = start_agent(lab)
    try:
        for xml in (VICTIM, ATTACKER):
            lab.start(running(lab, xml))
        wait(lambda: guest_of(lab, 2222) == "192.168.122.10" and guest_of(lab, 2223) == "192.168.122.11",
             what="both forwards from the leases")
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("victim 22")

        # The attack: release its own lease and the victim's (chaddr the victim's MAC), then claim
        # its own address under the victim's MAC.
        dhcp(lab, lab.guest2, "release", ATTACKER_MAC, "192.168.122.11", "192.168.122.1")
        dhcp(lab, lab.guest2, "release", VICTIM_MAC, "192.168.122.10", "192.168.122.1")
        wait(lambda: leases(status) == {}, what="both releases")
        dhcp(lab, lab.guest2, "request", VICTIM_MAC, "192.168.122.11")
        # dnsmasq did move the victim's lease: the attack works against dnsmasq.
        wait(lambda: leases(status).get(VICTIM_MAC) == "192.168.122.11",
             what=f"dnsmasq moving the victim's lease: {log.read_text()[-1500:]}")
        assert catcher.wait_for("refused: DHCP lease of 52:54:00:aa:bb:01 on network 'default': 192.168.122.11 "
                                "belongs to domain 'attacker'")
        time.sleep(0.3)
        # virtport did not follow: the victim's port still lands on the victim.
        assert guest_of(lab, 2222) == "192.168.122.10"
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("victim 22")
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2223).startswith("attacker 22")
    finally:
        agent.stop()


def test_baseline_a_lease_moved_to_a_free_address_is_followed(lab):
    """The same mechanism without an owner to protect: the attacker moves the victim's lease to a
    free address and takes that address itself (no guard stops it on an unguarded network). The
    lease passes every check (the address is nobody's), so virtport follows it and the victim's
    port reaches the attacker: what README "Security" says a guest can still do without a guard."""
    sh("ip", "link", "set", "eth0", "address", VICTIM_MAC, ns=lab.guest)
    sh("ip", "link", "set", "eth0", "address", ATTACKER_MAC, ns=lab.guest2)
    status, log = dnsmasq(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "victim")
    lab.listen(lab.guest2, "tcp", "0.0.0.0", 22, "attacker")
    dhcp(lab, lab.guest, "request", VICTIM_MAC, "192.168.122.10")
    wait(lambda: leases(status).get(VICTIM_MAC) == "192.168.122.10", what="the victim's lease")
    agent = start_agent(lab)
    try:
        lab.start(running(lab, VICTIM))
        wait(lambda: guest_of(lab, 2222) == "192.168.122.10", what="the forward from the lease")
        dhcp(lab, lab.guest2, "release", VICTIM_MAC, "192.168.122.10", "192.168.122.1")
        dhcp(lab, lab.guest2, "request", VICTIM_MAC, "192.168.122.50")
        sh("ip", "addr", "add", "192.168.122.50/24", "dev", "eth0", ns=lab.guest2)
        wait(lambda: guest_of(lab, 2222) == "192.168.122.50", what="the forward following the moved lease")
        assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("attacker 22")
    finally:
        agent.stop()
