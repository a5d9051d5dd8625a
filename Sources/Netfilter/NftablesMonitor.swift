#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import POSIX

/// nf_tables' change notifications (the multicast group `nft monitor` listens to,
/// NFNLGRP_NFTABLES), reduced to what self-heal needs: which tables lost something, which chains
/// got new rules (libvirt re-inserting its rules at the top of its chains), and who committed each
/// batch. The kernel sends a batch's object notifications and then one NEWGEN message naming the
/// committing thread and socket, so notifications are grouped into `Commit`s that end at their
/// NEWGEN.
public final class NftablesMonitor {
    /// One committed nf_tables transaction (a batch someone sent, as its notifications show it):
    /// who committed it, what it deleted and where it added rules.
    public struct Commit: Sendable, Equatable {
        /// The task that committed it (NFTA_GEN_PROC_PID, the kernel's `task_pid_nr(current)`: a
        /// thread id, equal to the process id only for a process's main thread), 0 when unknown.
        public var pid: UInt32 = 0
        /// Its command name (NFTA_GEN_PROC_NAME), "" when unknown.
        public var process = ""
        /// The netlink port id of the socket that committed it (the NEWGEN header's nlmsg_pid).
        public var portID: UInt32 = 0
        /// "family table" of every table a deletion touched (`inet virtport`, `ip filter`, …).
        public var deletedFrom: Set<String> = []
        /// "family table chain" of every chain a rule was added to (`ip libvirt_network guest_input`).
        public var addedTo: Set<String> = []

        public init(pid: UInt32 = 0, process: String = "", portID: UInt32 = 0, deletedFrom: Set<String> = [],
                    addedTo: Set<String> = []) {
            self.pid = pid
            self.process = process
            self.portID = portID
            self.deletedFrom = deletedFrom
            self.addedTo = addedTo
        }

        /// "pid N (name)", for the log.
        public var committer: String { "pid \(pid)" + (process.isEmpty ? "" : " (\(process))") }
    }

    private let socket: GroupSocket
    /// The socket, non-blocking, to watch for readability.
    public var descriptor: FileDescriptor { socket.descriptor }
    private var pending = Commit()

    /// Subscribes to nf_tables notifications of the calling thread's network namespace.
    public init() throws(NetfilterError) {
        socket = try GroupSocket(group: NFNLGRP_NFTABLES.rawValue, what: "nf_tables notifications")
    }

    /// Reads what is queued (without blocking).
    /// - Returns: the commits completed so far, and whether notifications were lost (ENOBUFS: the
    ///   queue overflowed, so anything may have been deleted).
    public func read() -> (commits: [Commit], overrun: Bool) {
        var out: [Commit] = []
        let overrun = socket.drain { parse($0, into: &out) }
        return (out, overrun)
    }

    func parse(_ bytes: UnsafeRawBufferPointer, into out: inout [Commit]) {
        var offset = 0
        let header = MemoryLayout<nlmsghdr>.size
        while offset + header <= bytes.count {
            let len = Int(bytes.load(fromByteOffset: offset, as: UInt32.self))
            let type = bytes.load(fromByteOffset: offset + 4, as: UInt16.self)
            guard len >= header, offset + len <= bytes.count else { break }
            let port = bytes.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)
            let body = UnsafeRawBufferPointer(rebasing: bytes[(offset + header)..<(offset + len)])
            handle(type: type, port: port, body: body, into: &out)
            offset += (len + 3) & ~3
        }
    }

    private func handle(type: UInt16, port: UInt32, body: UnsafeRawBufferPointer, into out: inout [Commit]) {
        guard type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES), body.count >= 4 else { return }
        let msg = UInt32(type & 0xff)
        let family = body[0]
        let attrs = Self.attributes(UnsafeRawBufferPointer(rebasing: body[4...]))
        switch msg {
        case NFT_MSG_NEWGEN.rawValue:
            if let pid = attrs[UInt16(NFTA_GEN_PROC_PID.rawValue)], pid.count >= 4 {
                pending.pid = UInt32(bigEndian: pid.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
            }
            if let name = attrs[UInt16(NFTA_GEN_PROC_NAME.rawValue)] {
                pending.process = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
            }
            pending.portID = port
            out.append(pending)
            pending = Commit()
        case NFT_MSG_DELTABLE.rawValue, NFT_MSG_DELCHAIN.rawValue, NFT_MSG_DELRULE.rawValue,
             NFT_MSG_DELSET.rawValue, NFT_MSG_DELSETELEM.rawValue:
            // The table name is attribute 1 of each of these (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
            // NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE).
            guard let table = attrs[1] else { return }
            pending.deletedFrom.insert("\(Self.familyName(family)) \(Self.text(table))")
        case NFT_MSG_NEWRULE.rawValue:
            guard let table = attrs[UInt16(NFTA_RULE_TABLE.rawValue)], let chain = attrs[UInt16(NFTA_RULE_CHAIN.rawValue)]
            else { return }
            pending.addedTo.insert("\(Self.familyName(family)) \(Self.text(table)) \(Self.text(chain))")
        default:
            break
        }
    }

    /// A NUL-terminated string attribute.
    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self) }

    /// Top-level netlink attributes: type → payload.
    static func attributes(_ bytes: UnsafeRawBufferPointer) -> [UInt16: [UInt8]] {
        var out: [UInt16: [UInt8]] = [:]
        var offset = 0
        while offset + 4 <= bytes.count {
            let len = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let type = bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
            guard len >= 4, offset + len <= bytes.count else { break }
            out[type] = Array(bytes[(offset + 4)..<(offset + len)])
            offset += (len + 3) & ~3
        }
        return out
    }

    static func familyName(_ f: UInt8) -> String {
        switch Int(f) {
        case NFPROTO_INET: "inet"
        case NFPROTO_IPV4: "ip"
        case NFPROTO_IPV6: "ip6"
        case NFPROTO_BRIDGE: "bridge"
        case NFPROTO_ARP: "arp"
        case NFPROTO_NETDEV: "netdev"
        default: "family\(f)"
        }
    }
}
