import Foundation
import Testing
@testable import Agent
import Netfilter
import POSIX

/// Self-heal's decisions (README "Self-heal"): which commits matter, the debounce that waits for a
/// rebuild to settle, the back-off that never fights another tool forever; and the watcher wired to
/// a fake notification source and a recording healer.
@Suite struct HealWatcherTests {
    typealias Settling = HealWatcher.Settling
    typealias StormGuard = HealWatcher.StormGuard

    /// Calls a mutating method outside `#expect` (which cannot).
    func mutate<T, R>(_ value: inout T, _ body: (inout T) -> R) -> R { body(&value) }

    @Test func relevantCommitsAreDeletionsOfOursOrInsertionsAboveLibvirtsAcceptRule() {
        func commit(deleted: Set<String> = [], added: Set<String> = []) -> NftablesMonitor.Commit {
            NftablesMonitor.Commit(pid: 42, process: "nft", deletedFrom: deleted, addedTo: added)
        }
        #expect(HealWatcher.relevant(commit(deleted: ["inet virtport"]), tables: ["inet virtport", "bridge virtport"])! == ("deleted by pid 42 (nft)", true))
        #expect(HealWatcher.relevant(commit(deleted: ["ip filter"]), tables: ["inet virtport", "bridge virtport"])?.deleted == true)
        #expect(HealWatcher.relevant(commit(deleted: ["inet other"]), tables: ["inet virtport", "bridge virtport"]) == nil)
        #expect(HealWatcher.relevant(commit(added: ["ip libvirt_network guest_input"]), tables: ["inet virtport", "bridge virtport"])!
            == ("rules inserted by pid 42 (nft)", false))
        #expect(HealWatcher.relevant(commit(added: ["inet other input"]), tables: ["inet virtport", "bridge virtport"]) == nil)
    }

    @Test func aBurstSettlesIntoOneCheckAfterTheDebounceOrTheCap() {
        var s = Settling()
        // Nothing relevant: nothing scheduled.
        #expect(!mutate(&s) { $0.notice([], overrun: false, now: 0) })
        // The first notice schedules; more while scheduled do not.
        #expect(mutate(&s) { $0.notice([("deleted by pid 1 (nft)", true)], overrun: false, now: 1_000_000) })
        #expect(!mutate(&s) { $0.notice([("rules inserted by pid 2 (iptables)", false)], overrun: false, now: 1_010_000) })
        // 15 ms after the last notice: wait 5 more.
        #expect(mutate(&s) { $0.settled(now: 1_025_000) } == .wait(5))
        #expect(mutate(&s) { $0.settled(now: 1_031_000) } == .check(culprit: "deleted by pid 1 (nft), rules inserted by pid 2 (iptables)",
                                                    noticed: 1_000_000, full: true))
        #expect(s == Settling())
        // A rebuild that never stops is checked 250 ms after its first notice anyway.
        #expect(mutate(&s) { $0.notice([("rules inserted by pid 3 (libvirtd)", false)], overrun: false, now: 0) })
        _ = s.notice([("rules inserted by pid 3 (libvirtd)", false)], overrun: false, now: 249_000)
        #expect(mutate(&s) { $0.settled(now: 249_500) } == .wait(1))
        _ = s.notice([("rules inserted by pid 3 (libvirtd)", false)], overrun: false, now: 250_000)
        #expect(mutate(&s) { $0.settled(now: 250_000) } == .check(culprit: "rules inserted by pid 3 (libvirtd)", noticed: 0, full: false))
        // Lost notifications: anything may have been deleted.
        #expect(mutate(&s) { $0.notice([], overrun: true, now: 0) })
        #expect(mutate(&s) { $0.settled(now: 30_000) } == .check(culprit: "unknown (notifications were lost)", noticed: 0, full: true))
    }

    @Test func threeHealsAMinuteBackOffDoublingAndAQuietMinuteEndsIt() {
        var g = StormGuard()
        #expect(mutate(&g) { $0.admit(now: 0) } == .run)
        #expect(mutate(&g) { $0.record(healed: [], now: 0) } == nil)
        #expect(mutate(&g) { $0.record(healed: ["element x put back"], now: 1_000) } == .init(reorderOnly: false, count: 1, backoffMs: nil))
        #expect(mutate(&g) { $0.record(healed: ["element x put back"], now: 2_000) } == .init(reorderOnly: false, count: 2, backoffMs: nil))
        #expect(mutate(&g) { $0.record(healed: ["element x put back"], now: 3_000) } == .init(reorderOnly: false, count: 3, backoffMs: 1_000))
        // Inside the back-off a check is deferred once; more checks meanwhile are dropped.
        #expect(mutate(&g) { $0.admit(now: 3_500) } == .deferred(500))
        #expect(mutate(&g) { $0.admit(now: 3_600) } == .skip)
        g.deferredDue()
        #expect(mutate(&g) { $0.admit(now: 4_000) } == .run)
        #expect(mutate(&g) { $0.record(healed: ["element x put back"], now: 4_000) }?.backoffMs == 2_000)
        // A minute later the old heals have left the window: no back-off.
        #expect(mutate(&g) { $0.record(healed: ["element x put back"], now: 70_000) } == .init(reorderOnly: false, count: 1, backoffMs: nil))
        #expect(mutate(&g) { $0.admit(now: 70_001) } == .run)
    }

    @Test func aFailedCheckIsRetriedDoublingUntilOneSucceeds() {
        var g = StormGuard()
        #expect(mutate(&g) { $0.failed() } == (1_000, true))
        // Failing again before the retry ran: a longer delay, no second chain of retries.
        #expect(mutate(&g) { $0.failed() } == (2_000, false))
        g.retryDue()
        #expect(mutate(&g) { $0.failed() } == (4_000, true))
        g.retryDue()
        for _ in 0..<20 { _ = g.failed(); g.retryDue() }
        #expect(g.retryMs == HealWatcher.maxBackoffMs)
        // A check that succeeds (whatever it found) starts over.
        _ = g.record(healed: [], now: 0)
        #expect(mutate(&g) { $0.failed() } == (1_000, true))
    }

    @Test func reordersAloneAllowTenAMinute() {
        var g = StormGuard()
        let reorder = "libvirt's accept rule for network default: moved back in front of its reject"
        for i in 1...9 { #expect(mutate(&g) { $0.record(healed: [reorder], now: Int64(i)) }?.backoffMs == nil) }
        #expect(mutate(&g) { $0.record(healed: [reorder], now: 10) } == .init(reorderOnly: true, count: 10, backoffMs: 1_000))
    }

    /// Commits handed in by the test; readable through a pipe like the kernel's socket.
    final class FakeSource: CommitSource {
        let pipe: (read: FileDescriptor, write: FileDescriptor)
        private let queued = Shared<[NftablesMonitor.Commit]>([])
        init() throws { pipe = try FileDescriptor.pipe() }
        var descriptor: FileDescriptor { pipe.read }
        func push(_ c: NftablesMonitor.Commit) {
            queued.with { $0.append(c) }
            try? pipe.write.writeAll([1])
        }
        func read() -> (commits: [NftablesMonitor.Commit], overrun: Bool) {
            _ = try? pipe.read.read(upTo: 64)
            return (queued.with { q in defer { q = [] }; return q }, false)
        }
    }

    @Test func theWatcherChecksOnStartThenOnOthersDeletionsButNotOnItsOwn() throws {
        let f = try AgentFixture()
        defer { f.cleanup() }
        let source = Shared<FakeSource?>(try FakeSource())
        let checks = Shared<[Bool]>([])
        let watcher = HealWatcher(open: { source.now! }, heal: { _, acceptRulesOnly in
            checks.with { $0.append(acceptRulesOnly) }
            return []
        })
        try watcher.start(f.context)
        // At start: libvirt's accept rule's place only.
        #expect(eventually { checks.now == [true] })
        // Someone else deletes from virtport's table: one full check, after the debounce.
        source.now!.push(NftablesMonitor.Commit(pid: 999_999, process: "nft", deletedFrom: ["inet virtport"]))
        source.now!.push(NftablesMonitor.Commit(pid: 999_999, process: "nft", deletedFrom: ["inet virtport"]))
        #expect(eventually { checks.now == [true, false] })
        // This process's own commit (its thread id) is not a reason to check.
        source.now!.push(NftablesMonitor.Commit(pid: UInt32(getpid()), process: "virtport", deletedFrom: ["inet virtport"]))
        usleep(100_000)
        #expect(checks.now == [true, false])
        // Rules inserted above libvirt's accept rule: its place only.
        source.now!.push(NftablesMonitor.Commit(pid: 999_999, process: "libvirtd", addedTo: ["ip filter FORWARD"]))
        #expect(eventually { checks.now == [true, false, true] })
    }
}
