public import VirtPortCore

extension JournalDB {
    /// Runs `body` in one write transaction (BEGIN IMMEDIATE … COMMIT): a domain's change across
    /// every rule kind writes its intents, and later its confirmations, at once. The journal's own
    /// transactions inside `body` join this one (an error must leave `body`: it rolls all of it back).
    public func transaction<T>(_ body: () throws(VirtPortError) -> T) throws(VirtPortError) -> T {
        try conn.immediate(body)
    }

    /// Write transactions begun on this connection so far (nested ones not counted): unit tests
    /// check that a domain's change is one transaction for its intents and one for its commit.
    public var transactionsBegun: Int { conn.transactionsBegun }
}
