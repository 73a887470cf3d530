"""--strategy=multi_worker: two worker processes on 127.0.0.1 (CPU only), each
`train.py` with its own TF_CONFIG, against a single-device run of the same
global batch.

(a) Both loops end with the single-device weights and logs, within
    RELATIVE_TOLERANCE (all-reducing two half-batch gradients rounds differently
    from one full batch).
(b) Only the chief writes the run directory; the other worker's temporary run
    directory is gone at the end.
(c) A killed worker: both processes killed and restarted with the same command
    resume from the chief's backup and end with exactly the weights of an
    uninterrupted run (logs equal up to float rounding, see the test); a worker
    that cannot see the chief's backup (no shared file system) is refused.

Every process has a deadline: a hung collective kills the whole group.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tapefit.flags.config import Config, ConfigError
from tests.conftest import ROOT
from tests.conftest import h5_datasets as weights

RELATIVE_TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-5
TIMEOUT = 240  # Seconds for one (multi-process) run.

# 40 examples in global batches of 16: 16, 16, 8 per epoch, every batch (and
# validation's 16, 4) splits evenly over 2 workers. Backups at every step, all
# epoch checkpoints kept: more to compare, and points to kill at.
COMMON = ["--phase=head", "--backbone=vgg16", "--weights=none", "--image_size=32",
          "--dataset=synthetic", "--synthetic_examples=40", "--batch_size=16", "--epochs=3",
          "--dropout=0", "--learning_rate=0.01", "--deterministic", "--verbose=0",
          "--feature_cache=off", "--nosave_best_only", "--backup", "--backup_every_steps=1"]
RUN_FILES = {"config.json", "classes.json", "data.json", "identity.json", "summary.json", "log.csv",
             "best.weights.h5", "final.weights.h5",
             "checkpoints/epoch01.weights.h5", "checkpoints/epoch02.weights.h5",
             "checkpoints/epoch03.weights.h5"}


def environment(tmp_dir, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", TMPDIR=tmp_dir)
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """`train.py` on two workers (worker 0 is the chief), logs and TMPDIR per worker;
    `other_workdir`: worker 1's --workdir, as on a host that does not share it."""

    def __init__(self, base, workdir, args, name, other_workdir=None):
        self.workdir, self.name = workdir, name
        workdirs = [workdir, other_workdir or workdir]
        self.tmp_dirs = [os.path.join(base, f"{name}-tmp{i}") for i in range(2)]
        self.logs = [os.path.join(base, f"{name}-worker{i}.log") for i in range(2)]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        self.processes = []
        for i in range(2):
            os.makedirs(self.tmp_dirs[i], exist_ok=True)
            with open(self.logs[i], "ab") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "train.py", f"--workdir={workdirs[i]}",
                     "--strategy=multi_worker",
                     *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    env=environment(self.tmp_dirs[i], {
                        "cluster": cluster, "task": {"type": "worker", "index": i}}),
                    start_new_session=True))

    def kill(self, index):
        process = self.processes[index]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def kill_all(self):
        for index in range(len(self.processes)):
            self.kill(index)

    def wait(self, timeout=TIMEOUT, codes=(0, 0)):
        deadline = time.monotonic() + timeout
        try:
            for process in self.processes:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"{self.name}: a worker hung for {timeout} s\n{self.tail()}")
        exits = tuple(process.returncode for process in self.processes)
        assert exits == codes, f"{self.name}: exit codes {exits}\n{self.tail()}"

    def log(self, index):
        with open(self.logs[index], errors="replace") as f:
            return f.read()

    def tail(self):
        return "\n".join(f"--- worker {i}:\n{self.log(i)[-3000:]}" for i in range(2))


def run_single_device(workdir, args, tmp_dir):
    os.makedirs(tmp_dir, exist_ok=True)
    out = subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", *args], cwd=ROOT,
                         env=environment(tmp_dir), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]


def assert_close(reference, other, name):
    """Every array within RELATIVE_TOLERANCE of the reference's largest magnitude;
    returns the largest relative difference."""
    a, b = weights(os.path.join(reference, name)), weights(os.path.join(other, name))
    assert a.keys() == b.keys()
    largest = 0.0
    for key in a:
        if a[key].size:
            scale = max(float(np.max(np.abs(a[key]))), 1e-12)
            diff = float(np.max(np.abs(a[key].astype(np.float64) - b[key])))
            assert diff <= RELATIVE_TOLERANCE * scale, (name, key, diff, scale)
            largest = max(largest, diff / scale)
    return largest


def csv_rows(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f if line.strip()]
    return [dict(zip(header, map(float, row))) for row in rows]


def run_files(run_dir):
    return {os.path.relpath(path, run_dir)
            for path in glob.glob(os.path.join(run_dir, "**", "*"), recursive=True)
            if os.path.isfile(path)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{loop: (single-device run dir, finished 2-worker Cluster)}."""
    base = str(tmp_path_factory.mktemp("multi_worker"))
    result = {}
    for loop in ("custom", "fit"):
        args = [*COMMON, f"--loop={loop}"]
        run_single_device(os.path.join(base, f"single-{loop}"), args,
                          os.path.join(base, f"single-{loop}-tmp"))
        start = time.monotonic()
        cluster = Cluster(base, os.path.join(base, f"two-{loop}"), args, f"two-{loop}")
        cluster.wait()
        print(f"2-worker {loop} run: {time.monotonic() - start:.1f} s")
        result[loop] = (os.path.join(base, f"single-{loop}", "head"), cluster)
    return result


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_two_workers_match_one_device(runs, loop):
    single, cluster = runs[loop]
    two = os.path.join(cluster.workdir, "head")
    relative = max(assert_close(single, two, name)
                   for name in sorted(RUN_FILES) if name.endswith(".weights.h5"))
    epoch1 = weights(os.path.join(two, "checkpoints", "epoch01.weights.h5"))
    final = weights(os.path.join(two, "final.weights.h5"))
    assert any(not np.array_equal(epoch1[key], final[key]) for key in final)  # It trained.
    rows_a, rows_b = csv_rows(single), csv_rows(two)
    assert len(rows_a) == len(rows_b) == 3
    metric = 0.0
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert abs(row_a[key] - row_b[key]) <= METRIC_TOLERANCE, (key, row_a, row_b)
            metric = max(metric, abs(row_a[key] - row_b[key]))
    print(f"{loop}: 2 workers vs 1 device: weights rel {relative:.2g}, metrics abs {metric:.2g}")


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_only_the_chief_writes(runs, loop):
    _, cluster = runs[loop]
    run_dir = os.path.join(cluster.workdir, "head")
    files = run_files(run_dir)
    events = {name for name in files if name.startswith("tensorboard" + os.sep)}
    assert files - events == RUN_FILES, files
    # One event file per TensorBoard folder: the other worker wrote its own elsewhere.
    assert sorted(os.path.dirname(name) for name in events) == [
        os.path.join("tensorboard", "train"), os.path.join("tensorboard", "validation")]
    assert os.listdir(cluster.workdir) == ["head"]
    for tmp_dir in cluster.tmp_dirs:  # The non-chief's run directory is deleted.
        assert not glob.glob(os.path.join(tmp_dir, "tapefit-*")), os.listdir(tmp_dir)


def test_feature_cache_on_each_worker(runs, tmp_path):
    """Each worker caches the frozen prefix's features of the whole split (the
    cache sits before shuffling and batching), the chief in --workdir, the
    others in their temporary run directory."""
    single, _ = runs["custom"]
    args = [arg for arg in COMMON if arg != "--feature_cache=off"]
    cluster = Cluster(str(tmp_path), str(tmp_path / "cached"), [*args, "--feature_cache=disk"],
                      "cached")
    cluster.wait()
    for i in range(2):
        assert "feature cache (disk)" in cluster.log(i), cluster.tail()
    cached = glob.glob(str(tmp_path / "cached" / "feature_cache" / "*" / "*.features.npy"))
    assert sorted(map(os.path.basename, cached)) == ["train.features.npy",
                                                     "validation.features.npy"]
    for tmp_dir in cluster.tmp_dirs:
        assert not glob.glob(os.path.join(tmp_dir, "tapefit-*")), os.listdir(tmp_dir)
    # Features computed in batches of another size: equal up to float rounding.
    assert_close(single, str(tmp_path / "cached" / "head"), "final.weights.h5")


def backup_index(run_dir):
    try:
        with open(os.path.join(run_dir, "backup", "state.json")) as f:
            return json.load(f)["index"]
    except (OSError, ValueError):  # None yet, or being replaced right now.
        return 0


def test_killed_worker_resumes_from_the_chief_backup(runs, tmp_path):
    _, reference = runs["custom"]
    workdir = str(tmp_path / "killed")
    run_dir = os.path.join(workdir, "head")
    args = [*COMMON, "--loop=custom"]
    first = Cluster(str(tmp_path), workdir, args, "first")
    deadline = time.monotonic() + TIMEOUT
    # Backups 1-3 follow epoch 1's steps 1, 2 and its end; backup 4 epoch 2's first step.
    while backup_index(run_dir) < 4:
        assert all(p.poll() is None for p in first.processes), first.tail()
        if time.monotonic() > deadline:
            first.kill_all()
            pytest.fail(f"no backup after {TIMEOUT} s\n{first.tail()}")
        time.sleep(0.02)
    first.kill(1)  # The non-chief dies; the chief would fail or hang: the job is killed.
    first.kill(0)
    killed_at = backup_index(run_dir)
    assert not os.path.exists(os.path.join(run_dir, "final.weights.h5"))

    # A worker that does not see the chief's backup would start over: both refuse.
    apart = Cluster(str(tmp_path), workdir, args, "apart", str(tmp_path / "elsewhere"))
    apart.wait(codes=(1, 1))
    for i in range(2):
        assert "must be on a file system that every worker shares" in apart.log(i), apart.tail()
    assert backup_index(run_dir) == killed_at

    second = Cluster(str(tmp_path), workdir, args, "second")
    second.wait()
    for i in range(2):
        assert "resuming from the backup at epoch" in second.log(i), second.tail()
    expected = os.path.join(reference.workdir, "head")
    for name in sorted(RUN_FILES):
        if name.endswith(".weights.h5"):
            a, b = weights(os.path.join(expected, name)), weights(os.path.join(run_dir, name))
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(a[key], b[key]), (name, key)
    # The resumed epoch's running training means are restored as sums over the
    # replicas, then split between them again: equal up to float rounding.
    rows, expected_rows = csv_rows(run_dir), csv_rows(expected)
    assert [row.keys() for row in rows] == [row.keys() for row in expected_rows]
    for row, expected_row in zip(rows, expected_rows):
        for key in row:
            assert row[key] == pytest.approx(expected_row[key], rel=1e-6, abs=0), key
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    resumed = next(line for line in second.log(0).splitlines() if "resuming from" in line)
    print(f"killed after backup {killed_at}; {resumed.split('] ')[-1]}; weights equal")


@pytest.mark.parametrize("changes, message", [
    (dict(jit_compile=True), "--jit_compile cannot run --strategy=multi_worker on CPUs"),
    (dict(loop="fit", steps_per_execution=3), "--loop=fit cannot run --steps_per_execution"),
])
def test_what_cannot_run_across_workers_is_a_one_line_error(changes, message):
    from tapefit.loops.training.strategy import check_supported
    check_supported(Config(strategy="multi_worker", loop="custom", steps_per_execution=3))
    with pytest.raises(ConfigError, match=message):
        check_supported(Config(strategy="multi_worker", **changes))


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_only_the_chief_prints_the_summary_and_its_next_command_has_the_strategy(runs, loop):
    """Before: both workers printed the summary, and the next command without
    --strategy=multi_worker."""
    _, cluster = runs[loop]
    chief, other = cluster.log(0), cluster.log(1)
    next_command = chief.split("\nnext:\n", 1)[1].splitlines()[0]
    assert "--strategy=multi_worker" in next_command, next_command
    assert "--backup_every_steps=1" in next_command and "--feature_cache=off" in next_command
    assert "next:" not in other and "tapefit train" not in other, other[-2000:]
    assert "head phase: done on worker 1; the chief writes" in other
