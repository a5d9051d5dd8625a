public import Engine

/// A configuration whose journal, libvirt directories, agent socket and syslog socket all live in
/// `dir` (a test's temporary directory): what the Engine and front-end tests' sandboxes share.
public func scratchConfig(in dir: String) -> Config {
    var c = Config()
    c.databasePath = dir + "/virtport.db"
    c.libvirtRunDir = dir + "/run"
    c.libvirtConfigDir = dir + "/etc"
    c.libvirtStateDir = dir + "/state"
    c.agentSocket = dir + "/agent.sock"
    c.syslogSocket = dir + "/log.sock"
    return c
}
