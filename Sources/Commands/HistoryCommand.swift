import Journal
import Engine
import POSIX
import VirtPortCore

/// `virtport history [--domain D] [--port P] [--since T] [--until T] [--at T] [--json|--csv]`.
enum HistoryCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let format = try OutputFormat.from(&args)
        let guards = args.flag("--guards")
        let kind = KindListings.all.first { k in k.historyOption.map { args.flag($0.flag) } ?? false }
        var filter = HistoryFilter()
        filter.domain = try args.option("--domain")
        if let p = try args.option("--port") {
            guard let port = UInt16(p), port > 0 else { throw .invalid("--port \(p): not a port (1-65535)") }
            filter.port = port
        }
        func time(_ name: String) throws(VirtPortError) -> Int64? {
            guard let t = try args.option(name) else { return nil }
            guard let v = parseTime(t) else {
                throw .invalid("\(name) \(t): not a time (use \(Usage.timeFormats))")
            }
            return v
        }
        filter.since = try time("--since")
        filter.until = try time("--until")
        filter.at = try time("--at")
        try args.finish("history")
        let config = try Config.load()
        if let kind { return try kind.history(filter, format: format, config: config) }
        if guards {
            if filter.port != nil || filter.at != nil { throw .invalid("history --guards: --port and --at apply to forwards only") }
            return try guardHistory(filter, format: format, config: config)
        }
        var events: [HistoryEvent] = []
        if Listing.journalPresent(config.databasePath) {
            events = try JournalDB(path: config.databasePath, readOnly: true).history(filter)
        }
        switch format {
        case .json:
            let items: [JSONValue] = events.map { e in
                .object([("at", .string(formatISO8601UTC(e.at))), ("action", .string(e.action.rawValue)),
                         ("reason", .string(e.reason)), ("domain", .string(e.domain.name)),
                         ("uuid", .string(e.domain.uuid))] + Listing.mappingFields(e.mapping))
            }
            Output.out(JSONValue.array(items).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["at", "action", "reason", "domain", "uuid"] + Listing.csvMappingHeader,
                             rows: events.map { e in
                                 [formatISO8601UTC(e.at), e.action.rawValue, e.reason, e.domain.name, e.domain.uuid]
                                     + Listing.csvMappingRow(e.mapping)
                             })
        case .table:
            Listing.printTable(header: ["TIME", "ACTION", "DOMAIN", "PROTO", "HOST", "GUEST", "REASON"],
                               rows: events.map { e in
                                   [formatLocal(e.at), e.action.rawValue, e.domain.name, e.mapping.proto.rawValue,
                                    Listing.hostText(e.mapping), Listing.guestText(e.mapping), e.reason]
                               })
        }
        return 0
    }

    /// `history --guards`: guard on/change/off events, oldest first.
    static func guardHistory(_ filter: HistoryFilter, format: OutputFormat, config: Config) throws(VirtPortError) -> Int32 {
        var events: [GuardHistoryEvent] = []
        if Listing.journalPresent(config.databasePath) {
            events = try JournalDB(path: config.databasePath, readOnly: true).guardHistory(domain: filter.domain, since: filter.since)
        }
        if let until = filter.until { events.removeAll { $0.at > until } }
        switch format {
        case .json:
            Output.out(JSONValue.array(events.map { e in
                .object([("at", .string(formatISO8601UTC(e.at))), ("action", .string(e.action)), ("reason", .string(e.reason)),
                         ("domain", .string(e.domain.name)), ("uuid", .string(e.domain.uuid)), ("tap", .string(e.tap)),
                         ("mac", .string(e.mac)), ("addresses", .string(e.addresses)), ("flags", .string(e.flags))])
            }).serialized(pretty: true))
        case .csv:
            Listing.printCSV(header: ["at", "action", "reason", "domain", "uuid", "tap", "mac", "addresses", "flags"],
                             rows: events.map { e in
                                 [formatISO8601UTC(e.at), e.action, e.reason, e.domain.name, e.domain.uuid, e.tap, e.mac,
                                  e.addresses, e.flags]
                             })
        case .table:
            Listing.printTable(header: ["TIME", "ACTION", "DOMAIN", "TAP", "MAC", "ADDRESSES", "FLAGS", "REASON"],
                               rows: events.map { e in
                                   [formatLocal(e.at), e.action, e.domain.name, e.tap, e.mac,
                                    e.addresses.isEmpty ? "-" : e.addresses, e.flags, e.reason]
                               })
        }
        return 0
    }
}
