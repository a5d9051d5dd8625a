import Foundation
import Testing
@testable import Agent
import Engine
import Libvirt
import POSIX
import VirtPortCore

/// libvirt's events (README "Agent"): the watcher reconnects with back-off while libvirt does not
/// answer, reconciles at every connect, converges a domain on its started/stopped/metadata events
/// (reading its live XML then), reconciles on a network start, ignores what is not its business, and
/// reconnects when the connection closes. A fake libvirt hands the events in.
@Suite struct LibvirtWatcherTests {
    final class FakeConnection: LibvirtEvents {
        let handler: @Sendable (LibvirtEvent) -> Void
        let live: [String: [UInt8]]
        init(handler: @escaping @Sendable (LibvirtEvent) -> Void, live: [String: [UInt8]]) {
            self.handler = handler
            self.live = live
        }
        var networkEvents: Bool { true }
        var networkProblem: String { "" }
        func running() throws(VirtPortError) -> [String: RunningDomain] {
            [LeaseWatcherTests.uuid: RunningDomain(domain: nil, uuid: LeaseWatcherTests.uuid, name: "web")]
        }
        func liveXML(uuid: String) throws(VirtPortError) -> [UInt8]? { live[uuid] }
    }

    /// Refuses the first `failures` connects, then connects; keeps the event handlers it was given.
    final class FakeLibvirt: LibvirtEventSource {
        let state = Shared<(failures: Int, connects: Int, handlers: [@Sendable (LibvirtEvent) -> Void])>((1, 0, []))
        let live: [String: [UInt8]]
        init(live: [String: [UInt8]]) { self.live = live }
        func startEventLoop() throws(VirtPortError) {}
        func connect(uri: String, handler: @escaping @Sendable (LibvirtEvent) -> Void) -> (any LibvirtEvents)? {
            let refused = state.with { s -> Bool in
                s.connects += 1
                if s.failures > 0 { s.failures -= 1; return true }
                s.handlers.append(handler)
                return false
            }
            return refused ? nil : FakeConnection(handler: handler, live: live)
        }
        var lastFailure: String { "cannot connect to test:///" }
        func send(_ e: LibvirtEvent) { state.now.handlers.last?(e) }
    }

    @Test func reconnectsReconcilesAndConvergesOnItsEvents() throws {
        let f = try AgentFixture(libvirtURI: "test:///")
        defer { f.cleanup() }
        let libvirt = FakeLibvirt(live: [LeaseWatcherTests.uuid: Array(LeaseWatcherTests.xml.utf8)])
        let seen = Shared<[String]>([])
        let watcher = LibvirtWatcher(libvirt: libvirt, converge: { _, uuid, name, domain, reason, _ in
            seen.with { $0.append("converge \(name) \(domain == nil ? "gone" : "running"): \(reason)") }
        }, reconcile: { _, running, reason in
            seen.with { $0.append("reconcile \(running.count): \(reason)") }
        })
        try watcher.start(f.context)
        // The first connect is refused; the retry 500 ms later connects and reconciles.
        #expect(eventually(timeout: 5) { seen.now == ["reconcile 1: agent: connected to libvirt"] })
        #expect(libvirt.state.now.connects == 2)
        let started = LibvirtEvent.lifecycle(uuid: LeaseWatcherTests.uuid, name: "web", event: LibvirtEvent.domainStarted)
        libvirt.send(started)
        libvirt.send(.lifecycle(uuid: "22222222-2222-4222-8222-222222222222", name: "gone", event: LibvirtEvent.domainStopped))
        libvirt.send(.lifecycle(uuid: LeaseWatcherTests.uuid, name: "web", event: 4))  // suspended: not its business
        libvirt.send(.metadata(uuid: LeaseWatcherTests.uuid, name: "web", uri: "urn:other"))  // another namespace
        libvirt.send(.metadata(uuid: LeaseWatcherTests.uuid, name: "web", uri: DomainXML.namespace))
        libvirt.send(.network(name: "default", event: LibvirtEvent.networkStarted))
        #expect(eventually { seen.now.count == 5 })
        #expect(Array(seen.now.dropFirst()) == [
            "converge web running: agent: libvirt event, domain started",
            "converge gone gone: agent: libvirt event, domain stopped",
            "converge web running: agent: libvirt event, domain metadata changed",
            "reconcile 1: agent: network default started",
        ])
        // The connection closes: reconnect (and reconcile) 500 ms later; the old connection's
        // events are dropped from then on.
        let old = libvirt.state.now.handlers.last!
        libvirt.send(.closed(reason: 1))
        #expect(eventually(timeout: 5) { seen.now.count == 6 })
        #expect(seen.now.last == "reconcile 1: agent: connected to libvirt")
        old(started)
        usleep(100_000)
        #expect(seen.now.count == 6)
        libvirt.send(started)
        #expect(eventually { seen.now.count == 7 })
    }
}
