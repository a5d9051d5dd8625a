#if canImport(Glibc)
import Glibc
#endif
import CNftnl

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
        let operation = "set isolated \(on ? "on" : "off") on bridge port \(tap)"
        let index = Interfaces.isName(tap) ? if_nametoindex(tap) : 0
        guard index != 0 else { throw NetfilterError(errno: ENODEV, operation: operation) }
        guard let nl = mnl_socket_open2(NETLINK_ROUTE, Int32(SOCK_CLOEXEC.rawValue)) else {
            throw NetfilterError(errno: errno, operation: "open netlink socket (NETLINK_ROUTE)")
        }
        defer { mnl_socket_close(nl) }
        guard mnl_socket_bind(nl, 0, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            throw NetfilterError(errno: errno, operation: "bind netlink socket (NETLINK_ROUTE)")
        }
        let size = 512
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(size, vp_mnl_socket_buffer_size()), alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let sequence = UInt32(truncatingIfNeeded: time(nil))
        let header = mnl_nlmsg_put_header(buffer)!
        header.pointee.nlmsg_type = UInt16(RTM_SETLINK)
        header.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_ACK)
        header.pointee.nlmsg_seq = sequence
        let info = mnl_nlmsg_put_extra_header(header, MemoryLayout<ifinfomsg>.size)!.assumingMemoryBound(to: ifinfomsg.self)
        info.pointee.ifi_family = UInt8(AF_BRIDGE)
        info.pointee.ifi_index = Int32(index)
        let nest = mnl_attr_nest_start(header, UInt16(IFLA_PROTINFO))
        mnl_attr_put_u8(header, UInt16(IFLA_BRPORT_ISOLATED), on ? 1 : 0)
        mnl_attr_nest_end(header, nest)
        guard mnl_socket_sendto(nl, header, Int(header.pointee.nlmsg_len)) >= 0 else {
            throw NetfilterError(errno: errno, operation: operation)
        }
        let portID = mnl_socket_get_portid(nl)
        while true {
            let n = mnl_socket_recvfrom(nl, buffer, vp_mnl_socket_buffer_size())
            if n < 0 {
                if errno == EINTR { continue }
                throw NetfilterError(errno: errno, operation: operation)
            }
            let rc = mnl_cb_run(buffer, n, sequence, portID, nil, nil)
            if rc < 0 { throw NetfilterError(errno: errno, operation: operation) }
            if rc == MNL_CB_STOP { return }
        }
    }
}

enum Interfaces {
    /// 1-15 bytes without '/' or NUL: safe in a /sys path and for if_nametoindex.
    static func isName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        return (1...15).contains(b.count) && !b.contains(0) && !b.contains(UInt8(ascii: "/")) && name != "." && name != ".."
    }
}
