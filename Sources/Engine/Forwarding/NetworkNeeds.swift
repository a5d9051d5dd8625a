import Journal
import Netfilter
import VirtPortCore

/// What the libvirt networks of a change need: hairpin subnets and libvirt's accept rule for the
/// networks that have forwards, their removal for networks that no longer do.
struct NetworkNeeds {
    var definitions: [String: NetworkDefinition] = [:]
    /// Networks with forwards after this change, and the families they use.
    var families: [String: Set<Family>] = [:]
    /// Networks whose last forward goes away.
    var unneeded: Set<String> = []

    /// The subnets of `names` (for the hairpin sets).
    func hairpin(_ names: some Sequence<String>) -> [Subnet] {
        names.flatMap { name in
            (definitions[name]?.ips ?? []).map { Subnet(address: $0.subnet.network, prefix: UInt8($0.subnet.prefix)) }
        }
    }

    /// The one builder: the networks `mappings` forward into (pending ones forward nowhere), plus
    /// `unneeded`, each with its definition where `resolver` finds one.
    static func of(_ mappings: [Mapping], unneeded: Set<String> = [], resolver: LibvirtFiles) -> NetworkNeeds {
        var needs = NetworkNeeds()
        for m in mappings where !m.isPending {
            guard let name = m.network, let family = m.family else { continue }
            needs.families[name, default: []].insert(family)
        }
        needs.unneeded = unneeded.subtracting(needs.families.keys)
        for name in Set(needs.families.keys).union(needs.unneeded) {
            if let def = resolver.network(name) { needs.definitions[name] = def }
        }
        return needs
    }

    /// For one domain's change: the networks it keeps forwarding into, and those of `removing`
    /// that no other row of the journal still uses.
    static func forChange(keeping: [Mapping], removing: [ActiveMapping], db: JournalDB,
                          resolver: LibvirtFiles) throws(VirtPortError) -> NetworkNeeds {
        let kept = Set(keeping.filter { !$0.isPending }.compactMap(\.network))
        let ids = removing.map(\.id)
        var unneeded = Set<String>()
        for name in Set(removing.compactMap(\.mapping.network)).subtracting(kept)
        where try !db.networkHasForwards(name, excluding: ids) {
            unneeded.insert(name)
        }
        return of(keeping, unneeded: unneeded, resolver: resolver)
    }
}

/// Keeps the hairpin sets and libvirt's accept rules in step with the forwards.
struct NetworkSync {
    let nf: any FirewallDriver
    let resolver: LibvirtFiles
    /// Where a warning about libvirt's firewall goes (`Warnings`).
    var warn: (String) -> Void = { _ in }

    /// libvirt's accept rule in front of its reject for every network of `needs` that has forwards,
    /// removed from those it names as unneeded.
    /// - Returns: one line per network whose accept rule had to be put right, saying what was done.
    @discardableResult
    func syncFirewall(_ needs: NetworkNeeds) throws(VirtPortError) -> [String] {
        let firewall = LibvirtFirewall(nf: nf, warn: warn)
        var placed: [String] = []
        for (name, families) in needs.families.sorted(by: { $0.key < $1.key }) {
            guard let def = needs.definitions[name] else { continue }
            let fixed = try firewall.ensure(def, families: families)
            if !fixed.isEmpty {
                placed.append("libvirt's accept rule for network \(name) " + fixed.map(\.repair).joined(separator: "; "))
            }
        }
        for name in needs.unneeded.sorted() {
            if let def = needs.definitions[name] { try firewall.remove(def) }
        }
        return placed
    }

    /// Makes the hairpin sets and libvirt's accept rules match the forwards the journal has in the
    /// kernel: subnets and rules for every network that has one, none for `others` that no longer
    /// do. Reconcile's last step (the hooks keep both in step with each change).
    /// - Returns: what had to be put back (for the heal's log line), empty when all was in place.
    @discardableResult
    func sync(db: JournalDB, others: Set<String>) throws(VirtPortError) -> [String] {
        var fixed: [String] = []
        let needs = NetworkNeeds.of(try db.activeMappings().filter(\.isInKernel).map(\.mapping), unneeded: others,
                                    resolver: resolver)
        do throws(NetfilterError) {
            let current: [Subnet]
            do { current = try nf.listHairpin() } catch where error.isMissingTable { current = [] }
            let wanted = Set(needs.hairpin(needs.families.keys))
            let add = wanted.subtracting(current), del = Set(current).subtracting(wanted)
            if !add.isEmpty || !del.isEmpty {
                try nf.apply(adding: [], removing: [], hairpinAdding: Array(add), hairpinRemoving: Array(del))
                if !add.isEmpty { fixed.append("\(add.count) hairpin subnets") }
            }
        } catch {
            throw .operational("cannot update the hairpin sets", cause: error)
        }
        return fixed + (try syncFirewall(needs))
    }
}

extension NetworkSync {
    /// What is wrong with libvirt's accept rule for each network `mappings` forward into: read-only
    /// (reconcile's plan, doctor).
    static func acceptRuleFindings(_ mappings: [Mapping], nf: any FirewallDriver,
                                   resolver: LibvirtFiles) throws(VirtPortError) -> [(network: String, LibvirtFirewall.Finding)] {
        let needs = NetworkNeeds.of(mappings, resolver: resolver)
        let firewall = LibvirtFirewall(nf: nf)
        var out: [(network: String, LibvirtFirewall.Finding)] = []
        for (name, families) in needs.families.sorted(by: { $0.key < $1.key }) {
            guard let def = needs.definitions[name] else { continue }
            out += try firewall.inspect(def, families: families).map { (name, $0) }
        }
        return out
    }
}
