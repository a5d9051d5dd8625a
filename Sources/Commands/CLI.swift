#if canImport(Glibc)
import Glibc
#endif
import Engine
import Hook
import POSIX
import VirtPortCore

/// The commands people type (`virtport COMMAND …`); the hook modes by argv[0] are dispatched in
/// main.swift before this runs.
public enum CLI {
    public static let version = "0.1.0"

    public static func main(_ argv: [String]) -> Int32 {
        var args = Arguments(Array(argv.dropFirst()))
        guard let command = args.next() else {
            Output.err("missing command\n" + usage)
            return 2
        }
        if let code = Usage.answerHelp(command: command, args: args.rest) { return code }
        do throws(VirtPortError) {
            switch command {
            case "hook":
                guard let k = args.next(), let kind = HookProcess.Kind(rawValue: k) else {
                    throw VirtPortError.invalid("usage: virtport hook qemu|network OBJECT OPERATION SUB-OPERATION [EXTRA]")
                }
                return HookProcess.run(kind: kind, args: args.rest)
            case "plan": return try PlanCommand.run(&args)
            case "list": return try ListCommand.run(&args)
            case "history": return try HistoryCommand.run(&args)
            case "install": return try InstallCommand.install(&args)
            case "uninstall": return try InstallCommand.uninstall(&args)
            case "reconcile": return try ReconcileCommand.run(&args)
            case "agent": return try AgentCommand.run(&args)
            case "add": return try EditCommand.add(&args)
            case "remove": return try EditCommand.remove(&args)
            case "doctor": return try DoctorCommand.run(&args)
            case "trace": return try TraceCommand.run(&args)
            case "version", "--version":
                Output.out("virtport \(version)")
                return 0
            case "help": return try Usage.helpCommand(&args)
            case "completion": return try Usage.completionCommand(&args)
            case "--help", "-h":
                Output.out(usage)
                return 0
            default:
                throw VirtPortError.invalid("unknown command '\(command)'\n" + usage)
            }
        } catch {
            Output.err(error.description)
            return error.exitCode
        }
    }

    /// The command list (generated from the usage table, Commands/Usage.swift).
    static var usage: String { Usage.globalText }
}

/// A tiny argument reader: no argument-parser dependency (it pulls Foundation into the hook).
struct Arguments {
    private var items: [String]
    init(_ items: [String]) { self.items = items }

    mutating func next() -> String? { items.isEmpty ? nil : items.removeFirst() }
    var rest: [String] { items }
    var isEmpty: Bool { items.isEmpty }

    /// Removes `--name` and returns whether it was present.
    mutating func flag(_ name: String) -> Bool {
        guard let i = items.firstIndex(of: name) else { return false }
        items.remove(at: i)
        return true
    }

    /// Removes every `--name VALUE` (or `--name=VALUE`) and returns the values.
    mutating func options(_ name: String) throws(VirtPortError) -> [String] {
        var out: [String] = []
        var i = 0
        while i < items.count {
            if items[i] == name {
                guard i + 1 < items.count else { throw .invalid("option \(name) needs a value") }
                out.append(items[i + 1])
                items.removeSubrange(i...(i + 1))
            } else if items[i].hasPrefix(name + "=") {
                out.append(String(items[i].dropFirst(name.count + 1)))
                items.remove(at: i)
            } else {
                i += 1
            }
        }
        return out
    }

    mutating func option(_ name: String) throws(VirtPortError) -> String? {
        let all = try options(name)
        guard all.count <= 1 else { throw .invalid("option \(name) given more than once") }
        return all.first
    }

    /// Refuses anything left over.
    func finish(_ command: String) throws(VirtPortError) {
        if let extra = items.first { throw .invalid("\(command): unexpected argument '\(extra)'") }
    }
}

/// How a listing is printed: table for people, JSON/CSV for machines.
enum OutputFormat {
    case table, json, csv
    static func from(_ args: inout Arguments) throws(VirtPortError) -> OutputFormat {
        let json = args.flag("--json"), csv = args.flag("--csv")
        if json && csv { throw .invalid("--json and --csv are mutually exclusive") }
        return json ? .json : csv ? .csv : .table
    }
}
