#if canImport(Glibc)
import Glibc
#endif
import Journal
import POSIX
import VirtPortCore

/// The host's own addresses, read once per plan (`getifaddrs`: one rtnetlink address dump,
/// ~40 µs here) and only when a forward names `address=` or `guest=`.
final class HostFacts {
    private var cached: [IPAddress]??
    private var networks: [String: NetworkDefinition?] = [:]
    private var leaseFiles: [String: LeaseIndex] = [:]

    private var refusals = Set<String>()
    private var openedJournal: JournalDB??

    /// Runs `body` the first time `key` is seen: one log line per refused lease and plan.
    func refuseOnce(_ key: String, _ body: () -> Void) {
        if refusals.insert(key).inserted { body() }
    }

    /// The journal, opened read-only once (nil: none).
    func journal(_ open: () -> JournalDB?) -> JournalDB? {
        if let openedJournal { return openedJournal }
        let db = open()
        openedJournal = .some(db)
        return db
    }

    /// `read()`'s answer for the status file of `bridge`, parsed and indexed once.
    func leases(_ bridge: String, read: () -> LeaseIndex) -> LeaseIndex {
        if let known = leaseFiles[bridge] { return known }
        let index = read()
        leaseFiles[bridge] = index
        return index
    }

    /// `read()`'s answer for network `name`, read once.
    func network(_ name: String, read: () -> NetworkDefinition?) -> NetworkDefinition? {
        if let known = networks[name] { return known }
        let n = read()
        networks[name] = .some(n)
        return n
    }

    var localAddresses: [IPAddress]? {
        if let cached { return cached }
        let read = Self.readLocalAddresses()
        cached = .some(read)
        return read
    }

    /// The gateways of routes through interface `name`: /proc/net/route (IPv4, little-endian hex)
    /// and /proc/net/ipv6_route (IPv6, hex); none when they cannot be read.
    static func gateways(interface name: String) -> [IPAddress] {
        var out: [IPAddress] = []
        func hex(_ s: Substring) -> [UInt8]? {
            guard s.count % 2 == 0 else { return nil }
            var bytes: [UInt8] = []
            var i = s.startIndex
            while i < s.endIndex {
                let j = s.index(i, offsetBy: 2)
                guard let b = UInt8(s[i..<j], radix: 16) else { return nil }
                bytes.append(b)
                i = j
            }
            return bytes
        }
        if let text = (try? IO.readFile("/proc/net/route")) ?? nil {
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n").dropFirst() {
                let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard f.count > 2, f[0] == name, let g = hex(f[2]), g.count == 4, g != [0, 0, 0, 0],
                      let ip = IPAddress(bytes: g.reversed()) else { continue }
                if !out.contains(ip) { out.append(ip) }
            }
        }
        if let text = (try? IO.readFile("/proc/net/ipv6_route")) ?? nil {
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                guard f.count == 10, f[9] == name, let g = hex(f[4]), g.count == 16, g.contains(where: { $0 != 0 }),
                      let ip = IPAddress(bytes: g) else { continue }
                if !out.contains(ip) { out.append(ip) }
            }
        }
        return out
    }

    /// Every IPv4 and IPv6 address on any interface (any state); nil when getifaddrs fails.
    static func readLocalAddresses() -> [IPAddress]? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var out: [IPAddress] = []
        var next = list
        while let entry = next {
            next = entry.pointee.ifa_next
            guard let sa = entry.pointee.ifa_addr else { continue }
            switch Int32(sa.pointee.sa_family) {
            case AF_INET:
                let bytes = UnsafeRawPointer(sa).withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    withUnsafeBytes(of: sin.pointee.sin_addr) { Array($0) }
                }
                if let ip = IPAddress(bytes: bytes) { out.append(ip) }
            case AF_INET6:
                let bytes = UnsafeRawPointer(sa).withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    withUnsafeBytes(of: sin6.pointee.sin6_addr) { Array($0) }
                }
                if let ip = IPAddress(bytes: bytes) { out.append(ip) }
            default:
                continue
            }
        }
        return out
    }
}

/// One status file's unexpired leases, read and parsed once per plan however many forwards and
/// guards ask: one flat array (no object per lease), searched linearly (~30 µs at 65,536 leases;
/// a dictionary of 65,536 heap-backed keys costs more to build and free than all the searches).
struct LeaseIndex {
    var all: [DnsmasqStatus.Compact] = []
    var now: Int64 = 0

    init() {}

    init(_ leases: [DnsmasqStatus.Compact], now: Int64) {
        all = leases
        self.now = now
    }

    func live(_ l: DnsmasqStatus.Compact) -> Bool { l.expiry == 0 || l.expiry > now }

    /// The unexpired leases of `mac`.
    func leases(of mac: MACAddress) -> [DnsmasqStatus.Lease] {
        let key = DnsmasqStatus.Compact.key(mac)
        return all.filter { $0.mac == key && live($0) }.map { DnsmasqStatus.Lease(address: $0.address, mac: mac, expiry: $0.expiry) }
    }

    /// The MACs holding an unexpired lease of `address`.
    func holders(of address: IPAddress) -> [MACAddress] {
        let key = DnsmasqStatus.Compact.key(address)
        return all.filter { $0.low == key.low && $0.high == key.high && $0.v6 == key.v6 && live($0) }.map(\.macAddress)
    }
}
