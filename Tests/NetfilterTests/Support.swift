import Foundation
import Testing
@testable import Netfilter
import VirtPortCore

// MARK: - Running commands

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `arguments` (first one resolved through PATH) and waits for it.
@discardableResult
func run(_ arguments: [String], stdin: String? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    if let stdin {
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    } else {
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }
    let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
    let stderrData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
                         stderr: String(decoding: stderrData, as: UTF8.self))
}

/// Runs a command that must succeed; returns its stdout.
@discardableResult
func must(_ arguments: [String], stdin: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
    let result = try run(arguments, stdin: stdin)
    #expect(result.status == 0, "\(arguments.joined(separator: " ")): \(result.stderr)", sourceLocation: sourceLocation)
    return result.stdout
}

let isRoot = getuid() == 0

// MARK: - Network namespaces

/// A named network namespace (`ip netns add`), deleted by `delete()`; tests call it in a defer.
struct NetNS {
    let name: String
    var path: String { "/run/netns/\(name)" }

    /// A fresh namespace `vptest-nf-<label>-<random>` with its loopback up.
    static func create(_ label: String) throws -> NetNS {
        let ns = NetNS(name: "vptest-nf-\(label)-\(UInt32.random(in: 0...UInt32.max) % 1_000_000)")
        try must(["ip", "netns", "add", ns.name])
        try must(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        return ns
    }

    func delete() { _ = try? run(["ip", "netns", "delete", name]) }

    /// `ip netns exec NAME args…`
    @discardableResult
    func exec(_ arguments: [String], stdin: String? = nil) throws -> CommandResult {
        try run(["ip", "netns", "exec", name] + arguments, stdin: stdin)
    }

    func nft(_ arguments: String) throws -> CommandResult {
        try exec(["nft"] + arguments.split(separator: " ").map(String.init))
    }

    /// `nft list table inet virtport` text (empty when the command fails).
    func listTable(_ table: String = "virtport") throws -> String {
        try exec(["nft", "list", "table", "inet", table]).stdout
    }

    /// `nft -j list table inet virtport`, decoded.
    func listTableJSON(_ table: String = "virtport") throws -> [[String: Any]] {
        let result = try exec(["nft", "-j", "list", "table", "inet", table])
        guard result.status == 0,
              let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let items = object["nftables"] as? [[String: Any]] else { return [] }
        return items
    }

    func session(table: String = "virtport") throws -> NetfilterSession {
        try NetfilterSession(table: table, netnsPath: path)
    }
}

/// Runs `body` with a fresh namespace, always deleting it afterwards.
func withNetNS<T>(_ label: String, _ body: (NetNS) throws -> T) throws -> T {
    let ns = try NetNS.create(label)
    defer { ns.delete() }
    return try body(ns)
}

// MARK: - Values

func ip(_ text: String) -> IPAddress { IPAddress(text)! }

func element(_ proto: IPProto = .tcp, host: String? = nil, dev: String? = nil, _ port: UInt16,
             to guest: String, _ guestPort: UInt16) -> ForwardElement {
    ForwardElement(proto: proto, hostAddress: host.map(ip), dev: dev, hostPort: port, guestAddress: ip(guest),
                   guestPort: guestPort)
}

extension ForwardElement: Comparable {
    public static func < (a: ForwardElement, b: ForwardElement) -> Bool { a.description < b.description }
}

// MARK: - A fake kernel

/// Records every datagram and answers through `respond`; by default it acknowledges every
/// message that asks for an ack, and answers dumps with NLMSG_DONE.
final class FakeTransport: NetlinkTransport {
    var sent: [[UInt8]] = []
    var queue: [[UInt8]] = []
    var reservations: [(Int, Int)] = []
    /// Errors to return: sequence number → (errno, attribute offset).
    var errors: [UInt32: (Int32, Int?)] = [:]
    /// Extra replies for a request of this nf_tables message type (NFT_MSG_*), before its terminator.
    var dumpReplies: [UInt16: [[UInt8]]] = [:]

    func send(_ datagram: [UInt8]) throws(NetfilterError) {
        sent.append(datagram)
        var answer: [UInt8] = []
        for message in NetlinkMessage.split(datagram) {
            let header = Array(datagram[message.offset..<message.offset + 16])
            if message.flags & Netlink.dump == Netlink.dump {
                for reply in dumpReplies[message.type & 0xff] ?? [] { answer += reply }
                if let (code, _) = errors[message.sequence] {
                    answer += Self.ack(header: header, errno: code, offset: nil)
                } else {
                    answer += Self.message(type: Netlink.typeDone, flags: Netlink.multi, sequence: message.sequence, payload: [0, 0, 0, 0])
                }
            } else if message.flags & Netlink.ack != 0 {
                let (code, offset) = errors[message.sequence] ?? (0, nil)
                answer += Self.ack(header: header, errno: code, offset: offset)
            }
        }
        if !answer.isEmpty { queue.append(answer) }
    }

    func receive(timeout: Int32) throws(NetfilterError) -> [UInt8]? {
        queue.isEmpty ? nil : queue.removeFirst()
    }

    func reserve(sendBytes: Int, replies: Int) throws(NetfilterError) {
        reservations.append((sendBytes, replies))
    }

    static func message(type: UInt16, flags: UInt16, sequence: UInt32, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out += le32(UInt32(16 + payload.count))
        out += le16(type) + le16(flags) + le32(sequence) + le32(0)
        out += payload
        while out.count % 4 != 0 { out.append(0) }
        return out
    }

    /// NLMSG_ERROR, capped, with NLMSGERR_ATTR_OFFS when `offset` is given.
    static func ack(header: [UInt8], errno: Int32, offset: Int?) -> [UInt8] {
        var payload = le32(UInt32(bitPattern: -errno)) + header
        var flags = Netlink.capped
        if let offset {
            flags |= Netlink.ackTLVs
            payload += le16(8) + le16(2) + le32(UInt32(offset))
        }
        let sequence = UInt32(header[8]) | UInt32(header[9]) << 8 | UInt32(header[10]) << 16 | UInt32(header[11]) << 24
        return message(type: Netlink.typeError, flags: flags, sequence: sequence, payload: payload)
    }
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
