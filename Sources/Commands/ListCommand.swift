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
        if Listing.journalPresent(config.databasePath) {
            rows = try JournalDB(path: config.databasePath, readOnly: true).activeMappings()
        }
        if let d = domainFilter { rows = rows.filter { $0.domain.name == d || $0.domain.uuid == d } }
        let kinds = KindListings.all.map { $0.listColumns(config: config) }
        switch format {
        case .json:
            let items: [JSONValue] = rows.map { r in
                .object([("domain", .string(r.domain.name)), ("uuid", .string(r.domain.uuid))]
                    + Listing.mappingFields(r.mapping)
                    + [("state", .string(r.state.rawValue)), ("since", .string(formatISO8601UTC(r.since)))]
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
                                    Listing.guestText(r.mapping), r.state.rawValue, formatLocal(r.since)]
                                       + columns.map { $0.cells[k] }
                               })
            GuardList.summary(config: config, domain: domainFilter)
        }
        return 0
    }
}
