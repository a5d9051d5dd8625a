import POSIX
public import VirtPortCore

/// `/etc/virtport/virtport.conf` (or `$VIRTPORT_CONFIG`): a small TOML subset.
/// Every key is optional; see README "Configuration" for the documented keys and defaults.
public struct Config: Sendable {
    public static let defaultPath = "/etc/virtport/virtport.conf"

    /// SQLite journal.
    public var databasePath = "/var/lib/virtport/virtport.db"
    /// nftables table (family inet) virtport owns.
    public var table = "virtport"
    /// libvirt's runtime state (live network XML, domain status files).
    public var libvirtRunDir = "/run/libvirt"
    /// libvirt's persistent config (network definitions).
    public var libvirtConfigDir = "/etc/libvirt"
    /// libvirt's state dir (dnsmasq lease/status files under dnsmasq/).
    public var libvirtStateDir = "/var/lib/libvirt"
    /// libvirt connection reconcile asks which domains are active (read-only); "" never connects
    /// and relies on libvirt's status files only.
    public var libvirtURI = "qemu:///system"
    /// libvirt's hook directory (`virtport install`).
    public var hooksDir = "/etc/libvirt/hooks"
    /// Where `virtport agent` listens; hooks that find it there hand their work to it (README "Agent").
    public var agentSocket = "/run/virtport/agent.sock"
    /// Where every decision is logged (`SystemLog`); "" logs nothing.
    public var syslogSocket = "/dev/log"
    /// The agent's Prometheus textfile (node_exporter's textfile collector); "" writes none.
    public var metricsFile = ""
    /// The file this configuration was read from (`defaultPath` when it was absent). The agent
    /// serves only hooks that read the same file.
    public var sourcePath = Config.defaultPath
    public var policy = Policy()
    /// History rows older than this many days are pruned by reconcile; 0 keeps everything.
    public var historyRetentionDays = 0
    /// Deprecated spellings that were read (`FILE:LINE: … write …`); `load` prints them on stderr.
    public var warnings: [String] = []

    public init() {}

    /// Loads `$VIRTPORT_CONFIG` or the default path; a missing default file means all defaults.
    /// - Parameter warn: print the deprecated-spelling warnings on stderr. Hooks pass false: libvirt
    ///   shows a hook's whole stderr when it refuses a start, and that must stay one line.
    public static func load(warn: Bool = true) throws(VirtPortError) -> Config {
        if let p = Environment.get("VIRTPORT_CONFIG"), !p.isEmpty {
            guard let bytes = try IO.readFile(p) else { throw .invalid("config file \(p) (VIRTPORT_CONFIG) does not exist") }
            var c = try parse(String(decoding: bytes, as: UTF8.self), path: p)
            c.sourcePath = p
            if warn { for w in c.warnings { Output.err(w) } }
            return c
        }
        guard let bytes = try IO.readFile(defaultPath) else { return Config() }
        let c = try parse(String(decoding: bytes, as: UTF8.self), path: defaultPath)
        if warn { for w in c.warnings { Output.err(w) } }
        return c
    }

    public static func parse(_ text: String, path: String = "virtport.conf") throws(VirtPortError) -> Config {
        var c = Config()
        var section = ""
        var lineNo = 0
        // Bytes, not Characters, with plain index loops: grapheme breaking and the generic
        // split/Substring machinery cost more than the rest of the hook's parsing (callgrind).
        let bytes = Array(text.utf8)
        var next = 0
        while next <= bytes.count {
            var end = next
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            var line = trimmedLine(bytes, from: next, to: end)
            next = end + 1
            lineNo += 1
            if line.isEmpty { continue }
            let at = "\(path):\(lineNo)"
            // An array may span lines (TOML): its lines, comments stripped, are joined until its
            // brackets close.
            if !line.hasPrefix("["), let eq = line.firstIndex(of: "="),
               line[line.index(after: eq)...].trimmed.hasPrefix("["), !bracketsClose(line) {
                while !bracketsClose(line) {
                    guard next <= bytes.count else { throw .invalid("\(at): unterminated array (no closing ])") }
                    end = next
                    while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
                    line += " " + trimmedLine(bytes, from: next, to: end)
                    next = end + 1
                    lineNo += 1
                }
            }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw .invalid("\(at): malformed section header \(line)") }
                section = String(line.dropFirst().dropLast()).trimmed
                guard ConfigKeys.sections.map(\.name).contains(section) else {
                    throw .invalid("\(at): unknown section [\(section)]")
                }
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { throw .invalid("\(at): expected key = value") }
            let key = String(line[..<eq]).trimmed
            let value = try Value(parsing: String(line[line.index(after: eq)...]).trimmed, at: at)
            let name = section.isEmpty ? key : "\(section).\(key)"
            func bad(_ why: String) -> VirtPortError { .invalid("\(at): \(ConfigKeys.display(name)): \(why)") }
            if let d = ConfigKeys.deprecated.first(where: { $0.old == name }) {
                c.warnings.append("\(at): \(ConfigKeys.display(name)) is a deprecated spelling: write \(d.new)")
            }
            switch name {
            case "database", "paths.database": c.databasePath = try value.path(bad)
            case "table": c.table = try value.string(bad)
                guard !c.table.isEmpty, c.table.count < 64,
                      c.table.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") })
                else { throw bad("not a valid table name") }
            case "paths.libvirt_run_dir": c.libvirtRunDir = try value.path(bad)
            case "paths.libvirt_config_dir": c.libvirtConfigDir = try value.path(bad)
            case "paths.libvirt_state_dir": c.libvirtStateDir = try value.path(bad)
            case "paths.hooks_dir": c.hooksDir = try value.path(bad)
            case "agent_socket", "paths.agent_socket": c.agentSocket = try value.path(bad)
            case "libvirt_uri", "paths.libvirt_uri": c.libvirtURI = try value.string(bad)
            case "policy.host_ports":
                c.policy.hostPorts = try value.strings(bad).map { (s: String) throws(VirtPortError) -> PortRange in
                    guard let r = parsePortRange(s) else { throw bad("\"\(s)\" is not a port or port range (1-65535)") }
                    return r
                }
            case "policy.listen_addresses":
                let list = try value.strings(bad)
                var addrs: [IPAddress] = []
                var any = false
                for s in list {
                    if s == "any" || s == "*" { any = true; continue }
                    guard let a = IPAddress(s) else { throw bad("\"\(s)\" is not an IP address") }
                    addrs.append(a)
                }
                c.policy.listenAddresses = any ? nil : addrs
                c.policy.allowAnyAddress = any
            case "policy.guest_networks":
                c.policy.guestNetworks = try value.strings(bad).map { (s: String) throws(VirtPortError) -> IPPrefix in
                    guard let p = IPPrefix(parsing: s) else { throw bad("\"\(s)\" is not an address prefix (192.168.1.0/24, 2001:db8::/64)") }
                    return p
                }
            case "policy.max_forwards_per_domain": c.policy.maxForwardsPerDomain = try value.int(bad, min: 0)
            case "policy.max_ports_per_domain": c.policy.maxPortsPerDomain = try value.int(bad, min: 0)
            case "policy.on_internal_error":
                let s = try value.string(bad)
                guard let v = Policy.OnInternalError(rawValue: s) else { throw bad("must be \"warn\" or \"refuse\"") }
                c.policy.onInternalError = v
            case "guard.bridges":
                c.policy.guardBridges = try value.strings(bad)
                if let b = c.policy.guardBridges.first(where: { !Interface.isValidName($0) }) {
                    throw bad("\"\(b)\" is not a bridge name (1-15 of A-Z a-z 0-9 - _ .)")
                }
            case "guard.networks":
                c.policy.guardNetworks = try value.strings(bad)
                if c.policy.guardNetworks.contains("") { throw bad("\"\" is not a network name") }
            case "history.retention_days": c.historyRetentionDays = try value.int(bad, min: 0)
            case "log.syslog_socket":
                c.syslogSocket = try value.string(bad)
                guard c.syslogSocket.isEmpty || c.syslogSocket.hasPrefix("/") else { throw bad("must be an absolute path or \"\"") }
            case "agent.metrics_file":
                c.metricsFile = try value.string(bad)
                guard c.metricsFile.isEmpty || (c.metricsFile.hasPrefix("/") && c.metricsFile.hasSuffix(".prom")) else {
                    throw bad("must be an absolute path ending in .prom (node_exporter's textfile collector reads only those) or \"\"")
                }
            default:
                if let k = ConfigKeys.kindKeys.first(where: { $0.key.dotted == name }) {
                    try k.parse(value, bad, &c)
                } else {
                    let known = ConfigKeys.keys.filter { $0.section == section }.map(\.name).joined(separator: ", ")
                    throw .invalid("\(at): unknown key \(ConfigKeys.display(name))"
                        + (known.isEmpty ? "" : " (\(section.isEmpty ? "top level" : "[\(section)]") keys: \(known))"))
                }
            }
        }
        return c
    }

    /// Whether every `[` of `line` outside double quotes is closed.
    private static func bracketsClose(_ line: String) -> Bool {
        var depth = 0
        var inString = false
        for b in line.utf8 {
            if b == UInt8(ascii: "\"") { inString.toggle() }
            if inString { continue }
            if b == UInt8(ascii: "[") { depth += 1 }
            if b == UInt8(ascii: "]") { depth -= 1 }
        }
        return depth <= 0
    }

    /// Line `bytes[from..<to]` without its comment (a `#` outside double quotes) and blanks.
    private static func trimmedLine(_ bytes: [UInt8], from: Int, to: Int) -> String {
        var end = from
        var inString = false
        while end < to {
            let b = bytes[end]
            if b == UInt8(ascii: "\"") { inString.toggle() }
            if b == UInt8(ascii: "#") && !inString { break }
            end += 1
        }
        var start = from
        while start < end && isBlank(bytes[start]) { start += 1 }
        while end > start && isBlank(bytes[end - 1]) { end -= 1 }
        return start == end ? "" : String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// TOML's whitespace and line ends: space, tab, CR, LF.
    static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }

    /// "8080" or "1024-65535".
    static func parsePortRange(_ s: String) -> PortRange? {
        let parts = s.split(separator: "-", omittingEmptySubsequences: false).map { String($0).trimmed }
        func port(_ p: String) -> UInt16? {
            guard !p.isEmpty, p.allSatisfy(\.isASCII), p.allSatisfy(\.isNumber), let v = UInt16(p), v >= 1 else { return nil }
            return v
        }
        if parts.count == 1, let p = port(parts[0]) { return PortRange(p, p) }
        if parts.count == 2, let a = port(parts[0]), let b = port(parts[1]), a <= b { return PortRange(a, b) }
        return nil
    }

    /// A value of virtport.conf, as a rule kind's key (`KindConfigKey`) gets it.
    public enum Value: Sendable {
        case string(String), int(Int), bool(Bool), array([Value])

        init(parsing s: String, at: String) throws(VirtPortError) {
            if s.hasPrefix("\"") {
                guard s.count >= 2, s.hasSuffix("\"") else { throw .invalid("\(at): unterminated string") }
                let inner = String(s.dropFirst().dropLast())
                guard !inner.contains("\"") && !inner.contains("\\") else {
                    throw .invalid("\(at): escapes are not supported in strings")
                }
                self = .string(inner)
            } else if s.hasPrefix("[") {
                guard s.hasSuffix("]") else { throw .invalid("\(at): unterminated array (no closing ])") }
                let inner = Array(s.utf8.dropFirst().dropLast())
                var items: [Value] = []
                var start = 0
                var inString = false
                var i = 0
                while i <= inner.count {
                    if i < inner.count && inner[i] == UInt8(ascii: "\"") { inString.toggle() }
                    if i == inner.count || (inner[i] == UInt8(ascii: ",") && !inString) {
                        let p = String(decoding: inner[start..<i], as: UTF8.self).trimmed
                        if p.isEmpty {
                            // Only a trailing comma (or an empty array) may leave an item empty.
                            if i < inner.count { throw .invalid("\(at): empty item in array") }
                        } else {
                            items.append(try Value(parsing: p, at: at))
                        }
                        start = i + 1
                    }
                    i += 1
                }
                self = .array(items)
            } else if s == "true" {
                self = .bool(true)
            } else if s == "false" {
                self = .bool(false)
            } else if let i = Int(s) {
                self = .int(i)
            } else {
                throw .invalid("\(at): cannot read value \(s) (strings need double quotes)")
            }
        }

        func string(_ bad: (String) -> VirtPortError) throws(VirtPortError) -> String {
            guard case .string(let s) = self else { throw bad("expected a string") }
            return s
        }
        func path(_ bad: (String) -> VirtPortError) throws(VirtPortError) -> String {
            let s = try string(bad)
            guard s.hasPrefix("/") else { throw bad("must be an absolute path") }
            return s
        }
        func int(_ bad: (String) -> VirtPortError, min: Int) throws(VirtPortError) -> Int {
            guard case .int(let i) = self, i >= min else { throw bad("expected an integer >= \(min)") }
            return i
        }
        func strings(_ bad: (String) -> VirtPortError) throws(VirtPortError) -> [String] {
            guard case .array(let items) = self else { throw bad("expected an array of strings") }
            return try items.map { (v: Value) throws(VirtPortError) -> String in try v.string(bad) }
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing blanks (space, tab, CR, LF: TOML's whitespace and line ends).
    public var trimmed: String {
        let bytes = Substring(self).utf8
        var start = bytes.startIndex, end = bytes.endIndex
        while start < end, Config.isBlank(bytes[start]) { start = bytes.index(after: start) }
        while end > start, Config.isBlank(bytes[bytes.index(before: end)]) { end = bytes.index(before: end) }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }
}
