import Testing
@testable import VirtPortCore

@Suite struct NetworkXMLTests {
    static let dualStack = Array("""
    <network>
      <name>lab</name>
      <uuid>11111111-2222-3333-4444-555555555555</uuid>
      <forward mode='route' dev='eth0'/>
      <bridge name='virbr7' stp='on' delay='0'/>
      <ip address='10.7.0.1' netmask='255.255.252.0'>
        <dhcp>
          <range start='10.7.0.100' end='10.7.0.200'/>
          <host mac='52:54:00:aa:bb:01' name='web1' ip='10.7.0.10'/>
          <host mac='52:54:00:AA:BB:02' ip='10.7.0.11'/>
          <host name='nomac' ip='10.7.0.12'/>
        </dhcp>
      </ip>
      <ip family='ipv6' address='fd00:7::1' prefix='64'>
        <dhcp>
          <host id='0:3:0:1:0:16:3e:11:22:33' name='peter' ip='fd00:7::33'/>
          <host name='paul' ip='fd00:7::34'/>
          <host mac='52:54:00:aa:bb:01' ip='fd00:7::10'/>
        </dhcp>
      </ip>
    </network>
    """.utf8)

    @Test func reservationsBothFamilies() throws {
        let n = try NetworkXML.parse(Self.dualStack)
        #expect(n.name == "lab")
        #expect(n.forwardMode == "route")
        #expect(n.bridge == "virbr7")
        #expect(n.ips.map(\.subnet.description) == ["10.7.0.0/22", "fd00:7::/64"])
        #expect(n.ips[0].hosts == [
            DHCPHost(mac: mac("52:54:00:aa:bb:01"), ip: ip("10.7.0.10"), name: "web1"),
            DHCPHost(mac: mac("52:54:00:aa:bb:02"), ip: ip("10.7.0.11")),
        ])
        // IPv6 hosts that name only id= or name= are left out.
        #expect(n.ips[1].hosts == [DHCPHost(mac: mac("52:54:00:aa:bb:01"), ip: ip("fd00:7::10"))])
        #expect(n.reservation(for: mac("52:54:00:aa:bb:01")) == ip("10.7.0.10"))
        #expect(n.reservation(for: mac("52:54:00:aa:bb:01"), family: .ipv6) == ip("fd00:7::10"))
        #expect(n.reservation(for: mac("52:54:00:aa:bb:02"), family: .ipv6) == nil)
        #expect(n.reservation(for: mac("52:54:00:aa:bb:03")) == nil)
        #expect(n.ips[0].subnet.contains(ip("10.7.3.254")))
        #expect(!n.ips[0].subnet.contains(ip("10.7.4.1")))
        #expect(!n.ips[0].subnet.contains(ip("fd00:7::1")))
    }

    @Test func isolatedNetworkAndDefaults() throws {
        let n = try NetworkXML.parse(Array("""
        <networkstatus><network><name>iso</name><uuid>u</uuid>
          <ip address='172.16.5.1'/><ip family='ipv6' address='fd01::1'/>
        </network></networkstatus>
        """.utf8))
        #expect(n.forwardMode == nil)
        #expect(n.ips.map(\.prefix) == [16, 64])
        #expect(try NetworkXML.parse(Array("<network><name>n</name><forward/></network>".utf8)).forwardMode == "nat")
    }

    @Test(arguments: [
        ("<network><uuid>u</uuid></network>", "network XML: <network> has no <name>"),
        ("<hookData><networkport/></hookData>", "network XML: <hookData> has no <network> element"),
        ("<network><name>n</name><ip address='10.0.0.300'/></network>", #"network n: ip[1]: address="10.0.0.300" is not an IP address"#),
        ("<network><name>n</name><ip address='10.0.0.1' netmask='255.0.255.0'/></network>", #"network n: ip[1]: netmask="255.0.255.0" is not an IPv4 netmask"#),
        ("<network><name>n</name><ip address='fd00::1' prefix='129'/></network>", #"network n: ip[1]: prefix="129" is not a prefix length"#),
        ("<network><name>n</name><ip address='10.0.0.1' family='ipv6'/></network>", #"network n: ip[1]: family="ipv6" does not match address="10.0.0.1""#),
        ("<network><name>n</name><ip address='10.0.0.1'><dhcp><host mac='zz' ip='10.0.0.2'/></dhcp></ip></network>", #"network n: ip[1]/dhcp/host[1]: mac="zz" is not a MAC address"#),
    ])
    func invalid(xml: String, message: String) {
        #expect(throws: VirtPortError.invalid(message)) { try NetworkXML.parse(Array(xml.utf8)) }
    }
}
