import Engine
import Journal
import VirtPortCore

/// What a rule kind adds to the listings (README "Development: adding a rule kind"): `list`'s
/// columns (table, JSON, CSV), `plan`'s members per forward, and a `history --<flag>` of its own
/// events. `ListCommand`, `PlanCommand` and `HistoryCommand` ask `KindListings.all` and never
/// name a kind.
protocol KindListing: Sendable {
    /// `history --<flag>`: the flag and its help line; nil: none.
    var historyOption: (flag: String, help: String)? { get }
    /// The kind's `history` (called when its flag is given).
    func history(_ filter: HistoryFilter, format: OutputFormat, config: Config) throws(VirtPortError) -> Int32
    /// `list`'s columns for one listing (read once: the journal's rows, the kernel's counters).
    func listColumns(config: Config) -> any KindColumns
    /// Members added to each forward of `plan`'s JSON, before `refused`.
    func planFields(_ plan: Plan, _ m: Mapping) -> [(String, JSONValue)]
}

extension KindListing {
    var historyOption: (flag: String, help: String)? { nil }
    func history(_ filter: HistoryFilter, format: OutputFormat, config: Config) throws(VirtPortError) -> Int32 { 0 }
    func planFields(_ plan: Plan, _ m: Mapping) -> [(String, JSONValue)] { [] }
}

/// One kind's columns in one `list`, per row (a domain's mapping).
protocol KindColumns {
    func json(uuid: String, _ m: Mapping) -> [(String, JSONValue)]
    var csvHeader: [String] { get }
    func csv(uuid: String, _ m: Mapping) -> [String]
    /// The table's column for these rows: its header and one cell per row; nil: no column (the
    /// table stays as it was without the kind).
    func table(_ rows: [(uuid: String, mapping: Mapping)]) -> (header: String, cells: [String])?
}

/// The rule kinds' listings. Adding one: one line here.
enum KindListings {
    static let all: [any KindListing] = [
        SourceListing(),
    ]

    /// `history`'s flags, for the synopsis: ` [--sources]`.
    static var historySynopsis: String {
        all.compactMap(\.historyOption).map { " [\($0.flag)]" }.joined()
    }

    static var historyOptions: [Usage.Option] {
        all.compactMap(\.historyOption).map { Usage.Option(name: $0.flag, help: $0.help) }
    }

    /// `add`'s options from the forward attributes kinds own: ` [--source PREFIX]…`.
    static var addSynopsis: String {
        ForwardAttributes.all.compactMap { a in a.addOption.map { " [--\(a.name) \($0.value)]…" } }.joined()
    }

    static var addOptions: [Usage.Option] {
        ForwardAttributes.all.compactMap { a in
            a.addOption.map { Usage.Option(name: "--" + a.name, value: $0.value, help: $0.help, kind: .text, repeatable: true) }
        }
    }
}
