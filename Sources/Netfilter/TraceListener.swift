#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import POSIX

/// A subscription to nf_tables trace events (NFNLGRP_NFTRACE, what `nft monitor trace` reads)
/// in the calling thread's network namespace. Only `virtport trace` opens one: no hook loads it.
public final class TraceListener {
    /// The socket, non-blocking, to wait on for readability.
    public let fd: Int32
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 8)

    /// Opens a NETLINK_NETFILTER socket and joins NFNLGRP_NFTRACE. Needs CAP_NET_ADMIN.
    /// Wraps socket(2), bind(2), setsockopt(NETLINK_ADD_MEMBERSHIP).
    public init() throws(NetfilterError) {
        let s = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), NETLINK_NETFILTER)
        guard s >= 0 else { throw NetfilterError(errno: errno, operation: "open netlink socket (NETLINK_NETFILTER)") }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        var group = Int32(NFNLGRP_NFTRACE.rawValue)
        var size: Int32 = 4 << 20
        _ = setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
        guard bound == 0, setsockopt(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            let code = errno
            Glibc.close(s)
            throw NetfilterError(errno: code, operation: "subscribe to nf_tables trace events")
        }
        fd = s
    }

    deinit {
        Glibc.close(fd)
        buffer.deallocate()
    }

    /// Waits up to `timeoutMs` for events, then reads what is queued without blocking.
    /// - Returns: the events, and whether some were lost (ENOBUFS).
    public func read(timeoutMs: Int32) -> (events: [TraceEvent], lost: Bool) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, timeoutMs) <= 0 { return ([], false) }
        var out: [TraceEvent] = []
        var lost = false
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ENOBUFS { lost = true; continue }
                break
            }
            if n == 0 { break }
            let datagram = Array(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            for m in TraceEvent.messages(in: datagram) {
                if let e = TraceEvent.parse(m) { out.append(e) }
            }
        }
        return (out, lost)
    }
}
