"""Issue 21 item 8: files virtport writes where someone else may write too. The agent's metrics
file goes into a directory a non-root user (nobody) owns: whatever that user plants at the file's
name or at a temporary name (symlinks to a root-only file), the agent never writes through a link;
the metrics file is a regular file it created. A journal directory reached through a symlink gets
one clear line and no file is created."""
import os
import pwd
import stat
import time

from conftest import domain_xml
from test_agent_watch import start_agent, wait

FIXED = domain_xml("fixedweb", "61616161-1111-4111-8111-111111111111", """
  <vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2222' to='22'/></vp:portForward>
""")


def test_metrics_file_is_never_written_through_a_planted_symlink(lab):
    nobody = pwd.getpwnam("nobody")
    shared = lab.dir / "textfile"
    shared.mkdir()
    os.chown(shared, nobody.pw_uid, nobody.pw_gid)
    os.chmod(shared, 0o755)
    secret = lab.dir / "root-only"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    metrics = shared / "virtport.prom"
    with open(lab.config, "a") as f:
        f.write(f'[agent]\nmetrics_file = "{metrics}"\n')
    agent = start_agent(lab)
    try:
        # What nobody plants: the metrics file itself and the temporary name an earlier agent used
        # (".tmp.PID"), and a spray of likely ones, all pointing at the root-only file.
        pid = agent.proc.pid
        planted = [metrics, shared / f"virtport.prom.tmp.{pid}"] + [shared / f"virtport.prom.tmp.{pid}.{i}" for i in range(4)]
        for link in planted:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(secret, link)
            os.lchown(link, nobody.pw_uid, nobody.pw_gid)
        lab.start(FIXED)
        wait(lambda: os.path.lexists(metrics) and not os.path.islink(metrics), what="the metrics file replaced")
        st = os.lstat(metrics)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
        assert "virtport_forwards" in metrics.read_text()
        # The root-only file is as it was: not truncated, not filled, not made readable.
        assert secret.read_text() == "root's secret\n"
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        assert not any(n.startswith("virtport.prom.tmp.") and not os.path.islink(shared / n)
                       for n in os.listdir(shared)), os.listdir(shared)
    finally:
        agent.stop()


def test_journal_directory_through_a_symlink_is_one_clear_line_and_no_file(lab):
    real = lab.dir / "real-journal-dir"
    real.mkdir(mode=0o700)
    link = lab.dir / "journal-link"
    os.symlink(real, link)
    with open(lab.config) as f:
        text = f.read()
    with open(lab.config, "w") as f:
        f.write(text.replace(f'database = "{lab.db}"', f'database = "{link}/virtport.db"'))
    for op in ("prepare", "start"):
        r = lab.hook(FIXED, op)
        err = r.stderr.decode().strip()
        assert r.stdout == b""
        if op == "prepare":
            assert r.returncode == 0 and err == "", err  # read-only, no journal yet: nothing to say
            continue
        assert len(err.splitlines()) == 1 and "is a symbolic link" in err and str(link) in err, err
    r = lab.virtport("reconcile")
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1 and "is a symbolic link" in err, err
    assert os.listdir(real) == []
