"""Facts about libvirt 9.0 that virtport's design depends on, checked against the real daemon so a
libvirt upgrade that changes them shows up here first. No virtport binary needed."""
import time

import harness

GUEST_IP = "192.168.122.10"


def fwi(lab):
    return [l for l in lab.iptables("-S", "LIBVIRT_FWI").stdout.decode().splitlines() if l.startswith("-A")]


def test_reload_pushes_foreign_rules_in_libvirt_chains_below_its_reject(lab):
    """SIGHUP (which `virtport install` sends) and a daemon restart make libvirt delete and
    re-insert its own rules at the top of LIBVIRT_FWI, with no hook call: an accept someone put
    first in LIBVIRT_FWI ends up after libvirt's REJECT. A rule first in FORWARD stays first."""
    h = lab.stand_in_hook()
    lab.install_hooks(h.path)
    mine = ["-d", f"{GUEST_IP}/32", "-o", harness.BRIDGE, "-j", "ACCEPT"]
    lab.iptables("-I", "LIBVIRT_FWI", "1", *mine)
    lab.iptables("-I", "FORWARD", "1", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
    assert fwi(lab)[0] == "-A LIBVIRT_FWI " + " ".join(mine)
    h.clear()
    mark = lab.log_mark()
    lab.sighup_libvirtd()
    expected = ["-A LIBVIRT_FWI -d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable",
                "-A LIBVIRT_FWI " + " ".join(mine)]
    # Mid-reload the chain briefly holds only our rule; wait for the end state.
    harness.wait_for(lambda: fwi(lab) == expected, 10, 0.05,
                     f"libvirt to re-insert its LIBVIRT_FWI rules above ours (now {fwi(lab)})")
    assert any("Reloading iptables rules" in l for l in lab.log_lines(mark))
    assert h.calls() == [], "libvirt called a hook on SIGHUP"

    for event in ("restart", "net-restart"):
        if event == "restart":
            lab.restart_libvirtd()
        else:
            lab.net_destroy()
            lab.net_start()
        forward = lab.iptables("-S", "FORWARD").stdout.decode().splitlines()
        assert forward[1] == "-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT", (event, forward)
    lab.iptables("-D", "FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
    lab.iptables("-D", "LIBVIRT_FWI", *mine)


def test_diskless_vm_pxe_boots_and_takes_a_lease_unless_rom_is_off(lab):
    """With its option ROM the 'diskless' VM's iPXE DHCPs within seconds and holds a real lease;
    define_vm() therefore adds <rom enabled='no'/> unless pxe=True."""
    lab.define_vm("vpl-norom", "52:54:00:5e:00:11")
    lab.define_vm("vpl-pxe", "52:54:00:5e:00:12", pxe=True)
    lab.start_vm("vpl-norom")
    lab.start_vm("vpl-pxe")
    t0 = time.monotonic()
    ip = harness.wait_for(lambda: dict(lab.leases()).get("52:54:00:5e:00:12"), 60, 0.2, "the PXE VM's lease")
    print(f"\nPXE lease {ip} after {time.monotonic() - t0:.1f} s")
    assert "52:54:00:5e:00:11" not in dict(lab.leases())
