import Testing
@testable import VirtPortCore

@Suite struct GuardTests {
    @Test func everyAttributeParses() throws {
        let p = try plan(virtport("""
        <vp:guard ip='192.168.122.20 fd00:122::20' dhcpServer='allow' routerAdvert='block' isolated='yes'/>
        """))
        let g = try #require(p.guards.first)
        #expect(p.guards.count == 1)
        #expect(g.tap == "vnet5" && g.bridge == "virbr0" && g.network == "default" && g.mac == mac(mac1))
        #expect(g.spoofing && g.dhcpServer && !g.routerAdvert && g.isolated)
        #expect(g.addresses == [GuardAddress(address: ip("192.168.122.20"), source: .attribute),
                                GuardAddress(address: ip("fd00:122::20"), source: .attribute)])
    }

    @Test func addressesComeFromForwardReservationAndLeaseInOrder() throws {
        let r = FakeResolver()
        r.leases["default \(mac1)"] = ip("fd00:122::77")
        let xml = virtport("""
        <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>
        <vp:guard/>
        """)
        let g = try #require(try plan(xml, resolver: r).guards.first)
        #expect(g.addresses == [GuardAddress(address: ip("192.168.122.10"), source: .forward),
                                GuardAddress(address: ip("fd00:122::77"), source: .lease)])
        #expect(!g.dhcpServer && !g.routerAdvert && !g.isolated)
    }

    @Test func noAddressYetMeansDHCPOnly() throws {
        let g = try #require(try plan(virtport("<vp:guard/>")).guards.first)
        #expect(g.addresses.isEmpty && g.isWaitingForAddress)
        #expect(g.json.serialized().contains(#""state":"dhcp-only""#))
    }

    @Test func spoofingOffAllowsServersByDefault() throws {
        let g = try #require(try plan(virtport("<vp:guard spoofing='off' isolated='yes'/>")).guards.first)
        #expect(!g.spoofing && g.dhcpServer && g.routerAdvert && g.addresses.isEmpty && !g.isWaitingForAddress)
    }

    @Test func policyGuardsPortsWithoutAnElement() throws {
        var policy = Policy()
        policy.guardBridges = ["br0"]
        let p = try plan("", interfaces: nic1 + nic2, policy: policy)
        #expect(p.guards.map(\.tap) == ["vnet6"])
        #expect(p.guards[0].requiredBy == #"[guard] bridges = ["br0"]"#)
        policy.guardNetworks = ["default"]
        #expect(try plan("", interfaces: nic1 + nic2, policy: policy).guards.map(\.tap) == ["vnet5", "vnet6"])
    }

    /// Issue 21 item 5: on a plain bridge `[guard] bridges` guards, ip= may not name the host, its
    /// router there, or another NIC's address; the same guard without the policy is accepted.
    @Test func plainBridgePolicyRefusesHostRouterAndNeighbourAddresses() throws {
        let r = FakeResolver()
        r.routers["br0"] = [ip("192.168.1.254")]
        r.holders[ip("192.168.1.11")] = "domain 'vm2' (mac 52:54:00:aa:bb:09)"
        var policy = Policy()
        policy.guardBridges = ["br0"]
        let key = #"([guard] bridges = ["br0"])"#
        let xml = { (ip: String) in virtport("<vp:guard mac='\(mac2)' ip='\(ip)'/>") }
        for (addr, why) in [("192.168.122.1", "is one of the host's own addresses"),
                            ("192.168.1.254", "is the host's router on bridge br0"),
                            ("192.168.1.11", "belongs to domain 'vm2' (mac 52:54:00:aa:bb:09)")] {
            let message = "guard[1]: ip=\"\(addr)\" \(why): not allowed on a bridge the policy guards \(key)"
            #expect(throws: VirtPortError.invalid(message)) {
                try plan(xml(addr), interfaces: nic1 + nic2, policy: policy, resolver: r)
            }
            // Without the policy key the same guard is accepted (the host knows no subnet there).
            #expect(try plan(xml(addr), interfaces: nic1 + nic2, resolver: r).guards.count == 1)
        }
        #expect(try plan(xml("192.168.1.10"), interfaces: nic1 + nic2, policy: policy, resolver: r).guards.count == 1)
    }

    @Test(arguments: [
        ("<vp:guard spoofing='off'/>", #"guard[1]: spoofing="off" weakens a guard the policy requires for this port ([guard] networks = ["default"])"#),
        ("<vp:guard dhcpServer='allow'/>", #"guard[1]: dhcpServer="allow" weakens a guard the policy requires for this port ([guard] networks = ["default"])"#),
        ("<vp:guard routerAdvert='allow'/>", #"guard[1]: routerAdvert="allow" weakens a guard the policy requires for this port ([guard] networks = ["default"])"#),
    ])
    func policyRefusesWeakening(_ body: String, _ message: String) {
        var policy = Policy()
        policy.guardNetworks = ["default"]
        #expect(throws: VirtPortError.invalid(message)) { try plan(virtport(body), policy: policy) }
    }

    @Test(arguments: [
        ("<vp:guard ip='192.168.122.300'/>", #"guard[1]: ip="192.168.122.300" is not an IPv4 or IPv6 address (a prefix is not allowed: name each address)"#),
        ("<vp:guard ip='10.0.0.0/8'/>", #"guard[1]: ip="10.0.0.0/8" is not an IPv4 or IPv6 address (a prefix is not allowed: name each address)"#),
        ("<vp:guard ip=''/>", #"guard[1]: ip="" names no address (leave ip= out to use the guest's reservation or lease)"#),
        ("<vp:guard ip='0.0.0.0'/>", #"guard[1]: ip="0.0.0.0" is the unspecified address, not a guest address"#),
        ("<vp:guard ip='fe80::1'/>", #"guard[1]: ip="fe80::1" is link-local (always allowed: leave it out), not a guest address"#),
        ("<vp:guard ip='192.168.122.5 192.168.122.5'/>", "guard[1]: ip= names 192.168.122.5 twice"),
        ("<vp:guard ip='10.1.2.3'/>", #"guard[1]: ip="10.1.2.3" is outside network 'default' (192.168.122.0/24, fd00:122::/64) of the interface"#),
        ("<vp:guard ip='192.168.122.1'/>", #"guard[1]: ip="192.168.122.1" is the host's own address on network 'default' (its gateway), not a guest address"#),
        ("<vp:guard dhcpServer='no'/>", #"guard[1]: dhcpServer="no" is not allow or block"#),
        ("<vp:guard routerAdvert='on'/>", #"guard[1]: routerAdvert="on" is not allow or block"#),
        ("<vp:guard spoofing='off' ip='192.168.122.5'/>", #"guard[1]: ip= with spoofing="off" checks nothing (turn spoofing on, or leave ip= out)"#),
        ("<vp:guard rate='10'/>", "guard[1]: unknown attribute rate= (known: dhcpServer= ip= isolated= mac= routerAdvert= spoofing=)"),
    ])
    func badGuardsNameTheAttribute(_ body: String, _ message: String) {
        #expect(throws: VirtPortError.invalid(message)) { try plan(virtport(body)) }
    }

    @Test func wrongFamilyForTheNetwork() {
        let r = FakeResolver()
        r.networks["default"] = NetworkDefinition(name: "default", uuid: "", bridge: "virbr0", forwardMode: "nat",
                                                  ips: [NetworkIP(address: ip("192.168.122.1"), prefix: 24)])
        #expect(throws: VirtPortError.invalid(#"guard[1]: ip="fd00:122::9" is IPv6 but network 'default' has no IPv6 subnet"#)) {
            try plan(virtport("<vp:guard ip='fd00:122::9'/>"), resolver: r)
        }
    }

    @Test func guardNeedsABridgePort() {
        let direct = "<interface type='direct'><mac address='\(mac1)'/><source dev='eth0' mode='bridge'/></interface>"
        #expect(throws: VirtPortError.invalid("guard[1]: the interface is of type 'direct', not a bridge port (type network or bridge)")) {
            try plan(virtport("<vp:guard/>"), interfaces: direct)
        }
    }
}
