"""What virtport sent to its syslog socket (`[log] syslog_socket`), for tests of what it logs."""
import os
import socket
import threading
import time


class SyslogCatcher:
    """A syslog socket (unix datagrams, RFC 3164 lines) that keeps every message's text."""

    def __init__(self, path):
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            text = data.decode(errors="replace")
            # "<PRI>Mmm dd hh:mm:ss virtport[pid]: text"
            self.messages.append(text.split("]: ", 1)[1] if "]: " in text else text)

    def lines(self, needle=""):
        return [m for m in list(self.messages) if needle in m]

    def wait_for(self, needle, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.lines(needle)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no log line with {needle!r} in {timeout} s; got {self.lines()}")

    def close(self):
        self.sock.close()
