import Engine
import Journal
import POSIX
import Synchronization
import VirtPortCore

/// Checkpoints the journal's WAL on a thread of its own with its own connection, ~50 ms after the
/// agent last wrote: the agent's connections never checkpoint (`disableAutoCheckpoint`), so the
/// fsyncs happen while no hook waits, and the WAL stays small for every other process that opens the
/// journal. (SQLite connections are not shared between threads: the connection is a local of the
/// checkpoint thread.)
final class Checkpointer: Sendable {
    /// Write end of a pipe: one byte per request; the thread debounces a burst into one checkpoint.
    private let wake: FileDescriptor
    private let sleeper: FileDescriptor
    /// The journal path of the latest request.
    private let path = Mutex("")
    private let verbose: Bool

    init(verbose: Bool) throws(VirtPortError) {
        self.verbose = verbose
        do { (sleeper, wake) = try FileDescriptor.pipe() } catch {
            throw .operational("cannot create a pipe", cause: error)
        }
        wake.setNonBlocking(true)  // a full pipe already means "checkpoint soon"
        do { try Thread.detach { [self] in run() } } catch {
            throw .operational("cannot start the checkpoint thread", cause: error)
        }
    }

    /// After a request that may have written the journal at `path`.
    func request(path: String) {
        self.path.withLock { $0 = path }
        try? wake.writeAll([1])
    }

    private func run() {
        var db: JournalDB?
        var identity: FileIdentity?
        while true {
            guard (try? sleeper.read(upTo: 256))?.isEmpty == false else { continue }
            Thread.sleep(millis: 50)
            // Drain what arrived meanwhile: one checkpoint for the whole burst.
            sleeper.setNonBlocking(true)
            while (try? sleeper.read(upTo: 256))?.isEmpty == false {}
            sleeper.setNonBlocking(false)
            let path = self.path.withLock { $0 }
            // Never creates the journal: only a file the agent's connection already opened.
            guard let id = JournalDB.fileIdentity(path: path) else { continue }
            do throws(VirtPortError) {
                if db == nil || db?.path != path || id != identity {
                    db = nil
                    db = try JournalDB(path: path)
                    try db?.disableAutoCheckpoint()
                    identity = id
                }
                let frames = try db?.checkpoint() ?? 0
                if verbose { AgentLog.write("checkpoint: \(frames) WAL frames") }
            } catch {
                db = nil
                AgentLog.write("checkpoint: \(error)")
            }
        }
    }
}

/// The agent's own log: stderr, which systemd's journal keeps ("virtport agent: …").
enum AgentLog {
    static func write(_ line: String) { Output.write(.standardError, "virtport agent: " + line + "\n") }
}
