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

/// One status file's unexpired leases, indexed by MAC and by address: read and parsed once per
/// plan however many forwards and guards ask (a 65,536-lease file costs its parse once).
struct LeaseIndex {
    var byMAC: [MACAddress: [DnsmasqStatus.Lease]] = [:]
    var byAddress: [IPAddress: [MACAddress]] = [:]

    init() {}

    init(_ leases: [DnsmasqStatus.Lease], now: Int64) {
        byMAC.reserveCapacity(leases.count)
        byAddress.reserveCapacity(leases.count)
        for l in leases where l.expiry == 0 || l.expiry > now {
            byMAC[l.mac, default: []].append(l)
            byAddress[l.address, default: []].append(l.mac)
        }
    }
}
