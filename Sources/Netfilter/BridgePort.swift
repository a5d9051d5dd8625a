#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import VirtPortCore

/// A bridge port's `isolated` flag (isolated ports exchange no frames with each other, only with
/// non-isolated ports and the bridge itself): the same setting as libvirt's
/// `<port isolated='yes'/>` and `bridge link set dev TAP isolated on`.
public enum BridgePort {
    /// The flag as the kernel has it now (`/sys/class/net/TAP/brport/isolated`); nil when `tap`
    /// is not a bridge port (gone, or not enslaved).
    public static func isolated(_ tap: String) -> Bool? {
        guard Interfaces.isName(tap), let f = fopen("/sys/class/net/\(tap)/brport/isolated", "r") else { return nil }
        defer { fclose(f) }
        let c = fgetc(f)
        return c == Int32(UInt8(ascii: "1")) ? true : c == Int32(UInt8(ascii: "0")) ? false : nil
    }

    /// Sets or clears the flag: RTM_SETLINK in family AF_BRIDGE with IFLA_PROTINFO (nested)
    /// holding IFLA_BRPORT_ISOLATED, over a NETLINK_ROUTE socket (libmnl), acked.
    /// - Throws: ENODEV when the tap is gone, EOPNOTSUPP/EINVAL when it is not a bridge port.
    public static func setIsolated(_ tap: String, _ on: Bool) throws(NetfilterError) {
        try set(tap, operation: "set isolated \(on ? "on" : "off") on bridge port \(tap)") {
            mnl_attr_put_u8($0, UInt16(IFLA_BRPORT_ISOLATED), on ? 1 : 0)
        }
    }

    /// The reserved group addresses (01:80:c2:00:00:0X, X a bit) whose frames from a guarded port
    /// the bridge must forward — through its prerouting hook, where the guard is — instead of
    /// handing them to the host without any bridge hook: 0 (STP, with STP on) and 0x0E (LLDP). The
    /// others go through the bridge's input hook, which the guard also holds, or are dropped.
    public static let guardedGroups: UInt16 = 1 << 0 | 1 << 0x0e

    /// The port's `group_fwd_mask` (`/sys/class/net/TAP/brport/group_fwd_mask`); nil when `tap` is
    /// not a bridge port.
    public static func groupForwardMask(_ tap: String) -> UInt16? {
        guard Interfaces.isName(tap), let f = fopen("/sys/class/net/\(tap)/brport/group_fwd_mask", "r") else { return nil }
        defer { fclose(f) }
        var buffer = [CChar](repeating: 0, count: 16)
        guard fgets(&buffer, 16, f) != nil else { return nil }
        let text = Bytes.text(buffer).trimmingSuffixNewline
        guard text.hasPrefix("0x"), let v = UInt16(text.dropFirst(2), radix: 16) else { return nil }
        return v
    }

    /// Sets (`on`) or clears the bits of `guardedGroups` in the port's `group_fwd_mask`, keeping
    /// its other bits (IFLA_BRPORT_GROUP_FWD_MASK).
    public static func setGuardedGroups(_ tap: String, _ on: Bool) throws(NetfilterError) {
        let operation = "set group_fwd_mask on bridge port \(tap)"
        guard let now = groupForwardMask(tap) else { throw NetfilterError(errno: ENODEV, operation: operation) }
        let want = on ? now | guardedGroups : now & ~guardedGroups
        if want == now { return }
        try set(tap, operation: operation) { mnl_attr_put_u16($0, UInt16(IFLA_BRPORT_GROUP_FWD_MASK), want) }
    }

    /// RTM_SETLINK in family AF_BRIDGE with IFLA_PROTINFO (nested) holding what `put` adds, over a
    /// NETLINK_ROUTE socket (libmnl), acked.
    static func set(_ tap: String, operation: String,
                    _ put: (UnsafeMutablePointer<nlmsghdr>) -> Void) throws(NetfilterError) {
        let index = Interfaces.isName(tap) ? if_nametoindex(tap) : 0
        guard index != 0 else { throw NetfilterError(errno: ENODEV, operation: operation) }
        let socket = try MnlSocket(netnsPath: nil, route: true)
        let sequence = UInt32(truncatingIfNeeded: time(nil))
        var request = [UInt8](repeating: 0, count: 128)
        let length = request.withUnsafeMutableBytes { raw -> Int in
            let header = mnl_nlmsg_put_header(raw.baseAddress)!
            header.pointee.nlmsg_type = UInt16(RTM_SETLINK)
            header.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_ACK)
            header.pointee.nlmsg_seq = sequence
            let info = mnl_nlmsg_put_extra_header(header, MemoryLayout<ifinfomsg>.size)!.assumingMemoryBound(to: ifinfomsg.self)
            info.pointee.ifi_family = UInt8(AF_BRIDGE)
            info.pointee.ifi_index = Int32(index)
            let nest = mnl_attr_nest_start(header, UInt16(IFLA_PROTINFO))
            put(header)
            mnl_attr_nest_end(header, nest)
            return Int(header.pointee.nlmsg_len)
        }
        try socket.send(Array(request[0..<length]))
        while let reply = try socket.receive(timeout: BatchExchange.replyTimeout) {
            for message in NetlinkMessage.split(reply) where message.sequence == sequence {
                guard let ack = NetlinkAck(message, in: reply) else { continue }
                if ack.errno == 0 { return }
                throw NetfilterError(errno: ack.errno, operation: operation, detail: ack.message)
            }
        }
        throw NetfilterError(errno: ETIMEDOUT, operation: operation)
    }
}

private extension String {
    var trimmingSuffixNewline: String {
        var s = self
        while s.last == "\n" || s.last == " " { s.removeLast() }
        return s
    }
}

enum Interfaces {
    /// 1-15 bytes without '/' or NUL: safe in a /sys path and for if_nametoindex.
    static func isName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        return (1...15).contains(b.count) && !b.contains(0) && !b.contains(UInt8(ascii: "/")) && name != "." && name != ".."
    }
}
