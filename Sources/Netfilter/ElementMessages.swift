import CNftnl
import VirtPortCore

/// NEWSETELEM / DELSETELEM messages for the `fwd*` maps and the hairpin sets. Elements of one
/// map share a message, split so each message stays under `NetlinkBatch.messageBudget`.
enum ElementMessages {
    /// Appends adds (`adding`, no NLM_F_EXCL: an identical element is accepted again; the same key
    /// with other data fails with EEXIST) or deletes of `elements`, grouped by map in table order.
    static func appendForward(to batch: inout NetlinkBatch, table: String, adding: Bool, _ elements: [ForwardElement]) {
        var byMap: [ForwardMap: [ForwardElement]] = [:]
        for element in elements { byMap[ForwardMap(element), default: []].append(element) }
        for map in ForwardMap.all {
            guard let mine = byMap[map] else { continue }
            // List element + key nest + value + data nest + value + flags: 28 bytes of headers.
            let perMessage = max(1, NetlinkBatch.messageBudget / (28 + map.keyLength + map.dataLength))
            var start = 0
            while start < mine.count {
                let chunk = Array(mine[start..<min(start + perMessage, mine.count)])
                let kernel = chunk.map { (key: map.key($0), data: adding ? map.data($0) : nil, flags: UInt32(0)) }
                append(to: &batch, table: table, set: map.name, adding: adding, kernel,
                       operation: .forwardElements(adding: adding, map: map.name, elements: chunk))
                start += perMessage
            }
        }
    }

    /// Appends adds or deletes of `subnets` in the hairpin sets (two kernel elements per prefix).
    static func appendHairpin(to batch: inout NetlinkBatch, table: String, adding: Bool, _ subnets: [Subnet]) {
        for set in HairpinSet.all {
            let mine = subnets.filter { $0.family == set.family }
            guard !mine.isEmpty else { continue }
            let perMessage = max(1, NetlinkBatch.messageBudget / (2 * (28 + set.keyLength)))
            var start = 0
            while start < mine.count {
                let chunk = Array(mine[start..<min(start + perMessage, mine.count)])
                var kernel: [(key: [UInt8], data: [UInt8]?, flags: UInt32)] = []
                var owners: [Int] = []
                for (index, subnet) in chunk.enumerated() {
                    for element in set.elements(subnet) {
                        kernel.append((element.key, nil, element.isEnd ? UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue) : 0))
                        owners.append(index)
                    }
                }
                append(to: &batch, table: table, set: set.name, adding: adding, kernel,
                       operation: .hairpinElements(adding: adding, set: set.name, subnets: chunk, owners: owners))
                start += perMessage
            }
        }
    }

    /// One NEWSETELEM/DELSETELEM message built by libnftnl.
    /// - Parameter objrefs: for an object map, the object each element points to (adds only).
    static func append(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet, set name: String,
                       adding: Bool, _ elements: [(key: [UInt8], data: [UInt8]?, flags: UInt32)],
                       objrefs: [String]? = nil, operation: BatchOperation) {
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), name)
        for (index, element) in elements.enumerated() {
            let e = nftnl_set_elem_alloc()!
            if adding, let objrefs { nftnl_set_elem_set_str(e, UInt16(NFTNL_SET_ELEM_OBJREF), objrefs[index]) }
            element.key.withUnsafeBytes {
                _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count))
            }
            if let data = element.data {
                data.withUnsafeBytes {
                    _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count))
                }
            }
            if element.flags != 0 { nftnl_set_elem_set_u32(e, UInt16(NFTNL_SET_ELEM_FLAGS), element.flags) }
            nftnl_set_elem_add(s, e)  // the set owns it now
        }
        batch.append(adding ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM, flags: adding ? Netlink.create : 0,
                     family: UInt16(family.nfproto), operation: operation) { nftnl_set_elems_nlmsg_build_payload($0, s) }
    }
}
