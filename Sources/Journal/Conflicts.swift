import VirtPortCore

/// When two mappings would claim the same packets on the host.
enum Conflicts {
    /// Same protocol, overlapping host port ranges, overlapping addresses (nil or 0.0.0.0/:: = every
    /// local address of the family; different families never overlap; an unknown family — pending
    /// and no host address — overlaps both) and overlapping devices (nil = every interface).
    static func overlap(_ a: Mapping, _ b: Mapping) -> Bool {
        guard a.proto == b.proto, a.hostPorts.overlaps(b.hostPorts) else { return false }
        if let fa = a.family, let fb = b.family, fa != fb { return false }
        if let ha = specific(a.hostAddress), let hb = specific(b.hostAddress), ha != hb { return false }
        if let da = a.dev, let db = b.dev, da != db { return false }
        return true
    }

    private static func specific(_ address: IPAddress?) -> IPAddress? {
        guard let address, !address.isUnspecified else { return nil }
        return address
    }

    /// "host port tcp/8080 is already forwarded to domain 'web1' (uuid …)", naming the first
    /// overlapping port.
    static func message(_ wanted: Mapping, _ holder: ActiveMapping) -> String {
        let port = max(wanted.hostPorts.start, holder.mapping.hostPorts.start)
        let verb = holder.state == .pending ? "claimed (pending) by" : "forwarded to"
        return "host port \(wanted.proto.rawValue)/\(port) is already \(verb) domain '\(holder.domain.name)' "
            + "(uuid \(holder.domain.uuid))"
    }
}
