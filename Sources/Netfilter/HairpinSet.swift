import VirtPortCore

/// The `hairpin4` / `hairpin6` interval sets: guest subnets whose DNATed connections are
/// masqueraded in `postrouting`, so a guest reaching another guest's forward gets replies back
/// through the host.
///
/// An interval set holds each prefix as two kernel elements: its first address, and the first
/// address after it flagged NFT_SET_ELEM_INTERVAL_END (left out when the prefix reaches the top
/// of the address space).
struct HairpinSet: Hashable, Sendable {
    var family: Family

    static let all: [HairpinSet] = [HairpinSet(family: .ipv4), HairpinSet(family: .ipv6)]

    var name: String { family == .ipv4 ? "hairpin4" : "hairpin6" }
    var keyType: UInt32 { KeyField.address(family).typeID }
    var keyLength: Int { family == .ipv4 ? 4 : 16 }
    var width: Int { keyLength * 8 }

    /// One kernel element of the set.
    struct Element: Hashable, Sendable {
        var key: [UInt8]
        var isEnd: Bool
    }

    /// The kernel elements of `subnet`: start, then end unless the prefix runs to the top.
    func elements(_ subnet: Subnet) -> [Element] {
        var out = [Element(key: subnet.address.bytes, isEnd: false)]
        guard subnet.prefix > 0 else { return out }
        let start = Self.value(subnet.address.bytes)
        let (end, overflow) = start.addingReportingOverflow(UInt128(1) << (width - Int(subnet.prefix)))
        if !overflow, family == .ipv6 || end < UInt128(1) << 32 {
            out.append(Element(key: Self.bytes(end, count: keyLength), isEnd: true))
        }
        return out
    }

    /// The prefixes a dump of the set stands for. Intervals that are not one prefix (written by
    /// someone with `nft`) come back split into prefixes; a stray end (nft's "0 end" marker) is ignored.
    func subnets(from elements: [Element]) -> [Subnet] {
        let sorted = elements.filter { $0.key.count == keyLength }
            .sorted { Self.value($0.key) != Self.value($1.key) ? Self.value($0.key) < Self.value($1.key) : $0.isEnd }
        var out: [Subnet] = []
        var i = 0
        while i < sorted.count {
            guard !sorted[i].isEnd else { i += 1; continue }
            let start = Self.value(sorted[i].key)
            var end: UInt128?  // exclusive; nil = to the top of the space
            if i + 1 < sorted.count, sorted[i + 1].isEnd {
                end = Self.value(sorted[i + 1].key)
                i += 2
            } else {
                i += 1
            }
            out += prefixes(from: start, to: end)
        }
        return out
    }

    /// Splits [start, end) into the fewest prefixes.
    func prefixes(from start: UInt128, to end: UInt128?) -> [Subnet] {
        var out: [Subnet] = []
        var current = start
        while end.map({ current < $0 }) ?? true {
            var hostBits = current == 0 ? width : min(width, current.trailingZeroBitCount)
            while hostBits > 0, let end, hostBits >= 128 || end - current < (UInt128(1) << hostBits) {
                hostBits -= 1
            }
            let address = IPAddress(bytes: Self.bytes(current, count: keyLength))!
            out.append(Subnet(address: address, prefix: UInt8(width - hostBits)))
            if hostBits >= width { break }
            let (next, overflow) = current.addingReportingOverflow(UInt128(1) << hostBits)
            if overflow || (family == .ipv4 && next >= UInt128(1) << 32) { break }
            current = next
        }
        return out
    }

    static func value(_ bytes: [UInt8]) -> UInt128 {
        bytes.reduce(0) { $0 << 8 | UInt128($1) }
    }

    static func bytes(_ value: UInt128, count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * (count - 1 - $0))) }
    }
}
