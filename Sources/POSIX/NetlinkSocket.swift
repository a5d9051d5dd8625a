#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// A raw netlink socket (AF_NETLINK, close-on-exec): what the nf_tables notification and trace
/// subscriptions and the sock_diag dumps talk over. A value: whoever opened it closes it.
public struct NetlinkSocket: Sendable {
    public let descriptor: FileDescriptor

    /// Opens a socket of netlink `protocol` (NETLINK_NETFILTER, NETLINK_SOCK_DIAG, …) and, with
    /// `bind` (needed to join a group; a socket that only sends requests is bound by its first
    /// send), binds it: the kernel picks the port id. Wraps socket(2) and bind(2).
    public init(protocol: Int32, nonBlocking: Bool = false, bind: Bool = true) throws(Errno) {
        let type = Int32(SOCK_RAW.rawValue | SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = FileDescriptor(rawValue: try valueOrErrno("socket") { socket(AF_NETLINK, type, `protocol`) })
        if !bind {
            descriptor = fd
            return
        }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        do throws(Errno) {
            _ = try valueOrErrno("bind") {
                withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
                }
            }
        } catch {
            fd.close()
            throw error
        }
        descriptor = fd
    }

    /// Sets an `Int32` socket option. Wraps setsockopt(2).
    public func setOption(level: Int32, _ name: Int32, _ value: Int32) throws(Errno) {
        var v = value
        _ = try valueOrErrno("setsockopt") { setsockopt(descriptor.rawValue, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Joins multicast `group`. Wraps setsockopt(NETLINK_ADD_MEMBERSHIP).
    public func join(group: UInt32) throws(Errno) {
        try setOption(level: SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, Int32(group))
    }

    /// Sends `bytes` to the kernel (port 0) as one datagram; returns how many were sent.
    /// Wraps sendto(2).
    public func sendToKernel(_ bytes: UnsafeRawBufferPointer) throws(Errno) -> Int {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        return try valueOrErrno("sendto") {
            withUnsafePointer(to: &kernel) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor.rawValue, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
        }
    }

    /// Receives one datagram into `buffer`; returns its length. EAGAIN (nothing queued on a
    /// non-blocking socket) and ENOBUFS (the receive queue overflowed: messages were lost) are
    /// thrown like any other errno. Wraps recv(2).
    public func receive(into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0) throws(Errno) -> Int {
        try valueOrErrno("recv") { recv(descriptor.rawValue, buffer.baseAddress, buffer.count, flags) }
    }

    public func close() { descriptor.close() }
}
