import Engine
import POSIX
import VirtPortCore

/// The one usage source of the CLI: every command, its synopsis, options and operands, as plain
/// data. `virtport help [COMMAND]`, `COMMAND --help`, the man pages (`help --man`, `--man-conf`)
/// and the shell completions (`completion bash|zsh|fish`) are all generated from these tables, so
/// they cannot disagree. Plain values and loops, no argument-parser library (it pulls Foundation
/// into the hook). The hook never touches any of it: it is dispatched before (CLI.main).
enum Usage {
    /// What a value or an operand is, for completion.
    enum Kind: Sendable, Equatable {
        case none
        case file
        case directory
        /// A libvirt domain name (completed from `virsh list --all --name` where that answers).
        case domain
        /// One of these words.
        case words([String])
        /// Free text (a time, a port, an address): nothing to complete.
        case text
    }

    struct Option: Sendable {
        /// `--json`; `--help` is added to every command by the generators.
        var name: String
        /// The value's placeholder (`FILE`), nil for a flag.
        var value: String?
        var help: String
        var kind: Kind = .none
        /// May be given more than once.
        var repeatable = false
    }

    struct Command: Sendable {
        var name: String
        /// After `virtport NAME`.
        var synopsis: String
        /// One line, for the command list.
        var summary: String
        /// Paragraphs for `--help` and the man page.
        var details: [String]
        var options: [Option] = []
        /// The positional operands, in order (completion).
        var operands: [Kind] = []
        /// Whether the global command list shows it (`hook` is for libvirt, not for people).
        var listed = true
    }

    static let configLine = "config: /etc/virtport/virtport.conf, or $VIRTPORT_CONFIG (man 5 virtport.conf)"
    static let exitLine = "exit status: 0 ok, 1 operational failure (kernel, database, libvirt), 2 invalid input, config or usage"

    static var timeHelp: String { "T: " + timeFormats }
    static let timeFormats = "2026-11-24, 2026-11-24T10:00[:30], …Z or …+01:00 (no zone: local time), "
        + "today, yesterday, tomorrow (local midnight), now, -2h, -1h30m, +2d, \"3d ago\", \"1h 30min ago\", @EPOCH"

    /// `--hooks-dir`, shared by install and uninstall.
    static let hooksDirOption = Option(name: "--hooks-dir", value: "DIR",
                                       help: "libvirt's hook directory (default: [paths] hooks_dir)", kind: .directory)

    /// `add`'s synopsis, with the options of the forward attributes kinds own.
    static let addSynopsis = "DOMAIN PROTO HOSTPORT[-END][:GUESTPORT] [--address A] [--dev D] [--guest G] [--mac M] [--wait SECONDS]"
        + KindListings.addSynopsis

    static let commands: [Command] = [
        Command(
            name: "plan", synopsis: "[--network-xml FILE]… [--inactive] [VM | < domain.xml]",
            summary: "print the forwards a domain declares, resolved, as JSON; touches nothing",
            details: [
                "Parses the domain's virtport metadata, resolves each forward's guest address and checks it against the policy, "
                    + "then prints the plan as JSON on stdout. Nothing is applied, journaled or changed.",
                "With VM (a domain name), the XML comes from libvirt (libvirt_uri, read-only): the live XML when the domain runs, "
                    + "else its persistent definition, like `virsh dumpxml VM`. Without VM, the domain XML is read from stdin. "
                    + "A domain XML without <uuid> is accepted here (libvirt adds one at define time); the hook requires it.",
                "It also runs qemu prepare's own check, read-only (host processes bound to a host port, other domains' "
                    + "forwards in the journal): each forward's \"refused\" is why its domain's next start would be refused for it "
                    + "(\"host port tcp/8080 is already forwarded to domain 'web1' (uuid …)\"), else null; the top-level "
                    + "\"refused\" is the line the hook would print refusing that start, else null.",
                "Exit 0 with \"forwards\": [] for a domain without metadata, and 0 when a forward would be refused; 2 with one "
                    + "line naming the element and attribute for invalid input or a policy refusal.",
            ],
            options: [
                Option(name: "--network-xml", value: "FILE",
                       help: "network XML to take DHCP reservations from instead of libvirt's files", kind: .file, repeatable: true),
                Option(name: "--inactive", help: "with VM: the persistent definition even when the domain runs (virsh dumpxml --inactive)"),
            ],
            operands: [.domain]),
        Command(
            name: "list", synopsis: "[--json|--csv] [--domain D] [--guards]",
            summary: "active mappings: VM, proto, host address:port, guest address:port, state, since",
            details: ["The active mappings in the journal. Tables use local time; JSON and CSV use UTC ISO 8601.",
                      "With --guards: the guarded bridge ports instead (tap, MAC, flags, allowed addresses) with the frames "
                          + "dropped on each, per reason, read from table bridge virtport (needs root; \"?\" otherwise)."],
            options: [
                Option(name: "--guards", help: "the guarded bridge ports and their dropped-frame counters"),
                Option(name: "--json", help: "a JSON array"),
                Option(name: "--csv", help: "CSV with a header line"),
                Option(name: "--domain", value: "D", help: "only the mappings of domain D (name or UUID)", kind: .domain),
            ]),
        Command(
            name: "history", synopsis: "[--domain D] [--port P] [--since T] [--until T] [--at T] [--json|--csv] [--guards]" + KindListings.historySynopsis,
            summary: "add/remove events of the journal: who had which host port when",
            details: [
                "The append-only history of the journal (it survives undefine). Filters combine.",
                "With --guards: the bridge port guards' events instead (on, change, off: tap, MAC, allowed addresses "
                    + "with their source, flags); --port and --at do not apply.",
                timeHelp,
            ],
            options: [
                Option(name: "--guards", help: "the bridge port guards' on/change/off events"),
            ] + KindListings.historyOptions + [
                Option(name: "--domain", value: "D", help: "events of domain D (name or UUID)", kind: .domain),
                Option(name: "--port", value: "P", help: "events whose host port range contains P", kind: .text),
                Option(name: "--since", value: "T", help: "events at or after T", kind: .text),
                Option(name: "--until", value: "T", help: "events at or before T", kind: .text),
                Option(name: "--at", value: "T", help: "the mappings that were active at instant T", kind: .text),
                Option(name: "--json", help: "a JSON array"),
                Option(name: "--csv", help: "CSV with a header line"),
            ]),
        Command(
            name: "reconcile", synopsis: "[--dry-run] [--json]",
            summary: "make kernel, journal and running VMs agree",
            details: [
                "Compares the journal, the kernel (read back over netlink) and the running domains (libvirt, else its status "
                    + "files), then finishes half-done intents, removes forwards of domains that do not run, re-adds missing "
                    + "elements and rebuilds a damaged table. Run at boot by virtport-reconcile.service.",
            ],
            options: [
                Option(name: "--dry-run", help: "print what would be done; change nothing"),
                Option(name: "--json", help: "the fixes as a JSON object"),
            ]),
        Command(
            name: "install", synopsis: "[--hooks-dir DIR] [--no-reconcile]",
            summary: "libvirt hooks in place, libvirtd told to rescan",
            details: [
                "Symlinks the qemu and network hooks to this binary (into qemu.d/ and network.d/ when a foreign hook exists), "
                    + "writes the default configuration if there is none, sends libvirtd SIGHUP and runs reconcile. Idempotent.",
            ],
            options: [
                hooksDirOption,
                Option(name: "--no-reconcile", help: "do not run reconcile afterwards"),
            ]),
        Command(
            name: "uninstall", synopsis: "[--hooks-dir DIR] [--keep-forwards]",
            summary: "hooks removed; active forwards taken down",
            details: [
                "Removes exactly the hook symlinks that point to a virtport binary, then takes the active forwards down "
                    + "(history reason `uninstall`). Keeps the database and the configuration. Idempotent.",
            ],
            options: [
                hooksDirOption,
                Option(name: "--keep-forwards", help: "leave the active forwards in the kernel and the journal"),
            ]),
        Command(
            name: "add", synopsis: addSynopsis,
            summary: "add a forward to a domain's metadata through libvirt and apply it at once",
            details: [
                "Edits the domain's virtport metadata through the libvirt API (the persistent definition, and the live one when "
                    + "the domain runs) and applies the forward at once. A conflict or a policy refusal exits 2 with one line; "
                    + "nothing is changed then.",
                "Prints one line per forward it changed: 'applied: tcp *:2223 -> 192.168.122.10:22', or 'pending: ' and what is "
                    + "missing (no address known for the NIC; give --guest, a DHCP reservation, or wait for a lease). Both exit 0. "
                    + "Without --guest, a NIC whose address the metadata already states (another forward's guest=, the guard's ip=) "
                    + "uses that address.",
            ],
            options: [
                Option(name: "--address", value: "A", help: "host listen address (default: every local address)", kind: .text),
                Option(name: "--dev", value: "D", help: "host interface the connection must arrive on", kind: .text),
                Option(name: "--guest", value: "G", help: "the guest's address (default: DHCP reservation, then lease)", kind: .text),
                Option(name: "--mac", value: "M", help: "which guest NIC (needed when the domain has more than one)", kind: .text),
                Option(name: "--wait", value: "SECONDS", help: "wait for a pending forward to be applied; exit 1 if it is not", kind: .text),
            ] + KindListings.addOptions,
            operands: [.domain, .words(["tcp", "udp", "sctp"])]),
        Command(
            name: "remove", synopsis: "DOMAIN PROTO HOSTPORT",
            summary: "remove a forward from a domain's metadata through libvirt and take it down",
            details: ["The reverse of add: edits the metadata through the libvirt API and removes the forward at once. A range "
                      + "that starts at HOSTPORT goes whole; a port inside a longer range is excluded from it."],
            operands: [.domain, .words(["tcp", "udp", "sctp"])]),
        Command(
            name: "trace", synopsis: "[VM] PROTO HOSTPORT [--from PREFIX] [--count N] [--timeout S] [--json]",
            summary: "follow packets to a host port through every table: which one drops them, or that they reach the guest",
            details: [
                "Marks the matching packets (and the guest's replies) with meta nftrace in tables of its own, listens to "
                    + "nf_tables' trace events and prints one line per hop: table, chain, rule verdict and owner (libvirt's, "
                    + "firewalld's, Docker's, virtport's forwards or guard, someone's), the conntrack state. The last line is the "
                    + "verdict: the table and rule that dropped or rejected the packet, or 'reached the guest'.",
                "Its tables are removed when it ends (count reached, timeout, Ctrl-C, SIGTERM); doctor finds those of a killed "
                    + "trace and reconcile removes them. Exit 0 when a packet was traced, 1 when none came.",
            ],
            options: [
                Option(name: "--from", value: "PREFIX", help: "only clients in this address or prefix", kind: .text),
                Option(name: "--count", value: "N", help: "packets to follow (default 1)", kind: .text),
                Option(name: "--timeout", value: "S", help: "give up after S seconds (default 30)", kind: .text),
                Option(name: "--json", help: "the packets, hops and verdict as one JSON document"),
            ],
            operands: [.domain, .words(["tcp", "udp", "sctp"])]),
        Command(
            name: "doctor", synopsis: "[--json]",
            summary: "check the installation; every finding names the command that fixes it",
            details: ["Exit 0 when healthy, 1 with findings."],
            options: [Option(name: "--json", help: "the findings as JSON")]),
        Command(
            name: "agent", synopsis: "[--verbose]",
            summary: "watch libvirt, DHCP leases and nf_tables; heal; serve the hooks from a warm journal (optional)",
            details: [
                "Runs in the foreground (virtport-agent.service). Hooks of domains with virtport metadata hand their work to it "
                    + "over [paths] agent_socket; without it they do the same work themselves.",
                "Listens to libvirt's domain lifecycle, metadata-change and network events (reconnecting with backoff, "
                    + "reconciling at every connect), completes pending forwards when dnsmasq writes a lease and follows a "
                    + "lease that moves, and puts back rules someone deleted (nft flush ruleset, a firewall reload), backing "
                    + "off from a tool that keeps deleting them. Every decision goes to the system log; [agent] metrics_file "
                    + "names a Prometheus textfile.",
            ],
            options: [Option(name: "--verbose", help: "log every request, event, heal and checkpoint on stderr")]),
        Command(
            name: "hook", synopsis: "qemu|network OBJECT OP SUBOP [EXTRA] < XML",
            summary: "what libvirt runs (also as argv[0] = …/hooks/qemu or …/hooks/network)",
            details: [
                "Hook mode: reads the XML libvirt passes on stdin and never writes to stdout. prepare checks (exit 2 refuses "
                    + "the start with one line); start and reconnect apply; stopped and release remove; network started "
                    + "rebuilds the table. reconnect always exits 0.",
            ],
            operands: [.words(["qemu", "network"])], listed: true),
        Command(
            name: "help", synopsis: "[COMMAND | --man | --man-conf]",
            summary: "this text, a command's usage, or the man pages in roff",
            details: [
                "`help COMMAND` is `COMMAND --help`. `--man` prints virtport(8) and `--man-conf` virtport.conf(5) in roff "
                    + "(scripts/install.sh installs both).",
            ],
            options: [
                Option(name: "--man", help: "print the manual page virtport(8) in roff"),
                Option(name: "--man-conf", help: "print the manual page virtport.conf(5) in roff"),
            ],
            operands: [.words([])]),  // filled with the command names by the generators
        Command(
            name: "completion", synopsis: "bash|zsh|fish",
            summary: "print a shell completion script",
            details: [
                "Prints the completion script for the shell; domain names are completed from `virsh list --all --name`. "
                    + "scripts/install.sh installs all three.",
            ],
            operands: [.words(["bash", "zsh", "fish"])]),
        Command(name: "version", synopsis: "", summary: "print the version", details: ["Also `virtport --version`."]),
    ]

    static func command(_ name: String) -> Command? {
        for c in commands where c.name == name { return c }
        return nil
    }

    static var commandNames: [String] { commands.map(\.name) }

    /// The operands of `c`, with `help`'s filled with the command names.
    static func operands(_ c: Command) -> [Kind] {
        c.name == "help" ? [.words(commandNames)] : c.operands
    }

    // MARK: - text

    /// `virtport help` / `virtport --help` / a missing or unknown command.
    static var globalText: String {
        var lines = ["usage: virtport COMMAND [OPTIONS]"]
        let column = 46
        for c in commands where c.listed {
            let head = "  " + c.name + (c.synopsis.isEmpty ? "" : " " + c.synopsis)
            if head.count + 2 <= column {
                lines.append(head + String(repeating: " ", count: column - head.count) + c.summary)
            } else {
                lines.append(head)
                lines.append(String(repeating: " ", count: column) + c.summary)
            }
        }
        lines.append("'virtport help COMMAND' or 'virtport COMMAND --help': a command's options; man virtport")
        lines.append(configLine)
        return lines.joined(separator: "\n")
    }

    /// `virtport COMMAND --help`.
    static func text(_ c: Command) -> String {
        var lines = ["usage: virtport \(c.name)" + (c.synopsis.isEmpty ? "" : " " + c.synopsis), "", c.summary]
        for d in c.details { lines.append(""); lines.append(contentsOf: wrap(d, width: 96)) }
        let options = c.options + [Option(name: "-h, --help", help: "this text")]
        let width = options.map { optionHead($0).count }.max() ?? 0
        lines.append("")
        lines.append("options:")
        for o in options {
            let head = optionHead(o)
            lines.append("  " + head + String(repeating: " ", count: width - head.count + 2) + o.help)
        }
        lines.append("")
        lines.append(configLine)
        lines.append(exitLine)
        return lines.joined(separator: "\n")
    }

    static func optionHead(_ o: Option) -> String {
        o.name + (o.value.map { " " + $0 } ?? "") + (o.repeatable ? "…" : "")
    }

    /// Words of `text`, greedily wrapped at `width` columns.
    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }

    // MARK: - dispatch

    /// `--help` or `-h` among a command's arguments: its usage on stdout, exit 0. An unknown command
    /// falls through (the caller says it is unknown). Returns nil when no help was asked for.
    /// The hook's arguments are libvirt's: there only `virtport hook --help` asks (and the hook
    /// pays two string compares, never this table).
    static func answerHelp(command: String, args: [String]) -> Int32? {
        let asked = command == "hook" ? args.first == "--help" || args.first == "-h"
                                      : args.contains("--help") || args.contains("-h")
        guard asked, let c = Usage.command(command) else { return nil }
        Output.out(text(c))
        return 0
    }

    /// `virtport help [COMMAND | --man | --man-conf]`.
    static func helpCommand(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let man = args.flag("--man"), manConf = args.flag("--man-conf")
        let topic = args.next()
        try args.finish("help")
        if man || manConf {
            guard !(man && manConf), topic == nil else { throw .invalid("help: --man and --man-conf take nothing else") }
            Output.out(man ? ManPage.virtport8 : ManPage.virtportConf5)
            return 0
        }
        guard let topic else {
            Output.out(globalText)
            return 0
        }
        guard let c = command(topic) else {
            throw .invalid("help: unknown command '\(topic)' (commands: \(commandNames.joined(separator: ", ")))")
        }
        Output.out(text(c))
        return 0
    }

    /// `virtport completion bash|zsh|fish`.
    static func completionCommand(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let shell = args.next()
        try args.finish("completion")
        switch shell {
        case "bash": Output.out(Completion.bash)
        case "zsh": Output.out(Completion.zsh)
        case "fish": Output.out(Completion.fish)
        case nil: throw .invalid("completion: which shell? usage: virtport completion bash|zsh|fish")
        case let s?: throw .invalid("completion: unknown shell '\(s)' (bash, zsh or fish)")
        }
        return 0
    }
}

