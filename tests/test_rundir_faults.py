"""Run files under adversity: a lock taken over while its holder was paused (fencing),
a full disk while weights are written, symlinks in a run directory, damaged lock files.

The lock races run in real subprocesses that import only the lock (no TensorFlow);
"another host" is a process whose `socket.gethostname()` says so (the lock goes by
the heartbeat, not by the pid, for a holder on another host).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tapefit.flags.errors import ConfigError, RunError
from tapefit.loops.rundir import run_lock
from tapefit.loops.rundir.run_lock import LockLost, RunLock
from tests.conftest import ROOT


def take_over(path, host="another-host.example", pid=4242):
    """What a process on another host does to a stale lock file: delete it, then create
    its own (O_EXCL) with a new token."""
    os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"host": host, "pid": pid, "start": "2030-01-01T00:00:00+00:00",
                   "token": "the-new-holder"}, f)


# ---- 2. fencing: a holder that lost its lock stops writing -------------------------------

HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tapefit.flags.errors import RunError
    from tapefit.loops.rundir.run_lock import RunLock, check_held
    lock_path, go = sys.argv[1:3]
    lock = RunLock(lock_path, lease_s=0.4).acquire()
    print("HELD", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    try:
        check_held()  # What every write of a run file does first.
    except RunError as e:
        print("LOST", e, flush=True)
        sys.exit(1)
    print("WROTE", flush=True)
""")


def test_a_paused_holder_taken_over_from_another_host_stops_before_writing(tmp_path,
                                                                           monkeypatch):
    path, go = tmp_path / ".lock", tmp_path / "go"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(root=ROOT))
    holder = subprocess.Popen([sys.executable, str(script), str(path), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        os.kill(holder.pid, signal.SIGSTOP)  # Paused: its heartbeat stops too.
        monkeypatch.setattr(socket, "gethostname", lambda: "another-host.example")
        deadline = time.time() + 60
        while True:  # Refused while the lease runs, taken over once it expired.
            try:
                taker = RunLock(str(path), lease_s=0.4).acquire()
                break
            except RunError:
                assert time.time() < deadline, "the expired lease was never taken over"
                time.sleep(0.1)
        go.touch()
        os.kill(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 1, (out, err)
        lost = [line for line in out.splitlines() if line.startswith("LOST")]
        assert len(lost) == 1 and "WROTE" not in out, out
        assert "lost the lock of run" in lost[0] and "another-host.example" in lost[0]
        assert json.loads(path.read_text())["token"] == taker.holder["token"]
        taker.release()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()


def test_check_held_raises_after_a_take_over_and_release_leaves_the_new_lock(tmp_path):
    path = tmp_path / ".lock"
    lock = RunLock(str(path), what="sweep trial").acquire()
    run_lock.check_held()  # Ours: nothing to say.
    take_over(path)
    with pytest.raises(LockLost) as error:
        run_lock.check_held()
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"lost the lock of sweep trial {tmp_path}: pid 4242 on host "
                              "another-host.example took it over")
    lock.release()
    assert json.loads(path.read_text())["token"] == "the-new-holder"
    run_lock.check_held()  # Released: no longer this process's lock.


def test_an_atomic_write_after_losing_the_lock_leaves_the_file_alone(tmp_path):
    from tapefit.callbacks import atomic_io
    atomic_io.add_write_check(run_lock.check_held)  # As loops.train_lib does.
    target = tmp_path / "summary.json"
    target.write_text("theirs")
    path = tmp_path / ".lock"
    lock = RunLock(str(path)).acquire()
    try:
        atomic_io.atomic_write_json(str(target), {"ours": 1})  # Held: written.
        assert json.loads(target.read_text()) == {"ours": 1}
        target.write_text("theirs")

        def slow_write(tmp):  # Paused mid-save; taken over meanwhile.
            with open(tmp, "w") as f:
                f.write("ours")
            take_over(path)
        with pytest.raises(LockLost):
            atomic_io.atomic_save(slow_write, str(target))
        assert target.read_text() == "theirs"
        with pytest.raises(LockLost):
            atomic_io.atomic_write_json(str(target), {"ours": 2})
        assert target.read_text() == "theirs"
        assert sorted(os.listdir(tmp_path)) == [".lock", "summary.json"]  # No temp file.
    finally:
        lock.release()


def taken_over_at_first_epoch_end(run_dir):
    """extra_hooks: at the end of the first epoch, another host takes the run's lock
    and writes its own final weights and summary."""
    from tapefit.loops.rundir import run_dir as run_dir_lib

    def hooks(module):
        def on_epoch_end(epoch, logs=None):
            if epoch == 0:
                take_over(run_dir_lib.lock_path(run_dir))
                for name in ("final.weights.h5", "summary.json", "best.weights.h5"):
                    with open(os.path.join(run_dir, name), "w") as f:
                        f.write("the new holder's")
        return [module.LambdaCallback(on_epoch_end=on_epoch_end)]
    return hooks


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_a_run_taken_over_stops_and_leaves_the_new_holders_files(tiny_config, loop):
    from tapefit.loops import phases
    cfg = tiny_config.replace(loop=loop, epochs=3)
    with pytest.raises(LockLost, match="lost the lock of run directory"):
        phases.train(cfg, extra_hooks=taken_over_at_first_epoch_end(cfg.run_dir))
    for name in ("final.weights.h5", "summary.json", "best.weights.h5"):
        with open(os.path.join(cfg.run_dir, name)) as f:
            assert f.read() == "the new holder's", name
    with open(os.path.join(cfg.run_dir, "log.csv")) as f:
        assert len(f.read().splitlines()) == 2  # The header and epoch 1: no later row.
    assert os.path.isdir(os.path.join(cfg.run_dir, "backup"))  # Not deleted under them.


def test_a_sweep_trial_taken_over_is_left_to_the_new_holder(tiny_config, monkeypatch):
    """A sweep process paused in a trial past the lease: its trial is another's now.
    It writes nothing more there (not even status.json) and reports it as running
    elsewhere (a --parallel worker then exits EXIT_LOCKED: its parent writes nothing)."""
    from tapefit.loops import phases
    from tapefit.research import runner
    trial_dir = os.path.join(tiny_config.workdir, "trials", "t1")
    cfg = tiny_config.replace(workdir=trial_dir, epochs=1)
    status = os.path.join(trial_dir, runner.STATUS_JSON)
    real_run = phases.run

    def paused_and_taken_over(cfg):
        take_over(os.path.join(trial_dir, runner.LOCK_FILE))
        with open(status, "w") as f:
            f.write("the new holder's")
        return real_run(cfg)
    monkeypatch.setattr(phases, "run", paused_and_taken_over)
    outcome = runner.run_trial(trial_dir, ["head"], {"head": cfg})
    assert outcome == runner.ELSEWHERE
    with open(status) as f:
        assert f.read() == "the new holder's"
    assert not os.path.exists(os.path.join(trial_dir, "head", "final.weights.h5"))
    assert json.loads(open(os.path.join(trial_dir, runner.LOCK_FILE)).read())["token"] == \
        "the-new-holder"


# ---- 3. a full disk while weights are written ----------------------------------------------

def small_disk_once(path_that_fills, monkeypatch, free=100_000):
    """shutil.disk_usage reports `free` bytes once `path_that_fills` exists."""
    import shutil
    real = shutil.disk_usage

    def disk_usage(folder):
        usage = real(folder)
        if os.path.exists(path_that_fills):
            return usage._replace(free=free)
        return usage
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_survives(tiny_config, loop,
                                                                      monkeypatch):
    from tapefit.loops import phases
    from tests.conftest import h5_datasets
    cfg = tiny_config.replace(loop=loop, epochs=3, monitor="loss", mode="min")
    best = os.path.join(cfg.run_dir, "best.weights.h5")
    small_disk_once(best, monkeypatch)  # Full after the first checkpoint.
    with pytest.raises(RunError) as error:
        phases.run(cfg)
    message = str(error.value)
    assert message.startswith("no space left on the device") and "--workdir" in message
    assert len(message.splitlines()) == 1
    assert h5_datasets(best)  # The first epoch's checkpoint, whole.
    assert not os.path.exists(os.path.join(cfg.run_dir, "final.weights.h5"))
    leftovers = [n for n in os.listdir(cfg.run_dir) if ".tmp-" in n]
    assert not leftovers and not os.path.exists(os.path.join(cfg.workdir, ".head.lock"))


def test_weights_are_written_from_memory_and_load_back(tmp_path):
    import keras
    import numpy as np

    from tapefit.callbacks.atomic_io import atomic_save_weights
    from tests.conftest import h5_datasets
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    atomic_save_weights(model, str(tmp_path / "a.weights.h5"))
    model.save_weights(str(tmp_path / "b.weights.h5"))
    a, b = h5_datasets(tmp_path / "a.weights.h5"), h5_datasets(tmp_path / "b.weights.h5")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def tmpfs_command(size, command):
    """`command` in a private mount namespace with a `size` tmpfs at /mnt/tiny (as a
    user: a user namespace); None where this machine allows neither."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, timeout=30) if _has("unshare") else None
    if probe is None or probe.returncode:
        return None
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f"mkdir -p /tmp/tiny && mount -t tmpfs -o size={size} tmpfs /tmp/tiny && "
            f"{command}"]


def _has(program):
    import shutil
    return shutil.which(program) is not None


def test_train_py_on_a_3mb_tmpfs_is_one_line_exit_1_no_crash(tmp_path):
    argv = tmpfs_command("3m", f"cd {ROOT} && {sys.executable} train.py --phase=head "
                         "--dataset=synthetic --weights=none --image_size=32 --epochs=2 "
                         "--synthetic_examples=16 --workdir=/tmp/tiny/run; echo rc=$?; "
                         "ls -a /tmp/tiny/run /tmp/tiny/run/head")
    if argv is None:
        pytest.skip("no tmpfs: mounting one needs root or user namespaces")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "rc=1" in result.stdout, (result.stdout, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0]
    assert "Traceback" not in result.stderr and "errno = 28" not in result.stderr
    assert ".head.lock" not in result.stdout and ".tmp-" not in result.stdout


# ---- 5. deleting never follows a link --------------------------------------------------------

def test_removing_partial_files_does_not_follow_links(tmp_path):
    from tapefit.loops.rundir.run_dir import remove_partial_files
    run_dir, outside = tmp_path / "run" / "head", tmp_path / "outside"
    (run_dir / "backup").mkdir(parents=True)
    outside.mkdir()
    (outside / ".precious.tmp-1").write_text("not tapefit's")
    (outside / "target").write_text("not tapefit's")
    (run_dir / "linked").symlink_to(outside, target_is_directory=True)
    (run_dir / ".x.tmp-2").symlink_to(outside / "target")  # A link with a temp name.
    (run_dir / "backup" / ".ckpt.tmp-3").write_text("half a save")
    removed = remove_partial_files(str(run_dir))
    assert sorted(os.path.relpath(p, run_dir) for p in removed) == [
        ".x.tmp-2", os.path.join("backup", ".ckpt.tmp-3")]
    assert (outside / ".precious.tmp-1").read_text() == "not tapefit's"
    assert (outside / "target").read_text() == "not tapefit's"
    assert not os.path.lexists(run_dir / ".x.tmp-2")


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_linked_phase_directory_is_never_deleted_through_the_link(tmp_path, overwrite):
    """--overwrite (or a restart) would delete the phase directory: refused in one line
    when it is a link, and nothing is deleted."""
    from tapefit.flags.config import Config
    from tapefit.loops.rundir import run_dir as run_dir_lib
    workdir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    workdir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("someone's")
    cfg = Config(workdir=str(workdir), phase="head", overwrite=overwrite,
                 dataset="synthetic", weights="none")
    (elsewhere / "config.json").write_text(json.dumps(cfg.to_dict()))  # Killed early.
    (workdir / "head").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError) as error:
        state = run_dir_lib.inspect(cfg, cfg.run_dir, "fingerprint")
        run_dir_lib.prepare(cfg.run_dir, state)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "symbolic link" in message
    assert str(elsewhere) in message
    assert sorted(os.listdir(elsewhere)) == ["config.json", "keep.txt"]
    assert os.path.islink(workdir / "head")


# ---- 8. damaged lock files -------------------------------------------------------------------

ACQUIRE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    sys.path.insert(0, {root!r})
    from tapefit.flags.errors import RunError
    from tapefit.loops.rundir.run_lock import RunLock
    try:
        RunLock(sys.argv[1]).acquire().release()
        print("ACQUIRED")
    except RunError as e:
        print("ERROR", e)
""")


def acquire_in_child(tmp_path, path):
    """Acquires `path` in a child limited in time and memory: (stdout, stderr)."""
    script = tmp_path / "acquire.py"
    script.write_text(ACQUIRE.format(root=ROOT))
    try:
        result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                                text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("acquiring the lock hung")
    return result.stdout, result.stderr


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "folder"])
def test_a_lock_that_is_not_a_regular_file_is_one_line_and_left_alone(tmp_path, kind):
    path = tmp_path / ".head.lock"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    out, err = acquire_in_child(tmp_path, path)
    assert out.startswith("ERROR ") and len(out.strip().splitlines()) == 1, (out, err[-2000:])
    assert "not a lock file" in out and "remove it" in out and "Traceback" not in err
    assert os.path.lexists(path)


@pytest.mark.parametrize("pid", [2**70, True, -5, "12", None])
def test_a_lock_record_of_the_wrong_types_is_damaged_not_a_holder(tmp_path, pid):
    path = tmp_path / ".lock"
    record = {"host": socket.gethostname(), "pid": pid, "start": "2020-01-01T00:00:00",
              "token": "t"}
    path.write_text(json.dumps(record))
    with pytest.raises(RunError) as error:  # Fresh: maybe someone's; one line, no wait.
        RunLock(str(path), lease_s=120).acquire()
    message = str(error.value)
    assert "is damaged" in message and "is not a process id" in message
    assert "delete it" in message and len(message.splitlines()) == 1
    old = time.time() - 600  # Not refreshed for longer than the lease: nobody holds it.
    os.utime(path, (old, old))
    with RunLock(str(path), lease_s=120) as lock:
        assert lock.holder["pid"] == os.getpid()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b"{" * 100000,
                                     b"x" * 10000])
def test_a_lock_file_of_garbage_is_damaged(tmp_path, content):
    path = tmp_path / ".lock"
    path.write_bytes(content)
    old = time.time() - 600
    os.utime(path, (old, old))
    with RunLock(str(path), lease_s=120) as lock:
        assert lock.held
    path.write_bytes(content)
    with pytest.raises(RunError, match="is damaged"):
        RunLock(str(path), lease_s=120).acquire()


def test_the_plan_refuses_a_fifo_in_the_lock_s_place_before_building_anything(tmp_path):
    from tapefit.loops.rundir import run_dir as run_dir_lib
    run_dir = str(tmp_path / "head")
    os.mkfifo(run_dir_lib.lock_path(run_dir))
    with pytest.raises(RunError, match="is a FIFO, not a lock file; remove it"):
        run_dir_lib.check_not_running(run_dir)


def test_a_write_that_fails_after_a_take_over_reports_the_lost_lock(tiny_config):
    """Paused inside Keras' own write (--loop=fit's hooks write straight to disk), taken
    over, and the new holder deleted the folder meanwhile: whatever that write raises
    next, the one line says why (the lock was lost), not a FileNotFoundError traceback."""
    from tapefit.loops import phases
    from tapefit.loops.rundir import run_dir as run_dir_lib
    cfg = tiny_config.replace(loop="fit", epochs=2)

    def hooks(module):
        def on_epoch_end(epoch, logs=None):
            take_over(run_dir_lib.lock_path(cfg.run_dir))
            raise FileNotFoundError(2, "No such file or directory",
                                    os.path.join(cfg.run_dir, "backup", "training_metadata.json"))
        return [module.LambdaCallback(on_epoch_end=on_epoch_end)]
    with pytest.raises(LockLost, match="lost the lock of run directory"):
        phases.train(cfg, extra_hooks=hooks)
