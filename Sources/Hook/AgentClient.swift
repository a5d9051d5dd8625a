#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX

/// The hook side of the agent's socket: hands the work to a running agent of the same
/// configuration, or says it did not (the hook then does the work itself: every step is
/// idempotent, so an agent that died mid-request costs nothing but time).
///
/// The hook waits a short bounded time (`AgentFrame.claimTimeoutMs`) for the agent to claim the
/// request. When that passes it shuts its socket for reading *before* looking one last time for
/// the claim: a claim that arrived first is honoured (the hook waits for the reply), one that
/// comes later fails in the agent (EPIPE) and the request is never run there.
enum AgentClient {
    /// The agent's exit status for this hook after printing its stderr lines, or nil when no agent
    /// took the work (none running, its backlog full, another configuration, busy, it died
    /// mid-request): the caller does it in-process. Test fault injection (`VIRTPORT_FAULT`) and
    /// `VIRTPORT_NO_AGENT` keep the work in the hook process.
    static func handOver(config: Config, kind: HookProcess.Kind, args: [String], input: [UInt8]) -> Int32? {
        if Environment.get("VIRTPORT_FAULT") != nil || Environment.get("VIRTPORT_NO_AGENT") != nil { return nil }
        // Non-blocking connect: a listener whose backlog is full answers EAGAIN at once.
        guard let fd = UnixSocket.connect(to: config.agentSocket, nonBlocking: true) else { return nil }
        defer { fd.close() }
        let request = AgentFrame.Request(configPath: config.sourcePath, kind: kind.rawValue, args: args, input: input)
        guard FrameIO.send(fd, AgentFrame.encode(request)), claimed(fd),
              let frame = FrameIO.receive(fd, timeoutMs: AgentFrame.replyTimeoutMs),
              let reply = AgentFrame.decodeReply(frame), reply.served
        else { return nil }
        for line in reply.lines { Output.err(line) }
        return reply.code
    }

    /// Waits for the claim byte; false when the agent declined (a reply frame instead), hung up,
    /// or did not claim in time.
    private static func claimed(_ fd: FileDescriptor) -> Bool {
        if (try? fd.waitReadable(timeoutMs: AgentFrame.claimTimeoutMs)) != true {
            // Giving up: no claim may land after this; one that landed before is honoured.
            shutdown(fd.rawValue, Int32(SHUT_RD))
        }
        var byte: UInt8 = 0
        let n = retryingOnInterrupt { recv(fd.rawValue, &byte, 1, Int32(MSG_DONTWAIT)) }
        return n == 1 && [byte] == AgentFrame.claim
    }
}
