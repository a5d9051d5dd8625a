#if canImport(Glibc)
import Glibc
#endif
import Journal
import POSIX
public import VirtPortCore

/// Guest addresses from the files libvirt keeps on disk. A hook must never call the libvirt API
/// (deadlock), so this reads: the live network XML (`/run/libvirt/network/NAME.xml`, falling back to
/// the definition `/etc/libvirt/qemu/networks/NAME.xml`) for static `<host mac ip>` reservations, and
/// dnsmasq's status file (`/var/lib/libvirt/dnsmasq/BRIDGE.status`) for current leases.
public struct LibvirtFiles: GuestAddressResolver {
    public let config: Config
    /// `virtport plan --network-xml FILE`: these win over what is on disk.
    public let overrides: [NetworkDefinition]

    public init(config: Config, overrides: [NetworkDefinition]) {
        self.config = config
        self.overrides = overrides
    }

    /// The network's live XML (else its definition), parsed once per resolver: a plan asks for the
    /// same network for every forward and check. A file that cannot be read or parsed counts as no
    /// network (the planner then refuses `guest=` there and leaves the guest address pending).
    public func network(_ name: String) -> NetworkDefinition? {
        if let n = overrides.first(where: { $0.name == name }) { return n }
        return facts.network(name) {
            for path in ["\(config.libvirtRunDir)/network/\(name).xml", "\(config.libvirtConfigDir)/qemu/networks/\(name).xml"] {
                if let bytes = (try? IO.readFile(path)) ?? nil, let n = try? NetworkXML.parse(bytes) { return n }
            }
            return nil
        }
    }

    /// What a plan asks more than once (`HostFacts`): host addresses, parsed networks.
    let facts = HostFacts()

    public func network(named name: String) -> NetworkDefinition? { network(name) }

    public func localAddresses() -> [IPAddress]? { facts.localAddresses }

    public func leaseHolders(network name: String, address: IPAddress) -> [MACAddress] {
        guard let bridge = network(name)?.bridge else { return [] }
        return leaseIndex(bridge).holders(of: address)
    }

    /// The status file of `bridge`, unexpired leases indexed (read and parsed once per resolver).
    func leaseIndex(_ bridge: String) -> LeaseIndex {
        facts.leases(bridge) {
            guard let all = DnsmasqStatus.compact(path: "\(config.libvirtStateDir)/dnsmasq/\(bridge).status") else {
                return LeaseIndex()
            }
            return LeaseIndex(all, now: Int64(time(nil)))
        }
    }

    public func reservation(network name: String, mac: MACAddress, family: Family?) -> IPAddress? {
        network(name)?.reservation(for: mac, family: family)
    }

    /// The newest lease of `mac` that passes the same checks as `guest=` (README "Security": a
    /// guest can make dnsmasq lease it another NIC's MAC's address): in the network's subnet, not
    /// the gateway or another host address, not reserved or leased to another MAC, not the address
    /// of another NIC's forward or guard in the journal. A lease that fails them is refused (logged)
    /// and what the NIC's lease-sourced forwards and guards use now stays their answer.
    public func lease(network name: String, mac: MACAddress, family: Family?) -> IPAddress? {
        guard let definition = network(name), let bridge = definition.bridge else { return nil }
        // Newest first: dnsmasq may still list an old lease for the same MAC.
        let candidates = leaseIndex(bridge).leases(of: mac)
            .filter { family == nil || $0.address.family == family }
            .sorted { $0.expiry > $1.expiry }
        var refused = false
        for lease in candidates {
            guard let why = leaseRefusal(lease.address, mac: mac, network: definition) else { return lease.address }
            refused = true
            facts.refuseOnce("\(mac) \(lease.address)") {
                EventLog(config: config).refused("DHCP lease of \(mac) on network '\(Quoted.message(name))': "
                    + "\(lease.address) \(why); not followed: its forwards and guards keep their address")
            }
        }
        return refused ? currentLeaseAddress(mac: mac, family: family) : nil
    }

    /// Why `address`, leased to `mac`, cannot be that NIC's address; nil when it can.
    func leaseRefusal(_ address: IPAddress, mac: MACAddress, network: NetworkDefinition) -> String? {
        if let why = Planner.unusableReason(address) { return "is \(why)" }
        if !network.ips.isEmpty {
            guard let ip = network.ips.first(where: { $0.subnet.contains(address) }) else {
                return "is outside the network's subnets (\(network.ips.map(\.subnet.description).joined(separator: ", ")))"
            }
            if address == ip.address { return "is the host's own address on the network (its gateway)" }
            if let why = HostChecks.edgeReason(address, of: ip.subnet) { return "is \(why) of \(ip.subnet)" }
            if let host = network.ips.flatMap(\.hosts).first(where: { $0.ip == address && $0.mac != mac }) {
                return "is reserved for another interface (mac \(host.mac))"
            }
        }
        if localAddresses()?.contains(address) == true { return "is one of the host's own addresses" }
        if let other = leaseIndex(network.bridge ?? "").holders(of: address).first(where: { $0 != mac }) {
            return "is leased to another interface too (mac \(other))"
        }
        if let owner = journalHolder(of: address, except: mac) { return "belongs to \(owner)" }
        return nil
    }

    public func addressHolder(_ address: IPAddress, except mac: MACAddress) -> String? {
        journalHolder(of: address, except: mac)
    }

    public func gateways(interface name: String) -> [IPAddress] { HostFacts.gateways(interface: name) }

    /// Another NIC that uses `address` according to the journal (a forward's guest address, a guard's
    /// allowed address): "domain 'NAME' (mac M)", or nil. Read-only; no journal: nil.
    func journalHolder(of address: IPAddress, except mac: MACAddress) -> String? {
        guard let db = journal() else { return nil }
        return try? db.addressHolder(address, exceptMAC: mac.description)
    }

    /// The address the NIC's lease-sourced forwards or guard use now (the journal), of `family`.
    func currentLeaseAddress(mac: MACAddress, family: Family?) -> IPAddress? {
        guard let db = journal() else { return nil }
        return ((try? db.leaseAddresses(mac: mac.description)) ?? []).first { family == nil || $0.family == family }
    }

    func journal() -> JournalDB? {
        facts.journal {
            guard FileSystem.exists(config.databasePath) else { return nil }
            return try? JournalDB(path: config.databasePath, readOnly: true)
        }
    }
}

/// libvirt's leaseshelper status file: a JSON array of flat objects
/// `{"ip-address": "…", "mac-address": "…", "hostname": "…", "expiry-time": N}`.
public enum DnsmasqStatus {
    public struct Lease: Equatable, Sendable {
        public var address: IPAddress
        public var mac: MACAddress
        public var expiry: Int64
    }

    /// One lease without heap storage: a 65,536-lease file is one array, no allocation per lease.
    public struct Compact: Sendable, Hashable, Comparable {
        /// The MAC's six bytes, big-endian in the low 48 bits.
        public var mac: UInt64
        /// The address's bytes, big-endian (an IPv4 address in the low 32 bits of `low`).
        public var high: UInt64
        public var low: UInt64
        public var v6: Bool
        public var expiry: Int64

        public init(mac: UInt64, high: UInt64, low: UInt64, v6: Bool, expiry: Int64) {
            self.mac = mac
            self.high = high
            self.low = low
            self.v6 = v6
            self.expiry = expiry
        }

        public var macAddress: MACAddress {
            MACAddress(bytes: (0..<6).map { UInt8(truncatingIfNeeded: mac >> (8 * (5 - $0))) })!
        }
        public var address: IPAddress {
            v6 ? IPAddress(bytes: (0..<8).map { UInt8(truncatingIfNeeded: high >> (8 * (7 - $0))) }
                             + (0..<8).map { UInt8(truncatingIfNeeded: low >> (8 * (7 - $0))) })!
               : IPAddress(bytes: (0..<4).map { UInt8(truncatingIfNeeded: low >> (8 * (3 - $0))) })!
        }
        public static func key(_ mac: MACAddress) -> UInt64 { mac.bytes.reduce(0) { $0 << 8 | UInt64($1) } }
        public static func key(_ ip: IPAddress) -> (high: UInt64, low: UInt64, v6: Bool) {
            let b = ip.bytes
            if b.count == 4 { return (0, b.reduce(0) { $0 << 8 | UInt64($1) }, false) }
            return (b[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, b[8..<16].reduce(0) { $0 << 8 | UInt64($1) }, true)
        }
        public static func < (a: Compact, b: Compact) -> Bool {
            (a.mac, a.v6 ? 1 : 0, a.high, a.low) < (b.mac, b.v6 ? 1 : 0, b.high, b.low)
        }
    }

    /// The leases of a whole file, or nil when it is not one complete JSON array of leases (a
    /// half-written or garbage file tells nothing: a truncated "192.168.122.61" reads as a valid
    /// "192.168.122.6"). leaseshelper replaces the file by rename, so a reader normally sees whole files.
    public static func complete(_ bytes: [UInt8]) -> [Lease]? {
        compact(bytes)?.map { Lease(address: $0.address, mac: $0.macAddress, expiry: $0.expiry) }
    }

    /// `compact` of the file at `path`, mapped rather than read (a 9 MB file is parsed where the
    /// page cache has it: no copy, no page faults on fresh memory); nil when it is absent,
    /// unreadable or not complete. Wraps open(2), fstat(2), mmap(2).
    public static func compact(path: String) -> [Compact]? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        let size = Int(st.st_size)
        // An empty file is what libvirt leaves while no guest holds a lease: no leases, not garbage.
        if size == 0 { return [] }
        guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0), map != MAP_FAILED else { return nil }
        defer { munmap(map, size) }
        return parse(UnsafeBufferPointer(start: map.assumingMemoryBound(to: UInt8.self), count: size))
    }

    /// `complete` without a heap object per lease: one pass over the bytes (no String per field).
    public static func compact(_ bytes: [UInt8]) -> [Compact]? {
        bytes.withUnsafeBufferPointer { parse($0) }
    }

    /// The unexpired leases of a file by MAC (addresses sorted), nil when the file is not complete.
    public static func current(_ bytes: [UInt8], now: Int64) -> [MACAddress: [IPAddress]]? {
        guard let all = complete(bytes) else { return nil }
        var out: [MACAddress: [IPAddress]] = [:]
        for l in all where l.expiry == 0 || l.expiry > now { out[l.mac, default: []].append(l.address) }
        return out.mapValues { $0.count < 2 ? $0 : $0.sorted() }
    }

    /// The unexpired leases of a file sorted by MAC then address (what the agent diffs), nil when
    /// the file is not complete.
    public static func currentSorted(_ bytes: [UInt8], now: Int64) -> [Compact]? {
        compact(bytes).map { sortedCurrent($0, now: now) }
    }

    /// `currentSorted` of already parsed leases.
    public static func sortedCurrent(_ leases: [Compact], now: Int64) -> [Compact] {
        var all = leases
        all.removeAll { $0.expiry != 0 && $0.expiry <= now }
        for i in all.indices { all[i].expiry = 0 }  // a renewal is not a change
        all.sort()
        return all
    }

    /// The MACs whose set of addresses differs between two `currentSorted` lists (appeared or moved;
    /// a MAC whose leases all vanished counts too).
    public static func changedMACs(before: [Compact], now: [Compact]) -> Set<UInt64> {
        var out = Set<UInt64>()
        var i = 0, j = 0
        while i < before.count || j < now.count {
            let a = i < before.count ? before[i].mac : UInt64.max
            let b = j < now.count ? now[j].mac : UInt64.max
            let mac = min(a, b)
            var x = i, y = j
            while x < before.count, before[x].mac == mac { x += 1 }
            while y < now.count, now[y].mac == mac { y += 1 }
            if before[i..<x].elementsEqual(now[j..<y]) == false { out.insert(mac) }
            i = x
            j = y
        }
        return out
    }

    /// Whether `sorted` (a `currentSorted` list) has a lease of `mac`: binary search.
    public static func holds(sorted: [Compact], mac: UInt64) -> Bool {
        var low = 0, high = sorted.count
        while low < high {
            let mid = (low + high) / 2
            if sorted[mid].mac < mac { low = mid + 1 } else { high = mid }
        }
        return low < sorted.count && sorted[low].mac == mac
    }

    /// Every lease that parses (one with a bad address or MAC is skipped), however the file ends.
    static func leases(_ bytes: [UInt8]) -> [Lease] {
        (bytes.withUnsafeBufferPointer { parse($0, lenient: true) } ?? [])
            .map { Lease(address: $0.address, mac: $0.macAddress, expiry: $0.expiry) }
    }

    private static let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\"), colon = UInt8(ascii: ":")
    private static let comma = UInt8(ascii: ","), open = UInt8(ascii: "{"), close = UInt8(ascii: "}")

    private static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09 }

    /// A JSON array of flat objects. An object without "ip-address" or "mac-address" (a DHCPv6
    /// lease of a client that sent no MAC) is skipped; one whose address or MAC does not parse,
    /// or any structural break (a truncated file), makes the whole file incomplete (nil).
    /// - Parameter lenient: skip a lease whose address or MAC does not parse, and return what was
    ///   read when the structure breaks (for diagnostics and tests), instead of nil.
    static func parse(_ b: UnsafeBufferPointer<UInt8>, lenient: Bool = false) -> [Compact]? {
        var start = 0, end = b.count
        while start < end, isSpace(b[start]) { start += 1 }
        while end > start, isSpace(b[end - 1]) { end -= 1 }
        if start == end { return [] }  // empty: no guest holds a lease (see `compact(path:)`)
        guard end - start >= 2, b[start] == UInt8(ascii: "["), b[end - 1] == UInt8(ascii: "]") else { return nil }
        var out: [Compact] = []
        out.reserveCapacity(b.count / 100)
        var i = start + 1
        let last = end - 1
        /// A string starting at the quote at `i`: its content range; `i` moves past the closing quote.
        let base = b.baseAddress!
        func string(_ i: inout Int) -> Range<Int>? {
            let from = i + 1
            var j = from
            while true {
                // memchr (vectorised in libc) to the next quote; an escaped one (odd run of
                // backslashes before it) does not end the string.
                guard j < last, let hit = memchr(base + j, Int32(quote), last - j) else { return nil }
                let at = UnsafeRawPointer(hit) - UnsafeRawPointer(base)
                var slashes = 0
                while at - 1 - slashes >= from, b[at - 1 - slashes] == backslash { slashes += 1 }
                if slashes % 2 == 0 {
                    i = at + 1
                    return from..<at
                }
                j = at + 1
            }
        }
        while true {
            while i < last, isSpace(b[i]) || b[i] == comma { i += 1 }
            if i == last { return out }
            guard b[i] == open else { return nil }
            i += 1
            var ip: Range<Int>?, mac: Range<Int>?, expiry: Int64 = 0
            while true {
                while i < last, isSpace(b[i]) || b[i] == comma { i += 1 }
                guard i < last else { return nil }
                if b[i] == close { i += 1; break }
                guard b[i] == quote, let key = string(&i) else { return nil }
                while i < last, isSpace(b[i]) { i += 1 }
                guard i < last, b[i] == colon else { return nil }
                i += 1
                while i < last, isSpace(b[i]) { i += 1 }
                guard i < last else { return nil }
                var value: Range<Int>
                if b[i] == quote {
                    guard let v = string(&i) else { return nil }
                    value = v
                } else {
                    let from = i
                    while i < last, b[i] != comma, b[i] != close, !isSpace(b[i]) { i += 1 }
                    value = from..<i
                }
                switch key.count {
                case 10 where equal(b, key, "ip-address"): ip = value
                case 11 where equal(b, key, "mac-address"): mac = value
                case 11 where equal(b, key, "expiry-time"): expiry = number(b, value) ?? 0
                default: break
                }
            }
            guard let ip, let mac else { continue }
            guard let address = address(b, ip), let hw = hardware(b, mac) else {
                if lenient { continue }
                return nil
            }
            out.append(Compact(mac: hw, high: address.high, low: address.low, v6: address.v6, expiry: expiry))
        }
    }

    private static func equal(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, _ s: StaticString) -> Bool {
        let p = s.utf8Start
        for k in 0..<r.count where b[r.lowerBound + k] != p[k] { return false }
        return true
    }

    private static func number(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Int64? {
        guard !r.isEmpty, r.count < 19 else { return nil }
        var v: Int64 = 0
        for k in r {
            guard b[k] >= 0x30, b[k] <= 0x39 else { return nil }
            v = v * 10 + Int64(b[k] - 0x30)
        }
        return v
    }

    /// inet_pton on a stack copy of the text (no String, no heap).
    private static func address(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> (high: UInt64, low: UInt64, v6: Bool)? {
        guard r.count > 0, r.count < 46 else { return nil }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 48) { text -> (high: UInt64, low: UInt64, v6: Bool)? in
            var v6 = false
            for k in 0..<r.count {
                text[k] = CChar(bitPattern: b[r.lowerBound + k])
                if b[r.lowerBound + k] == colon { v6 = true }
            }
            text[r.count] = 0
            if v6 {
                var a = in6_addr()
                guard inet_pton(AF_INET6, text.baseAddress, &a) == 1 else { return nil }
                return withUnsafeBytes(of: &a) { raw in
                    (raw[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, raw[8..<16].reduce(0) { $0 << 8 | UInt64($1) }, true)
                }
            }
            var a = in_addr()
            guard inet_pton(AF_INET, text.baseAddress, &a) == 1 else { return nil }
            return withUnsafeBytes(of: &a) { raw in (0, raw.reduce(0) { $0 << 8 | UInt64($1) }, false) }
        }
    }

    /// "aa:bb:cc:dd:ee:ff" (either case).
    private static func hardware(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> UInt64? {
        guard r.count == 17 else { return nil }
        func nibble(_ c: UInt8) -> UInt64? {
            switch c {
            case 0x30...0x39: UInt64(c - 0x30)
            case 0x61...0x66: UInt64(c - 0x61 + 10)
            case 0x41...0x46: UInt64(c - 0x41 + 10)
            default: nil
            }
        }
        var out: UInt64 = 0
        for k in 0..<6 {
            let at = r.lowerBound + 3 * k
            guard let hi = nibble(b[at]), let lo = nibble(b[at + 1]), k == 5 || b[at + 2] == colon else { return nil }
            out = out << 8 | hi << 4 | lo
        }
        return out
    }
}
