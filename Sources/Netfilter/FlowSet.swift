import CNftnl
import VirtPortCore

/// The `flows4` / `flows6` sets: the original tuple of every connection a forward's DNAT took,
/// written by the kernel itself (a `dynset` add in the nat chains, which see a connection's first
/// packet only). They let a change delete exactly the connection tracking entries of a removed or
/// retargeted forward, by tuple, without walking the whole conntrack table (~25-30 ms at 100,000
/// entries; a tuple delete is ~40 µs). README "Connection tracking".
///
///     set flows4 { type ipv4_addr . inet_service . inet_proto . ipv4_addr . inet_service
///                  size 65536; flags dynamic,timeout; timeout 1d }
///     chain prerouting { …
///         meta nfproto ipv4 fib daddr type local ip daddr . meta l4proto . th dport @fwd4_addr
///             add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
///         meta nfproto ipv4 fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @fwd4_addr
///
/// One recording rule before each DNAT rule, with the same match: a full set makes only the
/// recording rule fail (the DNAT rule after it still runs). Packet fields, not `ct original …`:
/// nft 1.0.6 cannot read back a concatenation that starts with `ct original ip saddr`, and the
/// table must survive `nft list ruleset > f; nft -f f`.
struct FlowSet: Hashable, Sendable {
    var family: Family

    static let all: [FlowSet] = [FlowSet(family: .ipv4), FlowSet(family: .ipv6)]
    /// Elements per family; when full, new connections are not recorded and a deletion falls back
    /// to a filtered walk of the conntrack table.
    static let capacity: UInt32 = 65536
    /// How long an element lives: a connection older than this is not found by tuple.
    static let timeoutMs: UInt64 = 86_400_000

    var name: String { family == .ipv4 ? "flows4" : "flows6" }
    var addressLength: Int { family == .ipv4 ? 4 : 16 }
    var keyFields: [KeyField] { [.address(family), .port, .proto, .address(family), .port] }
    var keyLength: Int { keyFields.reduce(0) { $0 + $1.paddedLength } }
    var keyType: UInt32 { concatType(keyFields) }

    /// `add @flowsN { ip saddr . th sport . meta l4proto . ip daddr . th dport }`, from register 1.
    var record: [RuleExpression] {
        let saddr: UInt32 = family == .ipv4 ? 12 : 8, daddr: UInt32 = family == .ipv4 ? 16 : 24
        var out: [RuleExpression] = []
        var word = 0
        for field in keyFields {
            let dreg = register(word: word)
            switch (field, word) {
            case (.address, 0):
                out.append(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: saddr, length: UInt32(addressLength), dreg: dreg))
            case (.address, _):
                out.append(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: daddr, length: UInt32(addressLength), dreg: dreg))
            case (.port, addressLength / 4):
                out.append(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, length: 2, dreg: dreg))
            case (.port, _):
                out.append(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, dreg: dreg))
            default:
                out.append(.meta(NFT_META_L4PROTO, dreg: dreg))
            }
            word += field.paddedLength / 4
        }
        out.append(.dynsetAdd(set: name, sreg: register(word: 0)))
        return out
    }

    func key(_ f: Conntrack.Tuple) -> [UInt8] {
        func port(_ p: UInt16) -> [UInt8] { [UInt8(p >> 8), UInt8(p & 0xff), 0, 0] }
        return f.source.bytes + port(f.sourcePort) + [f.proto, 0, 0, 0] + f.destination.bytes + port(f.destinationPort)
    }

    func decode(_ key: [UInt8]) -> Conntrack.Tuple? {
        guard key.count == keyLength else { return nil }
        let n = addressLength
        func port(_ at: Int) -> UInt16 { UInt16(key[at]) << 8 | UInt16(key[at + 1]) }
        guard let source = IPAddress(bytes: Array(key[0..<n])),
              let destination = IPAddress(bytes: Array(key[(n + 8)..<(2 * n + 8)])) else { return nil }
        return Conntrack.Tuple(source: source, destination: destination, proto: key[n + 4], sourcePort: port(n),
                               destinationPort: port(2 * n + 8))
    }
}

extension Conntrack.Tuple {
    /// Whether `element`'s DNAT may have taken this connection (a tuple recorded in a flow set):
    /// same protocol and host port, and the element's host address if it has one. (A more specific
    /// element on the same port matches too: its connections are deleted and recreated the same way.)
    func created(by element: ForwardElement) -> Bool {
        proto == element.proto.number && destinationPort == element.hostPort
            && (element.hostAddress.map { $0 == destination } ?? true)
    }
}
