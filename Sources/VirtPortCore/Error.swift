/// The one error shape of virtport: a code that decides the exit status, a one-line message
/// naming the thing that was wrong, and the underlying cause when there is one.
public struct VirtPortError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Malformed XML, bad metadata, bad config, bad usage, policy violation, conflict: exit 2.
        case invalidInput
        /// Kernel, database, libvirt or file-system trouble: exit 1.
        case operational
    }

    public var code: Code
    /// One line, naming the element/attribute/object and the reason.
    public var message: String
    /// Lower-level detail (errno text, SQLite message), if any.
    public var cause: String?

    public init(_ code: Code, _ message: String, cause: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public static func invalid(_ message: String) -> VirtPortError { .init(.invalidInput, message) }
    public static func operational(_ message: String, cause: String? = nil) -> VirtPortError {
        .init(.operational, message, cause: cause)
    }

    /// Process exit status for this error (docs/DESIGN.md: 1 operational, 2 invalid input).
    public var exitCode: Int32 { code == .invalidInput ? 2 : 1 }

    public var description: String {
        if let cause { return "\(message): \(cause)" }
        return message
    }
}
