/// A kernel stand-in for unit tests: records every datagram a session sends and acknowledges
/// every message that asks for an ack (answering dumps with NLMSG_DONE), unless told to fail a
/// sequence number. Tests then check the exact request bytes, or which messages a change sent.
public final class RecordingTransport: NetlinkTransport {
    public var sent: [[UInt8]] = []
    var queue: [[UInt8]] = []
    public var reservations: [(Int, Int)] = []
    /// Errors to return: sequence number → (errno, attribute offset).
    public var errors: [UInt32: (Int32, Int?)] = [:]
    /// Extra replies for a request of this nf_tables message type (NFT_MSG_*), before its terminator.
    public var dumpReplies: [UInt16: [[UInt8]]] = [:]
    /// Every nf_tables message type (NFT_MSG_*, without the subsystem byte) sent, in order.
    public var sentMessageTypes: [UInt16] {
        sent.flatMap { d in NetlinkMessage.split(d).map { $0.type & 0xff } }
    }

    public init() {}

    public func send(_ datagram: [UInt8]) throws(NetfilterError) {
        sent.append(datagram)
        var answer: [UInt8] = []
        for message in NetlinkMessage.split(datagram) {
            let header = Array(datagram[message.offset..<message.offset + 16])
            if message.flags & Netlink.dump == Netlink.dump {
                for reply in dumpReplies[message.type & 0xff] ?? [] { answer += reply }
                if let (code, _) = errors[message.sequence] {
                    answer += Self.ack(header: header, errno: code, offset: nil)
                } else {
                    answer += Self.message(type: Netlink.typeDone, flags: Netlink.multi, sequence: message.sequence, payload: [0, 0, 0, 0])
                }
            } else if message.flags & Netlink.ack != 0 {
                let (code, offset) = errors[message.sequence] ?? (0, nil)
                answer += Self.ack(header: header, errno: code, offset: offset)
            }
        }
        if !answer.isEmpty { queue.append(answer) }
    }

    public func receive(timeout: Int32) throws(NetfilterError) -> [UInt8]? {
        queue.isEmpty ? nil : queue.removeFirst()
    }

    public func reserve(sendBytes: Int, replies: Int) throws(NetfilterError) {
        reservations.append((sendBytes, replies))
    }

    public static func message(type: UInt16, flags: UInt16, sequence: UInt32, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out += le32(UInt32(16 + payload.count))
        out += le16(type) + le16(flags) + le32(sequence) + le32(0)
        out += payload
        while out.count % 4 != 0 { out.append(0) }
        return out
    }

    /// NLMSG_ERROR, capped, with NLMSGERR_ATTR_OFFS when `offset` is given.
    public static func ack(header: [UInt8], errno: Int32, offset: Int?) -> [UInt8] {
        var payload = le32(UInt32(bitPattern: -errno)) + header
        var flags = Netlink.capped
        if let offset {
            flags |= Netlink.ackTLVs
            payload += le16(8) + le16(2) + le32(UInt32(offset))
        }
        let sequence = UInt32(header[8]) | UInt32(header[9]) << 8 | UInt32(header[10]) << 16 | UInt32(header[11]) << 24
        return message(type: Netlink.typeError, flags: flags, sequence: sequence, payload: payload)
    }
}

private func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
