#if canImport(Glibc)
import Glibc
#endif
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
        var out: [NftablesMonitor.Commit] = []
        bytes.withUnsafeBytes { monitor.parse($0, into: &out) }
        #expect(out == [NftablesMonitor.Commit(pid: 12345, process: "nft", deletedFrom: ["inet virtport", "ip filter"])])
        // The bridge table's deletion waits for its own NEWGEN.
        bytes.prefix(0).withUnsafeBytes { monitor.parse($0, into: &out) }
        #expect(out.count == 1)
    }
}

/// Rules added to a chain (libvirt re-inserting its rules at the top of `guest_input`) and the
/// committing socket's port id (the NEWGEN header's nlmsg_pid), as the agent needs them.
@Suite struct MonitorAdditionsTests {
    @Test func rulesAddedAreNamedByChainAndTheCommittingPortIsKept() throws {
        let monitor = try NftablesMonitor()
        let t = MonitorTests()
        func str(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }
        var gen = t.message(NFT_MSG_NEWGEN.rawValue, family: 0, [(UInt16(NFTA_GEN_PROC_PID.rawValue), [0, 0, 0x30, 0x39]),
                                                                (UInt16(NFTA_GEN_PROC_NAME.rawValue), str("nft"))])
        gen.replaceSubrange(12..<16, with: [0x78, 0x56, 0x34, 0x12])  // nlmsg_pid, host order
        let bytes = t.message(NFT_MSG_DELRULE.rawValue, family: UInt8(NFPROTO_IPV4), [(1, str("libvirt_network")), (2, str("guest_input"))])
            + t.message(NFT_MSG_NEWRULE.rawValue, family: UInt8(NFPROTO_IPV4), [(1, str("libvirt_network")), (2, str("guest_input"))])
            + t.message(NFT_MSG_NEWRULE.rawValue, family: UInt8(NFPROTO_IPV6), [(1, str("filter")), (2, str("FORWARD"))])
            + t.message(NFT_MSG_NEWRULE.rawValue, family: UInt8(NFPROTO_IPV4), [(1, str("filter"))])  // no chain: ignored
            + gen
        var out: [NftablesMonitor.Commit] = []
        bytes.withUnsafeBytes { monitor.parse($0, into: &out) }
        #expect(out == [NftablesMonitor.Commit(pid: 12345, process: "nft", portID: 0x1234_5678,
                                              deletedFrom: ["ip libvirt_network"],
                                              addedTo: ["ip libvirt_network guest_input", "ip6 filter FORWARD"])])
        #expect(out[0].committer == "pid 12345 (nft)")
    }
}

/// Self-heal's "was it us?": the kernel names a batch's committing thread, not its process.
@Suite struct OwnCommitsTests {
    @Test func ourThreadsAndOurSocketsAreUsAndNobodyElseIs() throws {
        #expect(OwnCommits.committed(.init(pid: UInt32(getpid()))))
        #expect(OwnCommits.committed(.init(pid: UInt32(threadID()))))
        // Another thread of this process: its id is not getpid(), still ours.
        let box = ThreadIDBox()
        var thread = pthread_t()
        let arg = Unmanaged.passUnretained(box).toOpaque()
        #expect(pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadIDBox>.fromOpaque(raw!).takeUnretainedValue().tid = threadID()
            sleep(2)
            return nil
        }, arg) == 0)
        while box.tid == 0 { usleep(1000) }
        #expect(box.tid != getpid())
        #expect(OwnCommits.committed(.init(pid: UInt32(box.tid))))
        #expect(!OwnCommits.committed(.init(pid: 1, process: "systemd")))
        #expect(!OwnCommits.committed(.init()))
        // Our netlink socket, by port id, whatever thread id the kernel named.
        var port: UInt32 = 0
        do {
            let socket = try MnlSocket(netnsPath: nil)
            port = socket.port
            #expect(port != 0)
            #expect(OwnCommits.committed(.init(pid: 1, portID: port)))
        }
        #expect(!OwnCommits.committed(.init(pid: 1, portID: port)))
        pthread_cancel(thread)
        pthread_join(thread, nil)
    }
}

final class ThreadIDBox: @unchecked Sendable {
    var tid: pid_t = 0
}

/// The calling thread's id (glibc's gettid() is not imported): /proc/thread-self -> "PID/task/TID".
func threadID() -> pid_t {
    var buffer = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buffer, buffer.count - 1)
    guard n > 0 else { return 0 }
    let text = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return pid_t(text.split(separator: "/").last.flatMap { Int32($0) } ?? 0)
}
