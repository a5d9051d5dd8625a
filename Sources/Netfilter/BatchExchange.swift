#if canImport(Glibc)
import Glibc
#endif

/// One failed message of a batch.
struct BatchFailure {
    var operation: BatchOperation
    var error: NetfilterError
}

/// Sends a finished batch and reads back every answer. `mnl_cb_run` stops at the first ACK;
/// here every NLMSG_ERROR is read and matched to its message by sequence number, so one call
/// learns every failure of the transaction, each naming its object (and, from the extended ack,
/// the element).
struct BatchExchange {
    /// How long to wait for acks still missing once the queue is drained. nf_tables handles the
    /// whole batch inside sendmsg(), so the answers are normally all queued when it returns.
    static let replyTimeout: Int32 = 5000

    /// Returns the failures; empty when the kernel committed the batch.
    static func run(_ batch: inout NetlinkBatch, on transport: any NetlinkTransport) throws(NetfilterError) -> [BatchFailure] {
        let datagram = batch.finish()
        try transport.reserve(sendBytes: datagram.count, replies: batch.messages.count)
        try transport.send(datagram)

        var pending = Set(batch.messages.map(\.sequence))
        var failures: [(index: Int, failure: BatchFailure)] = []
        var batchError: NetfilterError?
        while true {
            guard let reply = try transport.receive(timeout: pending.isEmpty ? 0 : replyTimeout) else {
                if pending.isEmpty { break }
                throw NetfilterError(errno: ETIMEDOUT, operation: "wait for nf_tables to answer \(pending.count) of \(batch.messages.count) messages")
            }
            for message in NetlinkMessage.split(reply) {
                guard let ack = NetlinkAck(message, in: reply) else { continue }
                if let sent = batch.message(sequence: ack.sequence) {
                    guard pending.remove(ack.sequence) != nil, ack.errno != 0 else { continue }
                    let element = ack.attributeOffset.flatMap { batch.elementIndex(in: sent, atOffset: $0) }
                    let error = NetfilterError(errno: ack.errno, operation: sent.operation.describe(element: element),
                                               detail: ack.message)
                    let index = Int(ack.sequence &- batch.beginSequence)
                    failures.append((index, BatchFailure(operation: sent.operation, error: error)))
                } else if ack.errno != 0, ack.sequence == batch.beginSequence || ack.sequence == batch.nextSequence &- 1 {
                    // The batch as a whole (e.g. the commit) failed: netlink_ack on its first message.
                    batchError = NetfilterError(errno: ack.errno, operation: "commit nf_tables batch", detail: ack.message)
                }
            }
        }
        var result = failures.sorted { $0.index < $1.index }.map(\.failure)
        if let batchError { result.append(BatchFailure(operation: .object("commit"), error: batchError)) }
        return result
    }

    /// One error for all failures: the first, the rest in `others`.
    static func combine(_ failures: [BatchFailure]) -> NetfilterError {
        var first = failures[0].error
        first.others = failures.dropFirst().map(\.error)
        return first
    }
}
