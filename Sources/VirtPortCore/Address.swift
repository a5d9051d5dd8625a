#if canImport(Glibc)
import Glibc
#endif

/// Address family of a forward: decides the DNAT map family (ip or ip6).
public enum Family: String, Sendable, Hashable, Comparable {
    case ipv4, ipv6
    public static func < (a: Family, b: Family) -> Bool { a.rawValue < b.rawValue }
}

/// An IPv4 or IPv6 address in network byte order.
public struct IPAddress: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]  // 4 or 16 bytes

    public var family: Family { bytes.count == 4 ? .ipv4 : .ipv6 }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (inet_pton); nil when it is neither.
    public init?(_ text: String) {
        // UTF-8 counts and searches: the same answers as `count`/`contains` here (inet_pton takes
        // ASCII only), without the grapheme walk (the journal parses every row's addresses).
        if text.isEmpty || text.utf8.count > 45 { return nil }
        if text.utf8.contains(UInt8(ascii: ":")) {
            var a = in6_addr()
            guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
            self.bytes = withUnsafeBytes(of: &a) { Array($0) }
        } else {
            var a = in_addr()
            guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
            self.bytes = withUnsafeBytes(of: &a) { Array($0) }
        }
    }

    public var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        return bytes.withUnsafeBytes { raw in
            let af = bytes.count == 4 ? AF_INET : AF_INET6
            guard inet_ntop(af, raw.baseAddress, &buf, socklen_t(buf.count)) != nil else { return "?" }
            return Bytes.text(buf)
        }
    }

    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
    public var isMulticast: Bool { family == .ipv4 ? bytes[0] >= 224 && bytes[0] <= 239 : bytes[0] == 0xff }
    public var isLoopback: Bool {
        family == .ipv4 ? bytes[0] == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1]
    }
    /// 0.0.0.0/8 ("this network": no host can be reached there), or for IPv6 `::` and the
    /// deprecated IPv4-compatible `::a.b.c.d` (`::/96`, which also holds `::` and `::1`).
    public var isUnspecifiedLike: Bool {
        family == .ipv4 ? bytes[0] == 0 : bytes.prefix(12).allSatisfy { $0 == 0 }
    }
    /// `::ffff:a.b.c.d`: an IPv4 address in IPv6 clothing. nftables would match it in the ip6
    /// maps, where no IPv4 packet ever looks, and a guest never has one.
    public var isIPv4Mapped: Bool {
        family == .ipv6 && bytes.prefix(10).allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff
    }
    /// `fe80::/10` or `169.254.0.0/16`.
    public var isLinkLocal: Bool {
        family == .ipv4 ? bytes[0] == 169 && bytes[1] == 254 : bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        a.bytes.count != b.bytes.count ? a.bytes.count < b.bytes.count : a.bytes.lexicographicallyPrecedes(b.bytes)
    }
}

/// A MAC address, normalised to lower-case colon form ("52:54:00:aa:bb:01").
public struct MACAddress: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Six bytes, as on the wire.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    public init?(_ text: String) {
        // Fast path, the stored form "52:54:00:aa:bb:01" (either case): one pass over the bytes,
        // no substrings (the journal parses every row's MAC). Anything else takes the general path.
        if let b = Self.colonHex(text) {
            bytes = b
            return
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        bytes = out
    }

    public var description: String {
        let digits: StaticString = "0123456789abcdef"
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 3)
        digits.withUTF8Buffer { hex in
            for (i, b) in bytes.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ":")) }
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0x0f)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Six two-digit hex bytes separated by colons, exactly 17 bytes; nil for anything else.
    private static func colonHex(_ text: String) -> [UInt8]? {
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        let utf8 = text.utf8
        guard utf8.count == 17 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(6)
        var i = utf8.startIndex
        for k in 0..<6 {
            if k > 0 {
                guard utf8[i] == UInt8(ascii: ":") else { return nil }
                i = utf8.index(after: i)
            }
            guard let hi = nibble(utf8[i]) else { return nil }
            i = utf8.index(after: i)
            guard let lo = nibble(utf8[i]) else { return nil }
            i = utf8.index(after: i)
            out.append(hi << 4 | lo)
        }
        return out
    }

    public static func < (a: MACAddress, b: MACAddress) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}
