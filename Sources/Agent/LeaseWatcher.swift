#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX
import Synchronization
import VirtPortCore

/// DHCP leases (README "Agent"): libvirt's leaseshelper rewrites `BRIDGE.status` under
/// `libvirt_state_dir/dnsmasq/` by rename each time dnsmasq hands out, renews or releases a lease.
/// inotify on that directory (no polling) tells which file changed; the agent compares the file's
/// unexpired leases with what it saw last and converges every running domain that owns a MAC whose
/// lease appeared or moved: a pending forward is completed, one that followed a lease follows it to
/// the new address (old elements out, new in, one batch). A lease that vanished (released, expired)
/// changes nothing until another appears: the guest probably still has the address. A MAC of no
/// running VM changes nothing. A file that is not one complete lease list (half-written by hand,
/// garbage) is ignored with a warning, and what was seen before stays the reference.
final class LeaseWatcher: Watcher {
    let name = "DHCP leases"
    /// The running domains (libvirt's status files; unit tests hand in a list).
    private let running: @Sendable (AgentContext) -> [String: RunningDomain]
    /// Converges one domain whose lease moved (`AgentContext.converge`; unit tests record calls).
    private let converge: @Sendable (AgentContext, RunningDomain, _ reason: String, _ received: Int64) -> Void
    /// Set by `start`, read on the loop thread.
    private let watches = Mutex(Watches())
    /// On the work queue: each status file's leases as last read.
    private let seen = Mutex<[String: [DnsmasqStatus.Compact]]>([:])

    private struct Watches {
        var inotify: Inotify?
        var directory = ""
        /// On libvirt's state directory until `dnsmasq/` exists, then on `dnsmasq/` itself.
        var parent: Inotify.Watch?
        var directoryWatch: Inotify.Watch?

        mutating func addDirectoryWatch() -> Bool {
            if directoryWatch != nil { return true }
            directoryWatch = try? inotify?.add(directory, [.closeWrite, .movedTo])
            return directoryWatch != nil
        }
    }

    init(running: @escaping @Sendable (AgentContext) -> [String: RunningDomain] = { RunningDomains.list(runDir: $0.config.libvirtRunDir) },
         converge: @escaping @Sendable (AgentContext, RunningDomain, String, Int64) -> Void = { agent, entry, reason, received in
             agent.converge(uuid: entry.uuid, name: entry.name, domain: entry.domain, reason: reason, source: "lease", started: received)
         }) {
        self.running = running
        self.converge = converge
    }

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let state = agent.config.libvirtStateDir
        let directory = "\(state)/dnsmasq"
        let inotify: Inotify
        do { inotify = try Inotify() } catch { throw .operational("inotify", cause: error) }
        let present = try watches.withLock { (w) throws(VirtPortError) -> Bool in
            w.inotify = inotify
            w.directory = directory
            // libvirt creates dnsmasq/ with the first network: until then watch its parent for it.
            let parentError: Errno?
            do throws(Errno) { w.parent = try inotify.add(state, [.create, .movedTo]); parentError = nil } catch { parentError = error }
            let present = w.addDirectoryWatch()
            if let parentError, !present {
                throw .operational("cannot watch \(state) or \(directory)", cause: parentError)
            }
            return present
        }
        if present {
            // Every lease counts as new at start: forwards left pending while the agent was down
            // (or killed mid-event) are completed now; for the others it is a no-op.
            let received = MonotonicClock.micros()
            agent.work.async { [self] in
                for file in FileSystem.listDirectory(directory).sorted() where file.hasSuffix(".status") {
                    changed(file, in: directory, received: received, agent)
                }
            }
        }
        try agent.loop.watch(inotify.descriptor) { [self] in readable(agent) }
    }

    /// On the loop: which status files changed.
    private func readable(_ agent: AgentContext) {
        let received = MonotonicClock.micros()
        let (files, directory) = watches.withLock { w -> (Set<String>, String) in
            guard let inotify = w.inotify else { return ([], w.directory) }
            return (Self.changedFiles(inotify.read(), &w), w.directory)
        }
        if files.isEmpty { return }
        agent.work.async { [self] in
            for file in files.sorted() { changed(file, in: directory, received: received, agent) }
        }
    }

    /// The status files `events` say changed: a `.status` file written or renamed into
    /// `dnsmasq/`, or every one of them when `dnsmasq/` itself appeared (then watched).
    private static func changedFiles(_ events: [Inotify.Event], _ w: inout Watches) -> Set<String> {
        var files = Set<String>()
        for e in events {
            if e.watch == w.parent && e.name == "dnsmasq" && w.addDirectoryWatch() {
                files.formUnion(FileSystem.listDirectory(w.directory).filter { $0.hasSuffix(".status") })
            } else if e.watch == w.directoryWatch && e.name.hasSuffix(".status") {
                files.insert(e.name)
            }
        }
        return files
    }

    /// Reads one status file; returns the MACs whose lease appeared or moved since the last read
    /// (nil: the file is not a complete lease list and was ignored), and the file's leases now.
    /// On the work queue.
    private func read(_ path: String, _ file: String, _ agent: AgentContext) -> (Set<MACAddress>, [DnsmasqStatus.Compact])? {
        // Mapped and parsed in one pass (a 65,536-lease file costs milliseconds, not seconds).
        guard let parsed = DnsmasqStatus.compact(path: path) else {
            agent.log.warning("agent: lease file \(path) is not a complete lease list (half-written or garbage): "
                + "ignored, forwards unchanged")
            return nil
        }
        let now = DnsmasqStatus.sortedCurrent(parsed, now: Int64(time(nil)))
        let before = seen.withLock { seen in
            defer { seen[file] = now }
            return seen[file] ?? []
        }
        // Parsed once, diffed by a merge of two sorted lists: a 65,536-lease file is one pass.
        // A MAC whose leases all vanished changes nothing (the guest probably still has the address).
        let macs = Set(DnsmasqStatus.changedMACs(before: before, now: now)
            .filter { DnsmasqStatus.holds(sorted: now, mac: $0) }
            .map { DnsmasqStatus.Compact(mac: $0, high: 0, low: 0, v6: false, expiry: 0).macAddress })
        return (macs, now)
    }

    private func changed(_ file: String, in directory: String, received: Int64, _ agent: AgentContext) {
        guard let (macs, leases) = read("\(directory)/\(file)", file, agent), !macs.isEmpty else { return }
        let bridge = String(file.dropLast(".status".count))
        for entry in running(agent).values.sorted(by: { $0.name < $1.name }) {
            // With metadata, or guarded by the [guard] policy (its allowed addresses follow the lease).
            guard let domain = entry.domain, domain.metadata != nil || agent.config.policy.guardsAnyPort else { continue }
            let owned = domain.interfaces.compactMap(\.mac).filter(macs.contains)
            guard !owned.isEmpty else { continue }
            let what = owned.map { mac in
                let key = DnsmasqStatus.Compact.key(mac)
                return "\(mac) -> \(leases.filter { $0.mac == key }.map { "\($0.address)" }.joined(separator: ","))"
            }
            agent.say("lease on \(bridge): \(what.joined(separator: " ")) for domain \(entry.name)")
            converge(agent, entry, "agent: DHCP lease on \(bridge), \(what.joined(separator: ", "))", received)
        }
    }
}
