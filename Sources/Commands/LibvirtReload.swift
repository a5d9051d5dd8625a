#if canImport(Glibc)
import Glibc
#endif
import Engine
import Netfilter
import POSIX
import VirtPortCore

/// libvirt's rebuild of its firewall after `install`'s SIGHUP. libvirtd and virtnetworkd, on
/// SIGHUP, delete their rules and insert them again at the top of their chains (no hook runs):
/// virtport's accept rule in libvirt's `guest_input` chain (nftables backend) is then left below
/// libvirt's reject. `install`, and the package's postinst which runs it, therefore watch libvirt's
/// tables in nf_tables' notifications from before the signal, wait until libvirt's changes stop,
/// and only then reconcile (which puts the rule back in front). Bounded: a rebuild that has not
/// begun `firstChangeMs` after the signal is not coming; one still going on after `limitMs` is
/// reported, with what to run once it is over.
struct LibvirtReload {
    static let firstChangeMs: Int64 = 5_000
    static let quietMs: Int64 = 500
    static let limitMs: Int64 = 20_000

    enum Outcome: Equatable {
        /// libvirt changed its tables; the last change came `lastMs` after the signal.
        case rebuilt(lastMs: Int64)
        case noRebuild
        case stillGoing
    }

    private let monitor: NftablesMonitor

    /// The daemons that rebuild libvirt's network firewall on SIGHUP.
    static let rebuilders: Set<String> = ["libvirtd", "virtnetworkd"]

    /// Starts watching, before the signal is sent (waited for only if one of `rebuilders` got it).
    /// Nil when no rebuild that matters is coming: no daemon that owns libvirt's networks runs
    /// (libvirtd or virtnetworkd), or libvirt has no NAT network's firewall in nf_tables (then
    /// there is no reject to come first).
    static func prepare(_ config: Config) -> LibvirtReload? {
        guard LibvirtDaemons.running().contains(where: { rebuilders.contains($0.name) }),
              let nf = try? Resources.perProcess(config).kernel(), LibvirtChains.present(nf),
              let monitor = try? NftablesMonitor()
        else { return nil }
        return LibvirtReload(monitor: monitor)
    }

    /// Whether `b` is libvirt (re)building its firewall: anything deleted from or added to its tables.
    static func isLibvirts(_ b: NftablesMonitor.Commit) -> Bool {
        !b.deletedFrom.isDisjoint(with: LibvirtChains.tables)
            || b.addedTo.contains { LibvirtChains.tables.contains($0.split(separator: " ").prefix(2).joined(separator: " ")) }
    }

    /// Waits for the rebuild the signal started to end (`quietMs` without a change in libvirt's tables).
    func wait() -> Outcome {
        let start = MonotonicClock.millis()
        var last: Int64?
        while true {
            let now = MonotonicClock.millis()
            let deadline = last.map { min($0 + Self.quietMs, start + Self.limitMs) } ?? start + Self.firstChangeMs
            if now >= deadline {
                guard let last else { return .noRebuild }
                return last + Self.quietMs <= now ? .rebuilt(lastMs: last - start) : .stillGoing
            }
            let fd = monitor.descriptor
            guard (try? fd.waitReadable(timeoutMs: Int32(clamping: deadline - now))) == true else { continue }
            let (commits, overrun) = monitor.read()
            if overrun || commits.contains(where: { Self.isLibvirts($0) && !OwnCommits.committed($0) }) {
                last = MonotonicClock.millis()
            }
        }
    }

    /// What `install` says about it (stdout; a rebuild still going on is a warning, also to syslog).
    static func report(_ outcome: Outcome, config: Config) {
        switch outcome {
        case .rebuilt(let ms):
            Output.out("libvirt rebuilt its firewall rules after the SIGHUP (done \(ms) ms after it): checking virtport's accept rule")
        case .noRebuild:
            Output.out("libvirt did not rebuild its firewall rules within \(firstChangeMs / 1000) s of the SIGHUP")
        case .stillGoing:
            let line = "libvirt was still rebuilding its firewall rules \(limitMs / 1000) s after the SIGHUP: virtport's "
                + "accept rule may end up below libvirt's reject; run 'virtport reconcile' once libvirt is done (a running "
                + "agent restores the order by itself)"
            Output.err("warning: \(line)")
            EventLog(config: config).warning("install: \(line)")
        }
    }
}
