import Foundation
@testable import Journal
import Testing
import VirtPortCore

@Suite struct ApplyTests {
    @Test func happyPathWritesIntentThenAppliedAndHistory() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            let pending = fwd(9000, guest: nil)
            let delta = try db.beginApply(domain: web1, desired: [fwd(8080), fwd(8000, 8010, to: 9000), pending],
                                          reason: "hook qemu start", now: 10)
            #expect(delta.adding.map(\.state) == [.adding, .adding, .pending])
            #expect(delta.adding.map(\.since) == [10, 10, 10])
            #expect(delta.removing.isEmpty && delta.unchanged.isEmpty)
            // Intent visible, no history yet.
            #expect(try db.activeMappings(domainUUID: web1.uuid).map(\.state).sorted { $0.rawValue < $1.rawValue }
                    == [.adding, .adding, .pending])
            #expect(try db.history(HistoryFilter()).isEmpty)
            #expect(try db.hasRows(domainUUID: web1.uuid))
            #expect(try !db.hasRows(domainUUID: web2.uuid))

            try db.commitApply(domain: web1, delta: delta, reason: "hook qemu start", now: 20)
            let rows = try db.activeMappings()
            #expect(rows.count == 3)
            #expect(Dictionary(uniqueKeysWithValues: rows.map { ($0.mapping, $0.state) })
                    == [fwd(8080): .applied, fwd(8000, 8010, to: 9000): .applied, pending: .pending])
            #expect(rows.allSatisfy { $0.since == 20 })
            #expect(Set(rows.map(\.id)) == Set(delta.adding.map(\.id)))

            let events = try db.history(HistoryFilter())
            #expect(events.count == 3)
            #expect(events.allSatisfy { $0.action == .add && $0.at == 20 && $0.reason == "hook qemu start" && $0.domain == web1 })
            #expect(Set(events.map(\.mapping)) == [fwd(8080), fwd(8000, 8010, to: 9000), pending])
            #expect(events.first { $0.mapping == pending }?.mapping.guestAddress == nil)
        }
    }

    @Test func reapplyingTheSamePlanChangesNothing() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            let plan = [fwd(8080), fwd(53, proto: .udp), fwd(9000, guest: nil)]
            try apply(db, web1, plan, now: 1)
            let before = try db.activeMappings()
            let delta = try apply(db, web1, plan.reversed(), reason: "hook qemu reconnect", now: 2)
            #expect(delta.adding.isEmpty && delta.removing.isEmpty)
            #expect(delta.unchanged.count == 3)
            #expect(try db.activeMappings() == before)
            #expect(try db.history(HistoryFilter()).count == 3)
        }
    }

    @Test func duplicateDesiredMappingsCollapse() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            let delta = try apply(db, web1, [fwd(8080), fwd(8080)], now: 1)
            #expect(delta.adding.count == 1)
        }
    }

    @Test func overlappingMappingsWithinOnePlanAreRefused() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            let e = #expect(throws: VirtPortError.self) {
                try db.beginApply(domain: web1, desired: [fwd(8000, 8010), fwd(8005, to: 22)], reason: "x", now: 1)
            }
            #expect(e?.message == "host port tcp/8005 is forwarded twice by domain 'web1' (uuid \(web1.uuid))")
            #expect(try db.activeMappings().isEmpty)
        }
    }

    @Test func changedPlanAddsAndRemoves() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [fwd(8080), fwd(2222, to: 22), fwd(9000, guest: nil)], now: 1)
            // 8080 stays; 2222 now goes to guest port 2200 (a new identity); the pending one got its lease.
            let delta = try db.beginApply(domain: web1, desired: [fwd(8080), fwd(2222, to: 2200), fwd(9000)],
                                          reason: "hook qemu start", now: 5)
            #expect(delta.unchanged.map(\.mapping) == [fwd(8080)])
            #expect(Set(delta.adding.map(\.mapping)) == [fwd(2222, to: 2200), fwd(9000)])
            #expect(delta.adding.allSatisfy { $0.state == .adding })
            #expect(Set(delta.removing.map(\.mapping)) == [fwd(2222, to: 22), fwd(9000, guest: nil)])
            // Rows handed out for removal carry their prior state.
            #expect(Dictionary(uniqueKeysWithValues: delta.removing.map { ($0.mapping.hostPorts.start, $0.state) })
                    == [2222: .applied, 9000: .pending])
            #expect(try db.activeMappings().filter { $0.state == .removing }.count == 2)

            try db.commitApply(domain: web1, delta: delta, reason: "hook qemu start", now: 6)
            let rows = try db.activeMappings()
            #expect(Set(rows.map(\.mapping)) == [fwd(8080), fwd(2222, to: 2200), fwd(9000)])
            #expect(rows.allSatisfy { $0.state == .applied })
            let at6 = try db.history(HistoryFilter(since: 6))
            #expect(at6.filter { $0.action == .remove }.map(\.mapping).count == 2)
            #expect(Set(at6.filter { $0.action == .add }.map(\.mapping)) == [fwd(2222, to: 2200), fwd(9000)])
        }
    }

    @Test func domainRenameUpdatesRows() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [fwd(8080)], now: 1)
            let renamed = DomainRef(name: "web1-new", uuid: web1.uuid)
            let delta = try apply(db, renamed, [fwd(8080)], now: 2)
            #expect(delta.unchanged.first?.domain == renamed)
            #expect(try db.activeMappings().map(\.domain) == [renamed])
        }
    }

    @Test func removeAllIsIdempotent() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [fwd(8080), fwd(9000, guest: nil)], now: 1)
            try apply(db, web2, [fwd(8081)], now: 1)
            let rows = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "hook qemu stopped", now: 2)
            #expect(rows.count == 2)
            #expect(Set(rows.map(\.state)) == [.applied, .pending])  // prior states
            #expect(try db.activeMappings(domainUUID: web1.uuid).allSatisfy { $0.state == .removing })
            try db.commitRemove(rows, reason: "hook qemu stopped", now: 3)
            try db.commitRemove(rows, reason: "hook qemu stopped", now: 4)  // repeating is harmless
            #expect(try !db.hasRows(domainUUID: web1.uuid))
            #expect(try db.beginRemoveAll(domainUUID: web1.uuid, reason: "hook qemu release", now: 5).isEmpty)
            #expect(try db.activeMappings().map(\.domain) == [web2])
            let removes = try db.history(HistoryFilter()).filter { $0.action == .remove }
            #expect(removes.count == 2)
            #expect(removes.allSatisfy { $0.at == 3 && $0.reason == "hook qemu stopped" && $0.domain == web1 })
        }
    }

    @Test func crashAfterIntentIsRetriedWithoutDuplicateHistory() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            // Crash after beginApply: the row stays `adding` and is handed out again.
            let first = try db.beginApply(domain: web1, desired: [fwd(8080)], reason: "hook qemu start", now: 1)
            let retry = try db.beginApply(domain: web1, desired: [fwd(8080)], reason: "hook qemu start", now: 2)
            #expect(retry.adding.map(\.id) == first.adding.map(\.id))
            #expect(retry.adding.map(\.state) == [.adding])
            try db.commitApply(domain: web1, delta: retry, reason: "hook qemu start", now: 3)

            // Crash after beginRemoveAll, then the domain starts again with the same plan.
            let removing = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "hook qemu stopped", now: 4)
            #expect(removing.map(\.state) == [.applied])
            let restart = try db.beginApply(domain: web1, desired: [fwd(8080)], reason: "hook qemu start", now: 5)
            #expect(restart.adding.map(\.id) == removing.map(\.id))
            #expect(restart.adding.map(\.state) == [.adding])
            // The stale commitRemove of the crashed stop must not delete the row taken back.
            try db.commitRemove(removing, reason: "hook qemu stopped", now: 6)
            try db.commitApply(domain: web1, delta: restart, reason: "hook qemu start", now: 7)
            #expect(try db.activeMappings().map(\.state) == [.applied])
            // It never left the kernel as far as history knows: one add, no remove.
            #expect(try db.history(HistoryFilter()).map(\.action) == [.add])
            #expect(try db.activeMappings().first?.since == 3)
        }
    }

    @Test func crashedRemovalLeftoverIsRemovedAgain() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            try apply(db, web1, [fwd(8080)], now: 1)
            _ = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "stop", now: 2)  // crash
            let again = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "release", now: 3)
            #expect(again.map(\.state) == [.removing])  // kernel unknown
            try db.commitRemove(again, reason: "release", now: 4)
            #expect(try db.history(HistoryFilter()).map(\.action) == [.add, .remove])
        }
    }

    @Test func reconcilePrimitives() throws {
        try withTempDir { dir in
            let db = try JournalDB(path: dir + "/j.db")
            let delta = try db.beginApply(domain: web1, desired: [fwd(8080), fwd(8081)], reason: "start", now: 1)
            let ids = delta.adding.map(\.id)
            // Reconcile found 8080 in the kernel and 8081 missing.
            #expect(try db.setState(ids: [ids[0]], state: .applied) == 1)
            try db.record(event: .add, reason: "reconcile: found in kernel", domain: web1, mapping: fwd(8080), now: 2)
            try db.record(event: .add, reason: "reconcile: again", domain: web1, mapping: fwd(8080), now: 3)  // no-op
            try db.record(event: .remove, reason: "reconcile: never added", domain: web1, mapping: fwd(8081), now: 3)  // no-op
            #expect(try db.deleteRows(ids: [ids[1], 999]) == 1)
            #expect(try db.activeMappings().map(\.state) == [.applied])
            let events = try db.history(HistoryFilter())
            #expect(events.map(\.reason) == ["reconcile: found in kernel"])
            // Only the two actions the schema admits exist as values.
            #expect(HistoryAction(rawValue: "rename") == nil)
            #expect(HistoryAction.allCases.map(\.rawValue) == ["add", "remove"])
            // A later remove of that row pairs with the reconcile's add.
            let rows = try db.beginRemoveAll(domainUUID: web1.uuid, reason: "stop", now: 4)
            try db.commitRemove(rows, reason: "stop", now: 5)
            #expect(try db.history(HistoryFilter()).map(\.action) == [.add, .remove])
        }
    }
}
