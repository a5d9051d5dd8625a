import Foundation
import Testing
@testable import Agent
import Engine
import POSIX
import VirtPortCore

/// The agent's workers: one thread at a time holds a worker, a request waits a bounded time for a
/// free one, and the configuration is reloaded when its file changes (a bad file keeps the old).
@Suite struct WorkerPoolTests {
    func sandbox() -> (dir: String, config: Config) {
        let dir = NSTemporaryDirectory() + "vp-pool-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = Config()
        c.databasePath = dir + "/virtport.db"
        c.sourcePath = dir + "/virtport.conf"
        c.agentSocket = dir + "/agent.sock"
        return (dir, c)
    }

    @Test func checkoutWaitsForACheckinOrItsDeadline() throws {
        let (dir, config) = sandbox()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let opened = Shared(0)
        let pool = try WorkerPool(config: config, workers: 1, warm: { (c) throws(VirtPortError) -> Resources in
            opened.with { $0 += 1 }
            return .perProcess(c)
        })
        #expect(opened.now == 1)  // the first worker's resources at once: a bad journal fails the start
        let worker = try #require(pool.checkout(untilMillis: MonotonicClock.millis() + 1_000))
        // None free: nil once the deadline passed, not before.
        let start = MonotonicClock.millis()
        #expect(pool.checkout(untilMillis: start + 60) == nil)
        #expect(MonotonicClock.millis() - start >= 60)
        // A checkin from another thread wakes a waiting checkout.
        let handback = Shared<Worker?>(worker)
        try POSIX.Thread.detach {
            POSIX.Thread.sleep(millis: 30)
            pool.checkin(handback.with { w in defer { w = nil }; return w! })
        }
        let again = pool.checkout(untilMillis: MonotonicClock.millis() + 5_000)
        #expect(again === worker)
    }

    /// libvirt sends a VM's `stopped` and its next `start` back to back, possibly to two workers:
    /// the start waits until the stop's work after its answer is finished; other domains do not.
    @Test func aDomainsNextChangeWaitsForItsWorkAfterTheAnswer() throws {
        let (dir, config) = sandbox()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pool = try WorkerPool(config: config, workers: 2, warm: { (c) throws(VirtPortError) in .perProcess(c) })
        pool.finishing("a")
        pool.finishing("a")  // two workers finishing the same domain's work
        // Another domain goes at once.
        var start = MonotonicClock.millis()
        #expect(pool.awaitFinished("b", untilMillis: start + 5_000))
        #expect(MonotonicClock.millis() - start < 1_000)
        // The same domain waits, and gives up only at its deadline.
        start = MonotonicClock.millis()
        #expect(!pool.awaitFinished("a", untilMillis: start + 60))
        #expect(MonotonicClock.millis() - start >= 60)
        pool.finished("a")
        #expect(!pool.awaitFinished("a", untilMillis: MonotonicClock.millis() + 20))  // one still running
        // The last one ending (on another thread) wakes the waiting change.
        let ended = Shared(false)
        try POSIX.Thread.detach {
            POSIX.Thread.sleep(millis: 50)
            ended.with { $0 = true }
            pool.finished("a")
        }
        #expect(pool.awaitFinished("a", untilMillis: MonotonicClock.millis() + 5_000))
        #expect(ended.now)
    }

    @Test func theDomainKeyIsTheUUIDElseTheName() {
        let xml = Array("<domain><name>web</name><uuid>AAAAAAAA-1111-4111-8111-111111111111</uuid></domain>".utf8)
        let job = Job(operation: .start, domainName: "web", input: xml, config: Config(), generation: 0)
        #expect(job.domainKey == "aaaaaaaa-1111-4111-8111-111111111111")
        let bare = Job(operation: .start, domainName: "web", input: [], config: Config(), generation: 0)
        #expect(bare.domainKey == "name:web")
    }

    @Test func theConfigurationIsReloadedWhenItsFileChangesAndABadOneKeepsTheOld() throws {
        let (dir, config) = sandbox()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = config.sourcePath
        let pool = try WorkerPool(config: config, workers: 2, warm: { (c) throws(VirtPortError) in .perProcess(c) },
                                  reload: { () throws(VirtPortError) in
                                      let bytes = (try? FileSystem.readFile(path)) ?? nil
                                      var c = try Config.parse(String(decoding: bytes ?? [], as: UTF8.self), path: path)
                                      c.sourcePath = path
                                      return c
                                  })
        let (first, generation) = pool.refreshedConfig()
        #expect(first.table == "virtport")
        try FileSystem.writeFileAtomically(config.sourcePath, Array("table = \"other\"\n".utf8), mode: 0o644)
        let (reloaded, next) = pool.refreshedConfig()
        #expect(reloaded.table == "other" && next == generation + 1)
        // The socket the agent listens on stays what it was.
        #expect(reloaded.agentSocket == config.agentSocket)
        try FileSystem.writeFileAtomically(config.sourcePath, Array("table = \"bad name!\"\n".utf8), mode: 0o644)
        let (kept, same) = pool.refreshedConfig()
        #expect(kept.table == "other" && same == next)
    }
}
