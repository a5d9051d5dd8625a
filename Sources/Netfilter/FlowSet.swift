import CNftnl
import VirtPortCore

/// The `flows4` / `flows6` maps: the original tuple and guest address of every connection a
/// DNAT created, with its protocol, written by the kernel itself (a `dynset` add in
/// `postrouting`, which a nat chain sees once per connection). They let a change delete exactly
/// the connection tracking entries a removed forward created, by tuple, without walking the whole
/// conntrack table (~25 ms at 100,000 entries; a tuple delete is ~40 µs). README "Connection
/// tracking".
///
///     map flows4 { type ipv4_addr . inet_service . ipv4_addr . inet_service . ipv4_addr : inet_proto
///                  size 65536; flags dynamic,timeout; timeout 1d }
///     chain postrouting { …
///         ct status dnat meta nfproto ipv4 add @flows4 { ct original ip saddr . ct original proto-src
///             . ct original ip daddr . ct original proto-dst . ct reply ip saddr : ct protocol }
///
/// Five key fields: what nft can still print (6 bits per field of a 32-bit type). The protocol is
/// the data, and the guest port is not needed: (protocol, host address, host port) is a forward's
/// key, the guest address tells a lease move apart.
struct FlowSet: Hashable, Sendable {
    var family: Family

    static let all: [FlowSet] = [FlowSet(family: .ipv4), FlowSet(family: .ipv6)]
    /// Elements per family; when full, new connections are not recorded (the rule breaks, the
    /// packet goes on) and a deletion falls back to a filtered walk of the conntrack table.
    static let capacity: UInt32 = 65536
    /// How long an element lives: a connection older than this is not found by tuple.
    static let timeoutMs: UInt64 = 86_400_000

    var name: String { family == .ipv4 ? "flows4" : "flows6" }
    var addressLength: Int { family == .ipv4 ? 4 : 16 }
    var keyFields: [KeyField] { [.address(family), .port, .address(family), .port, .address(family)] }
    var keyLength: Int { keyFields.reduce(0) { $0 + $1.paddedLength } }
    var keyType: UInt32 { concatType(keyFields) }
    var dataType: UInt32 { KeyField.proto.typeID }
    var dataLength: Int { KeyField.proto.length }

    /// The recording rule.
    var rule: [RuleExpression] {
        let status = register(word: 0)
        var out: [RuleExpression] = [
            .ct(NFT_CT_STATUS, dreg: status),
            .bitwise(reg: status, mask: RuleExpression.hostOrder(1 << 5 /* IPS_DST_NAT */), xor: [0, 0, 0, 0]),
            .cmp(sreg: status, op: NFT_CMP_NEQ, data: [0, 0, 0, 0]),
        ] + RuleExpression.nfproto(family)
        let src = family == .ipv4 ? NFT_CT_SRC_IP : NFT_CT_SRC_IP6
        let dst = family == .ipv4 ? NFT_CT_DST_IP : NFT_CT_DST_IP6
        let loads: [(nft_ct_keys, UInt8)] = [(src, 0), (NFT_CT_PROTO_SRC, 0), (dst, 0), (NFT_CT_PROTO_DST, 0), (src, 1)]
        var word = 0
        for ((key, direction), field) in zip(loads, keyFields) {
            out.append(.ctDirected(key, direction: direction, dreg: register(word: word)))
            word += field.paddedLength / 4
        }
        out.append(.ctDirected(NFT_CT_PROTOCOL, direction: nil, dreg: register(word: word)))
        out.append(.dynsetAdd(set: name, sreg: register(word: 0), dataReg: register(word: word)))
        return out
    }

    /// One recorded connection.
    struct Flow: Hashable, Sendable {
        var source: IPAddress
        var sourcePort: UInt16
        var destination: IPAddress
        var destinationPort: UInt16
        var guest: IPAddress
        var proto: UInt8

        /// Whether `element`'s DNAT created this connection.
        func created(by element: ForwardElement) -> Bool {
            proto == element.proto.number && guest == element.guestAddress && destinationPort == element.hostPort
                && (element.hostAddress.map { $0 == destination } ?? true)
        }
    }

    func key(_ f: Flow) -> [UInt8] {
        func port(_ p: UInt16) -> [UInt8] { [UInt8(p >> 8), UInt8(p & 0xff), 0, 0] }
        return f.source.bytes + port(f.sourcePort) + f.destination.bytes + port(f.destinationPort) + f.guest.bytes
    }

    func decode(key: [UInt8], data: [UInt8]) -> Flow? {
        guard key.count == keyLength, let proto = data.first else { return nil }
        let n = addressLength
        func address(_ at: Int) -> IPAddress? { IPAddress(bytes: Array(key[at..<at + n])) }
        func port(_ at: Int) -> UInt16 { UInt16(key[at]) << 8 | UInt16(key[at + 1]) }
        guard let source = address(0), let destination = address(n + 4), let guest = address(2 * n + 8) else { return nil }
        return Flow(source: source, sourcePort: port(n), destination: destination, destinationPort: port(2 * n + 4),
                    guest: guest, proto: proto)
    }
}
