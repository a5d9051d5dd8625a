#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// One field of a concatenated nftables set key. Every field is padded to a multiple of 4 bytes
/// (one 32-bit register); the set's KEY_TYPE packs the nft datatype ids, 6 bits per field.
enum KeyField: Hashable, Sendable {
    case ifname
    case address(Family)
    case proto
    case port

    /// nft datatype id (nftables `enum datatypes`).
    var typeID: UInt32 {
        switch self {
        case .ifname: 41  // TYPE_IFNAME
        case .address(.ipv4): 7  // TYPE_IPADDR
        case .address(.ipv6): 8  // TYPE_IP6ADDR
        case .proto: 12  // TYPE_INET_PROTOCOL
        case .port: 13  // TYPE_INET_SERVICE
        }
    }

    /// Bytes the kernel loads into the register(s).
    var length: Int {
        switch self {
        case .ifname: 16  // IFNAMSIZ
        case .address(.ipv4): 4
        case .address(.ipv6): 16
        case .proto: 1
        case .port: 2
        }
    }

    /// Length rounded up to whole 32-bit registers.
    var paddedLength: Int { (length + 3) & ~3 }
}

/// Which nft datatype ids make a concatenation: 6 bits per field, first field highest
/// (nftables `concat_subtype_add`).
func concatType(_ fields: [KeyField]) -> UInt32 {
    fields.reduce(0) { ($0 << 6) | $1.typeID }
}

/// A register number for the field that starts `word` 32-bit words into the register file:
/// the 128-bit name (NFT_REG_1…4) when aligned, else the 32-bit name (NFT_REG32_xx), as nft does.
func register(word: Int) -> UInt32 {
    word % 4 == 0 ? UInt32(1 + word / 4) : UInt32(8 + word)
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
let maxInterfaceNameLength = 15

/// One of the eight DNAT maps of virtport's table, one per (family × has-address × has-dev):
///
///     fwd4           inet_proto . inet_service                           : ipv4_addr . inet_service
///     fwd4_addr      ipv4_addr . inet_proto . inet_service               : ipv4_addr . inet_service
///     fwd4_dev       ifname . inet_proto . inet_service                  : ipv4_addr . inet_service
///     fwd4_dev_addr  ifname . ipv4_addr . inet_proto . inet_service      : ipv4_addr . inet_service
///     fwd6…          the same with ipv6_addr
struct ForwardMap: Hashable, Sendable {
    var family: Family
    var hasAddress: Bool
    var hasDev: Bool

    init(family: Family, hasAddress: Bool, hasDev: Bool) {
        self.family = family
        self.hasAddress = hasAddress
        self.hasDev = hasDev
    }

    init(_ element: ForwardElement) {
        self.init(family: element.family, hasAddress: element.hostAddress != nil, hasDev: element.dev != nil)
    }

    /// All eight, in table order.
    static let all: [ForwardMap] = [Family.ipv4, .ipv6].flatMap { family in
        [(false, false), (true, false), (false, true), (true, true)].map { addr, dev in
            ForwardMap(family: family, hasAddress: addr, hasDev: dev)
        }
    }

    var name: String {
        (family == .ipv4 ? "fwd4" : "fwd6") + (hasDev ? "_dev" : "") + (hasAddress ? "_addr" : "")
    }

    /// The key, in the order the rule loads it: iifname, daddr, l4proto, dport.
    var keyFields: [KeyField] {
        (hasDev ? [.ifname] : []) + (hasAddress ? [.address(family)] : []) + [.proto, .port]
    }
    var dataFields: [KeyField] { [.address(family), .port] }

    var keyType: UInt32 { concatType(keyFields) }
    var keyLength: Int { keyFields.reduce(0) { $0 + $1.paddedLength } }
    var dataType: UInt32 { concatType(dataFields) }
    var dataLength: Int { dataFields.reduce(0) { $0 + $1.paddedLength } }

    /// Checks that `element` can be encoded into this map (families agree, interface name fits).
    static func validate(_ element: ForwardElement, operation: @autoclosure () -> String) throws(NetfilterError) {
        var problem: String?
        if element.guestAddress.family != element.family {
            problem = "guest address \(element.guestAddress) is not \(element.family.rawValue)"
        } else if let host = element.hostAddress, host.family != element.family {
            problem = "host address \(host) is not \(element.family.rawValue)"
        } else if let dev = element.dev, dev.isEmpty || dev.utf8.count > maxInterfaceNameLength || dev.utf8.contains(0) {
            problem = "interface name \"\(dev)\" is not 1-\(maxInterfaceNameLength) bytes"
        }
        if let problem { throw NetfilterError(errno: EINVAL, operation: operation(), detail: problem) }
    }

    /// Key bytes as the kernel compares them: each field in network byte order, zero-padded to 4 bytes.
    /// The element must have passed `validate`.
    func key(_ e: ForwardElement) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(keyLength)
        if hasDev, let dev = e.dev { Self.append(Array(dev.utf8), as: .ifname, to: &out) }
        if hasAddress, let host = e.hostAddress { Self.append(host.bytes, as: .address(family), to: &out) }
        Self.append([e.proto.number], as: .proto, to: &out)
        Self.append([UInt8(e.hostPort >> 8), UInt8(e.hostPort & 0xff)], as: .port, to: &out)
        return out
    }

    /// Data bytes: guest address . guest port.
    func data(_ e: ForwardElement) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(dataLength)
        Self.append(e.guestAddress.bytes, as: .address(family), to: &out)
        Self.append([UInt8(e.guestPort >> 8), UInt8(e.guestPort & 0xff)], as: .port, to: &out)
        return out
    }

    private static func append(_ bytes: [UInt8], as field: KeyField, to out: inout [UInt8]) {
        out += bytes
        out += repeatElement(0, count: field.paddedLength - bytes.count)
    }

    /// The element a kernel key/data pair stands for; nil when the bytes do not fit this map
    /// (someone else's element, or a protocol virtport does not know).
    func decode(key: [UInt8], data: [UInt8]) -> ForwardElement? {
        guard key.count == keyLength, data.count == dataLength else { return nil }
        var at = 0
        var dev: String?
        var host: IPAddress?
        if hasDev {
            dev = String(decoding: key[0..<16].prefix { $0 != 0 }, as: UTF8.self)
            at += 16
        }
        if hasAddress {
            let n = family == .ipv4 ? 4 : 16
            host = IPAddress(bytes: Array(key[at..<at + n]))
            at += n
        }
        guard let proto = IPProto(number: key[at]) else { return nil }
        let hostPort = UInt16(key[at + 4]) << 8 | UInt16(key[at + 5])
        let n = family == .ipv4 ? 4 : 16
        guard let guest = IPAddress(bytes: Array(data[0..<n])) else { return nil }
        let guestPort = UInt16(data[n]) << 8 | UInt16(data[n + 1])
        return ForwardElement(family: family, proto: proto, hostAddress: host, dev: dev, hostPort: hostPort,
                              guestAddress: guest, guestPort: guestPort)
    }
}
