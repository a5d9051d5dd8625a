#if canImport(Glibc)
import Glibc
#endif
import Netfilter
import POSIX
import VirtPortCore

/// Host processes already bound to a port a forward wants (from sock_diag, `SocketDiag`; /proc/net
/// when that is unavailable or for a test's fake /proc).
/// The DNAT would silently steal that service's traffic, so the VM start is refused instead.
enum HostSockets {
    struct Listener: Equatable {
        var proto: IPProto
        var address: IPAddress
        var port: UInt16
        var inode: String
        /// IPV6_V6ONLY of an IPv6 socket; nil when unknown (/proc/net): then a socket on `::`
        /// is taken to receive IPv4 too, as Linux's default (`net.ipv6.bindv6only = 0`) makes it.
        var v6only: Bool? = nil

        /// The (family, address) pairs this socket receives on: an IPv6 socket on `::` without
        /// IPV6_V6ONLY also receives IPv4 (on 0.0.0.0), one on `::ffff:a.b.c.d` only that IPv4.
        var endpoints: [IPAddress] {
            guard address.family == .ipv6 else { return [address] }
            if address.isIPv4Mapped { return [IPAddress(bytes: Array(address.bytes.suffix(4)))!] }
            if address.isUnspecified && v6only != true { return [address, IPAddress(bytes: [0, 0, 0, 0])!] }
            return [address]
        }
    }

    /// Refuses a plan whose forwards would take traffic a host process is listening for: same
    /// protocol, a port inside the forward's range, the same family (an IPv6 socket on `::`
    /// without IPV6_V6ONLY receives IPv4 too), and the same address or either side on every
    /// address. Loopback listeners are matched like the others (no longer skipped): only a
    /// forward on every address passes them, because its rules never match a loopback
    /// destination (`ip daddr != 127.0.0.0/8`, `ip6 daddr != ::1`; and loopback never arrives
    /// from outside), so the service keeps its local clients.
    static func checkNotBound(_ mappings: [Mapping], procRoot: String = "/proc") throws(VirtPortError) {
        if mappings.isEmpty { return }
        let listeners = (procRoot == "/proc" ? fromKernel() : nil) ?? read(procRoot: procRoot)
        for m in mappings {
            for l in listeners where l.proto == m.proto && m.hostPorts.contains(l.port) {
                guard l.endpoints.contains(where: { overlaps(m, $0) }) else { continue }
                let who = owner(inode: l.inode, procRoot: procRoot).map { " by process \($0)" } ?? ""
                throw .invalid("host port \(m.proto.rawValue)/\(l.port) is already bound on \(l.address)\(who)")
            }
        }
    }

    /// Whether mapping `m` (family from its addresses; a pending one without `address=` may end
    /// up in either) would take packets for a socket bound on `endpoint`.
    static func overlaps(_ m: Mapping, _ endpoint: IPAddress) -> Bool {
        if let family = m.family, family != endpoint.family { return false }
        if let a = m.hostAddress { return endpoint.isUnspecified || endpoint == a }
        return !endpoint.isLoopback
    }

    /// From sock_diag (`SocketDiag`); nil when it cannot be used.
    static func fromKernel() -> [Listener]? {
        SocketDiag.bound().map { found in
            found.map { Listener(proto: $0.proto, address: $0.address, port: $0.port, inode: "\($0.inode)", v6only: $0.v6only) }
        }
    }

    static func read(procRoot: String) -> [Listener] {
        var out: [Listener] = []
        for (file, proto, v6) in [("tcp", IPProto.tcp, false), ("tcp6", .tcp, true), ("udp", .udp, false), ("udp6", .udp, true)] {
            guard let bytes = try? IO.readFile("\(procRoot)/net/\(file)") else { continue }
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                guard f.count >= 10 else { continue }
                // TCP: only LISTEN (0A). UDP: every bound socket (07 = unconnected).
                if proto == .tcp && f[3] != "0A" { continue }
                if proto == .udp && f[3] != "07" { continue }
                let local = f[1].split(separator: ":")
                guard local.count == 2, let port = UInt16(local[1], radix: 16),
                      let addr = decode(String(local[0]), v6: v6) else { continue }
                out.append(Listener(proto: proto, address: addr, port: port, inode: String(f[9])))
            }
        }
        return out
    }

    /// /proc/net prints addresses as 32-bit words in host (little-endian) order.
    static func decode(_ hex: String, v6: Bool) -> IPAddress? {
        let chars = Array(hex.utf8)
        guard chars.count == (v6 ? 32 : 8) else { return nil }
        var bytes: [UInt8] = []
        for word in stride(from: 0, to: chars.count, by: 8) {
            var w: [UInt8] = []
            for i in stride(from: word, to: word + 8, by: 2) {
                guard let b = UInt8(String(decoding: chars[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
                w.append(b)
            }
            bytes.append(contentsOf: w.reversed())
        }
        return IPAddress(bytes: bytes)
    }

    /// "sshd (pid 812)" for the process holding socket `inode`, if it can be found.
    static func owner(inode: String, procRoot: String) -> String? {
        let target = "socket:[\(inode)]"
        for pid in FileSystem.listDirectory(procRoot) where pid.allSatisfy(\.isNumber) {
            for fd in FileSystem.listDirectory("\(procRoot)/\(pid)/fd") where FileSystem.readLink("\(procRoot)/\(pid)/fd/\(fd)") == target {
                let comm = (try? IO.readFile("\(procRoot)/\(pid)/comm")).flatMap { $0 }
                    .map { String(decoding: $0, as: UTF8.self).trimmed.replacingNewlines() } ?? "?"
                return "\(comm) (pid \(pid))"
            }
        }
        return nil
    }
}

extension String {
    func replacingNewlines() -> String { String(self.map { $0 == "\n" ? " " : $0 }) }
}
