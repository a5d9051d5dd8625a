@testable import Journal
import Testing
import VirtPortCore

@Suite struct ConflictTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let held: Mapping
        let wanted: Mapping
        /// The port the message names, nil: no conflict.
        let port: UInt16?
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "same port", held: fwd(8080), wanted: fwd(8080, guest: "192.168.122.20"), port: 8080),
        Case(name: "overlapping ranges", held: fwd(8000, 8010), wanted: fwd(8005, 8020), port: 8005),
        Case(name: "range containing a port", held: fwd(8080), wanted: fwd(8000, 8100), port: 8080),
        Case(name: "adjacent ranges", held: fwd(8000, 8010), wanted: fwd(8011, 8020), port: nil),
        Case(name: "any address vs specific", held: fwd(8080), wanted: fwd(8080, host: "203.0.113.5"), port: 8080),
        Case(name: "specific vs any address", held: fwd(8080, host: "203.0.113.5"), wanted: fwd(8080), port: 8080),
        Case(name: "0.0.0.0 counts as any", held: fwd(8080, host: "0.0.0.0"), wanted: fwd(8080, host: "203.0.113.5"), port: 8080),
        Case(name: "same specific address", held: fwd(8080, host: "203.0.113.5"), wanted: fwd(8080, host: "203.0.113.5"), port: 8080),
        Case(name: "different specific addresses", held: fwd(8080, host: "203.0.113.5"), wanted: fwd(8080, host: "203.0.113.6"), port: nil),
        Case(name: "different families", held: fwd(8080), wanted: fwd(8080, guest: "fd00::10"), port: nil),
        Case(name: "pending without address overlaps IPv4", held: fwd(8080, guest: nil), wanted: fwd(8080), port: 8080),
        Case(name: "pending without address overlaps IPv6", held: fwd(8080, guest: "fd00::10"), wanted: fwd(8080, guest: nil), port: 8080),
        Case(name: "pending with IPv6 host address vs IPv4", held: fwd(8080, host: "2001:db8::1", guest: nil), wanted: fwd(8080), port: nil),
        Case(name: "different protocols", held: fwd(8080, proto: .udp), wanted: fwd(8080), port: nil),
        Case(name: "different devices", held: fwd(8080, dev: "eth0"), wanted: fwd(8080, dev: "eth1"), port: nil),
        Case(name: "device vs any device", held: fwd(8080, dev: "eth0"), wanted: fwd(8080), port: 8080),
    ]

    @Test(arguments: cases)
    func conflictWithAnotherDomain(_ c: Case) throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [c.held], now: 1)
            let beforeRows = try db.activeMappings()
            let beforeHistory = try db.history(HistoryFilter())
            if let port = c.port {
                let expected = "host port \(c.wanted.proto.rawValue)/\(port) is already "
                    + (c.held.isPending ? "claimed (pending) by" : "forwarded to")
                    + " domain 'web1' (uuid \(web1.uuid))"
                let e = #expect(throws: VirtPortError.self) {
                    try db.beginApply(domain: web2, desired: [fwd(7000), c.wanted], reason: "hook qemu start", now: 2)
                }
                #expect(e?.message == expected)
                #expect(e?.code == .invalidInput)
                let check = #expect(throws: VirtPortError.self) { try db.checkConflicts(domain: web2, desired: [c.wanted]) }
                #expect(check?.message == expected)
                // Nothing written: not even the non-conflicting 7000.
                #expect(try db.activeMappings() == beforeRows)
                #expect(try db.history(HistoryFilter()) == beforeHistory)
            } else {
                let delta = try apply(db, web2, [c.wanted], now: 2)
                #expect(delta.adding.count == 1)
                #expect(try db.activeMappings().count == 2)
            }
        }
    }

    @Test func rowsInEveryStateHoldTheirPort() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            _ = try db.beginApply(domain: web1, desired: [fwd(8080)], reason: "start", now: 1)  // adding, uncommitted
            #expect(throws: VirtPortError.self) { try db.beginApply(domain: web2, desired: [fwd(8080)], reason: "s", now: 2) }
            _ = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "stop", now: 3)  // removing, uncommitted
            #expect(throws: VirtPortError.self) { try db.beginApply(domain: web2, desired: [fwd(8080)], reason: "s", now: 4) }
        }
    }

    @Test func ownRowsNeverConflict() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [fwd(8080)], now: 1)
            // Same port, new guest port: replaces its own mapping.
            let delta = try apply(db, web1, [fwd(8080, to: 80)], now: 2)
            #expect(delta.adding.count == 1 && delta.removing.count == 1)
        }
    }
}
