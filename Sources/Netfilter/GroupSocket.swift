#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import POSIX

/// A non-blocking NETLINK_NETFILTER socket joined to one multicast group of the calling thread's
/// network namespace: what `NftablesMonitor` (NFNLGRP_NFTABLES) and `TraceListener`
/// (NFNLGRP_NFTRACE) read. Needs CAP_NET_ADMIN.
final class GroupSocket {
    private let socket: NetlinkSocket
    /// The socket, to wait on for readability.
    var descriptor: FileDescriptor { socket.descriptor }
    var fd: Int32 { socket.descriptor.rawValue }
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 8)

    /// Opens the socket with a 4 MiB receive queue (a burst such as `nft flush ruleset` on a big
    /// ruleset must not overrun it) and joins `group`.
    /// Wraps socket(2), bind(2), setsockopt(SO_RCVBUFFORCE, NETLINK_ADD_MEMBERSHIP).
    /// - Parameter what: names the subscription in the error ("subscribe to WHAT").
    init(group: UInt32, what: String) throws(NetfilterError) {
        let s: NetlinkSocket
        do { s = try NetlinkSocket(protocol: NETLINK_NETFILTER, nonBlocking: true) } catch where error.function == "socket" {
            throw NetfilterError(errno: error.code, operation: "open netlink socket (NETLINK_NETFILTER)")
        } catch {
            throw NetfilterError(errno: error.code, operation: "subscribe to \(what)")
        }
        try? s.setOption(level: SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        do { try s.join(group: group) } catch {
            s.close()
            throw NetfilterError(errno: error.code, operation: "subscribe to \(what)")
        }
        socket = s
    }

    deinit {
        socket.close()
        buffer.deallocate()
    }

    /// Reads every datagram queued now, without blocking, handing each to `body`.
    /// - Returns: whether messages were lost (ENOBUFS: the queue overflowed).
    func drain(_ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        var lost = false
        while true {
            let n: Int
            do { n = try socket.receive(into: buffer) } catch where error.code == ENOBUFS {
                lost = true
                continue
            } catch {
                break  // EAGAIN: nothing more queued
            }
            if n == 0 { break }
            body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return lost
    }
}
