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
        let sources = SourceListing.load(config: config, kernel: true)
        switch format {
        case .json:
            let items: [JSONValue] = rows.map { r in
                .object([("domain", .string(r.domain.name)), ("uuid", .string(r.domain.uuid))]
                    + Listing.mappingFields(r.mapping)
                    + [("state", .string(r.state.rawValue)), ("since", .string(formatISO8601UTC(r.since)))]
                    + SourceListing.jsonFields(sources.filter(uuid: r.domain.uuid, r.mapping), dropped: sources.dropped(uuid: r.domain.uuid, r.mapping)))
            }
            Output.out(JSONValue.array(items).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["domain", "uuid"] + Listing.csvMappingHeader + ["state", "since"] + SourceListing.csvHeader,
                             rows: rows.map { r in
                                 [r.domain.name, r.domain.uuid] + Listing.csvMappingRow(r.mapping)
                                     + [r.state.rawValue, formatISO8601UTC(r.since)]
                                     + SourceListing.csvFields(sources.filter(uuid: r.domain.uuid, r.mapping), dropped: sources.dropped(uuid: r.domain.uuid, r.mapping))
                             })
        case .table:
            // SOURCE only when a listed forward has source= (the table stays as it was without).
            let filtered = rows.contains { sources.filter(uuid: $0.domain.uuid, $0.mapping) != nil }
            Listing.printTable(header: ["DOMAIN", "PROTO", "HOST", "GUEST", "STATE", "SINCE"] + (filtered ? ["SOURCE"] : []),
                               rows: rows.map { r in
                                   [r.domain.name, r.mapping.proto.rawValue, Listing.hostText(r.mapping),
                                    Listing.guestText(r.mapping), r.state.rawValue, formatLocal(r.since)]
                                       + (filtered ? [SourceListing.cell(sources.filter(uuid: r.domain.uuid, r.mapping),
                                                                         dropped: sources.dropped(uuid: r.domain.uuid, r.mapping))] : [])
                               })
            GuardList.summary(config: config, domain: domainFilter)
        }
        return 0
    }
}
