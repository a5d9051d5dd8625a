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

/// The recording transport of the Netfilter module (also used by the engine's tests).
typealias FakeTransport = RecordingTransport

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
