"""The agent's accept loop when the process is out of descriptors (issue 23): accept(2) fails with
EMFILE while the connection stays queued, so retrying at once fails at once. The agent must back
off (bounded CPU), say so once, and serve again as soon as descriptors are free. Real agent
process in the lab's host namespace; its RLIMIT_NOFILE is lowered from outside (prlimit(2))."""
import os
import resource
import socket
import time

from test_agent import WEB, Agent, agent_socket_config
from test_agent_watch import wait


def cpu_seconds(pid):
    """User + system CPU time of every thread of `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_agent_backs_off_instead_of_spinning_and_recovers(lab):
    agent_socket_config(lab)
    agent = Agent(lab)
    pid = agent.proc.pid
    time.sleep(0.5)  # start-up work (reconcile, first reads) is not what is measured
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # No new descriptor at all (those open stay open): every accept(2) fails with EMFILE.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1, limits[1]))
    clients = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(agent.socket)  # queued in the listener's backlog
            clients.append(s)
        time.sleep(0.2)
        before = cpu_seconds(pid)
        time.sleep(2.0)
        used = cpu_seconds(pid) - before
        # A spinning accept loop burns the whole 2 s; backing off every 100 ms costs next to nothing.
        assert used < 0.3, f"{used:.2f} s of CPU in 2 s while out of descriptors: {agent.text()[-800:]}"
        # Said once for the whole episode, not once per attempt.
        wait(lambda: "Too many open files" in agent.text(), what="the EMFILE line")
        assert agent.text().count("Too many open files") == 1, agent.text()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        for s in clients:
            s.close()
    # Serving again: a VM start's hooks are handed to the agent and done.
    lab.start(WEB)
    wait(lambda: ("start", 0) in agent.served(), what="the agent to serve a start")
    assert "accepting connections again" in agent.text(), agent.text()
    assert agent.proc.poll() is None
