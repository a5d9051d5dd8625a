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

    def __init__(self, lab, config=None):
        self.lab = lab
        self.socket = str(lab.dir / "agent.sock")
        self.log = lab.dir / f"agent-{time.monotonic_ns()}.log"
        env = lab.env()
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
