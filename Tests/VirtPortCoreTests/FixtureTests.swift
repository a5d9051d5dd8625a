import Testing
@testable import VirtPortCore

@Suite struct DomainFixtureTests {
    static let running = ["qemu-start.xml", "qemu-started.xml", "qemu-reconnect.xml"]
    static let notRunning = ["qemu-prepare.xml", "qemu-stopped.xml", "qemu-release.xml"]

    @Test(arguments: running + notRunning)
    func hookInputParses(file: String) throws {
        let bytes = try Fixture.bytes(file)
        #expect(!DomainXML.mentionsVirtPort(bytes))
        let d = try DomainXML.parse(bytes)
        #expect(d.name == "lvprobe1")
        #expect(d.uuid == "10ca34a4-d7de-462e-8906-be833e7f6cae")
        #expect(d.metadata == nil)
        try #require(d.interfaces.count == 1)
        let nic = d.interfaces[0]
        #expect(nic.type == "network")
        #expect(nic.mac == mac("52:54:00:aa:bb:01"))
        #expect(nic.sourceNetwork == "default")
        if Self.running.contains(file) {
            #expect(nic.targetDev?.hasPrefix("vnet") == true)
            #expect(nic.sourceBridge == "virbr0")
            #expect(nic.portID != nil)
        } else {
            #expect(nic.targetDev == nil)
            #expect(nic.sourceBridge == nil)
            #expect(nic.portID == nil)
        }
    }

    @Test func targetDevNames() throws {
        #expect(try DomainXML.parse(Fixture.bytes("qemu-start.xml")).interfaces[0].targetDev == "vnet5")
        #expect(try DomainXML.parse(Fixture.bytes("qemu-reconnect.xml")).interfaces[0].portID
                == "9365cb65-5bf0-4b0b-ada5-ff50c8c7b2e6")
    }

    @Test func statusFileUnwrapsDomstatus() throws {
        let d = try DomainXML.parse(Fixture.bytes("run-libvirt-qemu-status-lvprobe1.xml"))
        #expect(d.name == "lvprobe1")
        #expect(d.uuid == "137e4e25-abcb-429a-945a-c85a5cc1a9af")
        try #require(d.interfaces.count == 1)
        #expect(d.interfaces[0].targetDev == "vnet0")
        #expect(d.interfaces[0].portID == "6d903562-d030-4699-9b21-0eefb02b846f")
        // The status file keeps the bridge under <actual><source bridge=…>.
        #expect(d.interfaces[0].sourceBridge == "virbr0")
    }

    @Test func domainWithoutMetadataPlansNothing() throws {
        let d = try DomainXML.parse(Fixture.bytes("qemu-start.xml"))
        let p = try Planner.plan(domain: d, resolver: NoGuestAddresses(), policy: Policy())
        #expect(p.mappings.isEmpty)
        #expect(p.json.serialized() == #"{"domain":{"name":"lvprobe1","uuid":"10ca34a4-d7de-462e-8906-be833e7f6cae"},"forwards":[],"guards":[]}"#)
    }
}

@Suite struct NetworkFixtureTests {
    static let files = ["network-start.xml", "network-started.xml", "network-stopped.xml",
                        "network-port-created.xml", "network-port-created-on-daemon-restart.xml",
                        "network-port-deleted.xml"]

    @Test(arguments: files)
    func hookInputParses(file: String) throws {
        let n = try NetworkXML.parse(Fixture.bytes(file))
        #expect(n.name == "default")
        #expect(n.uuid == "3f86f7d7-e967-45ae-9648-18fd73be9c4b")
        #expect(n.bridge == "virbr0")
        #expect(n.forwardMode == "nat")
        try #require(n.ips.count == 1)
        #expect(n.ips[0].address == ip("192.168.122.1"))
        #expect(n.ips[0].prefix == 24)
        #expect(n.ips[0].subnet.description == "192.168.122.0/24")
        #expect(n.ips[0].hosts.isEmpty)
        if file.contains("port-") {
            let port = try #require(n.port)
            #expect(port.ownerName == "lvprobe1")
            #expect(port.ownerUUID == "10ca34a4-d7de-462e-8906-be833e7f6cae")
            #expect(port.mac == mac("52:54:00:aa:bb:01"))
            #expect(port.bridge == "virbr0")
            #expect(port.uuid?.count == 36)
        } else {
            #expect(n.port == nil)
        }
    }

    @Test func domainParserRefusesNetworkXML() throws {
        #expect(throws: VirtPortError.invalid("domain XML: root element is <hookData>, expected <domain> or <domstatus>")) {
            try DomainXML.parse(Fixture.bytes("network-start.xml"))
        }
        #expect(throws: VirtPortError.invalid("network XML: root element is <domain>, expected <network>, <hookData> or <networkstatus>")) {
            try NetworkXML.parse(Fixture.bytes("qemu-start.xml"))
        }
    }
}
