/// A JSON value small enough for the hook: objects keep their key order, so output is stable.
public enum JSONValue: Sendable, Equatable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    case int(Int)
    case bool(Bool)
    case null

    /// `.string(s)` or `.null`.
    public static func optional(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }

    /// The value as JSON text: compact on one line, or indented by two spaces. No trailing newline.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(to out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if pretty { Self.newline(&out, indent + 1) }
                item.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out += "]"
        case .object(let members):
            guard !members.isEmpty else { out += "{}"; return }
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                if pretty { Self.newline(&out, indent + 1) }
                Self.quote(key, into: &out)
                out += pretty ? ": " : ":"
                value.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out += "}"
        }
    }

    private static func newline(_ out: inout String, _ indent: Int) {
        out += "\n"
        out += String(repeating: "  ", count: indent)
    }

    /// RFC 8259 string: escapes `"`, `\` and every control character; U+2028/U+2029 too, so the
    /// output is also valid JavaScript. Everything else is written as UTF-8.
    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\u{2028}", "\u{2029}":
                out += "\\u" + String(scalar.value, radix: 16)
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case let (.bool(x), .bool(y)): x == y
        case let (.int(x), .int(y)): x == y
        case let (.string(x), .string(y)): x == y
        case let (.array(x), .array(y)): x == y
        case let (.object(x), .object(y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }
}

extension Plan {
    /// The plan as `virtport plan` prints it (docs/DESIGN.md "Command line"; README "Seeing what is applied").
    public var json: JSONValue {
        .object([
            ("domain", .object([("name", .string(domainName)), ("uuid", .optional(domainUUID.isEmpty ? nil : domainUUID))])),
            ("forwards", .array(mappings.map(\.json))),
            ("guards", .array(guards.map(\.json))),
        ])
    }
}

extension GuardPlan {
    /// One entry of the plan's `guards`: the port, its flags, each allowed address and its source.
    public var json: JSONValue {
        .object([
            ("mac", .string(mac.description)),
            ("tap", .optional(tap)),
            ("bridge", .optional(bridge)),
            ("network", .optional(network)),
            ("spoofing", .bool(spoofing)),
            ("dhcp_server", .string(dhcpServer ? "allow" : "block")),
            ("router_advert", .string(routerAdvert ? "allow" : "block")),
            ("isolated", .bool(isolated)),
            ("addresses", .array(addresses.map {
                .object([("address", .string($0.address.description)), ("source", .string($0.source.rawValue))])
            })),
            ("state", .string(isWaitingForAddress ? "dhcp-only" : "ready")),
            ("required_by", .optional(requiredBy)),
        ])
    }
}

extension Mapping {
    /// One entry of the plan's `forwards`: host side, guest side, where the guest address came from.
    public var json: JSONValue {
        .object([
            ("proto", .string(proto.rawValue)),
            ("host_address", .optional(hostAddress?.description)),
            ("dev", .optional(dev)),
            ("host_ports", .string(hostPorts.description)),
            ("host_port_start", .int(Int(hostPorts.start))),
            ("host_port_end", .int(Int(hostPorts.end))),
            ("guest_address", .optional(guestAddress?.description)),
            ("guest_port_start", .int(Int(guestPorts.start))),
            ("guest_port_end", .int(Int(guestPorts.end))),
            ("mac", .optional(mac?.description)),
            ("network", .optional(network)),
            ("guest_source", .string(guestSource.rawValue)),
            ("state", .string(isPending ? "pending" : "ready")),
        ])
    }
}
