"""libvirt's firewall rebuilds against a real libvirtd 9.0 (iptables backend), issue 22 item 3.

On SIGHUP libvirtd deletes and re-inserts every iptables rule of each active network, calling no
hook. virtport's accept rule sits at the top of FORWARD, ahead of the jump to LIBVIRT_FWI, which
libvirt's reload leaves alone: the forward must keep carrying traffic, `virtport install` (which
sends that SIGHUP) must see the rebuild end before it reconciles, and reconcile, doctor and the
agent must agree that nothing is out of place. Real traffic from the client namespace each time.
"""
import json
import os
import subprocess
import time

import harness
from harness import out
from test_virtport_libvirt import (BIN, CLIENT, HOST, answer, install, installed, start_forwarded_vm,  # noqa: F401
                                   vp)


def agent_config(lab, vp):
    """The lab's config plus an agent socket and syslog socket of the test's own (not /run's)."""
    sock = os.path.join(lab.workdir, "agent.sock")
    lab.write_etc("virtport/virtport.conf", vp.config + f'[paths]\nagent_socket = "{sock}"\n')
    return sock


def test_install_waits_for_libvirtds_rebuild_and_the_forward_stays_first(lab, installed):
    vp = installed
    guest, client = start_forwarded_vm(lab, "vpe-reload")
    lab.wait_reload_idle()
    mark = lab.log_mark()
    t0 = time.monotonic()
    text = install(lab, strict=True)      # SIGHUPs libvirtd again: it rebuilds its rules
    took = time.monotonic() - t0
    assert any("Reloading iptables rules" in l for l in lab.log_lines(mark))
    assert "libvirt rebuilt its firewall rules after the SIGHUP" in text, text
    assert "accept-rule" not in text, text           # FORWARD's order survived: nothing to put back
    print(f"\ninstall with libvirtd's rebuild: {took:.2f} s")
    vp.assert_forward_rule_first()
    assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
    r = vp.run("reconcile", "--dry-run")
    assert "nothing to do" in out(r), out(r)
    doc = json.loads(vp.run("doctor", "--json", check=False).stdout)
    assert not [f for f in doc if f["check"] in ("libvirt firewall", "forwards") and f["status"] != "ok"], doc


def test_the_agent_leaves_libvirtds_rebuild_alone_and_forwards_keep_working(lab, vp):
    """The agent running while libvirtd reloads: its rebuild deletes rules from `ip filter`, which
    the agent checks; nothing of virtport's is out of place, so nothing is healed, and the forward
    answers all along."""
    sock = agent_config(lab, vp)
    install(lab)
    log = os.path.join(lab.workdir, "agent.log")
    agent = subprocess.Popen(["ip", "netns", "exec", lab.ns, BIN, "agent", "--verbose"], stdout=subprocess.DEVNULL,
                             stderr=open(log, "w"), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        harness.wait_for(lambda: os.path.exists(sock), 10, 0.05, "the agent's socket")
        guest, client = start_forwarded_vm(lab, "vpe-reload-agent")
        for _ in range(2):
            lab.sighup_libvirtd()
            vp.assert_forward_rule_first()
            assert client.connect("tcp", HOST, 2222) == answer("G1", 22, CLIENT)
        time.sleep(0.5)
        text = open(log).read()
        assert "healed" not in text and "self-heal failed" not in text, text
        assert "virtport reconcile" not in text, text
        r = vp.run("reconcile", "--dry-run")
        assert "nothing to do" in out(r), out(r)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        lab.write_etc("virtport/virtport.conf", vp.config)
