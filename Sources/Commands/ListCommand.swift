import Journal
import Engine
import POSIX
import VirtPortCore

/// `virtport list [--json|--csv] [--domain D]`: the active mappings in the journal.
enum ListCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let format = try OutputFormat.from(&args)
        let domainFilter = try args.option("--domain")
        let guards = args.flag("--guards")
        try args.finish("list")
        let config = try Config.load()
        if guards { return try GuardList.run(format: format, domain: domainFilter, config: config) }
        var rows: [ActiveMapping] = []
        // Fail-closed holds (README "Development: adding a rule kind"): a held forward is not
        // applied, and says why.
        var holds: [String: Hold] = [:]
        if Listing.journalPresent(config.databasePath) {
            let db = try JournalDB(path: config.databasePath, readOnly: true)
            rows = try db.activeMappings()
            for h in try db.holds(kind: ForwardKind.name) { holds[h.domain.uuid + "#" + h.key] = h }
        }
        if let d = domainFilter { rows = rows.filter { $0.domain.name == d || $0.domain.uuid == d } }
        func held(_ r: ActiveMapping) -> Hold? {
            holds.isEmpty || r.state == .applied ? nil : holds[r.domain.uuid + "#" + r.mapping.hostKey]
        }
        let kinds = KindListings.all.map { $0.listColumns(config: config) }
        switch format {
        case .json:
            let items: [JSONValue] = rows.map { r in
                .object([("domain", .string(r.domain.name)), ("uuid", .string(r.domain.uuid))]
                    + Listing.mappingFields(r.mapping)
                    + [("state", .string(r.state.rawValue)), ("since", .string(formatISO8601UTC(r.since)))]
                    + (held(r).map { h in [("held", JSONValue.object([("by", .string(h.by)), ("cause", .string(h.cause)),
                                                                      ("since", .string(formatISO8601UTC(h.since)))]))] } ?? [])
                    + kinds.flatMap { $0.json(uuid: r.domain.uuid, r.mapping) })
            }
            Output.out(JSONValue.array(items).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["domain", "uuid"] + Listing.csvMappingHeader + ["state", "since"] + kinds.flatMap(\.csvHeader),
                             rows: rows.map { r in
                                 [r.domain.name, r.domain.uuid] + Listing.csvMappingRow(r.mapping)
                                     + [r.state.rawValue, formatISO8601UTC(r.since)]
                                     + kinds.flatMap { $0.csv(uuid: r.domain.uuid, r.mapping) }
                             })
        case .table:
            // A kind's column only when it has something to show (the table stays as it was without).
            let columns = kinds.compactMap { $0.table(rows.map { (uuid: $0.domain.uuid, mapping: $0.mapping) }) }
            Listing.printTable(header: ["DOMAIN", "PROTO", "HOST", "GUEST", "STATE", "SINCE"] + columns.map(\.header),
                               rows: rows.enumerated().map { k, r in
                                   [r.domain.name, r.mapping.proto.rawValue, Listing.hostText(r.mapping),
                                    Listing.guestText(r.mapping), held(r) == nil ? r.state.rawValue : "held", formatLocal(r.since)]
                                       + columns.map { $0.cells[k] }
                               })
            for r in rows { if let h = held(r) { Output.out("held: " + h.line) } }
            GuardList.summary(config: config, domain: domainFilter)
        }
        return 0
    }
}
