#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import POSIX

/// A NETLINK_NETFILTER socket (libmnl), with extended acks on and request echo off; or, for the
/// few rtnetlink requests (a bridge port's flags), a NETLINK_ROUTE one.
final class MnlSocket: NetlinkTransport {
    private let socket: OpaquePointer
    private let fd: Int32
    /// Who answers, as errors name it ("nf_tables", "rtnetlink").
    private let peer: String
    /// Not zero-filled (64 KiB of memset is measurable in a hook): only the bytes `recv` wrote are read.
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
    private var sendBufferSize = 0
    private var receiveBufferSize = 0
    /// A child already holds the socket until this process exits (`closeInBackground`).
    private var backgrounded = false
    /// The port id the kernel gave the socket (NETLINK_NETFILTER only; 0 otherwise): `OwnCommits`.
    private(set) var port: UInt32 = 0

    /// Opens and binds the socket, inside the network namespace at `netnsPath` if given.
    ///
    /// Wraps `mnl_socket_open2`, `mnl_socket_bind`, `setsockopt(NETLINK_EXT_ACK, NETLINK_CAP_ACK)`;
    /// with `netnsPath`, `setns(2)` there and back (needs CAP_SYS_ADMIN).
    init(netnsPath: String?, route: Bool = false) throws(NetfilterError) {
        let family = route ? NETLINK_ROUTE : NETLINK_NETFILTER
        peer = route ? "rtnetlink" : "nf_tables"
        let opened: OpaquePointer?
        if let netnsPath {
            opened = try NetworkNamespace.run(in: netnsPath) { () throws(NetfilterError) -> OpaquePointer? in
                mnl_socket_open2(family, Int32(SOCK_CLOEXEC.rawValue))
            }
        } else {
            opened = mnl_socket_open2(family, Int32(SOCK_CLOEXEC.rawValue))
        }
        guard let opened else {
            throw NetfilterError(errno: Glibc.errno,
                                 operation: "open netlink socket (\(route ? "NETLINK_ROUTE" : "NETLINK_NETFILTER"))")
        }
        socket = opened
        fd = mnl_socket_get_fd(opened)
        if mnl_socket_bind(opened, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
            let code = Glibc.errno
            mnl_socket_close(opened)
            throw NetfilterError(errno: code, operation: "bind netlink socket")
        }
        if !route {
            port = mnl_socket_get_portid(opened)
            OwnCommits.register(port: port)
        }
        var on: Int32 = 1
        // Best effort: without them errors still arrive, just less precise / with the request echoed.
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &on, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit {
        if port != 0 { OwnCommits.unregister(port: port) }
        mnl_socket_close(socket)
        receiveBuffer.deallocate()
    }

    /// After a transaction that deleted anything, the kernel's release of an nf_tables netlink
    /// socket waits for an RCU grace period (nf_tables flushes its destroy work: 9–13 ms measured
    /// here), and a hook's caller would wait for it. This forks a child that holds the last
    /// reference and closes the socket only once this process has exited (EOF on a pipe), so the
    /// wait happens off the hook's critical path. The child first closes every other descriptor,
    /// stderr included: libvirt reads the hook's stderr until EOF and must not wait for it.
    /// Only async-signal-safe calls run in the child. Wraps fork(2), pipe(2).
    func closeInBackground() {
        if backgrounded { return }
        var gate: [Int32] = [0, 0]
        guard pipe(&gate) == 0 else { return }
        let pid = fork()
        if pid == 0 {
            let keep = fd, wait = gate[0]
            for other in 0..<Int32(1024) where other != keep && other != wait { close(other) }
            var byte: UInt8 = 0
            _ = retryingOnInterrupt { read(wait, &byte, 1) }
            close(keep)
            _exit(0)
        }
        // The write end stays open until this process exits; that EOF releases the child.
        close(gate[0])
        if pid > 0 { backgrounded = true }
    }

    func send(_ datagram: [UInt8]) throws(NetfilterError) {
        do {
            _ = try valueOrErrno("sendto") { datagram.withUnsafeBytes { mnl_socket_sendto(socket, $0.baseAddress, $0.count) } }
        } catch {
            throw NetfilterError(errno: error.code, operation: "send \(datagram.count) bytes to \(peer)")
        }
    }

    func receive(timeout: Int32) throws(NetfilterError) -> [UInt8]? {
        if timeout != 0 {
            do {
                if try !FileDescriptor(rawValue: fd).waitReadable(timeoutMs: timeout) { return nil }
            } catch {
                throw NetfilterError(errno: error.code, operation: "wait for \(peer)")
            }
        }
        let count: Int
        do {
            count = try valueOrErrno("recv") {
                recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
            }
        } catch where error.code == EAGAIN || error.code == EWOULDBLOCK {
            return nil
        } catch {
            // ENOBUFS: the kernel dropped replies because the receive buffer overflowed.
            throw NetfilterError(errno: error.code, operation: "receive from \(peer)")
        }
        guard count <= receiveBuffer.count else {
            throw NetfilterError(errno: EMSGSIZE, operation: "receive from \(peer) (\(count)-byte reply)")
        }
        return Array(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<count]))
    }

    /// Raises SO_SNDBUF/SO_RCVBUF past the sysctl limits (SO_*BUFFORCE, CAP_NET_ADMIN, which nf_tables
    /// needs anyway): the kernel refuses a datagram bigger than the send buffer, and a batch must
    /// stay one datagram to stay one transaction.
    func reserve(sendBytes: Int, replies: Int) throws(NetfilterError) {
        let wantSend = sendBytes + 64 * 1024
        if wantSend > sendBufferSize, sendBytes > 128 * 1024 {
            try setBuffer(SO_SNDBUFFORCE, SO_SNDBUF, wantSend, what: "send")
            sendBufferSize = wantSend
        }
        let wantReceive = replies * 1024 + 256 * 1024
        if wantReceive > receiveBufferSize, replies > 64 {
            try setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, wantReceive, what: "receive")
            receiveBufferSize = wantReceive
        }
    }

    private func setBuffer(_ force: Int32, _ plain: Int32, _ size: Int, what: String) throws(NetfilterError) {
        var value = Int32(clamping: size)
        let length = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, force, &value, length) == 0 { return }
        // Without CAP_NET_ADMIN: as much as net.core.[wr]mem_max allows.
        if setsockopt(fd, SOL_SOCKET, plain, &value, length) == 0 { return }
        throw NetfilterError(errno: Glibc.errno, operation: "set the netlink \(what) buffer to \(size) bytes")
    }
}

/// Entering another network namespace for the duration of one call (tests, `ip netns`).
enum NetworkNamespace {
    /// Runs `body` with the calling thread in the network namespace at `path`, then moves it back.
    ///
    /// Wraps `open(2)` of `/proc/thread-self/ns/net` and `path`, and `setns(2)`; needs CAP_SYS_ADMIN.
    /// A thread that cannot return to its own namespace is a process in an unknown state: that traps.
    static func run<T>(in path: String, _ body: () throws(NetfilterError) -> T) throws(NetfilterError) -> T {
        let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard home >= 0 else { throw NetfilterError(errno: errno, operation: "open /proc/thread-self/ns/net") }
        defer { close(home) }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw NetfilterError(errno: errno, operation: "open network namespace \(path)") }
        defer { close(target) }
        guard vp_setns_net(target) == 0 else {
            throw NetfilterError(errno: errno, operation: "enter network namespace \(path)")
        }
        defer {
            if vp_setns_net(home) != 0 { fatalError("cannot return from network namespace \(path): errno \(errno)") }
        }
        return try body()
    }
}
