import Engine
import Journal
import Netfilter
import VirtPortCore

/// `virtport list --guards`: the guarded bridge ports of the journal with the frames dropped on
/// each, per reason, from the named counters of `table bridge <table>` (one object dump).
enum GuardList {
    static func run(format: OutputFormat, domain: String?, config: Config) throws(VirtPortError) -> Int32 {
        let rows = try guards(config: config, domain: domain)
        let counters = readCounters(config: config)
        func drops(_ tap: String) -> [GuardDropReason: UInt64]? {
            counters.map { all in Dictionary(all.filter { $0.tap == tap }.map { ($0.reason, $0.packets) }, uniquingKeysWith: +) }
        }
        func total(_ tap: String) -> String { drops(tap).map { "\($0.values.reduce(0, +))" } ?? "?" }
        func byReason(_ tap: String) -> String {
            guard let d = drops(tap) else { return "?" }
            let nonzero = GuardDropReason.allCases.filter { (d[$0] ?? 0) > 0 }.map { "\($0.rawValue)=\(d[$0]!)" }
            return nonzero.isEmpty ? "-" : nonzero.joined(separator: " ")
        }
        switch format {
        case .json:
            Output.out(JSONValue.array(rows.map { r in
                .object([
                    ("domain", .string(r.domain.name)), ("uuid", .string(r.domain.uuid)), ("tap", .string(r.tap)),
                    ("mac", .string(r.mac.description)), ("bridge", .optional(r.bridge)), ("network", .optional(r.network)),
                    ("spoofing", .bool(r.spoofing)), ("dhcp_server", .string(r.dhcpServer ? "allow" : "block")),
                    ("router_advert", .string(r.routerAdvert ? "allow" : "block")), ("isolated", .bool(r.isolated)),
                    ("isolated_by_virtport", .bool(r.isolatedByUs)),
                    ("addresses", .array(r.addresses.map {
                        .object([("address", .string($0.address.description)), ("source", .string($0.source.rawValue))])
                    })),
                    ("state", .string(r.state.rawValue)),
                    ("dropped", drops(r.tap).map { d in
                        .object(GuardDropReason.allCases.map { ($0.rawValue, .int(Int(d[$0] ?? 0))) })
                    } ?? .null),
                ])
            }).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["domain", "uuid", "tap", "mac", "bridge", "flags", "addresses", "state"]
                                 + GuardDropReason.allCases.map { "dropped_\($0.rawValue)" },
                             rows: rows.map { r in
                                 [r.domain.name, r.domain.uuid, r.tap, r.mac.description, r.bridge ?? "", r.flags,
                                  r.addressText, r.state.rawValue]
                                     + GuardDropReason.allCases.map { reason in drops(r.tap).map { "\($0[reason] ?? 0)" } ?? "" }
                             })
        case .table:
            Listing.printTable(header: ["DOMAIN", "TAP", "MAC", "FLAGS", "ADDRESSES", "DROPPED", "BY REASON"],
                               rows: rows.map { r in
                                   [r.domain.name, r.tap, r.mac.description, r.flags,
                                    addresses(r, none: "any"),
                                    total(r.tap), byReason(r.tap)]
                               })
        }
        return 0
    }

    /// After `list`'s table: one line per guarded port, when there are any.
    static func summary(config: Config, domain: String?) {
        guard let rows = try? guards(config: config, domain: domain), !rows.isEmpty else { return }
        Output.out("")
        Output.out("guarded bridge ports (details and dropped frames: virtport list --guards):")
        for r in rows {
            Output.out("  \(r.domain.name) \(r.tap) \(r.mac) \(r.flags) "
                + addresses(r, none: ""))
        }
    }

    /// The allowed addresses as a list shows them; a guard without any is "(dhcp only)" when it
    /// checks sources, else `none`.
    static func addresses(_ r: GuardRow, none: String) -> String {
        r.addresses.isEmpty ? (r.spoofing ? "(dhcp only)" : none) : r.addresses.map(\.address.description).joined(separator: " ")
    }

    static func guards(config: Config, domain: String?) throws(VirtPortError) -> [GuardRow] {
        guard Listing.journalPresent(config.databasePath),
              let db = try Resources.perProcess(config).existingJournal(readOnly: true) else { return [] }
        let rows = try db.activeGuards()
        guard let domain else { return rows }
        return rows.filter { $0.domain.name == domain || $0.domain.uuid == domain }
    }

    /// nil when the kernel cannot be asked (not root). Through Engine's resources, like every
    /// other command's netlink session.
    static func readCounters(config: Config) -> [GuardCounter]? {
        try? Resources.perProcess(config).kernel().guardCounters()
    }
}
