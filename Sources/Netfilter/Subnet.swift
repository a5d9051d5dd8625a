public import VirtPortCore

/// An address prefix ("192.168.122.0/24"), as held by the `hairpin4`/`hairpin6` interval sets.
public struct Subnet: Hashable, Sendable, CustomStringConvertible {
    /// The network address; host bits are cleared by `init(address:prefix:)`.
    public var address: IPAddress
    /// Prefix length: 0…32 for IPv4, 0…128 for IPv6.
    public var prefix: UInt8

    /// A subnet with the host bits of `address` cleared; `prefix` is clamped to the family's width.
    public init(address: IPAddress, prefix: UInt8) {
        let width = UInt8(address.bytes.count * 8)
        self.prefix = min(prefix, width)
        self.address = IPAddress(bytes: Self.masked(address.bytes, self.prefix)) ?? address
    }

    /// Parses "ADDRESS/PREFIX" (or a bare address: a host route); nil when malformed.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let width = address.bytes.count * 8
        var prefix = width
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...width).contains(p) else { return nil }
            prefix = p
        }
        self.init(address: address, prefix: UInt8(prefix))
    }

    public var family: Family { address.family }
    public var description: String { "\(address)/\(prefix)" }

    static func masked(_ bytes: [UInt8], _ prefix: UInt8) -> [UInt8] {
        var out = bytes
        for i in out.indices {
            let bitsHere = max(0, min(8, Int(prefix) - i * 8))
            out[i] &= bitsHere == 8 ? 0xff : ~(0xff >> bitsHere)
        }
        return out
    }
}
