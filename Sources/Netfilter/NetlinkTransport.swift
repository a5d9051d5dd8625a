/// The kernel I/O of a session: whole netlink datagrams out and in. The real one is `MnlSocket`;
/// unit tests use a fake that records the requests and answers with acks.
public protocol NetlinkTransport: AnyObject {
    /// Sends one datagram (a whole batch, or one request).
    func send(_ datagram: [UInt8]) throws(NetfilterError)
    /// The next datagram for this socket; nil when none arrives within `timeout` milliseconds
    /// (0: only what is already queued).
    func receive(timeout: Int32) throws(NetfilterError) -> [UInt8]?
    /// Makes room for a datagram of `sendBytes` and for `replies` acks before a big batch.
    func reserve(sendBytes: Int, replies: Int) throws(NetfilterError)
    /// Lets the socket's final release happen in another process (see `MnlSocket`).
    func closeInBackground()
}

extension NetlinkTransport {
    public func closeInBackground() {}
}
