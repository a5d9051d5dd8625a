#if canImport(Glibc)
import Glibc
#endif
public import POSIX

/// One length-prefixed frame over a stream socket, each way, with a deadline.
public enum FrameIO {
    /// Sends `payload` behind its u32 length; false when the peer is gone.
    public static func send(_ fd: FileDescriptor, _ payload: [UInt8]) -> Bool {
        var w = AgentFrame.Writer([])
        w.bytes(payload)
        do { try fd.writeAll(w.out, socket: true) } catch { return false }
        return true
    }

    /// Reads one frame; nil on EOF, error, oversize, or when the whole frame has not arrived
    /// `timeoutMs` after the call (a deadline for the frame, not per byte: a peer that drips a
    /// byte at a time cannot hold the reader longer).
    public static func receive(_ fd: FileDescriptor, timeoutMs: Int32) -> [UInt8]? {
        let deadline = MonotonicClock.millis() + Int64(timeoutMs)
        guard let head = exactly(fd, 4, deadline: deadline) else { return nil }
        let n = Int(UInt32(head[0]) | UInt32(head[1]) << 8 | UInt32(head[2]) << 16 | UInt32(head[3]) << 24)
        guard n <= AgentFrame.maxFrame else { return nil }
        return exactly(fd, n, deadline: deadline)
    }

    private static func exactly(_ fd: FileDescriptor, _ count: Int, deadline: Int64) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let left = deadline - MonotonicClock.millis()
            guard left > 0, (try? fd.waitReadable(timeoutMs: Int32(clamping: left))) == true,
                  let chunk = try? fd.read(upTo: min(count - out.count, 1 << 20)), !chunk.isEmpty
            else { return nil }
            out += chunk
        }
        return out
    }

}
