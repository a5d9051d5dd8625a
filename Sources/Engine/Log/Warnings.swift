/// Where an operation's warnings go: to whoever asked (a hook's stderr, which libvirt shows when a
/// start fails; the agent's reply to the hook; a command's stderr) and to the system log, which is
/// where an admin looks when a hook exited 0 and its stderr went nowhere (libvirt logs it only at
/// debug level then). A forward that silently does not work must leave a line there.
public struct Warnings {
    public let diagnostics: any Diagnostics
    public let log: EventLog

    public init(diagnostics: any Diagnostics, log: EventLog) {
        self.diagnostics = diagnostics
        self.log = log
    }

    public func emit(_ line: String) {
        diagnostics.emit(line)
        log.warning(line)
    }
}
