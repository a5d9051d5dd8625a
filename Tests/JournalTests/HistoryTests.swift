@testable import Journal
import Testing
import VirtPortCore

@Suite struct HistoryTests {
    /// web1 holds 8080 from t=100 to t=300 (with 2222→22 throughout), then web2 holds 8080 from t=400.
    func populated(_ dir: String) throws -> JournalDB {
        let db = try JournalDB(path: dir + "/j.db")
        try apply(db, web1, [fwd(8080), fwd(2222, to: 22)], reason: "hook qemu start", now: 100)
        try apply(db, web1, [fwd(2222, to: 22)], reason: "hook qemu reconnect", now: 300)
        try apply(db, web2, [fwd(8000, 8100, guest: "192.168.122.20")], reason: "hook qemu start", now: 400)
        return db
    }

    @Test func allEventsInOrder() throws {
        try withTempDir { dir in
            let events = try populated(dir).history(HistoryFilter())
            #expect(events.map(\.at) == [100, 100, 300, 400])
            #expect(events.map(\.action) == [.add, .add, .remove, .add])
            #expect(events[2].reason == "hook qemu reconnect")
        }
    }

    @Test func filterByDomainNameOrUUID() throws {
        try withTempDir { dir in
            let db = try populated(dir)
            #expect(try db.history(HistoryFilter(domain: "web1")).count == 3)
            #expect(try db.history(HistoryFilter(domain: web2.uuid)).map(\.domain) == [web2])
            #expect(try db.history(HistoryFilter(domain: "nope")).isEmpty)
        }
    }

    @Test func filterByPortInsideRange() throws {
        try withTempDir { dir in
            let db = try populated(dir)
            let e = try db.history(HistoryFilter(port: 8080))
            #expect(e.map(\.domain.name) == ["web1", "web1", "web2"])
            #expect(try db.history(HistoryFilter(port: 8100)).map(\.domain) == [web2])
            #expect(try db.history(HistoryFilter(port: 22)).isEmpty)  // guest port, not host port
        }
    }

    @Test func filterBySinceUntil() throws {
        try withTempDir { dir in
            let db = try populated(dir)
            #expect(try db.history(HistoryFilter(since: 300)).map(\.at) == [300, 400])
            #expect(try db.history(HistoryFilter(until: 300)).map(\.at) == [100, 100, 300])
            #expect(try db.history(HistoryFilter(since: 101, until: 399)).map(\.action) == [.remove])
        }
    }

    static let instants: [(Int64, [String])] = [
        (50, []),
        (100, ["web1:2222", "web1:8080"]),
        (299, ["web1:2222", "web1:8080"]),
        (300, ["web1:2222"]),  // removed at T: no longer active
        (400, ["web1:2222", "web2:8000"]),
    ]

    @Test(arguments: instants)
    func whoHadAPortAt(_ t: Int64, _ expected: [String]) throws {
        try withTempDir { dir in
            let db = try populated(dir)
            let active = try db.history(HistoryFilter(at: t))
            #expect(active.allSatisfy { $0.action == .add })
            #expect(active.map { "\($0.domain.name):\($0.mapping.hostPorts.start)" }.sorted() == expected)
        }
    }

    @Test func atCombinesWithPortAndHandlesReAdds() throws {
        try withTempDir { dir in
            let db = try populated(dir)
            #expect(try db.history(HistoryFilter(port: 8080, at: 200)).map(\.domain) == [web1])
            #expect(try db.history(HistoryFilter(port: 8080, at: 350)).isEmpty)
            #expect(try db.history(HistoryFilter(port: 8080, at: 450)).map(\.domain) == [web2])
            // web2 goes away and web1 takes 8080 again: the second add of the same identity.
            let rows = try db.beginRemoveAll(domainUUID: web2.uuid, reason: "stop", now: 500)
            try db.commitRemove(rows, reason: "stop", now: 500)
            try apply(db, web1, [fwd(2222, to: 22), fwd(8080)], now: 600)
            #expect(try db.history(HistoryFilter(port: 8080, at: 200)).map(\.at) == [100])
            #expect(try db.history(HistoryFilter(port: 8080, at: 550)).isEmpty)
            #expect(try db.history(HistoryFilter(port: 8080, at: 700)).map(\.at) == [600])
            #expect(try db.history(HistoryFilter(domain: "web1", port: 8080, at: 700)).count == 1)
        }
    }

    @Test func pruneKeepsWhatIsStillActive() throws {
        try withTempDir { dir in
            let db = try populated(dir)
            // Before 350: web1's 8080 add+remove go; web1's 2222 add stays (still active).
            #expect(try db.pruneHistory(olderThan: 350) == 2)
            let left = try db.history(HistoryFilter())
            #expect(left.map { "\($0.action.rawValue) \($0.mapping.hostPorts.start)" } == ["add 2222", "add 8000"])
            #expect(try db.history(HistoryFilter(at: 500)).count == 2)
            #expect(try db.pruneHistory(olderThan: 1000) == 0)
            // Once removed, the next prune can drop them.
            let rows = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "stop", now: 1100)
            try db.commitRemove(rows, reason: "stop", now: 1100)
            #expect(try db.pruneHistory(olderThan: 1200) == 2)
            #expect(try db.history(HistoryFilter()).map(\.domain) == [web2])
        }
    }
}
