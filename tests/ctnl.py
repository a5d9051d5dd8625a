"""Minimal ctnetlink client (raw NETLINK_NETFILTER) for tests and benchmarks."""
import socket, struct, ipaddress, os

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_DUMP = 1, 4, 0x400, 0x200, 0x300
CT_NEW, CT_GET, CT_DELETE = 0, 1, 2
SUBSYS = 1 << 8
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT, CTA_FILTER = 1, 2, 3, 7, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

def attr(t, payload):
    ln = 4 + len(payload)
    return struct.pack("=HH", ln, t) + payload + b"\0" * ((4 - ln % 4) % 4)

def nest(t, *parts):
    return attr(t | NLA_F_NESTED, b"".join(parts))

def tuple_attr(t, src, dst, proto, sport, dport):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    base = 1 if s.version == 4 else 3
    ip = nest(CTA_TUPLE_IP, attr(base, s.packed), attr(base + 1, d.packed))
    pr = nest(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([proto])),
              attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)), attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return nest(t, ip, pr)

def msg(mtype, flags, family, payload, seq):
    body = struct.pack("=BBH", family, 0, 0) + payload
    return struct.pack("=IHHII", 16 + len(body), SUBSYS | mtype, flags, seq, 0) + body

class Ct:
    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.s.bind((0, 0)); self.seq = 1

    def _acks(self, n):
        errs = []; got = 0
        while got < n:
            data = self.s.recv(1 << 20); off = 0
            while off < len(data):
                ln, t, fl, seq, pid = struct.unpack_from("=IHHII", data, off)
                if t == 2:
                    got += 1
                    e = struct.unpack_from("=i", data, off + 16)[0]
                    if e: errs.append(-e)
                off += (ln + 3) & ~3
        return errs

    def create_udp(self, entries, timeout=600):
        """entries: iterable of (src, dst, sport, dport); inserts unrelated UDP entries, ACKed in chunks."""
        buf = []; pend = 0
        for src, dst, sp, dp in entries:
            fam = socket.AF_INET if ":" not in src else socket.AF_INET6
            p = tuple_attr(CTA_TUPLE_ORIG, src, dst, 17, sp, dp) + tuple_attr(CTA_TUPLE_REPLY, dst, src, 17, dp, sp) \
                + attr(CTA_TIMEOUT, struct.pack("!I", timeout))
            buf.append(msg(CT_NEW, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, fam, p, self.seq)); self.seq += 1
            pend += 1
            if pend == 200:
                self.s.send(b"".join(buf)); errs = self._acks(pend)
                if errs: raise OSError(errs[0], "ct new")
                buf = []; pend = 0
        if pend:
            self.s.send(b"".join(buf)); errs = self._acks(pend)
            if errs: raise OSError(errs[0], "ct new")

    def dump(self, family=socket.AF_UNSPEC):
        """Every entry as (orig (src,dst,proto,sport,dport), reply (...)) parsed loosely."""
        self.s.send(msg(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, b"", self.seq)); self.seq += 1
        out = []
        while True:
            data = self.s.recv(1 << 20); off = 0
            while off < len(data):
                ln, t, fl, seq, pid = struct.unpack_from("=IHHII", data, off)
                if t == 3:
                    return out
                if t == 2:
                    e = struct.unpack_from("=i", data, off + 16)[0]
                    if e: raise OSError(-e, "ct dump")
                    return out
                out.append(_parse(data[off + 20:off + ln]))
                off += (ln + 3) & ~3

def _attrs(b):
    off = 0; d = {}
    while off + 4 <= len(b):
        ln, t = struct.unpack_from("=HH", b, off)
        d[t & 0x3fff] = b[off + 4:off + ln]
        off += (ln + 3) & ~3
    return d

def _tuple(b):
    a = _attrs(b); ip = _attrs(a.get(1, b"")); pr = _attrs(a.get(2, b""))
    src = ip.get(1) or ip.get(3); dst = ip.get(2) or ip.get(4)
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), pr.get(1, b"\0")[0],
            struct.unpack("!H", pr[2])[0] if 2 in pr else 0, struct.unpack("!H", pr[3])[0] if 3 in pr else 0)

def _parse(b):
    a = _attrs(b)
    return _tuple(a[1]), _tuple(a[2])

def unrelated(n, base="10.200"):
    """n distinct unrelated UDP tuples."""
    for i in range(n):
        yield (f"{base}.{i // 250 % 250}.{i % 250 + 1}", "198.51.100.7", 1024 + i // 62500, 5000 + i % 60000)
