#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import POSIX

/// A subscription to nf_tables trace events (NFNLGRP_NFTRACE, what `nft monitor trace` reads)
/// in the calling thread's network namespace. Only `virtport trace` opens one: no hook loads it.
public final class TraceListener {
    private let socket: GroupSocket
    /// The socket, non-blocking, to wait on for readability.
    public var fd: Int32 { socket.fd }

    /// Joins NFNLGRP_NFTRACE. Needs CAP_NET_ADMIN.
    public init() throws(NetfilterError) {
        socket = try GroupSocket(group: NFNLGRP_NFTRACE.rawValue, what: "nf_tables trace events")
    }

    /// Waits up to `timeoutMs` for events, then reads what is queued without blocking.
    /// - Returns: the events, and whether some were lost (ENOBUFS).
    public func read(timeoutMs: Int32) -> (events: [TraceEvent], lost: Bool) {
        guard (try? socket.descriptor.waitReadable(timeoutMs: timeoutMs)) == true else { return ([], false) }
        var out: [TraceEvent] = []
        let lost = socket.drain { bytes in
            for m in TraceEvent.messages(in: Array(bytes)) {
                if let e = TraceEvent.parse(m) { out.append(e) }
            }
        }
        return (out, lost)
    }
}
