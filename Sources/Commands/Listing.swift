#if canImport(Glibc)
import Glibc
#endif
import Journal
import Engine
import POSIX
import VirtPortCore

/// Shared rendering of mappings for `list` and `history`: tables for people, JSON/CSV for machines.
enum Listing {
    /// Whether the journal is there to read. Not `IO.exists`: for someone who is not root the
    /// database's 0700 directory hides it, and an empty listing would then be a lie; the open
    /// that follows says "Permission denied (run as root)" instead.
    static func journalPresent(_ path: String) -> Bool {
        do { return try FileSystem.linkStatus(path) != nil } catch { return true }
    }

    static func hostText(_ m: Mapping) -> String { MappingText.host(m) }
    static func guestText(_ m: Mapping) -> String { MappingText.guest(m) }

    /// The mapping's fields as ordered JSON members (shared by list and history).
    static func mappingFields(_ m: Mapping) -> [(String, JSONValue)] {
        [
            ("proto", .string(m.proto.rawValue)),
            ("host_address", m.hostAddress.map { .string("\($0)") } ?? .null),
            ("dev", m.dev.map { .string($0) } ?? .null),
            ("host_port_start", .int(Int(m.hostPorts.start))),
            ("host_port_end", .int(Int(m.hostPorts.end))),
            ("guest_address", m.guestAddress.map { .string("\($0)") } ?? .null),
            ("guest_port_start", .int(Int(m.guestPorts.start))),
            ("guest_port_end", .int(Int(m.guestPorts.end))),
            ("mac", m.mac.map { .string("\($0)") } ?? .null),
            ("network", m.network.map { .string($0) } ?? .null),
            ("guest_source", .string(m.guestSource.rawValue)),
        ]
    }

    /// Cells are escaped (`Quoted.cell`): a domain name with a line break or terminal escape
    /// cannot add rows or repaint the screen.
    static func printTable(header: [String], rows: [[String]]) {
        let rows = rows.map { $0.map(Quoted.cell) }
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            var s = ""
            for (i, c) in cells.enumerated() {
                s += c
                if i < cells.count - 1 { s += String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            return s
        }
        Output.out(line(header))
        for r in rows { Output.out(line(r)) }
    }

    /// Control characters are escaped first (`Quoted.cell`): a record is always one line.
    static func csvField(_ s: String) -> String {
        let s = Quoted.cell(s)
        if s.contains(",") || s.contains("\"") || s.contains("\n") {
            return "\"" + s.replacingQuotes() + "\""
        }
        return s
    }

    static func printCSV(header: [String], rows: [[String]]) {
        Output.out(header.map(csvField).joined(separator: ","))
        for r in rows { Output.out(r.map(csvField).joined(separator: ",")) }
    }

    /// CSV columns for a mapping (machine form: UTC times, bare fields).
    static let csvMappingHeader = ["proto", "host_address", "dev", "host_port_start", "host_port_end",
                                   "guest_address", "guest_port_start", "guest_port_end", "mac", "network", "guest_source"]
    static func csvMappingRow(_ m: Mapping) -> [String] {
        [m.proto.rawValue, m.hostAddress.map { "\($0)" } ?? "", m.dev ?? "", "\(m.hostPorts.start)", "\(m.hostPorts.end)",
         m.guestAddress.map { "\($0)" } ?? "", "\(m.guestPorts.start)", "\(m.guestPorts.end)",
         m.mac.map { "\($0)" } ?? "", m.network ?? "", m.guestSource.rawValue]
    }
}

extension String {
    func replacingQuotes() -> String {
        var out = ""
        for c in self { out += c == "\"" ? "\"\"" : String(c) }
        return out
    }
}
