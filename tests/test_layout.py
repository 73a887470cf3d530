"""layout/: the one place of every file name and of the atomic write (issue 23 item 3)."""
import os
import subprocess
import sys

from tapefit.layout import atomic, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layout_imports_no_tensorflow_and_nothing_of_tapefit():
    code = ("import sys, tapefit.layout.paths, tapefit.layout.atomic; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', "
            "'numpy') or m.split('.')[:2] in (['tapefit', n] for n in ('flags', 'loops', "
            "'callbacks', 'research', 'model', 'input_pipeline'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_names_on_disk_are_the_ones_runs_and_studies_always_wrote():
    # Renaming one would orphan every existing run directory, study and cache.
    assert (paths.CONFIG_JSON, paths.DATA_JSON, paths.CLASSES_JSON, paths.SKIPPED_FILES,
            paths.LOG_CSV, paths.BEST_WEIGHTS, paths.FINAL_WEIGHTS, paths.SUMMARY_JSON,
            paths.BACKUP_DIR, paths.EVALUATION_JSON, paths.PREDICTIONS_NPZ) == (
        "config.json", "data.json", "classes.json", "skipped_files.txt", "log.csv",
        "best.weights.h5", "final.weights.h5", "summary.json", "backup", "evaluation.json",
        "predictions.npz")
    assert (paths.SWEEP_JSON, paths.RACE_JSON, paths.TRIALS_DIR, paths.SHARED_DIR,
            paths.TRIAL_JSON, paths.STATUS_JSON, paths.TRIAL_LOCK, paths.PHASE_LOCK) == (
        "sweep.json", "race.json", "trials", "shared", "trial.json", "status.json",
        ".trial.lock", ".phase.lock")
    assert (paths.FEATURE_CACHE_DIR, paths.IMAGE_CACHE_DIR, paths.IMAGE_CACHE_COMPLETE) == (
        "feature_cache", "image_cache", "complete.json")


def test_paths():
    assert paths.phase_dir("w", "head") == os.path.join("w", "head")
    # The resolved folder's sibling (a run reached through a link has one lock).
    assert paths.lock_path(os.path.join("w", "head") + os.sep) == os.path.join(
        os.path.realpath("w"), ".head.lock")
    assert paths.lr_find_dir("w", "head") == os.path.join("w", "lr_find_head")
    assert paths.epoch_weights("r") == os.path.join("r", "checkpoints",
                                                    "epoch{epoch:02d}.weights.h5")
    assert paths.trial_dir("s", "t1") == os.path.join("s", "trials", "t1")


def test_temporary_names_match_their_pattern(tmp_path):
    pattern = atomic.temp_name_pattern([paths.RESULTS_CSV, paths.BEST_WEIGHTS])
    for name in (paths.RESULTS_CSV, paths.BEST_WEIGHTS):
        temp = os.path.basename(atomic.temp_path(str(tmp_path / name)))
        assert pattern.match(temp) and temp.startswith(".")
    assert not pattern.match(os.path.basename(atomic.temp_path(str(tmp_path / "other.csv"))))


def test_one_json_format_and_a_reader_that_never_raises(tmp_path):
    path = str(tmp_path / "a" / paths.STATUS_JSON)
    atomic.atomic_write_json(path, {"b": 1, "a": [1, 2]})
    with open(path) as f:
        assert f.read() == atomic.json_text({"a": [1, 2], "b": 1})
    assert atomic.read_json(path) == {"a": [1, 2], "b": 1}
    assert atomic.read_json_file(path) == ({"a": [1, 2], "b": 1}, None)
    assert atomic.read_json_file(str(tmp_path / "none.json")) == (None, None)
    (tmp_path / "bad.json").write_text("[1,")
    value, problem = atomic.read_json_file(str(tmp_path / "bad.json"))
    assert value is None and problem.startswith("not JSON")
    assert atomic.read_json_file(path, kind=list)[1] == "a JSON object, not a list"
    assert [n for n in os.listdir(tmp_path / "a") if ".tmp-" in n] == []


def test_one_bounded_reader_and_one_wording_of_a_wrong_json_type(tmp_path):
    fifo, big, latin = tmp_path / "fifo", tmp_path / "big", tmp_path / "latin"
    os.mkfifo(fifo)  # Never read: a read would block here.
    big.write_bytes(b"x" * 11)
    latin.write_bytes(b"caf\xe9")
    assert atomic.read_small_file(str(tmp_path / "none"), 10) == (None, None)
    assert atomic.read_small_file(str(big), 11) == (b"x" * 11, None)
    assert atomic.read_small_file(str(big), 10) == (None, "larger than 10 bytes (11)")
    for path in (fifo, tmp_path):
        assert atomic.read_small_file(str(path), 10) == (
            None, "not a regular file (a folder, FIFO or device)")
    assert atomic.read_small_text(str(latin), 10) == (None, "not UTF-8 text (byte 3)")
    assert atomic.read_json_file(str(fifo))[1].startswith("not a regular file")
    assert atomic.read_json_or_none(str(latin)) is None
    assert atomic.json_type_problem([1], dict) == "a JSON list, not an object"
    assert atomic.json_type_problem(5, (str, list)) == "a JSON number, not a string or a list"
    assert atomic.json_type_problem({}, dict) is None
