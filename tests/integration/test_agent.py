"""`virtport agent`: hooks hand their work to it over its unix socket, and fall back to doing it
themselves whenever it cannot take it. Real agent process, real nftables, real traffic."""
import json
import os
import signal
import socket
import struct
import subprocess
import time

from conftest import BIN, domain_xml

U1 = "51515151-1111-4111-8111-111111111111"
U2 = "52525252-2222-4222-8222-222222222222"

WEB = domain_xml("agentweb", U1, """
  <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>
""")
RIVAL = domain_xml("agentrival", U2, """
  <vp:portForward proto='tcp' guest='192.168.122.11'><vp:range start='2222' to='22'/></vp:portForward>
""")


class Agent:
    """A `virtport agent --verbose` in the lab's host namespace; its log is what it served."""

    def __init__(self, lab, config=None, **extra_env):
        self.lab = lab
        self.socket = str(lab.dir / "agent.sock")
        self.log = lab.dir / f"agent-{time.monotonic_ns()}.log"
        env = lab.env(**extra_env)
        if config:
            env["VIRTPORT_CONFIG"] = config
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.host, BIN, "agent", "--verbose"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        lab.procs.append(self.proc)
        deadline = time.time() + 10
        while "listening on" not in self.text():
            assert self.proc.poll() is None, f"agent exited: {self.text()}"
            assert time.time() < deadline, f"agent did not come up: {self.text()}"
            time.sleep(0.02)

    def text(self):
        return self.log.read_text() if self.log.exists() else ""

    def served(self):
        """(op, exit status) of every request it did the work for."""
        out = []
        for line in self.text().splitlines():
            if "virtport agent: qemu " in line and ": exit " in line:
                words = line.split()
                out.append((words[4], int(line.split(": exit ")[1].split()[0])))
        return out

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


def agent_socket_config(lab, path=None):
    """The lab's config plus agent_socket (the hook and the agent read it)."""
    with open(lab.config, "a") as f:
        f.write(f'[paths]\nagent_socket = "{path or lab.dir / "agent.sock"}"\n')


def test_hooks_are_served_by_the_agent_with_the_same_effects(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    # prepare and start went through the agent; started has nothing to do and never connects.
    assert agent.served() == [("prepare", 0), ("start", 0)]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    rows = json.loads(lab.virtport("list", "--json", check=True).stdout)
    assert [(r["domain"], r["host_port_start"], r["state"]) for r in rows] == [("agentweb", 2222, "applied")]

    # A conflict is refused through the agent with the same line and exit status as in-process.
    via_agent = lab.hook(RIVAL, "prepare")
    alone = lab.hook(RIVAL, "prepare", VIRTPORT_NO_AGENT="1")
    assert via_agent.returncode == alone.returncode == 2
    assert via_agent.stderr == alone.stderr
    assert b"host port tcp/2222 is already forwarded to domain 'agentweb'" in via_agent.stderr
    assert via_agent.stdout == b"" and agent.served()[-1] == ("prepare", 2)

    lab.stop(WEB)
    assert agent.served()[-2:] == [("stopped", 0), ("release", 0)]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222).startswith("ERROR")
    assert lab.elements() == []
    history = json.loads(lab.virtport("history", "--json", check=True).stdout)
    assert [(e["action"], e["reason"]) for e in history] == [("add", "hook qemu start"), ("remove", "hook qemu stopped")]


def test_without_an_agent_or_after_it_died_hooks_do_the_work_themselves(lab):
    agent_socket_config(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)  # no agent at all: the socket path does not exist
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    agent = Agent(lab)
    agent.proc.kill()  # leaves its socket file behind: connect is refused
    agent.proc.wait()
    assert os.path.exists(agent.socket)
    lab.stop(WEB)
    assert lab.elements() == []
    assert agent.served() == []
    # A new agent replaces the stale socket file.
    agent = Agent(lab)
    lab.start(WEB)
    assert [op for op, _ in agent.served()] == ["prepare", "start"]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"


def test_agent_of_another_configuration_is_not_used(lab, tmp_path):
    agent_socket_config(lab)
    other = tmp_path / "other.conf"
    other.write_text(open(lab.config).read().replace(lab.db, str(tmp_path / "other.db")))
    agent = Agent(lab, config=str(other))
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    assert agent.served() == []  # it declined: the hook did the work itself, in its own journal
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    assert "not served" in agent.text()
    assert [r["domain"] for r in json.loads(lab.virtport("list", "--json", check=True).stdout)] == ["agentweb"]
    assert json.loads(lab.virtport("list", "--json", VIRTPORT_CONFIG=str(other), check=True).stdout) == []


def test_second_agent_refused_and_garbage_on_the_socket_is_survived(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    second = lab.virtport("agent")
    assert second.returncode == 1
    assert b"another virtport agent is already listening on" in second.stderr
    # Garbage, a truncated frame and an oversize length: the agent drops them and keeps serving.
    for payload in (b"hello", struct.pack("<I", 100) + b"VPA1", struct.pack("<I", 0xFFFFFFF0)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(agent.socket)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            assert s.recv(100) == b""  # no reply: the agent closed the connection
        except ConnectionResetError:  # (closed with bytes of ours still unread)
            pass
        s.close()
    assert agent.proc.poll() is None
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    assert [op for op, _ in agent.served()] == ["prepare", "start"]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    assert oct(os.stat(agent.socket).st_mode & 0o777) == "0o600"


def test_agent_reopens_a_journal_replaced_under_it_and_keeps_no_checkpoint_debt(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    lab.stop(WEB)
    # The WAL its hooks wrote is checkpointed once it is idle (no hook waited for the fsyncs).
    deadline = time.time() + 5
    while "checkpoint:" not in agent.text():
        assert time.time() < deadline, agent.text()
        time.sleep(0.05)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(lab.db + suffix):
            os.unlink(lab.db + suffix)
    lab.start(WEB)
    assert [op for op, _ in agent.served()][-2:] == ["prepare", "start"]
    rows = json.loads(lab.virtport("list", "--json", check=True).stdout)
    assert [(r["domain"], r["state"]) for r in rows] == [("agentweb", "applied")]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"


# --- Nobody can hold the agent (README "Security": the agent) ------------------------------------

def raw_request(kind, args, xml, config):
    """A request frame as a hook sends it (AgentFrame: VPA2, config path, kind, args, stdin)."""
    def s(b):
        return struct.pack("<I", len(b)) + b
    body = b"VPA2" + s(config.encode()) + s(kind.encode()) + struct.pack("<I", len(args))
    body += b"".join(s(a.encode()) for a in args) + s(xml if isinstance(xml, bytes) else xml.encode())
    return struct.pack("<I", len(body)) + body


def timed(fn):
    t = time.monotonic()
    r = fn()
    return r, time.monotonic() - t


def test_a_client_dripping_bytes_does_not_hold_the_hooks(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    drips = []
    for _ in range(3):  # connected root clients that send one byte now and then
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(agent.socket)
        s.send(b"\x10")
        drips.append(s)
    _, took = timed(lambda: lab.start(WEB))
    assert took < 1.5, f"prepare+start+started took {took:.2f} s with dripping clients connected"
    assert [op for op, _ in agent.served()] == ["prepare", "start"]
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    # The drippers are cut off once their request deadline (2 s for the whole frame) passes.
    time.sleep(2.3)
    for s in drips:
        s.settimeout(2)
        try:
            assert s.recv(10) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        s.close()
    assert agent.text().count("too slow request") == 3


def test_a_slow_request_does_not_delay_the_others(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    lab.start(WEB)
    # A rebuild holds the change lock exclusively: a start for another domain waits for it ...
    import fcntl
    lock = open(lab.db + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    waiting = subprocess.Popen(["ip", "netns", "exec", lab.host, BIN, "hook", "qemu", "agentrival", "start", "begin", "-"],
                               env=lab.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.procs.append(waiting)
    waiting.stdin.write(RIVAL.replace("2222", "2223").encode())
    waiting.stdin.close()
    time.sleep(0.3)
    assert waiting.poll() is None
    # ... while another hook's prepare is answered at once by another worker.
    r, took = timed(lambda: lab.hook(RIVAL, "prepare"))
    assert r.returncode == 2 and b"already forwarded to domain 'agentweb'" in r.stderr
    assert took < 1.0, f"prepare took {took:.2f} s behind a request that waits for the lock"
    # The agent logs a request after it has answered it: give the line a moment to arrive.
    assert last_served(agent) == ("prepare", 2)
    assert waiting.poll() is None                   # the start still waits for the lock
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    assert waiting.wait(timeout=10) == 0, waiting.stderr.read()
    assert last_served(agent, ("start", 0)) == ("start", 0)


def last_served(agent, want=("prepare", 2), timeout=2.0):
    """The agent's last served request, once it is `want` or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        served = agent.served()
        last = served[-1] if served else None
        if last == want or time.monotonic() > deadline:
            return last
        time.sleep(0.02)


def test_a_request_whose_hook_gave_up_is_never_executed(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    # A client that sends a start and gives up at once (shuts its socket for reading, as a hook
    # does when the claim does not come in time): the agent must not run it afterwards.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(agent.socket)
    s.shutdown(socket.SHUT_RD)
    s.sendall(raw_request("qemu", ["agentweb", "start", "begin", "-"], WEB, lab.config))
    deadline = time.time() + 5
    while "gave up" not in agent.text():
        assert time.time() < deadline, agent.text()
        time.sleep(0.05)
    s.close()
    time.sleep(0.2)
    assert agent.served() == []
    assert json.loads(lab.virtport("list", "--json", check=True).stdout) == []
    assert json.loads(lab.virtport("history", "--json", check=True).stdout) == []
    assert lab.elements() == []


def test_a_stopped_agent_costs_a_hook_two_seconds_at_most_and_never_runs_it_late(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    lab.listen(lab.guest, "tcp", "0.0.0.0", 22, "guest1")
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        # Accepted by the kernel, never claimed: the hook gives up after the claim timeout and
        # does the work itself.
        r, took = timed(lambda: lab.hook(WEB, "prepare"))
        assert r.returncode == 0 and took < 3.0, (r.stderr, took)
        # With the backlog full a connect fails at once: no wait at all.
        fillers = []
        for _ in range(300):
            f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(agent.socket)
            except BlockingIOError:
                f.close()
                break
            fillers.append(f)
        assert len(fillers) < 300, "the backlog never filled"
        r, took = timed(lambda: lab.hook(WEB, "start"))
        assert r.returncode == 0 and took < 1.0, (r.stderr, took)
        for f in fillers:
            f.close()
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    assert lab.connect(lab.client, "tcp", "203.0.113.1", 2222) == "guest1 22 from 203.0.113.2"
    # Resumed, the agent finds the prepare whose hook gave up: it is not executed late.
    deadline = time.time() + 5
    while "gave up" not in agent.text():
        assert time.time() < deadline, agent.text()
        time.sleep(0.05)
    assert agent.served() == []
    history = json.loads(lab.virtport("history", "--json", check=True).stdout)
    assert [(e["action"], e["reason"]) for e in history] == [("add", "hook qemu start")]
