#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Engine

@Suite struct ProcNetTests {
    @Test func decodesProcNetAddresses() {
        #expect(HostSockets.decode("0100007F", v6: false) == IPAddress("127.0.0.1"))
        #expect(HostSockets.decode("00000000", v6: false) == IPAddress("0.0.0.0"))
        #expect(HostSockets.decode("0000000000000000FFFF00000100007F", v6: true) == IPAddress("::ffff:127.0.0.1"))
        #expect(HostSockets.decode("00000000000000000000000001000000", v6: true) == IPAddress("::1"))
        #expect(HostSockets.decode("zz", v6: false) == nil)
    }

    /// A socket bound in this process, on an ephemeral port: (fd, port).
    func bound(_ family: Int32, _ type: Int32) throws -> (Int32, UInt16) {
        let fd = socket(family, type, 0)
        try #require(fd >= 0)
        var storage = sockaddr_storage()
        var length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        storage.ss_family = sa_family_t(family)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                bind(fd, a, length) == 0 && getsockname(fd, a, &length) == 0
            }
        }
        try #require(ok)
        if type == Int32(SOCK_STREAM.rawValue) { try #require(listen(fd, 1) == 0) }
        let port = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        return (fd, port)
    }

    /// sock_diag and /proc/net agree on real sockets: a TCP listener (IPv6) and an unconnected UDP
    /// socket (IPv4) bound here show up in both, with the same address, port and inode.
    @Test func sockDiagSeesWhatProcNetSees() throws {
        let (tcp, tcpPort) = try bound(AF_INET6, Int32(SOCK_STREAM.rawValue))
        defer { close(tcp) }
        let (udp, udpPort) = try bound(AF_INET, Int32(SOCK_DGRAM.rawValue))
        defer { close(udp) }
        let diag = try #require(HostSockets.fromKernel())
        let proc = HostSockets.read(procRoot: "/proc")
        for (proto, port) in [(IPProto.tcp, tcpPort), (.udp, udpPort)] {
            let fromDiag = diag.filter { $0.proto == proto && $0.port == port }
            #expect(fromDiag.count == 1, "\(proto) \(port): \(fromDiag)")
            // /proc/net has no IPV6_V6ONLY column: compare the rest.
            #expect(fromDiag.map { var l = $0; l.v6only = nil; return l } == proc.filter { $0.proto == proto && $0.port == port })
        }
        #expect(diag.first { $0.port == tcpPort }?.address == IPAddress("::"))
        #expect(diag.first { $0.port == udpPort }?.address == IPAddress("0.0.0.0"))
        #expect(diag.first { $0.port == tcpPort }?.v6only == false)  // Linux default: bindv6only = 0
    }
}
