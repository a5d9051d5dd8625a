import Engine
import Journal
import Netfilter
import POSIX
import VirtPortCore

/// `source=` in the listings: `list` (a SOURCE column; `source` and `source_dropped` in JSON and
/// CSV), `plan` (`source` per forward), `history --sources` (filter on/change/off events), and
/// the per-forward drop counters of `table inet <table>_src`.
struct SourceListing: KindListing {
    var historyOption: (flag: String, help: String)? {
        ("--sources", "the forwards' source= lists: on/change/off events (--at does not apply)")
    }

    func history(_ filter: HistoryFilter, format: OutputFormat, config: Config) throws(VirtPortError) -> Int32 {
        try Self.history(filter, format: format, config: config)
    }

    func listColumns(config: Config) -> any KindColumns { Self.load(config: config, kernel: true) }

    /// `plan`: `source` per forward (the prefixes, or null).
    func planFields(_ plan: Plan, _ m: Mapping) -> [(String, JSONValue)] {
        [Self.jsonFields(plan.sourceFilters.first { $0.filters(m) }, dropped: nil)[0]]
    }

    /// The journal's filters, by domain uuid and forward identity.
    struct Filters: KindColumns {
        var byKey: [String: SourceFilter] = [:]
        /// Dropped packets per counter name; nil when the kernel cannot be asked (not root).
        var counters: [String: UInt64]?

        func filter(uuid: String, _ m: Mapping) -> SourceFilter? {
            byKey[uuid + "|" + SourceFilter(m, prefixes: []).identity]
        }

        /// Packets dropped by the forward's filter (both families); nil without a filter or counters.
        func dropped(uuid: String, _ m: Mapping) -> Int? {
            guard let f = filter(uuid: uuid, m), let counters else { return nil }
            return Int(f.families.reduce(UInt64(0)) { $0 + (counters[f.counterName($1)] ?? 0) })
        }

        func json(uuid: String, _ m: Mapping) -> [(String, JSONValue)] {
            SourceListing.jsonFields(filter(uuid: uuid, m), dropped: dropped(uuid: uuid, m))
        }
        var csvHeader: [String] { SourceListing.csvHeader }
        func csv(uuid: String, _ m: Mapping) -> [String] {
            SourceListing.csvFields(filter(uuid: uuid, m), dropped: dropped(uuid: uuid, m))
        }
        /// SOURCE only when a listed forward has source=.
        func table(_ rows: [(uuid: String, mapping: Mapping)]) -> (header: String, cells: [String])? {
            guard rows.contains(where: { filter(uuid: $0.uuid, $0.mapping) != nil }) else { return nil }
            return ("SOURCE", rows.map { SourceListing.cell(filter(uuid: $0.uuid, $0.mapping), dropped: dropped(uuid: $0.uuid, $0.mapping)) })
        }
    }

    static func load(config: Config, kernel: Bool) -> Filters {
        var out = Filters()
        guard Listing.journalPresent(config.databasePath),
              let rows = try? JournalDB(path: config.databasePath, readOnly: true).sourceFilters() else { return out }
        for r in rows { out.byKey[r.domain.uuid + "|" + r.filter.identity] = r.filter }
        if kernel, !rows.isEmpty, let nf = try? NetfilterSession(table: config.table),
           let counters = try? nf.sourceFilterCounters() {
            out.counters = Dictionary(counters.map { ($0.name, $0.packets) }, uniquingKeysWith: +)
        }
        return out
    }

    /// JSON members added to a forward: `source` (the prefixes, or null: every client) and, when
    /// known, `source_dropped`.
    static func jsonFields(_ filter: SourceFilter?, dropped: Int?) -> [(String, JSONValue)] {
        [("source", filter.map { .array($0.prefixes.map { .string(SourceList.text([$0])) }) } ?? .null),
         ("source_dropped", dropped.map { .int($0) } ?? .null)]
    }

    static let csvHeader = ["source", "source_dropped"]
    static func csvFields(_ filter: SourceFilter?, dropped: Int?) -> [String] {
        [filter?.text ?? "", dropped.map { "\($0)" } ?? ""]
    }

    /// The table cell: "any", the list, or its first prefixes and how many more.
    static func cell(_ filter: SourceFilter?, dropped: Int?) -> String {
        guard let filter else { return "any" }
        let words = filter.prefixes.map { SourceList.text([$0]) }
        var s = words.count <= 3 ? words.joined(separator: " ") : words.prefix(2).joined(separator: " ") + " +\(words.count - 2) more"
        if let dropped { s += " (\(dropped) dropped)" }
        return s
    }

    /// `history --sources`: source filter on/change/off events, oldest first.
    static func history(_ filter: HistoryFilter, format: OutputFormat, config: Config) throws(VirtPortError) -> Int32 {
        var events: [SourceFilterHistoryEvent] = []
        if Listing.journalPresent(config.databasePath) {
            events = try JournalDB(path: config.databasePath, readOnly: true).sourceFilterHistory(domain: filter.domain, since: filter.since)
        }
        if let until = filter.until { events.removeAll { $0.at > until } }
        if let port = filter.port {
            events.removeAll { e in
                let parts = e.ports.split(separator: "-").compactMap { UInt16($0) }
                guard let first = parts.first else { return true }
                return !(first...(parts.last ?? first)).contains(port)
            }
        }
        func host(_ e: SourceFilterHistoryEvent) -> String {
            let a = e.hostAddress.isEmpty ? "*" : (e.hostAddress.contains(":") ? "[\(e.hostAddress)]" : e.hostAddress)
            return (e.dev.isEmpty ? "" : "\(e.dev):") + "\(a):\(e.ports)"
        }
        switch format {
        case .json:
            Output.out(JSONValue.array(events.map { e in
                .object([("at", .string(formatISO8601UTC(e.at))), ("action", .string(e.action)), ("reason", .string(e.reason)),
                         ("domain", .string(e.domain.name)), ("uuid", .string(e.domain.uuid)), ("proto", .string(e.proto)),
                         ("host_address", e.hostAddress.isEmpty ? .null : .string(e.hostAddress)),
                         ("dev", e.dev.isEmpty ? .null : .string(e.dev)), ("host_ports", .string(e.ports)),
                         ("source", .array(e.source.split(separator: " ").map { .string(String($0)) }))])
            }).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["at", "action", "reason", "domain", "uuid", "proto", "host_address", "dev", "host_ports", "source"],
                             rows: events.map { e in
                                 [formatISO8601UTC(e.at), e.action, e.reason, e.domain.name, e.domain.uuid, e.proto,
                                  e.hostAddress, e.dev, e.ports, e.source]
                             })
        case .table:
            Listing.printTable(header: ["TIME", "ACTION", "DOMAIN", "PROTO", "HOST", "SOURCE", "REASON"],
                               rows: events.map { e in
                                   let words = e.source.split(separator: " ")
                                   let source = words.count <= 3 ? e.source : words.prefix(2).joined(separator: " ") + " +\(words.count - 2) more"
                                   return [formatLocal(e.at), e.action, e.domain.name, e.proto, host(e),
                                           e.action == "off" ? "-" : source, e.reason]
                               })
        }
        return 0
    }
}
