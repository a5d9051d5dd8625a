#if canImport(Glibc)
import Glibc
#endif
import POSIX
import VirtPortCore

/// The system log: one datagram per line to the syslog socket (`[log] syslog_socket`, default
/// `/dev/log`, which journald or rsyslog owns), facility daemon, identifier `virtport`, in the
/// format glibc's syslog(3) writes (`<PRI>Mmm dd hh:mm:ss virtport[PID]: text`), so
/// `journalctl -t virtport` and /var/log/syslog show it. Best effort and stateless: a socket per
/// line (`UnixSocket.sendDatagram`: three system calls, a few microseconds), nothing when no one
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
        if path.isEmpty { return }
        let line = Quoted.cell(text)
        var datagram = Array("<\(facility | severity.rawValue)>\(timestamp()) virtport[\(getpid())]: ".utf8)
        datagram += line.utf8
        UnixSocket.sendDatagram(datagram, to: path)
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
