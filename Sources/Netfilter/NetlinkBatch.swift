import CNftnl
import VirtPortCore

/// What one message of a batch does: enough to name the object in an error.
enum BatchOperation {
    /// A table, chain, set or rule: "create table inet virtport".
    case object(String)
    /// NEWSETELEM / DELSETELEM on a `fwd*` map.
    case forwardElements(adding: Bool, map: String, elements: [ForwardElement])
    /// NEWSETELEM / DELSETELEM on a hairpin set; `owners[i]` is the subnet of kernel element i.
    case hairpinElements(adding: Bool, set: String, subnets: [Subnet], owners: [Int])
    /// The NEWTABLE with NLM_F_EXCL that creates the skeleton: EEXIST means "someone was first".
    case createTable(String)

    var isRemoval: Bool {
        switch self {
        case .forwardElements(let adding, _, _), .hairpinElements(let adding, _, _, _): !adding
        default: false
        }
    }

    /// The text of an error for this message; `element` is the index of the kernel element the
    /// kernel pointed at (extended ack), when known.
    func describe(element: Int?) -> String {
        switch self {
        case .object(let text):
            return text
        case .createTable(let table):
            return "create table inet \(table)"
        case .forwardElements(let adding, let map, let elements):
            let verb = adding ? "add element" : "delete element"
            let place = adding ? "to map \(map)" : "from map \(map)"
            if let element, elements.indices.contains(element) { return "\(verb) \(elements[element]) \(place)" }
            if elements.count == 1 { return "\(verb) \(elements[0]) \(place)" }
            return "\(verb)s (\(elements.count)) \(place)"
        case .hairpinElements(let adding, let set, let subnets, let owners):
            let verb = adding ? "add element" : "delete element"
            let place = adding ? "to set \(set)" : "from set \(set)"
            if let element, owners.indices.contains(element) { return "\(verb) \(subnets[owners[element]]) \(place)" }
            if subnets.count == 1 { return "\(verb) \(subnets[0]) \(place)" }
            return "\(verb)s (\(subnets.count)) \(place)"
        }
    }
}

/// One nf_tables transaction being written: BEGIN, messages, END, in a single datagram so the
/// kernel applies all of it or nothing. Every message between BEGIN and END asks for an ack.
///
/// Messages are built by libnftnl into a scratch buffer and copied out; `messages` remembers
/// each one's sequence number, bytes and meaning so that every NLMSG_ERROR maps back to it.
public struct NetlinkBatch {
    struct Message {
        var sequence: UInt32
        var range: Range<Int>
        var operation: BatchOperation
    }

    private(set) var bytes: [UInt8] = []
    private(set) var messages: [Message] = []
    private(set) var beginSequence: UInt32
    private(set) var nextSequence: UInt32
    private let scratch: ScratchBuffer

    /// Largest message the batch builds: element lists are split to stay under it (an attribute's
    /// length is 16 bits, so the element list of one message must stay below 64 KiB).
    static let messageBudget = 32 * 1024

    init(firstSequence: UInt32, scratch: ScratchBuffer) {
        self.scratch = scratch
        beginSequence = firstSequence
        nextSequence = firstSequence &+ 1
        let length = Int(nftnl_batch_begin(scratch.chars, firstSequence).pointee.nlmsg_len)
        bytes += scratch.bytes(length)
    }

    var isEmpty: Bool { messages.isEmpty }

    /// Appends one nf_tables message of `type` (NFT_MSG_*) in `family` (inet unless told);
    /// `payload` fills it.
    mutating func append(_ type: nf_tables_msg_types, flags: UInt16, family: UInt16 = UInt16(NFPROTO_INET),
                         operation: BatchOperation, payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        let sequence = nextSequence
        nextSequence &+= 1
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(type.rawValue), family,
                                           flags | Netlink.ack, sequence)!
        payload(header)
        let length = Int(header.pointee.nlmsg_len)
        precondition(length <= ScratchBuffer.capacity, "netlink message overran the scratch buffer")
        let start = bytes.count
        bytes += scratch.bytes(length)
        messages.append(Message(sequence: sequence, range: start..<bytes.count, operation: operation))
    }

    /// Closes the batch (NFNL_MSG_BATCH_END) and returns the datagram to send.
    mutating func finish() -> [UInt8] {
        let length = Int(nftnl_batch_end(scratch.chars, nextSequence).pointee.nlmsg_len)
        nextSequence &+= 1
        bytes += scratch.bytes(length)
        return bytes
    }

    func message(sequence: UInt32) -> Message? {
        // Sequence numbers are consecutive from beginSequence + 1.
        let index = Int(sequence &- beginSequence) - 1
        guard messages.indices.contains(index), messages[index].sequence == sequence else { return nil }
        return messages[index]
    }

    /// Index of the element of a NEWSETELEM/DELSETELEM message that contains the attribute at
    /// `offset` (from the start of the message), as reported in an extended ack.
    func elementIndex(in message: Message, atOffset offset: Int) -> Int? {
        let start = message.range.lowerBound
        let top = NetlinkAttribute.list(bytes, start + Netlink.headerLength + Netlink.nfgenmsgLength..<message.range.upperBound)
        guard let list = top.first(where: { $0.type == UInt16(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue) }) else { return nil }
        let target = start + offset
        for (index, element) in NetlinkAttribute.list(bytes, list.value).enumerated()
        where element.offset <= target && target < element.end {
            return index
        }
        return nil
    }
}

/// A reusable buffer libnftnl writes one message into.
final class ScratchBuffer {
    static let capacity = 64 * 1024
    let raw = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
    var chars: UnsafeMutablePointer<CChar> { raw.assumingMemoryBound(to: CChar.self) }
    init() { raw.initializeMemory(as: UInt8.self, repeating: 0, count: Self.capacity) }
    deinit { raw.deallocate() }
    func bytes(_ count: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: raw, count: count) }
}
