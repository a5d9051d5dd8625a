#if canImport(Glibc)
import Glibc
#endif
import POSIX
public import VirtPortCore

/// The one error of the Netfilter module: the errno the kernel (or a system call) answered,
/// what virtport was doing, and details when there are any.
///
/// A batch is checked message by message before the kernel rolls it back, so one failed batch can
/// report several failures: the first is the error itself, the rest are in `others`.
public struct NetfilterError: ErrorCause {
    /// `errno` value: from a netlink NLMSG_ERROR, or from a failed system call.
    public var errno: Int32
    /// What was being done, naming the object: "add element tcp/8080 -> 192.168.122.10:22 to map fwd4".
    public var operation: String
    /// The kernel's extended-ack message (NLMSGERR_ATTR_MSG), or what virtport found wrong with
    /// an element before sending it.
    public var detail: String?
    /// Further failures of the same batch, in message order.
    public var others: [NetfilterError]
    /// True when virtport's table itself is absent (a read found nothing to read).
    public var isMissingTable: Bool

    public init(errno: Int32, operation: String, detail: String? = nil, others: [NetfilterError] = [],
                isMissingTable: Bool = false) {
        self.errno = errno
        self.operation = operation
        self.detail = detail
        self.others = others
        self.isMissingTable = isMissingTable
    }

    /// `table inet NAME` does not exist (ENOENT).
    public static func missingTable(_ table: String) -> NetfilterError {
        NetfilterError(errno: ENOENT, operation: "read table inet \(table)", isMissingTable: true)
    }

    /// The object the operation needed is absent (ENOENT): a missing table, chain, map or element.
    public var isMissingObject: Bool { errno == ENOENT }
    /// The object already exists (EEXIST): e.g. the same key with different data in a map.
    public var isExists: Bool { errno == EEXIST }

    /// Every failure of the batch: this one, then `others`.
    public var all: [NetfilterError] {
        var head = self
        head.others = []
        return [head] + others
    }

    public var description: String {
        var text = "\(operation): \(Self.errorText(errno))"
        if let detail, !detail.isEmpty { text += " (\(detail))" }
        if let next = others.first {
            text += "; also \(next.operation): \(Self.errorText(next.errno))"
            if others.count > 1 { text += " and \(others.count - 1) more" }
        }
        // nf_tables answers a process without CAP_NET_ADMIN with EPERM, or not at all (a timeout):
        // either way the fix is the same.
        if geteuid() != 0 && !text.hasSuffix("(run as root)") { text += " (run as root)" }
        return text
    }

    static func errorText(_ code: Int32) -> String { Errno.text(code) }
}
