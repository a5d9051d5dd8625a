@testable import Journal
import Testing
import VirtPortCore

/// The guard journal (tables guards, guard_history) on a real SQLite file: what `stopped` and
/// reconcile read back, and the on/change/off history `virtport history --guards` shows.
@Suite struct GuardJournalTests {
    static let v4 = GuardAddress(address: IPAddress("192.168.122.10")!, source: .reservation)
    static let v6 = GuardAddress(address: IPAddress("fd00:122::10")!, source: .lease)

    func row(_ domain: DomainRef, _ tap: String, mac: String = "52:54:00:aa:bb:01", addresses: [GuardAddress] = [v4],
             bridge: String? = "virbr0", network: String? = "default", spoofing: Bool = true, dhcpServer: Bool = false,
             routerAdvert: Bool = false, isolated: Bool = true, byUs: Bool = true,
             state: GuardRow.State = .adding) -> GuardRow {
        let plan = GuardPlan(mac: MACAddress(mac)!, tap: tap, bridge: bridge, network: network, spoofing: spoofing,
                             dhcpServer: dhcpServer, routerAdvert: routerAdvert, isolated: isolated, addresses: addresses)
        return GuardRow(domain: domain, plan: plan, tap: tap, isolatedByUs: byUs, state: state)
    }

    func events(_ db: JournalDB, domain: String? = nil) throws -> [String] {
        try db.guardHistory(domain: domain).map { "\($0.at) \($0.action) \($0.domain.name) \($0.tap) [\($0.addresses)] \($0.reason)" }
    }

    /// The guard tables come with the first guard, not with a schema migration: a journal
    /// without guards is exactly what the previous release reads (same schema, same tables), and
    /// one with guards keeps the schema version too.
    @Test func guardTablesComeWithTheFirstGuardAndKeepTheSchema() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            #expect(try !db.hasGuardTables())
            #expect(try db.activeGuards().isEmpty && db.guardHistory().isEmpty)
            try db.setGuardState(domainUUID: web1.uuid, .applied)  // nothing to mark: no error, no tables
            #expect(try !db.hasGuardTables())
            try db.putGuards(domain: web1, [row(web1, "vnet0")], reason: "hook qemu start", now: 100)
            #expect(try db.hasGuardTables())
            #expect(try db.conn.scalar("PRAGMA user_version") == Int64(JournalDB.schemaVersion))
            #expect(try JournalDB(path: dir + "/j.db", readOnly: true).activeGuards().map(\.tap) == ["vnet0"])
        }
    }

    @Test func putGuardsRecordsOnChangeAndOff() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0")], reason: "hook qemu start", now: 100)
            // The same guard again (state applied, isolated flag found already on): no event.
            try db.putGuards(domain: web1, [row(web1, "vnet0", byUs: false, state: .applied)], reason: "hook qemu reconnect",
                             now: 150)
            try db.putGuards(domain: web1, [row(web1, "vnet0", addresses: [Self.v4, Self.v6])],
                             reason: "agent: DHCP lease on virbr0", now: 200)
            try db.putGuards(domain: web1, [row(web1, "vnet0", addresses: [Self.v4, Self.v6]), row(web1, "vnet1", mac: "52:54:00:aa:bb:02")],
                             reason: "agent: libvirt event, domain metadata changed", now: 250)
            try db.putGuards(domain: web1, [row(web1, "vnet1", mac: "52:54:00:aa:bb:02", dhcpServer: true)],
                             reason: "hook qemu reconnect", now: 300)
            #expect(try events(db) == [
                "100 on web1 vnet0 [192.168.122.10=dhcp-reservation] hook qemu start",
                "200 change web1 vnet0 [192.168.122.10=dhcp-reservation fd00:122::10=dhcp-lease] agent: DHCP lease on virbr0",
                "250 on web1 vnet1 [192.168.122.10=dhcp-reservation] agent: libvirt event, domain metadata changed",
                "300 change web1 vnet1 [192.168.122.10=dhcp-reservation] hook qemu reconnect",
                "300 off web1 vnet0 [192.168.122.10=dhcp-reservation fd00:122::10=dhcp-lease] hook qemu reconnect",
            ])
            let h = try db.guardHistory()
            #expect(h[0].flags == "spoofing dhcp-block ra-block isolated" && h[0].mac == "52:54:00:aa:bb:01")
            #expect(h[3].flags == "spoofing dhcp-allow ra-block isolated")
            #expect(try db.activeGuards().map(\.tap) == ["vnet1"])
            // Putting nothing takes the rest off.
            try db.putGuards(domain: web1, [], reason: "hook qemu reconnect", now: 400)
            #expect(try db.activeGuards().isEmpty)
            #expect(try events(db).last == "400 off web1 vnet1 [192.168.122.10=dhcp-reservation] hook qemu reconnect")
        }
    }

    /// web1 stopped without a hook (libvirtd killed); libvirt hands its tap to web2: web2's row
    /// replaces web1's, and web1's history says its guard went.
    @Test func aTapChangesHandsBetweenDomains() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0"), row(web1, "vnet1")], reason: "hook qemu start", now: 100)
            try db.putGuards(domain: web2, [row(web2, "vnet0", mac: "52:54:00:aa:bb:09", addresses: [])],
                             reason: "hook qemu start", now: 200)
            #expect(try db.activeGuards().map { "\($0.domain.name) \($0.tap) \($0.mac)" } == [
                "web2 vnet0 52:54:00:aa:bb:09", "web1 vnet1 52:54:00:aa:bb:01",
            ])
            #expect(try db.activeGuards(domainUUID: web1.uuid).map(\.tap) == ["vnet1"])
            #expect(try events(db, domain: "web1") == [
                "100 on web1 vnet0 [192.168.122.10=dhcp-reservation] hook qemu start",
                "100 on web1 vnet1 [192.168.122.10=dhcp-reservation] hook qemu start",
                "200 off web1 vnet0 [192.168.122.10=dhcp-reservation] hook qemu start (tap now guarded for domain 'web2')",
            ])
            #expect(try events(db, domain: web2.uuid) == ["200 on web2 vnet0 [] hook qemu start"])
            // web1's stop, when it comes, takes only what it still holds.
            try db.deleteGuards(domainUUID: web1.uuid, reason: "hook qemu stopped", now: 300)
            #expect(try db.activeGuards().map(\.domain) == [web2])
            #expect(try events(db).filter { $0.hasPrefix("300") } == [
                "300 off web1 vnet1 [192.168.122.10=dhcp-reservation] hook qemu stopped",
            ])
        }
    }

    @Test func deleteGuardsRemovesOneDomainsRowsWithAnOffEach() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0"), row(web1, "vnet2")], reason: "hook qemu start", now: 100)
            try db.putGuards(domain: web2, [row(web2, "vnet1")], reason: "hook qemu start", now: 110)
            try db.deleteGuards(domainUUID: web1.uuid, reason: "hook qemu stopped", now: 200)
            #expect(try db.activeGuards().map(\.tap) == ["vnet1"])
            #expect(try db.guardHistory(since: 200).map { "\($0.action) \($0.domain.name) \($0.tap) \($0.reason)" } == [
                "off web1 vnet0 hook qemu stopped", "off web1 vnet2 hook qemu stopped",
            ])
            // Again, and for a domain that never had guards: nothing happens.
            try db.deleteGuards(domainUUID: web1.uuid, reason: "reconcile", now: 300)
            try db.deleteGuards(domainUUID: "33333333-3333-3333-3333-333333333333", reason: "reconcile", now: 300)
            #expect(try db.guardHistory(since: 300).isEmpty)
            #expect(try db.guardHistory().count == 5)
        }
    }

    @Test func activeGuardsRoundTripsEveryField() throws {
        try withTempDir { dir in
            let path = dir + "/j.db"
            let db = try JournalDB(path: path)
            let rows = [
                row(web1, "vnet3", addresses: [Self.v4, Self.v6, GuardAddress(address: IPAddress("2001:db8::1:0:0:1")!, source: .attribute),
                                               GuardAddress(address: IPAddress("192.168.122.77")!, source: .forward)],
                    bridge: "virbr0", network: "default", state: .applied),
                row(web1, "tap-br0.1", addresses: [], bridge: "br0", network: nil, spoofing: false, dhcpServer: true,
                    routerAdvert: true, isolated: true, byUs: false),
                row(web1, "vnet10", bridge: nil, network: nil, isolated: false, byUs: false, state: .removing),
            ]
            try db.putGuards(domain: web1, rows, reason: "hook qemu start", now: 100)
            let back = try JournalDB(path: path, readOnly: true).activeGuards(domainUUID: web1.uuid)
            #expect(back == rows.sorted { $0.tap < $1.tap })
            #expect(back.first { $0.tap == "vnet3" }?.addressText
                == "192.168.122.10=dhcp-reservation fd00:122::10=dhcp-lease 2001:db8::1:0:0:1=ip-attribute 192.168.122.77=forward-guest")
            #expect(try db.activeGuards(domainUUID: web2.uuid).isEmpty)
        }
    }

    @Test func aCorruptRowIsAnOperationalErrorNamingTheTap() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0")], reason: "hook qemu start", now: 100)
            _ = try db.conn.run("UPDATE guards SET addresses = '192.168.122.10=sniffed'")
            #expect(throws: VirtPortError.self) { try db.activeGuards() }
            do { _ = try db.activeGuards() } catch {
                #expect("\(error)".contains("guards tap=vnet0 has an invalid address '192.168.122.10=sniffed'"))
            }
        }
    }

    @Test func setGuardStateMarksOnlyThatDomain() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0"), row(web1, "vnet1")], reason: "hook qemu start", now: 100)
            try db.putGuards(domain: web2, [row(web2, "vnet2")], reason: "hook qemu start", now: 100)
            try db.setGuardState(domainUUID: web1.uuid, .applied)
            #expect(try db.activeGuards().map { "\($0.tap)=\($0.state.rawValue)" } == ["vnet0=applied", "vnet1=applied", "vnet2=adding"])
            try db.setGuardState(domainUUID: web1.uuid, .removing)
            #expect(try db.activeGuards(domainUUID: web1.uuid).map(\.state) == [.removing, .removing])
            #expect(try db.activeGuards(domainUUID: web2.uuid).map(\.state) == [.adding])
            // State changes are journal bookkeeping, not guard events.
            #expect(try db.guardHistory().map(\.action) == ["on", "on", "on"])
        }
    }

    @Test func guardHistoryFiltersByDomainAndSince() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try db.putGuards(domain: web1, [row(web1, "vnet0")], reason: "hook qemu start", now: 100)
            try db.putGuards(domain: web2, [row(web2, "vnet1")], reason: "hook qemu start", now: 200)
            try db.deleteGuards(domainUUID: web1.uuid, reason: "hook qemu stopped", now: 300)
            #expect(try db.guardHistory(domain: "web1").map(\.at) == [100, 300])
            #expect(try db.guardHistory(domain: web2.uuid).map(\.tap) == ["vnet1"])
            #expect(try db.guardHistory(since: 200).map(\.at) == [200, 300])
            #expect(try db.guardHistory(domain: "web3").isEmpty)
        }
    }
}
