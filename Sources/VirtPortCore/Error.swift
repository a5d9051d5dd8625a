/// The one error shape of virtport: a code that decides the exit status, a one-line message
/// naming the thing that was wrong, and the underlying cause when there is one — kept as the
/// error value it was (`Errno`, `NetfilterError`, `SQLiteError`), so callers can ask it questions
/// instead of matching text.
public struct VirtPortError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Malformed XML, bad metadata, bad config, bad usage, policy violation, conflict: exit 2.
        case invalidInput
        /// Kernel, database, libvirt or file-system trouble: exit 1.
        case operational
        /// The journal file is not a usable SQLite database (reconcile may move it aside): exit 1.
        case corruptJournal
    }

    public var code: Code
    /// One line, naming the element/attribute/object and the reason.
    public var message: String
    /// The lower-level error this one wraps, if any.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public static func invalid(_ message: String) -> VirtPortError { .init(.invalidInput, message) }
    public static func operational(_ message: String, cause: (any Error & Sendable)? = nil) -> VirtPortError {
        .init(.operational, message, cause: cause)
    }

    /// Process exit status for this error (docs/DESIGN.md: 1 operational, 2 invalid input).
    public var exitCode: Int32 { code == .invalidInput ? 2 : 1 }

    /// The cause as text (its own description), nil when there is none.
    public var causeText: String? { cause.map { "\($0)" } }

    /// The first cause of type `E` along the chain of wrapped errors.
    public func cause<E: Error>(as type: E.Type) -> E? {
        var next = cause
        while let c = next {
            if let e = c as? E { return e }
            next = (c as? VirtPortError)?.cause
        }
        return nil
    }

    public var description: String {
        if let causeText { return "\(message): \(causeText)" }
        return message
    }

    public static func == (a: VirtPortError, b: VirtPortError) -> Bool {
        a.code == b.code && a.message == b.message && a.causeText == b.causeText
    }
}

/// A cause that is only text (a message another program or library produced).
public struct TextCause: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ text: String) { description = text }
}
