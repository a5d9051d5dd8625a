"""A hostile guest's tools, run inside a stand-in guest's namespace (Debian's python3-scapy).

    hostile.py send IFACE NAME [KEY=VALUE…]      send one crafted frame (see FRAMES) out of IFACE
    hostile.py rogue-dhcp IFACE SPORT YIADDR ROUTER SECONDS
                                                 answer every DHCPDISCOVER/DHCPREQUEST with an
                                                 OFFER/ACK of YIADDR (router ROUTER) from udp SPORT
    hostile.py rogue-dhcp6 IFACE SPORT ADDRESS SECONDS
                                                 answer every SOLICIT/REQUEST with an ADVERTISE/
                                                 REPLY of ADDRESS from udp SPORT
    hostile.py listen ADDRESS PORT SECONDS       (any namespace) print "ready", then the source
                                                 address of every UDP datagram to ADDRESS:PORT

Every frame is built from what a real stack would parse; the sender's own MAC and addresses are
read from IFACE, so only what the test asks to forge is forged.
"""
import socket
import sys
import time

from scapy.config import conf

conf.verb = 0
from scapy.arch import get_if_hwaddr  # noqa: E402
from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402
from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Reply, DHCP6_Request, DHCP6_Solicit,  # noqa: E402
                                DHCP6OptClientId, DHCP6OptIA_NA, DHCP6OptIAAddress, DHCP6OptServerId, DUID_LL)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (IPv6, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr,  # noqa: E402
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, ICMPv6NDOptUnknown, in6_getnsma,
                                in6_getnsmac)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.sendrecv import sendp, sniff  # noqa: E402


def mac2bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def link_local(mac):
    b = bytearray(mac2bytes(mac))
    b[0] ^= 2
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return socket.inet_ntop(socket.AF_INET6, b"\xfe\x80" + b"\0" * 6 + iid)


def tagged(eth, payload, tags):
    """`eth` / payload with `tags` priority tags: "" none, "vlan0" one 802.1Q VID 0, "qinq0" an
    802.1ad VID 0 outside an 802.1Q VID 0."""
    if tags == "vlan0":
        return eth / Dot1Q(vlan=0, prio=5) / payload
    if tags == "qinq0":
        return eth / Dot1AD(vlan=0) / Dot1Q(vlan=0) / payload
    return eth / payload


def frame(iface, name, a):
    me = get_if_hwaddr(iface)
    mac = a.get("mac", me)
    tags = a.get("tags", "")
    if name == "udp4":  # a datagram from src (forged or not) to dst:port
        eth = Ether(src=mac, dst=a.get("dmac", "ff:ff:ff:ff:ff:ff"))
        return tagged(eth, IP(src=a["src"], dst=a["dst"]) / UDP(sport=40000, dport=int(a["port"])) / b"hostile", tags)
    if name == "udp6":
        eth = Ether(src=mac, dst=a.get("dmac", "33:33:00:00:00:01"))
        return tagged(eth, IPv6(src=a["src"], dst=a["dst"]) / UDP(sport=40000, dport=int(a["port"])) / b"hostile",
                      tags)
    if name == "na":  # unsolicited override NA for target, link-layer option mac
        eth = Ether(src=me, dst="33:33:00:00:00:01")
        return eth / IPv6(src=a.get("src", link_local(me)), dst="ff02::1") / \
            ICMPv6ND_NA(tgt=a["target"], R=int(a.get("router", "0")), S=0, O=1) / \
            ICMPv6NDOptDstLLAddr(lladdr=a.get("lladdr", me))
    if name == "ns":  # NS to dst for target; options: "nonce", "sll" (own or lladdr=)
        ns = IPv6(src=a["src"], dst=a["dst"]) / ICMPv6ND_NS(tgt=a["target"])
        for opt in a.get("options", "sll").split(","):
            if opt == "nonce":
                ns = ns / ICMPv6NDOptUnknown(type=14, len=1, data=b"\x01\x02\x03\x04\x05\x06")
            elif opt == "sll":
                ns = ns / ICMPv6NDOptSrcLLAddr(lladdr=a.get("lladdr", me))
        return Ether(src=me, dst=a.get("dmac", "33:33:00:00:00:01")) / ns
    if name == "dad":  # DAD probe for target
        t = a["target"]
        return Ether(src=me, dst=in6_getnsmac(socket.inet_pton(socket.AF_INET6, in6_getnsma_text(t)))) / \
            IPv6(src="::", dst=in6_getnsma_text(t)) / ICMPv6ND_NS(tgt=t) / \
            ICMPv6NDOptUnknown(type=14, len=1, data=b"\x0a\x0b\x0c\x0d\x0e\x0f")
    if name == "ra":  # router advertisement of prefix 2001:db8:bad::/64, default route via src
        eth = Ether(src=me, dst="33:33:00:00:00:01")
        ra = IPv6(src=a.get("src", link_local(me)), dst="ff02::1") / ICMPv6ND_RA(routerlifetime=1800) / \
            ICMPv6NDOptSrcLLAddr(lladdr=me) / \
            ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64, L=1, A=1, validlifetime=3600,
                                  preferredlifetime=3600)
        return tagged(eth, ra, tags)
    if name == "dhcp-release":  # DHCPRELEASE of ciaddr for chaddr, unicast to the server
        eth = Ether(src=me, dst=a["dmac"])
        return eth / IP(src=a["src"], dst=a["server"]) / UDP(sport=68, dport=67) / \
            BOOTP(op=1, chaddr=mac2bytes(a["chaddr"]) + b"\0" * 10, ciaddr=a["ciaddr"], xid=0x5150) / \
            DHCP(options=[("message-type", "release"), ("server_id", a["server"]), "end"])
    raise SystemExit(f"unknown frame {name}")


def in6_getnsma_text(address):
    return socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, address)))


def rogue_dhcp(iface, sport, yiaddr, router, seconds):
    me = get_if_hwaddr(iface)
    myip = a_ip(iface)

    def answer(p):
        if not p.haslayer(BOOTP) or p[BOOTP].op != 1:
            return
        kind = dict(o for o in p[DHCP].options if isinstance(o, tuple)).get("message-type")
        reply = {1: "offer", 3: "ack"}.get(kind)
        if not reply:
            return
        sendp(Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / IP(src=myip, dst="255.255.255.255") /
              UDP(sport=sport, dport=68) /
              BOOTP(op=2, xid=p[BOOTP].xid, yiaddr=yiaddr, siaddr=myip, chaddr=p[BOOTP].chaddr, flags=0x8000) /
              DHCP(options=[("message-type", reply), ("server_id", myip), ("lease_time", 3600),
                            ("subnet_mask", "255.255.255.0"), ("router", router), "end"]), iface=iface)

    print("ready", flush=True)
    sniff(iface=iface, lfilter=lambda p: p.haslayer(UDP) and p[UDP].dport == 67, prn=answer, timeout=seconds,
          store=False)


def rogue_dhcp6(iface, sport, address, seconds):
    me = get_if_hwaddr(iface)
    duid = DUID_LL(lladdr=me)

    def answer(p):
        for kind, cls in ((DHCP6_Solicit, DHCP6_Advertise), (DHCP6_Request, DHCP6_Reply)):
            if p.haslayer(kind) and not p.haslayer(DHCP6_Reply):
                m = p[kind]
                iaid = m[DHCP6OptIA_NA].iaid if m.haslayer(DHCP6OptIA_NA) else 1
                sendp(Ether(src=me, dst=p[Ether].src) / IPv6(src=link_local(me), dst=p[IPv6].src) /
                      UDP(sport=sport, dport=546) /
                      cls(trid=m.trid) / DHCP6OptClientId(duid=m[DHCP6OptClientId].duid) / DHCP6OptServerId(duid=duid) /
                      DHCP6OptIA_NA(iaid=iaid, T1=1800, T2=2880,
                                    ianaopts=[DHCP6OptIAAddress(addr=address, preflft=3600, validlft=3600)]),
                      iface=iface)
                return

    print("ready", flush=True)
    sniff(iface=iface, lfilter=lambda p: p.haslayer(UDP) and p[UDP].dport == 547, prn=answer, timeout=seconds,
          store=False)


def a_ip(iface):
    import fcntl
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", iface.encode()[:15]))[20:24])


def listen(address, port, seconds):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if "%" in address:
        host, dev = address.split("%")
        s.bind((host, port, 0, socket.if_nametoindex(dev)))
    else:
        s.bind((address, port))
    s.settimeout(0.2)
    print("ready", flush=True)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            _, src = s.recvfrom(2048)
        except socket.timeout:
            continue
        print(src[0].split("%")[0], flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "send":
        sendp(frame(sys.argv[2], sys.argv[3], dict(kv.split("=", 1) for kv in sys.argv[4:])), iface=sys.argv[2])
    elif cmd == "rogue-dhcp":
        rogue_dhcp(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]))
    elif cmd == "rogue-dhcp6":
        rogue_dhcp6(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif cmd == "listen":
        listen(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
