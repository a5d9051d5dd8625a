#!/usr/bin/env python3
"""The classic libvirt port-forwarding hook, rewritten for the benchmark: what virtport is compared with.

This does what the popular Python `qemu` hooks do (saschpe/libvirt-hook-qemu is the model: a JSON
config naming each domain's private_ip, public_ip and port_map), process for process:

- at start-up it runs `which iptables`;
- it reads its JSON config; a domain that is not in it exits 0 at once;
- it always asks for the host's default-route address (two `sh -c` pipelines of ip/grep/cut/head),
  even when the config names public_ip (the model passes `host_ip()` as a dict.get default);
- `start`: creates three chains (nat DNAT-<vm>, nat SNAT-<vm>, filter FWD-<vm>); per forward four
  rules (DNAT, SNAT, hairpin MASQUERADE, FORWARD ACCEPT); then four jumps (nat OUTPUT and
  PREROUTING to DNAT-<vm>, nat POSTROUTING to SNAT-<vm>, filter FORWARD to FWD-<vm>);
- `stopped`: deletes the four jumps, flushes and deletes the three chains.

Every rule is one `iptables` process started with subprocess.call, whose exit status is ignored
(as in the model; bench/bench.py checks the resulting rules instead). Written for this benchmark,
not copied. Config: $CLASSIC_HOOK_CONFIG (JSON), e.g.
{"vm1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.1", "port_map": {"tcp": [[2222, 22]]}}}
Usage (as libvirt calls a hook): classic-hook.py DOMAIN OPERATION SUB-OPERATION - < domain.xml
"""
import json
import os
import subprocess
import sys

IPTABLES = os.environ.get("IPTABLES_BINARY") or subprocess.check_output(["which", "iptables"]).decode().strip()


def host_ip():
    dev = subprocess.check_output("ip route | grep default | cut -d' ' -f5 | head -n1", shell=True).decode().strip()
    out = subprocess.check_output(
        f"ip addr show {dev} | grep -E 'inet .*{dev}' | cut -d' ' -f6 | cut -d'/' -f1", shell=True).decode().strip()
    return out.split("\n")[0]


def ipt(*args):
    subprocess.call([IPTABLES, *args])


def start(vm, public_ip, private_ip, port_map):
    dnat, snat, fwd = f"DNAT-{vm}", f"SNAT-{vm}", f"FWD-{vm}"
    ipt("-t", "nat", "-N", dnat)
    ipt("-t", "nat", "-N", snat)
    ipt("-t", "filter", "-N", fwd)
    for proto, pairs in port_map.items():
        for pair in pairs:
            public_port, private_port = pair if isinstance(pair, list) else (pair, pair)
            ipt("-t", "nat", "-A", dnat, "-p", proto, "-d", public_ip, "--dport", str(public_port),
                "-j", "DNAT", "--to", f"{private_ip}:{private_port}")
            ipt("-t", "nat", "-A", snat, "-p", proto, "-s", private_ip, "--dport", str(private_port),
                "-j", "SNAT", "--to-source", public_ip)
            ipt("-t", "nat", "-A", snat, "-p", proto, "-s", private_ip, "-d", private_ip,
                "--dport", str(public_port), "-j", "MASQUERADE")
            ipt("-t", "filter", "-A", fwd, "-p", proto, "-d", private_ip, "--dport", str(private_port), "-j", "ACCEPT")
    jumps("-I", dnat, snat, fwd, public_ip, private_ip)


def jumps(action, dnat, snat, fwd, public_ip, private_ip):
    ipt("-t", "nat", action, "OUTPUT", "-d", public_ip, "-j", dnat)
    ipt("-t", "nat", action, "PREROUTING", "-d", public_ip, "-j", dnat)
    ipt("-t", "nat", action, "POSTROUTING", "-s", private_ip, "-d", private_ip, "-j", snat)
    ipt("-t", "filter", action, "FORWARD", "-d", private_ip, "-j", fwd)


def stop(vm, public_ip, private_ip):
    dnat, snat, fwd = f"DNAT-{vm}", f"SNAT-{vm}", f"FWD-{vm}"
    jumps("-D", dnat, snat, fwd, public_ip, private_ip)
    for table, chain in (("nat", dnat), ("nat", snat), ("filter", fwd)):
        ipt("-t", table, "-F", chain)
        ipt("-t", table, "-X", chain)


def main():
    name, op = sys.argv[1], sys.argv[2]
    with open(os.environ["CLASSIC_HOOK_CONFIG"]) as f:
        domain = json.load(f).get(name)
    if domain is None:
        return 0
    public_ip = domain.get("public_ip", host_ip())  # evaluated every time, as in the model
    vm = name[:23]  # iptables chain names: 28 characters with the prefix
    if op in ("stopped", "reconnect"):
        stop(vm, public_ip, domain["private_ip"])
    if op in ("start", "reconnect"):
        start(vm, public_ip, domain["private_ip"], domain["port_map"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
