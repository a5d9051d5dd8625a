import Foundation
import Testing
@testable import Journal
import VirtPortCore

/// Fail-closed holds (`Journal/Holds.swift`), and the agent's long-lived connection seeing tables
/// other connections create after it read the schema.
@Suite("holds")
struct HoldJournalTests {
    func hold(_ key: String, by: String = "source filters", domain: DomainRef = web1) -> Hold {
        Hold(kind: "forwards", domain: domain, key: key, what: "forward tcp *:\(key)", by: by, cause: "EPERM")
    }

    @Test func putReplaceClearAndPrune() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            #expect(try db.holds().isEmpty)
            try db.putHolds([], now: 1)
            #expect(!db.conn.hasTable("holds"))  // nothing written: no table
            try db.putHolds([hold("22"), hold("80")], now: 5)
            var again = hold("22")
            again.cause = "ENOMEM"
            try db.putHolds([again], now: 9)  // the new cause, held since the first time, not doubled
            #expect(try db.holds(kind: "forwards").map(\.key) == ["22", "80"])
            #expect(try db.holds().map(\.since) == [5, 5])
            #expect(try db.holds().map(\.cause) == ["ENOMEM", "EPERM"])
            #expect(try db.holds(kind: "guards").isEmpty)
            try db.pruneHolds(kind: "forwards", domainUUID: web1.uuid, keeping: ["22"])
            #expect(try db.holds().map(\.key) == ["22"])
            #expect(try db.clearHolds(by: "other").isEmpty)
            #expect(try db.clearHolds(by: "source filters", domainUUID: web1.uuid).map(\.key) == ["22"])
            #expect(try db.holds().isEmpty)
            #expect(hold("22").line == "domain '\(web1.name)' forward tcp *:22 not applied: source filters not in place (EPERM)")
        }
    }

    @Test func aLongLivedConnectionSeesTablesCreatedAfterItReadTheSchema() throws {
        try withTempDir { dir in
            let warm = try JournalDB(path: dir + "/j.db")
            warm.keepOpen()
            #expect(try warm.sourceFilters().isEmpty && warm.holds().isEmpty)  // it has read the schema
            // Another connection (a hook) creates the tables with its first rows.
            let other = try JournalDB(path: dir + "/j.db")
            try other.putHolds([hold("22")], now: 1)
            let f = SourceFilter(proto: .tcp, hostAddress: nil, dev: nil, ports: PortRange(22, 22),
                                 prefixes: try SourceList.parse("10.0.0.0/8", path: "t"))
            try other.putSourceFilters(domain: web1, [f], state: .applied, reason: "t", now: 1)
            #expect(try warm.holds().map(\.key) == ["22"])
            #expect(try warm.sourceFilters().count == 1)
        }
    }
}
