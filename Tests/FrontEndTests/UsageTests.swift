import Foundation
import Testing
import VirtPortCore
@testable import Commands
@testable import Engine
@testable import Hook

/// fd 1 is the process's: captures are taken one at a time (tests run in parallel).
let stdoutCapture = NSLock()

/// Runs `body` with fd 1 pointed at a file; returns what was written there.
func capturingStdout(_ body: () -> Int32) -> (code: Int32, out: String) {
    stdoutCapture.lock()
    defer { stdoutCapture.unlock() }
    let path = NSTemporaryDirectory() + "vp-stdout-\(UUID().uuidString)"
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    let saved = dup(1)
    dup2(fd, 1)
    let code = body()
    dup2(saved, 1)
    close(saved)
    close(fd)
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    unlink(path)
    return (code, text)
}

/// Runs a program with `input` on stdin; (status, stdout + stderr).
func run(_ argv: [String], input: String = "") throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    let outPipe = Pipe(), inPipe = Pipe()
    p.standardOutput = outPipe
    p.standardError = outPipe
    p.standardInput = inPipe
    try p.run()
    inPipe.fileHandleForWriting.write(Data(input.utf8))
    try inPipe.fileHandleForWriting.close()
    let data = outPipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

func which(_ name: String) -> String? {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
        return "\(dir)/\(name)"
    }
    return nil
}

func tempFile(_ name: String, _ text: String) throws -> String {
    let dir = NSTemporaryDirectory() + "vp-usage-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = "\(dir)/\(name)"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite(.serialized) struct UsageTests {
    static let names = Usage.commandNames

    /// Every command answers `--help` and `-h` with exit 0 and its own usage line and options.
    @Test(arguments: names)
    func everyCommandAnswersHelp(_ name: String) throws {
        let c = try #require(Usage.command(name))
        for flag in ["--help", "-h"] {
            let (code, out) = capturingStdout { CLI.main(["virtport", name, flag]) }
            #expect(code == 0, "\(name) \(flag)")
            let first = out.split(separator: "\n").first.map(String.init)
            #expect(first == "usage: virtport \(name)" + (c.synopsis.isEmpty ? "" : " " + c.synopsis))
            for o in c.options { #expect(out.contains("  " + o.name), "\(name): \(o.name)") }
        }
        let viaHelp = capturingStdout { CLI.main(["virtport", "help", name]) }
        #expect(viaHelp.code == 0 && viaHelp.out == capturingStdout { CLI.main(["virtport", name, "--help"]) }.out)
        // --help anywhere among the arguments, after options that take values.
        if let valued = c.options.first(where: { $0.value != nil }) {
            #expect(capturingStdout { CLI.main(["virtport", name, valued.name, "x", "--help"]) }.code == 0)
        }
    }

    @Test func globalHelpListsEveryCommand() {
        for argv in [["virtport", "help"], ["virtport", "--help"], ["virtport", "-h"]] {
            let (code, out) = capturingStdout { CLI.main(argv) }
            #expect(code == 0)
            for name in Self.names { #expect(out.contains("\n  \(name)"), "\(name) in \(argv)") }
        }
    }

    @Test func helpErrorsAreUsageErrors() {
        #expect(capturingStdout { CLI.main(["virtport", "help", "frobnicate"]) }.code == 2)
        #expect(capturingStdout { CLI.main(["virtport", "frobnicate", "--help"]) }.code == 2)
        #expect(capturingStdout { CLI.main(["virtport", "help", "list", "extra"]) }.code == 2)
        #expect(capturingStdout { CLI.main(["virtport", "help", "--man", "--man-conf"]) }.code == 2)
        #expect(capturingStdout { CLI.main(["virtport", "completion"]) }.code == 2)
        #expect(capturingStdout { CLI.main(["virtport", "completion", "tcsh"]) }.code == 2)
    }

    /// libvirt's hook arguments are never taken for a help request; `hook --help` is.
    @Test func hookArgumentsAreNotHelp() {
        #expect(Usage.answerHelp(command: "hook", args: ["qemu", "-h", "prepare", "begin", "-"]) == nil)
        #expect(Usage.answerHelp(command: "hook", args: ["qemu", "vm", "prepare", "begin", "--help"]) == nil)
        #expect(capturingStdout { CLI.main(["virtport", "hook", "--help"]) }.code == 0)
    }

    /// The commands other workers build keep their DESIGN contract synopsis.
    @Test func contractSynopses() throws {
        // DESIGN "live edit", then "add output"'s --wait.
        #expect(try #require(Usage.command("add")).synopsis
            == "DOMAIN PROTO HOSTPORT[-END][:GUESTPORT] [--address A] [--dev D] [--guest G] [--mac M] [--wait SECONDS] [--source PREFIX]…")
        #expect(try #require(Usage.command("trace")).synopsis
            == "[VM] PROTO HOSTPORT [--from PREFIX] [--count N] [--timeout S] [--json]")
        #expect(try #require(Usage.command("remove")).synopsis == "DOMAIN PROTO HOSTPORT")
        #expect(try #require(Usage.command("doctor")).synopsis == "[--json]")
        #expect(try #require(Usage.command("history")).synopsis.hasPrefix("[--domain D] [--port P] [--since T] [--until T] [--at T]"))
    }

    /// The synopsis names every option of the table, and the table every option of the synopsis.
    @Test(arguments: names)
    func synopsisAndOptionsAgree(_ name: String) throws {
        let c = try #require(Usage.command(name))
        let inSynopsis = Set(c.synopsis.split(whereSeparator: { " []|…".contains($0) }).filter { $0.hasPrefix("--") }.map(String.init))
        #expect(inSynopsis == Set(c.options.map(\.name)), "\(name)")
    }
}

@Suite struct ManPageTests {
    /// Both pages render with groff without a single warning (-ww: all warnings on) and name what
    /// they must.
    @Test(arguments: [("virtport.8", true), ("virtport.conf.5", false)])
    func rendersWithoutWarnings(_ file: String, _ eight: Bool) throws {
        let groff = try #require(which("groff"), "groff-base is installed by scripts/deps.sh --test")
        let roff = eight ? ManPage.virtport8 : ManPage.virtportConf5
        let path = try tempFile(file, roff + "\n")
        let check = try run([groff, "-man", "-Tutf8", "-ww", "-z", path])
        #expect(check.status == 0 && check.output.isEmpty, "\(check.output)")
        let text = try run([groff, "-man", "-Tascii", "-rLL=250n", "-P", "-cbu", path])
        #expect(text.status == 0)
        let plain = text.output.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")
        if eight {
            for c in Usage.commands { #expect(plain.contains("virtport \(c.name)"), "\(c.name)") }
            #expect(plain.contains("EXIT STATUS") && plain.contains("VIRTPORT_CONFIG"))
        } else {
            for k in ConfigKeys.keys { #expect(plain.contains("\(k.name) = "), "\(k.name)") }
            #expect(plain.contains("[policy]") && plain.contains("DEPRECATED"))
        }
        if let man = which("man") {
            let r = try run(["/usr/bin/env", "MANWIDTH=80", "LC_ALL=C.UTF-8", man, "-l", path])
            #expect(r.status == 0 && r.output.contains(eight ? "VIRTPORT(8)" : "VIRTPORT.CONF(5)"), "\(r.output.prefix(300))")
        }
    }

    @Test func escapesForRoff() {
        #expect(ManPage.escape(".x") == "\\&.x")
        #expect(ManPage.escape("a-b\\c") == "a\\-b\\ec")
        #expect(ManPage.escape("→ …") == "\\[u2192] \\&...")
        #expect(ManPage.prose("run `virtport list`") == "run \\fBvirtport list\\fR")
    }
}

@Suite struct CompletionTests {
    /// Sources the bash script, checks `complete -p virtport`, and asks it to complete lines.
    @Test func bashLoadsAndCompletes() throws {
        let bash = try #require(which("bash"))
        let path = try tempFile("virtport", Completion.bash + "\n")
        #expect(try run([bash, "-n", path]).status == 0)
        func complete(_ line: [String]) throws -> [String] {
            let words = line.map { "'\($0)'" }.joined(separator: " ")
            let script = """
                source '\(path)' || exit 9
                complete -p virtport | grep -q -- '-F _virtport virtport$' || exit 8
                COMP_WORDS=(\(words)); COMP_CWORD=\(line.count - 1)
                _virtport
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            let r = try run([bash, "--norc", "--noprofile", "-c", script])
            #expect(r.status == 0, "\(r.output)")
            return r.output.split(separator: "\n").map(String.init)
        }
        #expect(try complete(["virtport", "hi"]) == ["history"])
        #expect(Set(try complete(["virtport", ""])).isSuperset(of: Usage.commandNames))
        #expect(Set(try complete(["virtport", "list", "--"])) == ["--json", "--csv", "--domain", "--guards", "--help"])
        #expect(try complete(["virtport", "completion", "z"]) == ["zsh"])
        #expect(Set(try complete(["virtport", "add", "vm1", ""])) == ["tcp", "udp", "sctp"])
        #expect(Set(try complete(["virtport", "add", "vm1", "--mac", "m", ""])) == ["tcp", "udp", "sctp"])
        #expect(try complete(["virtport", "help", "recon"]) == ["reconcile"])
        #expect(try complete(["virtport", "hook", "n"]) == ["network"])
    }

    @Test func zshRegistersWithCompinit() throws {
        guard let zsh = which("zsh") else { return }  // scripts/deps.sh --test installs it
        let path = try tempFile("_virtport", Completion.zsh + "\n")
        #expect(try run([zsh, "-n", path]).status == 0)
        let dir = (path as NSString).deletingLastPathComponent
        let r = try run([zsh, "-f", "-c", "fpath=('\(dir)' $fpath); autoload -U compinit; compinit -u -D; print -r -- $_comps[virtport]"])
        #expect(r.status == 0 && r.output.trimmingCharacters(in: .whitespacesAndNewlines) == "_virtport", "\(r.output)")
    }

    @Test func fishLoadsAndCompletes() throws {
        guard let fish = which("fish") else { return }  // scripts/deps.sh --test installs it
        let path = try tempFile("virtport.fish", Completion.fish + "\n")
        #expect(try run([fish, "-n", path]).status == 0)
        let r = try run([fish, "--no-config", "-c", "source '\(path)'; complete -C'virtport hist'; complete -C'virtport add vm1 '"])
        let lines = r.output.split(separator: "\n").map { String($0.split(separator: "\t").first ?? "") }
        #expect(r.status == 0 && lines.contains("history") && lines.contains("tcp") && lines.contains("sctp"), "\(r.output)")
    }

    /// Every command and every option is in each script.
    @Test func everyCommandAndOptionIsCompleted() {
        for script in [Completion.bash, Completion.zsh, Completion.fish] {
            for c in Usage.commands {
                #expect(script.contains(c.name))
                for o in c.options { #expect(script.contains(String(o.name.dropFirst(2))), "\(c.name) \(o.name)") }
            }
        }
    }
}

/// A clone builds, tests and explains itself with nothing beside it: no file refers to a path
/// outside the repository, and the design document it cites is in it.
@Suite struct SelfContainedTests {
    static let root: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)  // Tests/FrontEndTests/UsageTests.swift
        return parts.joined(separator: "/")
    }()

    /// Text files of the repository (sources, tests, scripts, documents), without build output.
    static func files() -> [String] {
        var out: [String] = []
        let skip: Set<String> = [".git", "__pycache__", "results"]
        let fm = FileManager.default
        guard let e = fm.enumerator(atPath: root) else { return [] }
        while let rel = e.nextObject() as? String {
            let name = (rel as NSString).lastPathComponent
            if skip.contains(name) || name.hasPrefix(".build") { e.skipDescendants(); continue }
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: "\(root)/\(rel)", isDirectory: &isDir), !isDir.boolValue else { continue }
            let ext = (name as NSString).pathExtension
            if ["swift", "py", "md", "sh", "toml", "service", "nft", "h", "modulemap", "c", ""].contains(ext) { out.append(rel) }
        }
        return out
    }

    @Test func noPathOutsideTheRepository() throws {
        let forbidden = ["../" + "shared", "/work" + "/", "shared/" + "fixtures", "shared/" + "LIBVIRT"]
        let files = Self.files()
        #expect(files.count > 50 && files.contains("README.md") && files.contains("scripts/test.sh"))
        for rel in files {
            guard let text = try? String(contentsOfFile: "\(Self.root)/\(rel)", encoding: .utf8) else { continue }
            for f in forbidden { #expect(!text.contains(f), "\(rel) mentions \(f)") }
            // Every mention of the design document names the one in the repository.
            var rest = Substring(text)
            let design = "DESIGN" + ".md"
            while let r = rest.range(of: design) {
                let before = rest[..<r.lowerBound].suffix(5)
                #expect(before == "docs/" || rel == "docs/DESIGN.md", "\(rel): \(design) without docs/")
                rest = rest[r.upperBound...]
            }
        }
        for needed in ["docs/DESIGN.md", "tests/fixtures/libvirt-10.4-nftables-nat-default.nft",
                       "Tests/VirtPortCoreTests/Fixtures/libvirt-9.0/qemu-prepare.xml", "scripts/install-docs.sh"] {
            #expect(FileManager.default.fileExists(atPath: "\(Self.root)/\(needed)"), "\(needed)")
        }
    }
}
