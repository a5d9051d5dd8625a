import Foundation
import Testing
@testable import Journal
import VirtPortCore

@Suite("source filter rows")
struct SourceFilterJournalTests {
    func filter(_ port: UInt16, _ prefixes: String, host: String? = nil) throws -> SourceFilter {
        SourceFilter(proto: .tcp, hostAddress: host.map { IPAddress($0)! }, dev: nil, ports: PortRange(port, port),
                     prefixes: try SourceList.parse(prefixes, path: "t"))
    }

    @Test func rowsAndHistoryWithoutASchemaChange() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            #expect(try db.sourceFilters().isEmpty)
            // Nothing written for a domain without lists: the journal stays as the previous release made it.
            try db.putSourceFilters(domain: web1, [], state: .adding, reason: "t", now: 1)
            #expect(try !db.hasSourceFilterTables())
            let a = try filter(3389, "203.0.113.0/24 10.0.0.1"), b = try filter(22, "2001:db8::/32", host: "192.0.2.1")
            _ = try db.transaction { () throws(VirtPortError) in
                try db.putSourceFilters(domain: web1, [a, b], state: .adding, reason: "hook qemu start", now: 10)
            }
            #expect(try db.sourceFilters().map(\.state) == [.adding, .adding])
            try db.setSourceFilterState(domainUUID: web1.uuid, .applied)
            #expect(Set(try db.sourceFilters(domainUUID: web1.uuid).map(\.filter)) == [a, b])
            var a2 = a
            a2.prefixes = try SourceList.parse("203.0.113.0/24", path: "t")
            try db.putSourceFilters(domain: web1, [a2], state: .applied, reason: "agent: metadata changed", now: 20)
            try db.putSourceFilters(domain: web1, [], state: .applied, reason: "hook qemu stopped", now: 30)
            #expect(try db.sourceFilters().isEmpty)
            let events = try db.sourceFilterHistory()
            #expect(events.map { "\($0.action) \($0.ports) \($0.source)" }
                    == ["on 3389 203.0.113.0/24 10.0.0.1", "on 22 2001:db8::/32", "off 22 2001:db8::/32",
                        "change 3389 203.0.113.0/24", "off 3389 203.0.113.0/24"])
            #expect(try db.conn.scalar("PRAGMA user_version") == Int64(JournalDB.schemaVersion))
        }
    }
}
