import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import TestSupport
import VirtPortCore

/// A temporary directory with a config whose journal and libvirt directories live in it; removed
/// by `cleanup()`.
struct Sandbox {
    let dir: String
    var config: Config

    init(_ policy: (inout Policy) -> Void = { _ in }) {
        dir = NSTemporaryDirectory() + "vp-engine-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = scratchConfig(in: dir)
        policy(&c.policy)
        config = c
        // libvirt's live XML of network `default` (guest= is checked against its subnet).
        try? FileManager.default.createDirectory(atPath: dir + "/run/network", withIntermediateDirectories: true)
        try? Self.defaultNetwork.write(toFile: dir + "/run/network/default.xml", atomically: true, encoding: .utf8)
    }

    static let defaultNetwork = """
        <network>
          <name>default</name>
          <forward mode='nat'/>
          <bridge name='virbr0'/>
          <ip address='192.168.122.1' netmask='255.255.255.0'/>
        </network>
        """

    /// The resolver a hook would use in this sandbox.
    var resolver: LibvirtFiles { LibvirtFiles(config: config, overrides: []) }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    /// Resources over a recording transport (no kernel involved).
    func resources(_ transport: RecordingTransport) throws -> Resources {
        .perProcess(config, kernel: try NetfilterSession(table: "virtport", transport: transport, firstSequence: 100))
    }

    func journal() throws -> JournalDB { try JournalDB(path: config.databasePath) }

    /// A stand-in for the syslog daemon on this sandbox's `[log] syslog_socket`.
    func syslog() throws -> LogCatcher { try LogCatcher(path: config.syslogSocket) }
}

/// A unix datagram socket bound where virtport sends its system log lines: what a syslog daemon
/// would receive. `lines()` returns the messages received so far, without the `<PRI>… virtport[PID]: ` header.
final class LogCatcher {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { raw in
            for (i, b) in Array(path.utf8).enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 { throw POSIXError(.EADDRINUSE) }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Every datagram received so far: (severity, text after "virtport[PID]: ").
    func messages() -> [(severity: Int, text: String)] {
        var out: [(Int, String)] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n <= 0 { return out }
            let s = String(decoding: buf[0..<n], as: UTF8.self)
            guard s.hasPrefix("<"), let close = s.firstIndex(of: ">"), let pri = Int(s[s.index(after: s.startIndex)..<close]),
                  let tag = s.range(of: "virtport[") , let colon = s[tag.upperBound...].range(of: "]: ") else { continue }
            out.append((pri & 7, String(s[colon.upperBound...])))
        }
    }

    func lines() -> [String] { messages().map(\.text) }
}

/// A one-NIC domain on network `default` whose metadata forwards `forwards` (XML body).
func domain(_ name: String, _ uuid: String, _ forwards: String) -> [UInt8] {
    Array("""
    <domain type='kvm'>
      <name>\(name)</name>
      <uuid>\(uuid)</uuid>
      <metadata>
        <vp:virtport xmlns:vp='urn:virtport:domain:1'>\(forwards)</vp:virtport>
      </metadata>
      <devices>
        <interface type='network'>
          <mac address='52:54:00:aa:bb:01'/>
          <source network='default' bridge='virbr0'/>
          <target dev='vnet5'/>
        </interface>
      </devices>
    </domain>
    """.utf8)
}

func tcp(_ host: Int, to guestPort: Int, guest: String = "192.168.122.10") -> String {
    "<vp:portForward proto='tcp' guest='\(guest)'><vp:range start='\(host)' to='\(guestPort)'/></vp:portForward>"
}

let uuidA = "aaaaaaaa-1111-4111-8111-111111111111"
let uuidB = "bbbbbbbb-2222-4222-8222-222222222222"

/// nf_tables message types (NFT_MSG_*) the tests look for.
enum Msg {
    static let delTable: UInt16 = 2
    static let getRule: UInt16 = 7
    static let newSetElem: UInt16 = 12
    static let delSetElem: UInt16 = 14
}
