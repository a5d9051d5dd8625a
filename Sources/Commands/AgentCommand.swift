#if canImport(Glibc)
import Glibc
#endif
import Agent
import Engine
import VirtPortCore

/// `virtport agent [--verbose]`: runs in the foreground (systemd: virtport-agent.service).
enum AgentCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let verbose = args.flag("--verbose")
        try args.finish("agent")
        signal(SIGPIPE, SIG_IGN)
        let server = try AgentServer(config: try Config.load(), verbose: verbose)
        server.serve()
    }
}
