#if canImport(Glibc)
import Glibc
#endif
import CNftnl

/// A non-blocking NETLINK_NETFILTER socket joined to one multicast group of the calling thread's
/// network namespace: what `NftablesMonitor` (NFNLGRP_NFTABLES) and `TraceListener`
/// (NFNLGRP_NFTRACE) read. Needs CAP_NET_ADMIN.
final class GroupSocket {
    /// The socket, to wait on for readability.
    let fd: Int32
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 8)

    /// Opens the socket with a 4 MiB receive queue (a burst such as `nft flush ruleset` on a big
    /// ruleset must not overrun it) and joins `group`.
    /// Wraps socket(2), bind(2), setsockopt(SO_RCVBUFFORCE, NETLINK_ADD_MEMBERSHIP).
    /// - Parameter what: names the subscription in the error ("subscribe to WHAT").
    init(group: UInt32, what: String) throws(NetfilterError) {
        let s = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), NETLINK_NETFILTER)
        guard s >= 0 else { throw NetfilterError(errno: errno, operation: "open netlink socket (NETLINK_NETFILTER)") }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        var member = Int32(group)
        var size: Int32 = 4 << 20
        _ = setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
        guard bound == 0, setsockopt(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &member, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            let code = errno
            Glibc.close(s)
            throw NetfilterError(errno: code, operation: "subscribe to \(what)")
        }
        fd = s
    }

    deinit {
        Glibc.close(fd)
        buffer.deallocate()
    }

    /// Reads every datagram queued now, without blocking, handing each to `body`.
    /// - Returns: whether messages were lost (ENOBUFS: the queue overflowed).
    func drain(_ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        var lost = false
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ENOBUFS { lost = true; continue }
                break
            }
            if n == 0 { break }
            body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return lost
    }
}
