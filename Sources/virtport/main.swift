#if canImport(Glibc)
import Glibc
#endif
import Commands
import Hook

// The multi-call entry point. libvirt runs us as …/hooks/qemu or …/hooks/network: that mode is
// chosen first, before any command-line machinery runs (its startup cost is every VM's).
if let kind = HookProcess.kind(invokedAs: CommandLine.arguments.first ?? "virtport") {
    exit(HookProcess.run(kind: kind, args: Array(CommandLine.arguments.dropFirst())))
}
exit(CLI.main(CommandLine.arguments))
