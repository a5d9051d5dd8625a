/// Where an operation's one-line messages go: a hook prints them on stderr (libvirt shows them to
/// whoever started the VM), the agent collects them to send back to the hook that asked. The
/// engine never writes to a stream itself.
public protocol Diagnostics: AnyObject {
    /// One message, one line, without the "virtport: " prefix.
    func emit(_ line: String)
}

/// A process's own stderr ("virtport: " + line).
public final class StandardErrorDiagnostics: Diagnostics {
    public init() {}
    public func emit(_ line: String) { Output.err(line) }
}

/// Lines kept in order, for whoever sends them on (the agent's reply to a hook).
public final class CollectedDiagnostics: Diagnostics {
    public private(set) var lines: [String] = []
    public init() {}
    public func emit(_ line: String) { lines.append(line) }
}
