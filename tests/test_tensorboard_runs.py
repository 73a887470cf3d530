"""<study>/tensorboard/: each distinct run of a study once in TensorBoard's run list, the
HParams dashboard with every trial and its metrics (issue 30 break 12).

The study on disk is built by hand as the runner lays it out (shared phases, relative
links), with a few scalars per run; TensorBoard's own loader reads it."""
import os

import pytest

from tapefit.layout import paths
from tapefit.research import grid, hparams, study, tensorboard_runs

FLAGS = {"dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 1}
PHASES = ("head", "finetune", "evaluate")  # evaluate writes no event files here.


def _link(target, link):
    """As the runner links: a relative symbolic link."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def _events(folder, value):
    import tensorflow as tf
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        tf.summary.scalar("epoch_loss", value, step=0)
    writer.close()


def _run_phase(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    if os.path.basename(run_dir) == paths.EVALUATE_PHASE:
        open(os.path.join(run_dir, paths.EVALUATION_JSON), "w").write("{}")
        return
    for split in (paths.TENSORBOARD_TRAIN, paths.TENSORBOARD_VALIDATION):
        _events(os.path.join(run_dir, paths.TENSORBOARD_DIR, split), 1.0)
    open(os.path.join(run_dir, paths.FINAL_WEIGHTS), "w").close()


def _study(tmp_path, seeds="0,1,2"):
    folder = str(tmp_path / "study")
    s = study.make(folder, FLAGS, phases=",".join(PHASES),
                   axes=["finetune.learning_rate=1e-4,3e-4"], seeds=seeds)
    return s, folder


def _run_trial(s, folder, trial, share=True, value=0.5):
    """What runner.run_trial leaves on disk, then the study's on_finished summaries."""
    for index, phase in enumerate(trial.phases):
        if share:
            workdir = trial.shared_dir(phase)
            for earlier in trial.phases[:index]:
                link = paths.phase_dir(workdir, earlier)
                if not os.path.lexists(link):
                    _link(os.path.realpath(paths.phase_dir(trial.trial_dir, earlier)), link)
            if not os.path.exists(paths.phase_dir(workdir, phase)):
                _run_phase(paths.phase_dir(workdir, phase))
            if not os.path.lexists(paths.phase_dir(trial.trial_dir, phase)):
                _link(paths.phase_dir(workdir, phase), paths.phase_dir(trial.trial_dir, phase))
        else:
            _run_phase(paths.phase_dir(trial.trial_dir, phase))
    hparams.write_experiment(s, folder)
    hparams.write_trial(trial.trial_dir, dict(trial.assignment), trial.group_id,
                        {"test_accuracy": value, "test_loss": 1 - value})


def _event_files(folder):
    """The real paths of the event files in `folder` (a run's identity)."""
    return frozenset(os.path.realpath(os.path.join(folder, f)) for f in os.listdir(folder)
                     if f.startswith(paths.EVENTS_PREFIX))


def _real_runs(folder):
    """Every folder of the study that holds event files (not links), found without
    following links."""
    out = set()
    for here, _, files in os.walk(folder):
        real = [f for f in files if f.startswith(paths.EVENTS_PREFIX)
                and not os.path.islink(os.path.join(here, f))]
        if real:
            out.add(frozenset(os.path.join(here, f) for f in real))
    return out


def _multiplexer(logdir):
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return multiplexer


def _runs(logdir):
    """{run name: its event files' real paths}, as TensorBoard's Python loader finds them."""
    from tensorboard.backend.event_processing import io_wrapper
    return {os.path.relpath(d, logdir): _event_files(d)
            for d in io_wrapper.GetLogdirSubdirectories(logdir)}


@pytest.fixture(scope="module")
def six_trials(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tb")
    s, folder = _study(tmp_path)
    trials = grid.expand(s, folder)
    assert len(trials) == 6
    for i, trial in enumerate(trials):
        _run_trial(s, folder, trial, value=0.5 + 0.05 * i)
    return s, folder, trials


def test_the_study_folder_itself_lists_every_shared_head_seven_times(six_trials):
    """Why the folder exists: TensorBoard follows the links (the 85 runs of the issue)."""
    _, folder, trials = six_trials
    runs = _runs(folder)
    runs = {n: r for n, r in runs.items() if not n.startswith(tensorboard_runs.INDEX_DIR)}
    assert len(runs) == 85 and len(set(runs.values())) == 25
    head = _event_files(os.path.join(trials[0].shared_dir("head"), "head", "tensorboard",
                                     "train"))
    assert sum(r == head for r in runs.values()) == 7


def test_each_distinct_run_once_with_a_readable_name(six_trials):
    _, folder, trials = six_trials
    logdir = tensorboard_runs.index_dir(folder)
    runs = _runs(logdir)
    # Exactly the study's real event folders, each once.
    assert sorted(map(sorted, runs.values())) == sorted(map(sorted, _real_runs(folder)))
    assert len(runs) == len(set(runs.values())) == 25
    names = set(runs)
    assert "hparams" in names  # The experiment.
    for trial in trials:
        assert trial.trial_id in names  # The trial's HParams session.
        for split in ("train", "validation"):
            # Its finetune is its own (the learning rate differs): named under the trial.
            assert os.path.join(trial.trial_id, "finetune", split) in names
            # Its head is shared by the two configurations of its seed.
            shared = os.path.basename(trial.shared_dir("head"))
            assert os.path.join("shared", shared, split) in names
            assert runs[os.path.join("shared", shared, split)] == _event_files(
                os.path.join(trial.trial_dir, "head", "tensorboard", split))
    # The Python loader's multiplexer agrees.
    assert sorted(_multiplexer(logdir).Runs()) == sorted(names)
    # Rebuilt by hand from what is on disk (no grid): the same folder.
    assert tensorboard_runs.entries(folder) == tensorboard_runs.entries(folder, six_trials[0])
    assert tensorboard_runs.main([folder]) == 0 and _runs(logdir) == runs


def test_the_hparams_dashboard_has_every_trial_with_its_metrics(six_trials):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    _, folder, trials = six_trials
    logdir = tensorboard_runs.index_dir(folder)
    provider = data_provider.MultiplexerDataProvider(_multiplexer(logdir), logdir)
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider,
                                                            logdir=logdir))
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS],
        start_index=0, slice_size=100)
    response = list_session_groups.Handler(context.RequestContext(), backend, "", request).run()
    groups = {g.name: g for g in response.session_groups}
    assert sorted(groups) == sorted({t.group_id for t in trials})
    values = {}
    for group in groups.values():
        assert len(group.sessions) == 3  # Its three seeds.
        for session in group.sessions:
            metric = {m.name.tag: m.value for m in session.metric_values}
            values[session.name] = metric["test_accuracy"]
    assert values == pytest.approx({t.trial_id: 0.5 + 0.05 * i for i, t in enumerate(trials)})


def test_trials_not_run_yet_are_linked_ahead_and_found_once_they_write(tmp_path):
    s, folder = _study(tmp_path, seeds="0")
    first, second = grid.expand(s, folder)
    _run_trial(s, folder, first)
    logdir = tensorboard_runs.index_dir(folder)
    before = _runs(logdir)
    assert not any(n.startswith(second.trial_id) for n in before)
    # The second trial trains (the head is done and shared): no rebuild needed.
    _link(os.path.realpath(paths.phase_dir(first.trial_dir, "head")),
          paths.phase_dir(second.shared_dir("finetune"), "head"))
    _run_phase(paths.phase_dir(second.shared_dir("finetune"), "finetune"))
    after = _runs(logdir)
    assert set(after) - set(before) == {os.path.join(second.trial_id, "finetune", split)
                                        for split in ("train", "validation")}
    # The grid's two trials use the head from the start: its name never changes.
    assert os.path.join("shared", os.path.basename(first.shared_dir("head")), "train") in before
    _run_trial(s, folder, second)
    final = _runs(logdir)
    assert set(after) < set(final)
    assert sorted(map(sorted, final.values())) == sorted(map(sorted, _real_runs(folder)))


def test_without_sharing_and_after_a_rebuild(tmp_path):
    """--noshare_phases: every phase in its trial; links no longer wanted are removed."""
    s, folder = _study(tmp_path, seeds="0")
    trials = grid.expand(s, folder)
    for trial in trials:
        os.makedirs(trial.trial_dir)
        with open(os.path.join(trial.trial_dir, paths.TRIAL_JSON), "w") as f:
            f.write('{"shared": {}}')
        _run_trial(s, folder, trial, share=False)
    logdir = tensorboard_runs.index_dir(folder)
    stale = os.path.join(logdir, "shared", "gone")
    _link(os.path.join(folder, "nowhere"), stale)
    tensorboard_runs.write_index(folder, s)
    assert not os.path.lexists(stale)
    runs = _runs(logdir)
    assert sorted(runs) == sorted(
        ["hparams"] + [t.trial_id for t in trials]
        + [os.path.join(t.trial_id, p, split) for t in trials for p in ("head", "finetune")
           for split in ("train", "validation")])
    assert tensorboard_runs.write_index(folder, s) == tensorboard_runs.entries(folder, s)


def test_the_rust_data_server_lists_the_same_runs(six_trials, tmp_path):
    """`tensorboard` uses the Rust data server (--load_fast) when it is installed; it follows
    links too (WalkDir::follow_links)."""
    import subprocess
    import time

    server_lib = pytest.importorskip("tensorboard_data_server")
    grpc = pytest.importorskip("grpc")
    from tensorboard.data.proto import data_provider_pb2, data_provider_pb2_grpc

    server = server_lib.server_binary()
    if not server:
        pytest.skip("no tensorboard data server binary")
    _, folder, _ = six_trials
    logdir = tensorboard_runs.index_dir(folder)
    port_file = tmp_path / "port"
    proc = subprocess.Popen([server, "--logdir", logdir, "--port", "0", "--port-file",
                             str(port_file), "--reload", "once", "--die-after-stdin"],
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        channel = grpc.insecure_channel(f"localhost:{int(port_file.read_text())}")
        stub = data_provider_pb2_grpc.TensorBoardDataProviderStub(channel)
        expected = sorted(_runs(logdir))
        while True:
            names = sorted(r.name for r in stub.ListRuns(
                data_provider_pb2.ListRunsRequest()).runs)
            if names == expected or time.time() > deadline:
                break
            time.sleep(0.1)
        channel.close()
        assert names == expected and len(names) == 25
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
