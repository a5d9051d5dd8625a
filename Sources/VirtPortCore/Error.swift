public import POSIX

/// An error a lower layer reported (`Errno`, `NetfilterError`, `SQLiteError`, `LibvirtError`, a
/// wrapped `VirtPortError`, or only a text another program printed: `TextCause`), kept as the value
/// it was: callers ask it questions (`cause(as:)`), and two errors compare by what they are
/// (type and fields), never by their text.
public protocol ErrorCause: Error, Sendable, Equatable, CustomStringConvertible {}

extension ErrorCause {
    /// Whether `other` is the same error: the same type, equal.
    func isSame(as other: any ErrorCause) -> Bool { (other as? Self) == self }
}

extension Errno: ErrorCause {}

/// The one error shape of virtport: a code that decides the exit status, a one-line message
/// naming the thing that was wrong, and the underlying cause when there is one — kept as the
/// error value it was (`ErrorCause`), so callers can ask it questions instead of matching text.
public struct VirtPortError: ErrorCause {
    public enum Code: Sendable, Equatable {
        /// Malformed XML, bad metadata, bad config, bad usage, policy violation, conflict: exit 2.
        case invalidInput
        /// Kernel, database, libvirt or file-system trouble: exit 1.
        case operational
        /// The journal file is not a usable SQLite database (reconcile may move it aside): exit 1.
        case corruptJournal
        /// The journal was written by a newer virtport (its schema is ahead): exit 1.
        case newerJournal
        /// The journal's schema is behind and this connection is read-only (a read-write open
        /// migrates it): exit 1.
        case olderJournal
    }

    public var code: Code
    /// One line, naming the element/attribute/object and the reason.
    public var message: String
    /// The lower-level error this one wraps, if any.
    public var cause: (any ErrorCause)? {
        get { storedCause as? any ErrorCause }
        set { storedCause = newValue }
    }
    /// Kept as `any Error` (one boxed reference) rather than `any ErrorCause` (an inline existential
    /// whose copies need its metadata built at run time): every hook copies errors around, few ask
    /// the cause anything. Only `ErrorCause`s are ever stored (`init`, `cause`'s setter).
    private var storedCause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any ErrorCause)? = nil) {
        self.code = code
        self.message = message
        storedCause = cause
    }

    public static func invalid(_ message: String) -> VirtPortError { .init(.invalidInput, message) }
    public static func operational(_ message: String, cause: (any ErrorCause)? = nil) -> VirtPortError {
        .init(.operational, message, cause: cause)
    }

    /// For a `catch` whose error is `any Error` (a `do` mixing throwers): every error virtport
    /// throws is an `ErrorCause` and is kept as it was; anything else is kept by its text.
    public static func operational(_ message: String, cause: any Error) -> VirtPortError {
        .init(.operational, message, cause: (cause as? any ErrorCause) ?? TextCause("\(cause)"))
    }

    /// Process exit status for this error (docs/DESIGN.md: 1 operational, 2 invalid input).
    public var exitCode: Int32 { code == .invalidInput ? 2 : 1 }

    /// The cause as text (its own description), nil when there is none.
    public var causeText: String? { storedCause.map { "\($0)" } }

    /// The first cause of type `E` along the chain of wrapped errors.
    public func cause<E: Error>(as type: E.Type) -> E? {
        var next = storedCause
        while let c = next {
            if let e = c as? E { return e }
            next = (c as? VirtPortError)?.storedCause
        }
        return nil
    }

    public var description: String {
        if let causeText { return "\(message): \(causeText)" }
        return message
    }

    /// Same code, same message, and the same cause (same type, equal fields; none on both).
    public static func == (a: VirtPortError, b: VirtPortError) -> Bool {
        guard a.code == b.code && a.message == b.message else { return false }
        switch (a.cause, b.cause) {
        case (nil, nil): return true
        case let (x?, y?): return x.isSame(as: y)
        default: return false
        }
    }
}

/// A cause that is only text (a message another program or library produced).
public struct TextCause: ErrorCause {
    public var description: String
    public init(_ text: String) { description = text }
}
