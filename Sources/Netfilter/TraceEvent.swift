/// One nf_tables trace event (NFT_MSG_TRACE on the NFNLGRP_NFTRACE group): a rule that matched a
/// packet whose `meta nftrace` is set, a chain it returned from, or the policy of a base chain.
/// `virtport trace` prints them in the order the kernel sends them, which is hook order.
public struct TraceEvent: Sendable, Equatable {
    /// NFTA_TRACE_TYPE (enum nft_trace_types).
    public enum Kind: UInt32, Sendable {
        case policy = 1, `return` = 2, rule = 3
    }

    /// NFTA_TRACE_ID: the same for every event of one packet.
    public var id: UInt32 = 0
    /// The table's family (nfgenmsg): 1 inet, 2 ip, 7 bridge, 10 ip6…
    public var family: UInt8 = 0
    public var table = ""
    public var chain = ""
    public var kind: Kind?
    /// NFTA_TRACE_RULE_HANDLE (rule events).
    public var handle: UInt64?
    /// NFTA_VERDICT_CODE: NF_DROP 0, NF_ACCEPT 1, NFT_CONTINUE -1, NFT_BREAK -2, NFT_JUMP -3,
    /// NFT_GOTO -4, NFT_RETURN -5.
    public var verdict: Int32?
    /// NFTA_VERDICT_CHAIN of a jump/goto.
    public var target: String?
    public var iif: UInt32?
    public var oif: UInt32?
    /// NFTA_TRACE_POLICY: the base chain's policy that decided (policy events).
    public var policy: UInt32?
    public var mark: UInt32?
    /// NFTA_TRACE_CT_STATE (kernel 6.8+): the `ct state` bit (1 invalid, 2 established, 4 related,
    /// 8 new, 64 untracked).
    public var ctState: UInt32?
    /// NFTA_TRACE_CT_DIRECTION (kernel 6.8+): 0 original, 1 reply.
    public var ctDirection: UInt8?
    /// The packet's network and transport headers as this hook saw them.
    public var network: [UInt8] = []
    public var transport: [UInt8] = []

    public init() {}

    /// nf_tables' message type for a trace event: NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_TRACE (17).
    public static let messageType: UInt16 = 10 << 8 | 17

    /// Parses one netlink message (header included); nil when it is not a trace event.
    public static func parse(_ message: [UInt8]) -> TraceEvent? {
        guard message.count >= 20 else { return nil }
        let type = UInt16(message[4]) | UInt16(message[5]) << 8
        guard type == messageType else { return nil }
        var e = TraceEvent()
        e.family = message[16]
        let attrs = attributes(message, from: 20)
        func be32(_ t: UInt16) -> UInt32? {
            guard let v = attrs[t], v.count >= 4 else { return nil }
            return v[0..<4].reduce(0) { $0 << 8 | UInt32($1) }
        }
        func string(_ t: UInt16) -> String? {
            attrs[t].map { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        e.table = string(1) ?? ""
        e.chain = string(2) ?? ""
        if let h = attrs[3], h.count >= 8 { e.handle = h[0..<8].reduce(0) { $0 << 8 | UInt64($1) } }
        e.kind = be32(4).flatMap(Kind.init(rawValue:))
        if let v = attrs[5] {
            let nested = attributes(v, from: 0)
            if let code = nested[1], code.count >= 4 {
                e.verdict = Int32(bitPattern: code[0..<4].reduce(0) { $0 << 8 | UInt32($1) })
            }
            e.target = nested[2].map { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        e.id = be32(6) ?? 0
        e.network = attrs[8] ?? []
        e.transport = attrs[9] ?? []
        e.iif = be32(10)
        e.oif = be32(12)
        e.mark = be32(14)
        e.policy = be32(16)
        e.ctDirection = attrs[19]?.first
        e.ctState = be32(21)
        return e
    }

    /// Netlink attributes from `offset` on: type (nested flag cleared) → payload.
    static func attributes(_ bytes: [UInt8], from offset: Int) -> [UInt16: [UInt8]] {
        var out: [UInt16: [UInt8]] = [:]
        var i = offset
        while i + 4 <= bytes.count {
            let len = Int(UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8)
            let type = (UInt16(bytes[i + 2]) | UInt16(bytes[i + 3]) << 8) & 0x3fff
            guard len >= 4, i + len <= bytes.count else { break }
            out[type] = Array(bytes[(i + 4)..<(i + len)])
            i += (len + 3) & ~3
        }
        return out
    }

    /// Splits a datagram into its netlink messages.
    public static func messages(in datagram: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var i = 0
        while i + 16 <= datagram.count {
            let len = Int(datagram[i]) | Int(datagram[i + 1]) << 8 | Int(datagram[i + 2]) << 16 | Int(datagram[i + 3]) << 24
            guard len >= 16, i + len <= datagram.count else { break }
            out.append(Array(datagram[i..<(i + len)]))
            i += (len + 3) & ~3
        }
        return out
    }

    // MARK: - What the headers say

    /// IP version of the network header (4 or 6), 0 when there is none.
    public var ipVersion: Int { network.first.map { Int($0 >> 4) } ?? 0 }

    /// Source and destination addresses of the network header, as bytes.
    public var addresses: (source: [UInt8], destination: [UInt8])? {
        switch ipVersion {
        case 4 where network.count >= 20: (Array(network[12..<16]), Array(network[16..<20]))
        case 6 where network.count >= 40: (Array(network[8..<24]), Array(network[24..<40]))
        default: nil
        }
    }

    /// The layer-4 protocol number (IPv4 protocol, IPv6 next header when no extension header).
    public var l4proto: UInt8? {
        switch ipVersion {
        case 4 where network.count >= 10: network[9]
        case 6 where network.count >= 7: network[6]
        default: nil
        }
    }

    /// Source and destination ports of a TCP/UDP/SCTP transport header.
    public var ports: (source: UInt16, destination: UInt16)? {
        guard transport.count >= 4 else { return nil }
        return (UInt16(transport[0]) << 8 | UInt16(transport[1]), UInt16(transport[2]) << 8 | UInt16(transport[3]))
    }

    /// TCP flags as tcpdump shows them ("S", "S.", "R.", "F."…), nil for other protocols.
    public var tcpFlags: String? {
        guard l4proto == 6, transport.count >= 14 else { return nil }
        let f = transport[13]
        var s = ""
        if f & 0x02 != 0 { s += "S" }
        if f & 0x01 != 0 { s += "F" }
        if f & 0x04 != 0 { s += "R" }
        if f & 0x08 != 0 { s += "P" }
        if f & 0x10 != 0 { s += "." }
        return s
    }
}
