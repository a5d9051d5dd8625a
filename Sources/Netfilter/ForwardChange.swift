import VirtPortCore

/// What one `apply` asks of the kernel, validated and without duplicates (order kept).
struct Change {
    var adding: [ForwardElement]
    var removing: [ForwardElement]
    var hairpinAdding: [Subnet]
    var hairpinRemoving: [Subnet]

    init(adding: [ForwardElement], removing: [ForwardElement], hairpinAdding: [Subnet],
         hairpinRemoving: [Subnet]) throws(NetfilterError) {
        for element in adding {
            try ForwardMap.validate(element, operation: "add element \(element) to map \(element.mapName)")
        }
        for element in removing {
            try ForwardMap.validate(element, operation: "delete element \(element) from map \(element.mapName)")
        }
        self.adding = Self.unique(adding)
        self.removing = Self.unique(removing)
        // Subnet's initialiser already masks host bits; normalise values set field by field too.
        self.hairpinAdding = Self.unique(hairpinAdding.map { Subnet(address: $0.address, prefix: $0.prefix) })
        self.hairpinRemoving = Self.unique(hairpinRemoving.map { Subnet(address: $0.address, prefix: $0.prefix) })
    }

    var isEmpty: Bool { adding.isEmpty && removing.isEmpty && hairpinAdding.isEmpty && hairpinRemoving.isEmpty }

    /// Deletes first, then adds: a host port can move to another guest within one batch.
    func append(to batch: inout NetlinkBatch, table: String) {
        ElementMessages.appendForward(to: &batch, table: table, adding: false, removing)
        ElementMessages.appendHairpin(to: &batch, table: table, adding: false, hairpinRemoving)
        ElementMessages.appendForward(to: &batch, table: table, adding: true, adding)
        ElementMessages.appendHairpin(to: &batch, table: table, adding: true, hairpinAdding)
    }

    /// Drops removals the kernel no longer holds, reading back only the maps and sets concerned.
    /// An element whose key is there with other data belongs to someone else now: it stays.
    mutating func keepPresentRemovals(in session: NetfilterSession) throws(NetfilterError) {
        if !removing.isEmpty {
            var present = Set<ForwardElement>()
            for map in Set(removing.map(ForwardMap.init)) {
                present.formUnion(try session.forwardElements(of: map))
            }
            removing = removing.filter(present.contains)
        }
        if !hairpinRemoving.isEmpty {
            var present = Set<Subnet>()
            for set in Set(hairpinRemoving.map { HairpinSet(family: $0.family) }) {
                present.formUnion(try session.hairpinSubnets(of: set))
            }
            hairpinRemoving = hairpinRemoving.filter(present.contains)
        }
    }

    static func unique<T: Hashable>(_ items: [T]) -> [T] {
        var seen = Set<T>()
        seen.reserveCapacity(items.count)
        return items.filter { seen.insert($0).inserted }
    }
}
