"""Real Ethernet frames for the bridge port guard tests, over AF_PACKET raw sockets.

    python3 frames.py send IFACE NAME [NAME…]   send the named frames (see FRAMES) out of IFACE
    python3 frames.py sniff IFACE SECONDS       print "ready", then the NAME of every marked frame
                                                seen on IFACE, one a line, until the "end" frame

Every frame carries the marker b"VPT:" NAME b";" inside its packet (an NDP option, the ICMPv6 or
UDP payload; Ethernet trailer bytes for ARP only: a host with br_netfilter trims IP packets to
their length before forwarding), so the receiving side can tell which frames the bridge let
through. Addresses follow the lab: the sender is 52:54:00:aa:bb:01 / 192.168.122.10 /
fd00:122::10; its neighbour (whose addresses the spoofed frames claim) 52:54:00:aa:bb:02 /
192.168.122.11 / fd00:122::11.
"""
import socket
import struct
import sys
import time

ME_MAC = bytes.fromhex("525400aabb01")
OTHER_MAC = bytes.fromhex("525400aabb02")
BCAST = b"\xff" * 6
ME4, OTHER4 = "192.168.122.10", "192.168.122.11"
ME6, OTHER6 = "fd00:122::10", "fd00:122::11"
ME_LL = "fe80::5054:ff:feaa:bb01"


def marker(name):
    return b"VPT:" + name.encode() + b";"


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff


def eth(src, ethertype, payload, dst=BCAST):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return header + payload


def udp4(src, dst, sport, dport, payload):
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def ipv6(src, dst, nh, payload):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 255,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload


def pseudo6(src, dst, nh, length):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!IxxxB", length, nh))


def udp6(src, dst, sport, dport, payload):
    body = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = csum(pseudo6(src, dst, 17, len(body)) + body) or 0xffff
    return ipv6(src, dst, 17, body[:6] + struct.pack("!H", c) + body[8:])


def icmp6(src, dst, type_, body):
    msg = struct.pack("!BBH", type_, 0, 0) + body
    c = csum(pseudo6(src, dst, 58, len(msg)) + msg)
    return ipv6(src, dst, 58, msg[:2] + struct.pack("!H", c) + msg[4:])


def option(m):
    """The marker as an NDP option of an unassigned type (receivers skip it), padded to 8 bytes."""
    body = m + b"\0" * (-(len(m) + 2) % 8)
    return bytes([250, (len(body) + 2) // 8]) + body


def ns(src, target, m, lladdr=None):
    opt = b"" if lladdr is None else b"\x01\x01" + lladdr
    return icmp6(src, "ff02::1:ff00:10", 135, b"\0\0\0\0" + socket.inet_pton(socket.AF_INET6, target) + opt + option(m))


def na(src, target, lladdr, m):
    return icmp6(src, "ff02::1", 136, b"\x20\0\0\0" + socket.inet_pton(socket.AF_INET6, target) + b"\x02\x01" + lladdr
                 + option(m))


def arp(op, sha, spa, tpa):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, socket.inet_aton(spa), b"\0" * 6,
                       socket.inet_aton(tpa))


def dhcp(op, xid=0x1234, yiaddr="0.0.0.0"):
    """A minimal BOOTP message (op 1 request, 2 reply) with the DHCP magic cookie."""
    return (struct.pack("!BBBBIHH4s4s4s4s16s", op, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, socket.inet_aton(yiaddr),
                        b"\0" * 4, b"\0" * 4, ME_MAC + b"\0" * 10) + b"\0" * 192 + b"\x63\x82\x53\x63\xff")


def frame(name):
    m = marker(name)
    builders = {
        # legitimate
        "ipv4": lambda: eth(ME_MAC, 0x0800, udp4(ME4, "192.168.122.255", 40000, 9, m)),
        "ipv6": lambda: eth(ME_MAC, 0x86dd, udp6(ME6, "ff02::1", 40000, 9, m)),
        "ipv6-linklocal": lambda: eth(ME_MAC, 0x86dd, udp6(ME_LL, "ff02::1", 40000, 9, m)),
        "dhcp-discover": lambda: eth(ME_MAC, 0x0800, udp4("0.0.0.0", "255.255.255.255", 68, 67, dhcp(1) + m)),
        "dhcpv6-solicit": lambda: eth(ME_MAC, 0x86dd, udp6(ME_LL, "ff02::1:2", 546, 547, b"\x01\0\0\x01" + m)),
        "arp-self": lambda: eth(ME_MAC, 0x0806, arp(1, ME_MAC, ME4, "192.168.122.1") + m),
        "arp-probe": lambda: eth(ME_MAC, 0x0806, arp(1, ME_MAC, "0.0.0.0", ME4) + m),
        "ns-dad": lambda: eth(ME_MAC, 0x86dd, ns("::", ME6, m)),
        "ns-self": lambda: eth(ME_MAC, 0x86dd, ns(ME6, "fd00:122::1", m, ME_MAC)),
        "na-self": lambda: eth(ME_MAC, 0x86dd, na(ME6, ME6, ME_MAC, m)),
        # a DHCP discover: passes every guard state, also one whose addresses are not known yet
        "end": lambda: eth(ME_MAC, 0x0800, udp4("0.0.0.0", "255.255.255.255", 68, 67, dhcp(1) + m)),
        # spoofed or rogue
        "spoof-mac": lambda: eth(OTHER_MAC, 0x0800, udp4(ME4, "192.168.122.255", 40000, 9, m)),
        "spoof-ipv4": lambda: eth(ME_MAC, 0x0800, udp4(OTHER4, "192.168.122.255", 40000, 9, m)),
        "spoof-ipv6": lambda: eth(ME_MAC, 0x86dd, udp6(OTHER6, "ff02::1", 40000, 9, m)),
        "spoof-arp-reply": lambda: eth(ME_MAC, 0x0806, arp(2, ME_MAC, OTHER4, "192.168.122.1") + m),
        "spoof-arp-sha": lambda: eth(ME_MAC, 0x0806, arp(1, OTHER_MAC, ME4, "192.168.122.1") + m),
        "spoof-na": lambda: eth(ME_MAC, 0x86dd, na(ME6, OTHER6, ME_MAC, m)),
        "spoof-na-lladdr": lambda: eth(ME_MAC, 0x86dd, na(ME6, ME6, OTHER_MAC, m)),
        "spoof-ns-lladdr": lambda: eth(ME_MAC, 0x86dd, ns(ME6, "fd00:122::1", m, OTHER_MAC)),
        "dhcp-offer": lambda: eth(ME_MAC, 0x0800, udp4(ME4, "255.255.255.255", 67, 68, dhcp(2, yiaddr=OTHER4) + m)),
        "dhcpv6-advertise": lambda: eth(ME_MAC, 0x86dd, udp6(ME_LL, "ff02::1", 547, 546, b"\x02\0\0\x01" + m)),
        "ra": lambda: eth(ME_MAC, 0x86dd, icmp6(ME_LL, "ff02::1", 134, b"\x40\0\x07\x08" + b"\0" * 8 + option(m))),
        "redirect": lambda: eth(ME_MAC, 0x86dd, icmp6(ME_LL, "ff02::1", 137, b"\0" * 36 + option(m))),
        "vlan": lambda: eth(ME_MAC, 0x8100, struct.pack("!HH", 10, 0x0800) + udp4(ME4, "192.168.122.255", 40000, 9, m)),
    }
    return builders[name]()


LEGIT = ["ipv4", "ipv6", "ipv6-linklocal", "dhcp-discover", "dhcpv6-solicit", "arp-self", "arp-probe", "ns-dad",
         "ns-self", "na-self"]
SPOOFED = {  # frame → the drop reason counted for it
    "spoof-mac": "mac", "spoof-ipv4": "ip4", "spoof-ipv6": "ip6", "spoof-arp-reply": "arp", "spoof-arp-sha": "arp",
    "spoof-na": "nd", "spoof-na-lladdr": "nd", "spoof-ns-lladdr": "nd", "dhcp-offer": "dhcp",
    "dhcpv6-advertise": "dhcp", "ra": "ra", "redirect": "ra", "vlan": "other",
}


def send(iface, names):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for n in names:
        s.send(frame(n))
        time.sleep(0.002)


def sniff(iface, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        i = data.find(b"VPT:")
        if i < 0:
            continue
        name = data[i + 4:data.index(b";", i)].decode()
        print(name, flush=True)
        if name == "end":
            return


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "sniff":
        sniff(sys.argv[2], sys.argv[3])
