"""The agent's own nf_tables batches are not mistaken for someone else's (issue 24, speed row 4).

nf_tables names the committing *thread* in each batch's NEWGEN message, and the agent commits from
its hook workers' threads. When the agent recognised only its process id, every stop it served
looked like a foreign delete: a self-heal check followed (journal read and kernel dump under the
exclusive change lock, ~170 ms with 10,000 mappings) and the next hooks waited for it.
Real agent, real kernel nftables in the lab's host namespace."""
import re
import time

from conftest import sh
from test_agent_watch import FIXED, start_agent, wait

# Checks started by a batch (not the one at start-up: "found when the agent started").
CHECK = re.compile(r"self-heal check \(((?:deleted|rules inserted) by .*)\) took \d+ ms")


def checks(agent):
    return CHECK.findall(agent.text())


def test_stops_the_agent_serves_make_no_heal_check_and_a_foreign_delete_does(lab):
    lab.start(FIXED)
    want = lab.kernel_forwards()
    assert len(want) == 1
    agent = start_agent(lab)

    # Hooks handed to the agent: its worker threads commit the deletes and the adds.
    for _ in range(3):
        lab.stop(FIXED)
        lab.start(FIXED)
    served = agent.served()
    assert served.count(("stopped", 0)) == 3 and served.count(("start", 0)) == 3, agent.text()
    time.sleep(0.3)  # the check would run 20 ms after the notification
    assert checks(agent) == [], agent.text()
    assert lab.kernel_forwards() == want

    # Baseline: the same kind of delete by another process is checked (and healed).
    sh("nft", "delete", "element", "inet", "virtport", "fwd4", "{ tcp . 2222 }", ns=lab.host)
    found = wait(lambda: checks(agent), what="a self-heal check after nft's delete")
    assert "(nft)" in found[0], found
    wait(lambda: lab.kernel_forwards() == want, what="the deleted element re-added")
