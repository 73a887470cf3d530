"""loops.rundir.run_lock: one process per run directory, stale locks taken over safely.

The races run in real subprocesses (they import only the lock, not TensorFlow).
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tapefit.flags.errors import RunError
from tapefit.loops.rundir.run_lock import RunLock
from tests.conftest import ROOT

# A child: waits for GO, races for LOCK, prints WON or LOST <message>; a winner
# holds the lock until RELEASE exists (so every loser meets it held).
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tapefit.flags.errors import RunError
    from tapefit.loops.rundir.run_lock import RunLock
    lock_path, go, release = sys.argv[1:4]
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        lock = RunLock(lock_path).acquire()
    except RunError as e:
        print("LOST", e, flush=True)
        sys.exit(3)
    print("WON", os.getpid(), flush=True)
    deadline = time.time() + 120
    while not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.01)
    lock.release()
    print("RELEASED", os.path.exists(lock_path), flush=True)
""").format(root=ROOT)


def race(tmp_path, count):
    """Starts `count` children racing for tmp_path/.lock; returns [(pid, stdout)]."""
    lock, go, release = (str(tmp_path / name) for name in (".lock", "go", "release"))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [subprocess.Popen([sys.executable, str(script), lock, go, release],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(count)]
    time.sleep(0.5)  # Let them all start and wait for GO.
    open(go, "w").close()
    try:
        # Losers exit at once; then the winner may release.
        deadline = time.time() + 60
        while sum(c.poll() is not None for c in children) < count - 1:
            assert time.time() < deadline, "the losers did not exit"
            time.sleep(0.05)
        open(release, "w").close()
        outputs = [c.communicate(timeout=60) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    return [(c.pid, out, err) for c, (out, err) in zip(children, outputs, strict=True)]


def test_two_processes_racing_for_one_lock_exactly_one_wins(tmp_path):
    results = race(tmp_path, 2)
    winners = [(pid, out) for pid, out, _ in results if out.startswith("WON")]
    losers = [(pid, out, err) for pid, out, err in results if out.startswith("LOST")]
    assert len(winners) == 1 and len(losers) == 1, results
    winner_pid = winners[0][0]
    message = losers[0][1]
    assert f"in use by pid {winner_pid} on host {socket.gethostname()} since" in message
    assert str(tmp_path) in message and "--workdir" in message
    assert len(message.strip().splitlines()) == 1
    assert "Traceback" not in losers[0][2]
    assert "RELEASED False" in winners[0][1]  # The winner removed its lock file.


def write_record(path, **record):
    record = {"host": socket.gethostname(), "pid": 1, "start": "2020-01-01T00:00:00+00:00",
              "token": "someone-else", **record}
    path.write_text(json.dumps(record))


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # Reaped: no zombie left holding the pid.
    return child.pid


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    path = tmp_path / ".lock"
    write_record(path, pid=dead_pid())
    with RunLock(str(path)) as lock:
        assert lock.holder["pid"] == os.getpid()
        assert lock.holder["host"] == socket.gethostname()
    assert not path.exists()


def test_lock_of_a_live_pid_on_this_host_is_refused(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        write_record(path, pid=holder.pid, start=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.utime(path, (0, 0))  # An old heartbeat does not matter on this host.
        with pytest.raises(RunError, match=f"in use by pid {holder.pid} on host "):
            RunLock(str(path), what="sweep trial").acquire()
        assert json.loads(path.read_text())["token"] == "someone-else"
    finally:
        holder.kill()
        holder.wait()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    """The pid runs, but a process started after the lock: its holder is gone."""
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_record(path, pid=holder.pid, start="2020-01-01T00:00:00+00:00")
        with RunLock(str(path)) as lock:
            assert lock.holder["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_expired_lease_of_another_host_is_taken_over(tmp_path):
    path = tmp_path / ".lock"
    write_record(path, host="another-host.example", pid=os.getpid())
    old = time.time() - 600
    os.utime(path, (old, old))
    with RunLock(str(path), lease_s=120) as lock:
        assert lock.holder["token"] != "someone-else"


def test_live_lease_of_another_host_is_refused(tmp_path):
    path = tmp_path / ".lock"
    write_record(path, host="another-host.example", pid=12345)
    with pytest.raises(RunError) as error:
        RunLock(str(path), lease_s=120).acquire()
    assert str(error.value).startswith(f"run {tmp_path} is in use by pid 12345 on host "
                                       "another-host.example since 2020-01-01")
    assert json.loads(path.read_text())["token"] == "someone-else"


def test_release_removes_only_our_own_file(tmp_path):
    path = tmp_path / ".lock"
    lock = RunLock(str(path)).acquire()
    write_record(path, host="another-host.example")  # Taken over while we slept.
    lock.release()
    assert json.loads(path.read_text())["token"] == "someone-else"
    lock.release()  # Idempotent.
    assert path.exists()


def test_release_is_idempotent_and_the_lock_can_be_taken_again(tmp_path):
    path = tmp_path / ".lock"
    lock = RunLock(str(path))
    assert lock.holder is None
    lock.acquire()
    assert lock.acquire() is lock  # Held already: a no-op.
    lock.release()
    lock.release()
    assert not path.exists() and lock.holder is None
    with RunLock(str(path)):
        with pytest.raises(RunError, match="in use by pid"):
            RunLock(str(path)).acquire()  # Another object of this process: refused too.


def test_heartbeat_touches_the_lock_file(tmp_path):
    path = tmp_path / ".lock"
    with RunLock(str(path), lease_s=0.2):
        os.utime(path, (0, 0))
        deadline = time.time() + 30
        while os.stat(path).st_mtime == 0:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.02)


def test_many_processes_taking_over_one_stale_lock_one_wins(tmp_path):
    write_record(tmp_path / ".lock", pid=dead_pid())
    results = race(tmp_path, 4)
    winners = [out for _, out, _ in results if out.startswith("WON")]
    assert len(winners) == 1, results
    assert sum(out.startswith("LOST") for _, out, _ in results) == 3, results


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(RunError, match="does not exist; pass a writable --workdir"):
        RunLock(str(tmp_path / "nowhere" / ".lock")).acquire()
