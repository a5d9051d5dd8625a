import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// A temporary directory with a config whose journal and libvirt directories live in it; removed
/// by `cleanup()`.
struct Sandbox {
    let dir: String
    var config: Config

    init(_ policy: (inout Policy) -> Void = { _ in }) {
        dir = NSTemporaryDirectory() + "vp-engine-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = Config()
        c.databasePath = dir + "/virtport.db"
        c.libvirtRunDir = dir + "/run"
        c.libvirtConfigDir = dir + "/etc"
        c.libvirtStateDir = dir + "/state"
        c.agentSocket = dir + "/agent.sock"
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
