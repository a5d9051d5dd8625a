import Foundation
@testable import Journal
import Synchronization
import Testing
import VirtPortCore

/// Hooks of different domains run at the same time, each with its own connection: none may fail
/// with "database is locked", and a port goes to exactly one of two racing domains.
@Suite struct ConcurrencyTests {
    static func domain(_ i: Int) -> DomainRef {
        DomainRef(name: "vm\(i)", uuid: "00000000-0000-0000-0000-\(String(repeating: "0", count: 10))\(i + 10)")
    }

    @Test func sixteenDomainsApplyAtOnceOnAFreshDatabase() throws {
        try withTempDir { dir in
            let path = dir + "/state/virtport.db"  // nobody has created it yet: they race for that too
            let failures = Mutex<[String]>([])
            runThreads(16) { i in
                do {
                    let db = try JournalDB(path: path)
                    let base = UInt16(10_000 + i * 10)
                    let plan = [fwd(base), fwd(base + 1, base + 5), fwd(base, proto: .udp), fwd(base + 9, guest: nil)]
                    for round in 0..<3 {  // start, reconnect, changed plan
                        let desired = round == 2 ? Array(plan.dropFirst()) : plan
                        let delta = try db.beginApply(domain: Self.domain(i), desired: desired,
                                                      reason: "hook qemu start", now: nowMicros())
                        usleep(1000)  // the netlink batch
                        try db.commitApply(domain: Self.domain(i), delta: delta, reason: "hook qemu start",
                                           now: nowMicros())
                    }
                } catch {
                    failures.withLock { $0.append("vm\(i): \(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            let db = try JournalDB(path: path)
            let rows = try db.activeMappings()
            #expect(rows.count == 16 * 3)
            #expect(Set(rows.map(\.domain.uuid)).count == 16)
            #expect(rows.allSatisfy { $0.state == ($0.mapping.isPending ? .pending : .applied) })
            #expect(try db.history(HistoryFilter()).count == 16 * 5)
        }
    }

    @Test func racingDomainsForOnePortExactlyOneWins() throws {
        try withTempDir { dir in
            let path = dir + "/virtport.db"
            _ = try JournalDB(path: path)
            for port: UInt16 in [8080, 8081, 8082] {  // a few rounds: the winner must vary nothing else
                let winners = Mutex<[Int]>([])
                let losers = Mutex<[VirtPortError]>([])
                let others = Mutex<[String]>([])
                runThreads(8) { i in
                    do throws(VirtPortError) {
                        let db = try JournalDB(path: path)
                        let delta = try db.beginApply(domain: Self.domain(i), desired: [fwd(port)],
                                                      reason: "hook qemu start", now: nowMicros())
                        try db.commitApply(domain: Self.domain(i), delta: delta, reason: "hook qemu start",
                                           now: nowMicros())
                        winners.withLock { $0.append(i) }
                    } catch where error.code == .invalidInput {
                        losers.withLock { $0.append(error) }
                    } catch {
                        others.withLock { $0.append("\(error)") }
                    }
                }
                #expect(others.withLock { $0 } == [])
                let won = winners.withLock { $0 }
                try #require(won.count == 1)
                let lost = losers.withLock { $0 }
                #expect(lost.count == 7)
                #expect(lost.allSatisfy {
                    $0.message == "host port tcp/\(port) is already forwarded to domain 'vm\(won[0])' "
                        + "(uuid \(Self.domain(won[0]).uuid))"
                })
                let holders = try JournalDB(path: path).activeMappings().filter { $0.mapping.hostPorts.start == port }
                #expect(holders.map(\.domain) == [Self.domain(won[0])])
            }
        }
    }

    static let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Another *process* holding the write lock for 1.5 s: beginApply waits instead of failing.
    @Test(.enabled(if: python != nil, "needs python3 to hold a lock from another process"))
    func waitsForAWriterInAnotherProcess() throws {
        let python = try #require(Self.python)
        try withTempDir { dir in
            let path = dir + "/virtport.db"
            _ = try JournalDB(path: path)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: python)
            p.arguments = ["-c", """
                import sqlite3, sys, time
                c = sqlite3.connect(sys.argv[1], isolation_level=None)
                c.execute("BEGIN IMMEDIATE")
                print("locked", flush=True)
                time.sleep(1.5)
                c.execute("COMMIT")
                """, path]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let line = out.fileHandleForReading.availableData
            #expect(String(decoding: line, as: UTF8.self).hasPrefix("locked"))
            let db = try JournalDB(path: path)
            let start = nowMicros()
            try apply(db, web1, [fwd(8080)], now: start)
            let waited = nowMicros() - start
            p.waitUntilExit()
            #expect(p.terminationStatus == 0)
            #expect(waited > 500_000, "should have waited for the other process's transaction")
            #expect(try db.activeMappings().count == 1)
        }
    }
}
