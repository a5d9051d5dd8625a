#if canImport(Glibc)
import Glibc
#endif
import POSIX
import VirtPortCore

/// The system log: one datagram per line to the syslog socket (`[log] syslog_socket`, default
/// `/dev/log`, which journald or rsyslog owns), facility daemon, identifier `virtport`, in the
/// format glibc's syslog(3) writes (`<PRI>Mmm dd hh:mm:ss virtport[PID]: text`), so
/// `journalctl -t virtport` and /var/log/syslog show it. Best effort and stateless: a socket per
/// call (a change's lines share one: socket, one sendto per line, close), nothing when no one
/// listens there, no lock, safe from any thread. Not glibc's syslog(3) itself: its socket path is fixed, and tests (and hosts
/// with the log elsewhere) need another one.
public enum SystemLog {
    /// syslog(3) severities virtport uses.
    public enum Severity: Int32, Sendable {
        case error = 3, warning = 4, notice = 5, info = 6
    }

    /// LOG_DAEMON.
    static let facility: Int32 = 3 << 3

    /// Sends `text` (escaped to one line) to the socket at `path`; "" sends nothing.
    public static func send(_ severity: Severity, _ text: String, socket path: String) {
        send([(severity, text)], socket: path)
    }

    /// Sends each line as its own datagram, in order, through one socket (a change's lines: one
    /// socket, not one per line).
    public static func send(_ lines: [(Severity, String)], socket path: String) {
        if path.isEmpty || lines.isEmpty { return }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { Glibc.close(fd) }
        let prefix = "\(timestamp()) virtport[\(getpid())]: "
        for (severity, text) in lines {
            var datagram = Array("<\(facility | severity.rawValue)>\(prefix)".utf8)
            datagram += Quoted.cell(text).utf8
            _ = datagram.withUnsafeBytes { buf in
                withUnsafePointer(to: &address) { a in
                    a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        retryingOnInterrupt {
                            sendto(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL), sa, socklen_t(MemoryLayout<sockaddr_un>.size))
                        }
                    }
                }
            }
        }
    }

    /// `Dec  2 18:58:12`, local time, as RFC 3164 (and glibc) write it.
    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buf = [CChar](repeating: 0, count: 32)
        let n = strftime(&buf, buf.count, "%b %e %H:%M:%S", &parts)
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
