"""Crafted DHCPv4 client messages over AF_PACKET, for the lease-hijack tests: the Ethernet source
is the sender's own MAC, `chaddr` whatever the test says (a hostile guest puts another VM's there).

    python3 dhcp_client.py IFACE request CHADDR REQUESTED_IP
    python3 dhcp_client.py IFACE release CHADDR CIADDR SERVER_IP
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frames import eth, udp4  # noqa: E402


def message(kind, chaddr, ciaddr="0.0.0.0", options=b""):
    mac = bytes.fromhex(chaddr.replace(":", ""))
    body = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, int.from_bytes(os.urandom(4), "big"), 0, 0x8000,
                       socket.inet_aton(ciaddr), b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10) + b"\0" * 192
    return body + b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + options + b"\xff"


def main():
    iface, op, chaddr = sys.argv[1], sys.argv[2], sys.argv[3]
    own = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    if op == "request":  # INIT-REBOOT: requested address, no server id
        dhcp = message(3, chaddr, options=bytes([50, 4]) + socket.inet_aton(sys.argv[4]))
        frame = eth(own, 0x0800, udp4("0.0.0.0", "255.255.255.255", 68, 67, dhcp))
    elif op == "release":
        ciaddr, server = sys.argv[4], sys.argv[5]
        dhcp = message(7, chaddr, ciaddr=ciaddr, options=bytes([54, 4]) + socket.inet_aton(server))
        frame = eth(own, 0x0800, udp4(ciaddr, server, 68, 67, dhcp))
    else:
        raise SystemExit(f"unknown op {op}")
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    s.send(frame)


if __name__ == "__main__":
    main()
