import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// Work after the answer (README "Agent: what is done after the answer"): with `defersWork` (the
/// agent's workers) a change leaves its logs, conntrack cleanups and the skeleton self-check for
/// `runDeferred`, keeps its change lock (shared) until that work ran, and a broken skeleton found
/// then is still rebuilt under the exclusive lock. Without it (hooks, commands) the same work runs
/// inside the change, as before.
@Suite struct DeferredWorkTests {
    /// Whether another open file description can take the change lock exclusively right now
    /// (a heal, reconcile or network `started` of another worker or process).
    func exclusiveIsFree(_ box: Sandbox) -> Bool {
        let fd = open(box.config.databasePath + ".lock", O_RDWR)
        defer { close(fd) }
        guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
        flock(fd, LOCK_UN)
        return true
    }

    let body = tcp(47222, to: 22)

    func run(_ op: QemuOperation, _ box: Sandbox, _ fw: RecordingFirewall, deferring: Bool,
             lines: CollectedDiagnostics = .init()) -> Resources {
        let resources = Resources.perProcess(box.config, kernel: fw)
        resources.defersWork = deferring
        let code = QemuWork.run(op, domainName: "web", input: domain("web", uuidA, body), resources: resources, diagnostics: lines)
        #expect(code == 0, "\(lines.lines)")
        return resources
    }

    /// A stop and a start: the start takes back a port released moments ago (its untranslated
    /// flows are deleted by `forgetUnforwardedFlows`).
    func restart(_ box: Sandbox, _ fw: RecordingFirewall, deferring: Bool) -> (Resources, calls: Int) {
        _ = run(.start, box, fw, deferring: false)
        _ = run(.stopped, box, fw, deferring: false)
        let before = fw.calls.count
        return (run(.start, box, fw, deferring: deferring), before)
    }

    @Test func aStartLeavesItsCleanupsForAfterTheAnswerUnderItsSharedLock() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        let (resources, before) = restart(box, fw, deferring: true)
        // Answered: the change is committed and in the kernel, its cleanups not done yet.
        #expect(try box.journal().activeMappings().map(\.state) == [.applied])
        #expect(fw.elements.count == 1)
        let answered = Array(fw.calls.dropFirst(before))
        #expect(!answered.contains("forgetFlows port 47222"), "\(answered)")
        #expect(!answered.contains("skeletonIsIntact"), "\(answered)")
        #expect(resources.hasDeferredWork)
        // Still under the change's shared lock: an exclusive operation waits for the work.
        #expect(!exclusiveIsFree(box))
        let taken = try resources.changeLock().acquisitions
        resources.runDeferred()
        let after = Array(fw.calls.dropFirst(before + answered.count))
        #expect(after == ["skeletonIsIntact", "forgetFlows port 47222"], "\(after)")
        #expect(!resources.hasDeferredWork)
        #expect(exclusiveIsFree(box))
        // The same lock, not taken again.
        #expect(try resources.changeLock().acquisitions == taken)
    }

    @Test func withoutDeferringTheSameWorkRunsInsideTheChange() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        let (resources, before) = restart(box, fw, deferring: false)
        let calls = Array(fw.calls.dropFirst(before))
        #expect(calls.contains("skeletonIsIntact") && calls.contains("forgetFlows port 47222"), "\(calls)")
        #expect(!resources.hasDeferredWork)
        #expect(exclusiveIsFree(box))
    }

    @Test func aStopForgetsItsFlowsAfterTheAnswer() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = run(.start, box, fw, deferring: false)
        let before = fw.calls.count
        let resources = run(.stopped, box, fw, deferring: true)
        #expect(fw.elements.isEmpty)
        #expect(try box.journal().activeMappings().isEmpty)
        #expect(!fw.calls.dropFirst(before).contains("forgetFlows 1 elements"))
        #expect(!exclusiveIsFree(box))
        resources.runDeferred()
        #expect(fw.calls.dropFirst(before).contains("forgetFlows 1 elements"))
        #expect(exclusiveIsFree(box))
    }

    @Test func aBrokenSkeletonFoundAfterTheAnswerIsRebuiltUnderTheExclusiveLock() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = run(.start, box, fw, deferring: false)
        fw.inetSkeletonIntact = false  // someone flushed our chains
        let lines = CollectedDiagnostics()
        let resources = run(.start, box, fw, deferring: true, lines: lines)
        #expect(!fw.calls.contains("replaceAll 1"))
        let taken = try resources.changeLock().acquisitions
        let before = fw.calls.count
        resources.runDeferred()
        // Checked, rebuilt from the journal (which has the change committed), the lock converted.
        let after = Array(fw.calls.dropFirst(before))
        #expect(after.first == "skeletonIsIntact" && after.contains("replaceAll 1"), "\(after)")
        #expect(fw.inetSkeletonIntact && fw.elements.count == 1)
        #expect(try resources.changeLock().acquisitions == taken + 1)
        #expect(exclusiveIsFree(box))
        #expect(lines.lines.isEmpty, "\(lines.lines)")
    }

    @Test func aFailedChangeLeavesNothingAndReleasesItsLock() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        fw.failNextSend = EPERM
        let resources = Resources.perProcess(box.config, kernel: fw)
        resources.defersWork = true
        let lines = CollectedDiagnostics()
        _ = QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, body), resources: resources, diagnostics: lines)
        #expect(!lines.lines.isEmpty)
        #expect(!resources.hasDeferredWork)
        #expect(exclusiveIsFree(box))
    }

    @Test func aWarningAfterTheAnswerReachesTheSystemLog() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let log = try box.syslog()
        let fw = RecordingFirewall()
        _ = run(.start, box, fw, deferring: false)
        _ = run(.stopped, box, fw, deferring: false)
        fw.failConntrack = EPERM
        _ = log.lines()  // what the first start and stop logged
        let lines = CollectedDiagnostics()
        let resources = run(.start, box, fw, deferring: true, lines: lines)
        // The answer: no warning, and the start's lines are not logged yet.
        #expect(lines.lines.isEmpty, "\(lines.lines)")
        #expect(!log.lines().contains { $0.hasPrefix("applied: domain 'web'") })
        resources.runDeferred()
        // After it: the warning in the system log (and in the request's lines, which the agent
        // writes to its own log), and the decision lines.
        let logged = log.messages()
        #expect(logged.contains { $0.severity == 4 && $0.text.hasPrefix("cannot delete the connection tracking entries of flows to released ports") },
                "\(logged)")
        #expect(logged.contains { $0.text.hasPrefix("applied: domain 'web'") }, "\(logged)")
        #expect(lines.lines.count == 1 && lines.lines[0].hasPrefix("cannot delete the connection tracking entries"), "\(lines.lines)")
    }

    @Test func deferredWorkRunsInOrderAndOnlyOnce() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let resources = Resources.perProcess(box.config, kernel: RecordingFirewall())
        var order: [Int] = []
        resources.later { order.append(1) }  // not deferring: at once
        resources.defersWork = true
        resources.later { order.append(2) }
        resources.later { order.append(3) }
        #expect(order == [1])
        resources.runDeferred()
        resources.runDeferred()
        #expect(order == [1, 2, 3])
    }
}
