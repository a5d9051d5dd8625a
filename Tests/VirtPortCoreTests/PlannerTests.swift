import Testing
@testable import VirtPortCore

@Suite struct PlannerTests {
    @Test func designExamplePlansExactly() throws {
        let resolver = FakeResolver()
        resolver.reservations["default \(mac1)"] = ip("192.168.122.50")
        let p = try plan(designExample, resolver: resolver)
        #expect(p.domainName == "web1")
        #expect(summary(p) == [
            "tcp *:2222 -> 192.168.122.50:22 (dhcp-reservation)",
            "tcp *:8000-8004 -> 192.168.122.50:8000-8004 (dhcp-reservation)",
            "tcp *:8006-8010 -> 192.168.122.50:8006-8010 (dhcp-reservation)",
            "udp 203.0.113.5:5000-5010 -> 192.168.122.10:6000-6010 (guest-attribute)",
        ])
        #expect(p.mappings.allSatisfy { $0.mac == mac(mac1) && $0.network == "default" && $0.dev == nil })
        // guest= answers first: the resolver is asked only for the tcp forward, once; the guard
        // then asks for both families' reservations and leases.
        #expect(resolver.asked == ["reservation default \(mac1) any"] + ["reservation", "lease"].flatMap { kind in
            ["ipv4", "ipv6"].map { "\(kind) default \(mac1) \($0)" }
        })
        #expect(p.json.serialized(pretty: true) == designExampleJSON)
    }

    @Test func sourcesInOrderReservationLeasePending() throws {
        let xml = virtport("<vp:portForward proto='tcp'><vp:range start='2222' to='22'/></vp:portForward>")
        let r = FakeResolver()
        #expect(summary(try plan(xml, resolver: r)) == ["tcp *:2222 -> ?:22 (pending)"])
        #expect(r.asked == ["reservation default \(mac1) any", "lease default \(mac1) any"])
        r.leases["default \(mac1)"] = ip("192.168.122.77")
        #expect(summary(try plan(xml, resolver: r)) == ["tcp *:2222 -> 192.168.122.77:22 (dhcp-lease)"])
        r.reservations["default \(mac1)"] = ip("192.168.122.50")
        #expect(summary(try plan(xml, resolver: r)) == ["tcp *:2222 -> 192.168.122.50:22 (dhcp-reservation)"])
        let pending = try plan(xml).mappings[0]
        #expect(pending.isPending && pending.guestAddress == nil && pending.family == nil)
        #expect(pending.json.serialized().contains(#""guest_address":null"#))
        #expect(pending.json.serialized().contains(#""state":"pending""#))
    }

    @Test func addressFamilyNarrowsTheLookup() throws {
        let r = FakeResolver()
        r.reservations["default \(mac1)"] = ip("192.168.122.50")  // IPv4 answer to an IPv6 forward: ignored
        let xml = virtport("<vp:portForward proto='tcp' address='2001:db8::5'><vp:range start='8080'/></vp:portForward>")
        #expect(summary(try plan(xml, resolver: r)) == ["tcp 2001:db8::5:8080 -> ?:8080 (pending)"])
        #expect(r.asked == ["reservation default \(mac1) ipv6", "lease default \(mac1) ipv6"])
    }

    @Test func bridgedNICWithoutGuestIsPendingAndMacSelectsNIC() throws {
        let xml = virtport("""
        <vp:portForward proto='tcp' mac='\(mac2)'><vp:range start='8080' to='80'/></vp:portForward>
        <vp:portForward proto='tcp' mac='\(mac1)'><vp:range start='8081' to='80'/></vp:portForward>
        <vp:portForward proto='tcp' mac='\(mac2.uppercased())' guest='10.0.0.5'><vp:range start='8082' to='80'/></vp:portForward>
        """)
        let r = FakeResolver()
        var policy = Policy()
        policy.guestNetworks = [IPPrefix(parsing: "10.0.0.0/8")!]  // nic2 is on a plain bridge
        let p = try plan(xml, interfaces: nic1 + nic2, policy: policy, resolver: r)
        #expect(summary(p) == ["tcp *:8080 -> ?:80 (pending)", "tcp *:8081 -> ?:80 (pending)",
                               "tcp *:8082 -> 10.0.0.5:80 (guest-attribute)"])
        #expect(p.mappings.map { $0.mac?.description } == [mac2, mac1, mac2])
        #expect(p.mappings.map(\.network) == [nil, "default", nil])
        #expect(r.asked == ["reservation default \(mac1) any", "lease default \(mac1) any"])
    }

    @Test func excludeSplitsAndKeepsGuestOffset() throws {
        let xml = virtport("""
        <vp:portForward proto='tcp' guest='192.168.122.10'>
          <vp:range start='10000' end='10099' to='20000'/>
          <vp:range start='10010' end='10019' exclude='yes'/>
          <vp:range start='10050' exclude='yes'/>
          <vp:range start='10099' exclude='yes'/>
          <vp:range start='10050' to='30000'/>
        </vp:portForward>
        """)
        #expect(summary(try plan(xml)) == [
            "tcp *:10000-10009 -> 192.168.122.10:20000-20009 (guest-attribute)",
            "tcp *:10020-10049 -> 192.168.122.10:20020-20049 (guest-attribute)",
            "tcp *:10050 -> 192.168.122.10:30000 (guest-attribute)",  // after the exclude: not cut
            "tcp *:10051-10098 -> 192.168.122.10:20051-20098 (guest-attribute)",
        ])
    }

    @Test func adjacentRunsMergeOnlyWhenGuestSideContinues() throws {
        let xml = virtport("""
        <vp:portForward proto='udp' guest='192.168.122.10'>
          <vp:range start='7000' end='7004'/>
          <vp:range start='7005' end='7009'/>
          <vp:range start='7010' to='9000'/>
        </vp:portForward>
        """)
        #expect(summary(try plan(xml)) == [
            "udp *:7000-7009 -> 192.168.122.10:7000-7009 (guest-attribute)",
            "udp *:7010 -> 192.168.122.10:9000 (guest-attribute)",
        ])
    }

    /// Same port under different protocols, addresses, devices or families is no conflict.
    @Test func nonCollidingSamePorts() throws {
        let xml = virtport("""
        <vp:portForward proto='tcp' address='192.0.2.1'><vp:range start='8080'/></vp:portForward>
        <vp:portForward proto='tcp' address='192.0.2.2'><vp:range start='8080'/></vp:portForward>
        <vp:portForward proto='udp'><vp:range start='8080'/></vp:portForward>
        <vp:portForward proto='sctp' dev='eth0'><vp:range start='8080'/></vp:portForward>
        <vp:portForward proto='sctp' dev='eth1'><vp:range start='8080'/></vp:portForward>
        <vp:portForward proto='tcp' guest='fd00:122::10'><vp:range start='9090'/></vp:portForward>
        <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='9090'/></vp:portForward>
        """)
        #expect(summary(try plan(xml)) == [
            "tcp 192.0.2.1:8080 -> ?:8080 (pending)",
            "tcp 192.0.2.2:8080 -> ?:8080 (pending)",
            "tcp *:9090 -> 192.168.122.10:9090 (guest-attribute)",
            "tcp *:9090 -> fd00:122::10:9090 (guest-attribute)",
            "udp *:8080 -> ?:8080 (pending)",
            "sctp *%eth0:8080 -> ?:8080 (pending)",
            "sctp *%eth1:8080 -> ?:8080 (pending)",
        ])
    }

    @Test func outputOrderIsIndependentOfDocumentOrder() throws {
        let a = virtport("""
        <vp:portForward proto='udp'><vp:range start='53'/></vp:portForward>
        <vp:portForward proto='tcp'><vp:range start='9000'/><vp:range start='2000'/></vp:portForward>
        """)
        let b = virtport("""
        <vp:portForward proto='tcp'><vp:range start='2000'/><vp:range start='9000'/></vp:portForward>
        <vp:portForward proto='udp'><vp:range start='53'/></vp:portForward>
        """)
        let policy = Policy(hostPorts: [PortRange(1, 65535)])
        #expect(try plan(a, policy: policy).mappings == plan(b, policy: policy).mappings)
        #expect(summary(try plan(a, policy: policy)).map { $0.prefix(12) } == ["tcp *:2000 -", "tcp *:9000 -", "udp *:53 -> "])
    }

    @Test func policyLimitsAtTheBoundary() throws {
        let xml = virtport("""
        <vp:portForward proto='tcp' address='192.0.2.1'>
          <vp:range start='1024' end='1033'/><vp:range start='1030' exclude='yes'/>
        </vp:portForward>
        """)
        let policy = Policy(hostPorts: [PortRange(1024, 1029), PortRange(1031, 1040)],
                            listenAddresses: [ip("192.0.2.1")], allowAnyAddress: false,
                            maxForwardsPerDomain: 2, maxPortsPerDomain: 9)
        #expect(try plan(xml, policy: policy).mappings.map(\.hostPorts) == [PortRange(1024, 1029), PortRange(1031, 1033)])
    }

    @Test func plannerChecksProgrammaticSpecsToo() {
        var domain = Domain(name: "d", uuid: "u", interfaces: [Interface(type: "network", mac: mac(mac1), sourceNetwork: "default")])
        domain.metadata = VirtPortMetadata(forwards: [
            ForwardSpec(proto: .tcp, ranges: [RangeSpec(ports: PortRange(65000, 65535), to: 65001)]),
        ])
        #expect(throws: VirtPortError.invalid(#"portForward[1]/range[1]: to="65001" with 536 ports runs past port 65535 (guest ports 65001-65536)"#)) {
            try Planner.plan(domain: domain, resolver: NoGuestAddresses(), policy: Policy())
        }
        domain.metadata = VirtPortMetadata(forwards: [ForwardSpec(proto: .tcp, ranges: [RangeSpec(ports: PortRange(0, 10))])])
        #expect(throws: VirtPortError.invalid(#"portForward[1]/range[1]: start="0" is not a port (1-65535)"#)) {
            try Planner.plan(domain: domain, resolver: NoGuestAddresses(), policy: Policy())
        }
    }
}

let designExampleJSON = """
{
  "domain": {
    "name": "web1",
    "uuid": "10ca34a4-d7de-462e-8906-be833e7f6cae"
  },
  "forwards": [
    {
      "proto": "tcp",
      "host_address": null,
      "dev": null,
      "host_ports": "2222",
      "host_port_start": 2222,
      "host_port_end": 2222,
      "guest_address": "192.168.122.50",
      "guest_port_start": 22,
      "guest_port_end": 22,
      "mac": "52:54:00:aa:bb:01",
      "network": "default",
      "guest_source": "dhcp-reservation",
      "state": "ready"
    },
    {
      "proto": "tcp",
      "host_address": null,
      "dev": null,
      "host_ports": "8000-8004",
      "host_port_start": 8000,
      "host_port_end": 8004,
      "guest_address": "192.168.122.50",
      "guest_port_start": 8000,
      "guest_port_end": 8004,
      "mac": "52:54:00:aa:bb:01",
      "network": "default",
      "guest_source": "dhcp-reservation",
      "state": "ready"
    },
    {
      "proto": "tcp",
      "host_address": null,
      "dev": null,
      "host_ports": "8006-8010",
      "host_port_start": 8006,
      "host_port_end": 8010,
      "guest_address": "192.168.122.50",
      "guest_port_start": 8006,
      "guest_port_end": 8010,
      "mac": "52:54:00:aa:bb:01",
      "network": "default",
      "guest_source": "dhcp-reservation",
      "state": "ready"
    },
    {
      "proto": "udp",
      "host_address": "203.0.113.5",
      "dev": null,
      "host_ports": "5000-5010",
      "host_port_start": 5000,
      "host_port_end": 5010,
      "guest_address": "192.168.122.10",
      "guest_port_start": 6000,
      "guest_port_end": 6010,
      "mac": "52:54:00:aa:bb:01",
      "network": "default",
      "guest_source": "guest-attribute",
      "state": "ready"
    }
  ],
  "guards": [
    {
      "mac": "52:54:00:aa:bb:01",
      "tap": "vnet5",
      "bridge": "virbr0",
      "network": "default",
      "spoofing": true,
      "dhcp_server": "block",
      "router_advert": "block",
      "isolated": true,
      "addresses": [
        {
          "address": "192.168.122.10",
          "source": "forward-guest"
        },
        {
          "address": "192.168.122.50",
          "source": "dhcp-reservation"
        }
      ],
      "state": "ready",
      "required_by": null
    }
  ]
}
"""
