import CNftnl
import Testing
@testable import Netfilter

/// nf_tables notifications as the kernel sends them (`nft monitor`'s group): a batch's deletions,
/// then its NEWGEN naming the committing process.
@Suite struct MonitorTests {
    /// One netlink message: header, nfgenmsg (family), attributes.
    func message(_ type: UInt32, family: UInt8, _ attrs: [(UInt16, [UInt8])]) -> [UInt8] {
        var body: [UInt8] = [family, 0, 0, 0]
        for (t, v) in attrs {
            let len = UInt16(4 + v.count)
            body += withUnsafeBytes(of: len.littleEndian, Array.init) + withUnsafeBytes(of: t.littleEndian, Array.init) + v
            while body.count % 4 != 0 { body.append(0) }
        }
        let total = UInt32(16 + body.count)
        let msgType = UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(type)
        return withUnsafeBytes(of: total.littleEndian, Array.init) + withUnsafeBytes(of: msgType.littleEndian, Array.init)
            + [0, 0] + [UInt8](repeating: 0, count: 8) + body
    }

    @Test func deletionsAreGroupedUntilTheirGeneration() throws {
        let monitor = try NftablesMonitor()
        let name = Array("virtport".utf8) + [0]
        let bytes = message(NFT_MSG_DELSETELEM.rawValue, family: UInt8(NFPROTO_INET), [(1, name)])
            + message(NFT_MSG_NEWRULE.rawValue, family: UInt8(NFPROTO_IPV4), [(1, Array("filter".utf8) + [0])])
            + message(NFT_MSG_DELRULE.rawValue, family: UInt8(NFPROTO_IPV4), [(1, Array("filter".utf8) + [0])])
            + message(NFT_MSG_NEWGEN.rawValue, family: 0, [(UInt16(NFTA_GEN_ID.rawValue), [0, 0, 0, 9]),
                                                            (UInt16(NFTA_GEN_PROC_PID.rawValue), [0, 0, 0x30, 0x39]),
                                                            (UInt16(NFTA_GEN_PROC_NAME.rawValue), Array("nft".utf8) + [0])])
            + message(NFT_MSG_DELTABLE.rawValue, family: UInt8(NFPROTO_BRIDGE), [(1, name)])
        var out: [NftablesMonitor.Batch] = []
        bytes.withUnsafeBytes { monitor.parse($0, into: &out) }
        #expect(out == [NftablesMonitor.Batch(pid: 12345, process: "nft", deletedFrom: ["inet virtport", "ip filter"])])
        // The bridge table's deletion waits for its own NEWGEN.
        bytes.prefix(0).withUnsafeBytes { monitor.parse($0, into: &out) }
        #expect(out.count == 1)
    }
}
