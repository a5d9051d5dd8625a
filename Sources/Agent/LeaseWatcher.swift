#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Engine
import POSIX
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
final class LeaseWatcher: Watcher, @unchecked Sendable {
    let name = "DHCP leases"
    private var inotify: Int32 = -1
    private var directory = ""
    private var dirWatch: Int32 = -1
    private var parentWatch: Int32 = -1
    /// On the work queue: each status file's leases as last read.
    private var seen: [String: [DnsmasqStatus.Compact]] = [:]

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let state = agent.config.libvirtStateDir
        directory = "\(state)/dnsmasq"
        inotify = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard inotify >= 0 else { throw .operational("inotify", cause: Errno.current("inotify_init1")) }
        // libvirt creates dnsmasq/ with the first network: until then watch its parent for it.
        parentWatch = inotify_add_watch(inotify, state, UInt32(IN_CREATE | IN_MOVED_TO))
        guard parentWatch >= 0 || addDirectoryWatch() else {
            throw .operational("cannot watch \(state) or \(directory)", cause: Errno.current("inotify_add_watch"))
        }
        if addDirectoryWatch() {
            // Every lease counts as new at start: forwards left pending while the agent was down
            // (or killed mid-event) are completed now; for the others it is a no-op.
            let received = MonotonicClock.micros()
            agent.work.async { [self] in
                for file in FileSystem.listDirectory(directory).sorted() where file.hasSuffix(".status") {
                    changed(file, received: received, agent)
                }
            }
        }
        try agent.loop.watch(inotify) { [self] in readable(agent) }
    }

    private func addDirectoryWatch() -> Bool {
        if dirWatch >= 0 { return true }
        dirWatch = inotify_add_watch(inotify, directory, UInt32(IN_CLOSE_WRITE | IN_MOVED_TO))
        return dirWatch >= 0
    }

    /// On the loop: which status files changed.
    private func readable(_ agent: AgentContext) {
        let received = MonotonicClock.micros()
        var files = Set<String>()
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(inotify, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var offset = 0
            while offset + 16 <= n {
                let (wd, length) = buffer.withUnsafeBytes { raw in
                    (raw.loadUnaligned(fromByteOffset: offset, as: Int32.self),
                     Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)))
                }
                let nameBytes = buffer[(offset + 16)..<min(offset + 16 + length, n)].prefix { $0 != 0 }
                let file = String(decoding: nameBytes, as: UTF8.self)
                if wd == parentWatch && file == "dnsmasq" && addDirectoryWatch() {
                    files.formUnion(FileSystem.listDirectory(directory).filter { $0.hasSuffix(".status") })
                } else if wd == dirWatch && file.hasSuffix(".status") {
                    files.insert(file)
                }
                offset += 16 + length
            }
        }
        if files.isEmpty { return }
        agent.work.async { [self] in
            for file in files.sorted() { changed(file, received: received, agent) }
        }
    }

    /// Reads one status file; returns the MACs whose lease appeared or moved since the last read
    /// (nil: the file is not a complete lease list and was ignored). On the work queue.
    private func read(_ file: String, _ agent: AgentContext) -> Set<MACAddress>? {
        let path = "\(directory)/\(file)"
        // Mapped and parsed in one pass (a 65,536-lease file costs milliseconds, not seconds).
        guard let parsed = DnsmasqStatus.compact(path: path) else {
            agent.log.warning("agent: lease file \(path) is not a complete lease list (half-written or garbage): "
                + "ignored, forwards unchanged")
            return nil
        }
        let now = DnsmasqStatus.sortedCurrent(parsed, now: Int64(time(nil)))
        let before = seen[file] ?? []
        seen[file] = now
        // Parsed once, diffed by a merge of two sorted lists: a 65,536-lease file is one pass.
        // A MAC whose leases all vanished changes nothing (the guest probably still has the address).
        return Set(DnsmasqStatus.changedMACs(before: before, now: now)
            .filter { DnsmasqStatus.holds(sorted: now, mac: $0) }
            .map { DnsmasqStatus.Compact(mac: $0, high: 0, low: 0, v6: false, expiry: 0).macAddress })
    }

    private func changed(_ file: String, received: Int64, _ agent: AgentContext) {
        guard let macs = read(file, agent), !macs.isEmpty else { return }
        let bridge = String(file.dropLast(".status".count))
        let running = RunningDomains.list(runDir: agent.config.libvirtRunDir)
        for entry in running.values.sorted(by: { $0.name < $1.name }) {
            // With metadata, or guarded by the [guard] policy (its allowed addresses follow the lease).
            guard let domain = entry.domain, domain.metadata != nil || agent.config.policy.guardsAnyPort else { continue }
            let owned = domain.interfaces.compactMap(\.mac).filter(macs.contains)
            guard !owned.isEmpty else { continue }
            let what = owned.map { mac in
                let key = DnsmasqStatus.Compact.key(mac)
                return "\(mac) -> \((seen[file] ?? []).filter { $0.mac == key }.map { "\($0.address)" }.joined(separator: ","))"
            }
            agent.say("lease on \(bridge): \(what.joined(separator: " ")) for domain \(entry.name)")
            agent.converge(uuid: entry.uuid, name: entry.name, domain: domain,
                           reason: "agent: DHCP lease on \(bridge), \(what.joined(separator: ", "))",
                           source: "lease", started: received)
        }
    }
}
