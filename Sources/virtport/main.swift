#if canImport(Glibc)
import Glibc
#endif
import VirtPortApp

exit(CLI.main(CommandLine.arguments))
