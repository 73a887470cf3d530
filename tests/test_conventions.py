"""The conventions every entry point keeps (issue 29): a flag absl cannot parse is one
`error: ...` line and exit code 1; `--help` shows the command's own docstring and flags;
no carriage returns when the output is not a terminal; the printed next command repeats
every flag that shapes the run."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ("train", "predict", "compare", "sweep")


def run_command(form, command, *argv, cwd, timeout=300, env=None):
    """`python ROOT/COMMAND.py ARGV` (form "script") or `python -m tapefit COMMAND ARGV`
    (form "console": the dispatcher behind the `tapefit` console command)."""
    program = ([os.path.join(ROOT, f"{command}.py")] if form == "script"
               else ["-m", "tapefit", command])
    environ = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *program, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=environ)


def assert_only_error_line(out, expected):
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stderr.splitlines() == [expected], out.stderr
    assert "FATAL" not in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


# ---- flags absl cannot parse: one line, exit 1, nothing written --------------------------

UNKNOWN = {  # command -> (argv, the error line)
    "train": (["--lerning_rate=1e-3"],
              "error: unknown flag --lerning_rate (did you mean --learning_rate?)"),
    "predict": (["--workdr=runs/x", "cat.jpg"],
                "error: unknown flag --workdr (did you mean --workdir?)"),
    "compare": (["--nodeterministc"],
                "error: unknown flag --nodeterministc (did you mean --nodeterministic?)"),
    "sweep": (["--paralel=2"], "error: unknown flag --paralel (did you mean --parallel?)"),
}
WRONG_TYPE = {
    "train": (["--epochs=ten"],
              "error: --epochs=ten must be a whole number; pass e.g. --epochs=10"),
    "predict": (["--helpshort=maybe", "cat.jpg"],
                "error: --helpshort=maybe must be true or false; pass --helpshort or "
                "--nohelpshort"),
    "compare": (["--deterministic=maybe"],
                "error: --deterministic=maybe must be true or false; pass --deterministic "
                "or --nodeterministic"),
    "sweep": (["--parallel=1.5"],
              "error: --parallel=1.5 must be a whole number; pass e.g. --parallel=2"),
}


@pytest.mark.parametrize("form", ["script", "console"])
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("table", [UNKNOWN, WRONG_TYPE], ids=["unknown", "wrong_type"])
def test_a_flag_absl_cannot_parse_is_one_line(tmp_path, form, command, table):
    """Before: absl's two lines, "FATAL Flags parsing error: Unknown command line flag
    'lerning_rate'. Did you mean: learning_rate ?" and "Pass --helpshort or --helpfull"."""
    argv, expected = table[command]
    out = run_command(form, command, *argv, f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert_only_error_line(out, expected)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv,expected", [
    (["--race_alpha=x"], "error: --race_alpha=x must be a number; pass e.g. --race_alpha=0.05"),
    (["--select_by=x"], "error: unknown --select_by='x'; choose one of: val_accuracy, val_loss"),
    (["--parallel"], "error: --parallel needs a value; pass e.g. --parallel=2"),
    (["--noprogress=1"], "error: --noprogress takes no value; pass --noprogress or "
                         "--progress=false"),
])
def test_other_values_absl_refuses_are_one_line(tmp_path, argv, expected):
    out = run_command("script", "sweep", *argv, cwd=tmp_path)
    assert_only_error_line(out, expected)


def test_an_unknown_flag_in_a_flagfile_is_one_line(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--batch_size=8\n--lerning_rate=1e-3\n")
    out = run_command("console", "train", f"--flagfile={flagfile}", cwd=tmp_path)
    assert_only_error_line(
        out, "error: unknown flag --lerning_rate (did you mean --learning_rate?)")


# ---- one form of block names -------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sweep", "compare"])
def test_help_names_blocks_as_blocks(tmp_path, command):
    """Before: `--unfreeze_from=block5_conv1` (a layer) in train.py's docstring and the
    sweep's, `block5` (a block, as `DEFAULT_UNFREEZE_FROM`) everywhere else."""
    import re
    out = run_command("script", command, "--help", cwd=tmp_path)
    assert "--unfreeze_from" in out.stdout
    assert not re.findall(r"block\d+_conv\d+", out.stdout)


# ---- --help ------------------------------------------------------------------------------

def help_flags(text):
    """The flags `--help` lists, in order."""
    import re
    return re.findall(r"^  --(?:\[no\])?(\w+):", text, re.M)


@pytest.mark.parametrize("form", ["script", "console"])
def test_sweep_help_leads_with_its_own_flags_and_leaves_out_those_it_refuses(tmp_path, form):
    """Before: 326 lines, the sweep's own flags from line 270, after train.py's --phase,
    --seed and --overwrite, which the sweep refuses."""
    out = run_command(form, "sweep", "--help", cwd=tmp_path)
    listed = help_flags(out.stdout)
    assert listed[:4] == ["phases", "axis", "seeds", "baseline"], listed
    assert out.stdout.index("\nflags:\n\nsweep:\n") < out.stdout.index("\nphase and paths:\n")
    for refused in ("phase", "seed", "overwrite", "run_trial"):
        assert refused not in listed
    assert {"workdir", "learning_rate", "epochs"} <= set(listed)  # The base configuration.
    assert "repeat this option" not in out.stdout


@pytest.mark.parametrize("form", ["script", "console"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_the_commands_docstring_without_developer_notes(tmp_path, form, command):
    """Before: train.py's "Flags are read here only; the library receives a frozen
    `Config`."; under the console command the dispatcher's docstring (or none)."""
    import ast
    out = run_command(form, command, "--help", cwd=tmp_path)
    with open(os.path.join(ROOT, f"{command}.py"), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=False).strip()
    assert out.stdout.startswith(doc + "\n\nflags:\n"), out.stdout[:300]
    assert "Flags are read here only" not in out.stdout
    assert "the four entry points under one command" not in out.stdout


def test_help_shows_string_flags_as_strings(tmp_path):
    """Before: `--[no]augment ... (default: '')`, and every default in quotes."""
    out = run_command("console", "train", "--help", cwd=tmp_path)
    text = out.stdout
    assert "--[no]augment" not in text and "\n  --augment: " in text
    augment = text[text.index("\n  --augment: "):]
    augment = augment[:augment.index("\n  --", 1)]
    assert "flip, rotate, randaugment" in " ".join(augment.split())
    assert "(default: none)" in augment
    assert "(default: '')" not in text and "(default: 'false')" not in text
    assert "\n  --[no]deterministic: " in text
    assert "(default: 'head')" in text  # A string is still shown as one.


@pytest.mark.parametrize("command,argv,expected", [
    ("train", ["extra"], "error: unexpected arguments: extra; every setting is a --flag "
                         "(--help lists them)"),
    ("predict", [], "error: pass one or more image files or folders: tapefit predict "
                    "--workdir=W IMAGE_OR_FOLDER..."),
])
def test_a_usage_error_is_one_line_too(tmp_path, command, argv, expected):
    """Before: the `__main__` docstring (under the console command, the dispatcher's),
    then the error."""
    out = run_command("console", command, *argv, cwd=tmp_path)
    assert_only_error_line(out, expected)


# ---- no carriage returns off a terminal ----------------------------------------------------

TINY = ["--backbone=mobilenet", "--alpha=0.25", "--weights=none", "--image_size=32",
        "--dataset=synthetic", "--synthetic_examples=16", "--batch_size=8", "--epochs=1"]


def test_a_redirected_sweep_prints_one_plain_line_per_trial(tmp_path):
    """Before: tqdm's bar, redrawn with carriage returns, in the redirected log."""
    out = run_command("console", "sweep", *TINY, "--phases=head", "--seeds=0,1",
                      f"--workdir={tmp_path / 'study'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr and "\r" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("sweep: ")]
    assert [line.split(";")[0] for line in lines] == ["sweep: 1/2 trials", "sweep: 2/2 trials"]
    assert all(line.endswith(": finished") for line in lines), lines


def test_the_plain_lines_follow_the_bar_calls_the_sweep_makes():
    import io

    from tapefit.research.study import TrialLines, _bar
    stream = io.StringIO()
    bar = _bar(3, 1, True, stream)
    assert isinstance(bar, TrialLines)
    bar.set_postfix_str("running t2")  # Not said: a log keeps every line.
    bar.set_postfix_str("t2: failed")
    bar.write("trial t2 failed: why", file=stream)
    bar.update(1)
    bar.set_description("race round 2")
    bar.total, bar.n = 5, 3
    bar.set_postfix_str("t3: finished")
    bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "trial t2 failed: why", "sweep: 2/3 trials; t2: failed",
        "race round 2: 4/5 trials; t3: finished"]
    assert not isinstance(_bar(3, 0, False, stream), TrialLines)  # --noprogress: nothing.


def test_a_redirected_compare_has_no_carriage_returns(tmp_path):
    out = run_command("console", "compare", *TINY, f"--workdir={tmp_path / 'run'}",
                      cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout and "\r" not in out.stderr
    assert out.stdout.splitlines()[-1].startswith("EQUAL: ")


# ---- the next command --------------------------------------------------------------------

def test_next_command_repeats_the_strategy_and_every_flag_that_shapes_the_run():
    """Before: `--strategy=multi_worker` (and the cache, backup and log settings) dropped."""
    from tapefit.flags.config import Config
    from tapefit.loops import console
    cfg = Config(workdir="runs/x", strategy="multi_worker", feature_cache="off",
                 backup_every_steps=1, tensorboard=False, steps_per_execution=2,
                 epochs=3, learning_rate=0.01, early_stopping=True)
    flags = console.command_flags(cfg)
    for flag in ("--strategy=multi_worker", "--feature_cache=off", "--backup_every_steps=1",
                 "--notensorboard", "--steps_per_execution=2"):
        assert flag in flags, flags
    for phase_flag in ("--epochs", "--learning_rate", "--early_stopping"):  # Per phase.
        assert not any(f.startswith(phase_flag) for f in flags), flags
    command = console.next_command({"phase": "head", "command_flags": flags})
    assert command.startswith("tapefit train --phase=finetune --workdir=runs/x ")
    assert "--strategy=multi_worker" in command


def test_the_printed_next_commands_run(tmp_path):
    """Each phase's printed next command, run as printed (from another folder): the
    repeated flags are accepted by the next phase, and end with predict."""
    import shlex
    workdir = tmp_path / "run"
    argv = [*TINY, "--verbose=0", "--feature_cache=off", "--backup_every_steps=1",
            "--notensorboard", f"--workdir={workdir}"]
    out = run_command("console", "train", "--phase=head", *argv, cwd=tmp_path)
    for phase in ("finetune", "evaluate"):
        assert out.returncode == 0, out.stderr[-2000:]
        command = out.stdout.split("\nnext:\n", 1)[1].splitlines()[0].strip()
        words = shlex.split(command)
        assert words[:3] == ["tapefit", "train", f"--phase={phase}"], command
        for flag in ("--feature_cache=off", "--backup_every_steps=1", "--notensorboard"):
            assert flag in words, command
        out = run_command("console", "train", *words[2:], "--epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tapefit predict --workdir=" in out.stdout
    assert not (workdir / "head" / "tensorboard").exists()
