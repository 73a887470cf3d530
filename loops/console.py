"""What a user reads on the console: progress settings, the end-of-phase summaries
(`phase_summary`; `summary_text` for the learning-rate finder), the next command to run
(`next_command`, from the flags `command_flags` repeats) and the advice after a divergence.

`--verbose`: 0 quiet; 1 a bar per epoch on a terminal, one plain line per epoch
otherwise (a log file, a pipe, nohup, Slurm); 2 the same plus TensorFlow's native
start-up logs (see `flags/quiet.py`).

No TensorFlow import here.
"""
from __future__ import annotations

import math
import os
import shlex
import sys

from tapefit.flags.config import REPEATED, Config, fields_with
from tapefit.layout.paths import SUMMARY_JSON


def is_interactive(stream=None) -> bool:
    """Whether `stream` (default: stdout) is a terminal, where progress bars belong."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def keras_verbose(verbose: int, stream=None) -> int:
    """`model.fit(verbose=...)` for tapefit's `--verbose`: 0 stays quiet; otherwise Keras'
    bar (1) on a terminal and one line per epoch (2: no carriage returns) elsewhere.
    tapefit's 2 (native logs too) is a bar on a terminal as well."""
    if verbose <= 0:
        return 0
    return 1 if is_interactive(stream) else 2


def progress_hook(hooks_module):
    """The custom loop's progress hook, from `hooks_module` (the `callbacks` package, passed
    in so that this module imports no TensorFlow): a bar per epoch on a terminal, one plain
    line per epoch when stdout is not one. Pass `verbose=keras_verbose(cfg.verbose)` to the
    loop."""
    return hooks_module.ProgbarLogger(lines_when_not_tty=True)


# ---- the next command -------------------------------------------------------------
def command_flags(cfg) -> list[str]:
    """`--workdir` and the non-default flags of `cfg` a next command must repeat (the
    fields of role REPEATED, flags/config.py: every flag that shapes the run rather than
    one phase of it -- those that define the network or the data, and those that make it
    the same run: its seed and determinism, its recipe, numerics, --strategy, its caches
    and where they are, what it writes and backs up), in Config's field order. Per-phase
    flags (rates, epochs, schedules, early stopping) are left to the next phase."""
    default = Config()
    flags = [f"--workdir={cfg.workdir}"]
    for name in fields_with(REPEATED):
        value = getattr(cfg, name)
        if value != getattr(default, name):
            if isinstance(value, bool):
                flags.append(f"--{name}" if value else f"--no{name}")
            else:
                flags.append(f"--{name}={value}")
    return flags


# ---- advice when a phase diverges -------------------------------------------------
# At or below this rate (the learning-rate finder's first steps) a rate is not what
# makes a loss NaN: the advice does not blame it.
IMPLAUSIBLE_DIVERGENCE_RATE = 1e-6


def divergence_advice(cfg) -> str:
    """What to change after a NaN or infinite loss, from what can be checked. The
    weights a phase starts from (--weights, --init_checkpoint), cached features and
    --clipnorm are checked before training (one-line errors), so what is left is the
    update: the rate, when it is large enough to be the cause; otherwise (and besides)
    the flags that change the numbers of the update or of the loss."""
    rate = cfg.resolved_learning_rate
    others = []
    if cfg.mixed_precision == "mixed_float16":
        others.append("--mixed_precision=mixed_bfloat16 or float32 (float16 overflows)")
    if cfg.weight_decay:
        others.append(f"a lower --weight_decay (now {cfg.weight_decay:g})")
    if cfg.clipnorm == 0:
        others.append("--clipnorm=1.0")
    if not isinstance(rate, (int, float)) or rate > IMPLAUSIBLE_DIVERGENCE_RATE:
        shown = f"{rate:g}" if isinstance(rate, (int, float)) else str(rate)
        peak = " (the schedule's peak)" if cfg.lr_schedule in ("one_cycle", "warmup_cosine") \
            else ""
        advice = f"pass a lower --learning_rate (now {shown}{peak}, e.g. a tenth of it)"
        return advice + (f", or try {', '.join(others)}" if others else "")
    advice = (f"the rate {rate:g} is too small to be the cause; the starting weights were "
              "checked finite, so look at the data and the loss")
    return advice + (f", and try {', '.join(others)}" if others else "")


# ---- end-of-phase summary -------------------------------------------------------
def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.4e}"


def _command(command: str, *args: str) -> str:
    """`tapefit COMMAND ARGS...`: the installed command runs from any folder."""
    return " ".join(["tapefit", command, *(shlex.quote(a) for a in args)])


def _without(flags, *names):
    """`flags` without any `--name=...`/`--name`/`--noname` of `names`."""
    kept = []
    for flag in flags:
        name = flag.lstrip("-").split("=", 1)[0]
        if name in names or (name.startswith("no") and name[2:] in names):
            continue
        kept.append(flag)
    return kept


def next_command(result: dict) -> str:
    """The command to run after this phase: finetune after head, evaluate after
    finetune, predict after evaluate; after a NaN stop, the same phase again
    (with --overwrite; lower --learning_rate)."""
    phase = result.get("phase")
    flags = _without(list(result.get("command_flags") or []), "phase", "overwrite")
    if phase == "evaluate":
        workdir = result.get("workdir")
        return _command("predict", f"--workdir={workdir}") + " IMAGE..."
    if result.get("stop_reason") == "nan":
        return _command("train", f"--phase={phase}", *flags, "--overwrite")
    following = {"head": "finetune", "finetune": "evaluate"}.get(phase, "evaluate")
    return _command("train", f"--phase={following}", *flags)


def _stop_text(result: dict) -> str:
    reason = result.get("stop_reason")
    epoch = result.get("stopped_epoch")
    at = f" at epoch {epoch}" if epoch else ""
    if reason == "finished":
        return "finished"
    if reason == "early_stopping":
        return (f"early stopping{at} (--monitor={result.get('monitor')} stopped improving)")
    if reason == "nan":
        return f"stopped{at}: the loss became NaN or infinite"
    if reason == "stopped":
        return f"stopped{at} by a hook (stop_training)"
    return str(reason)


def _files_lines(files: dict, labels) -> list[str]:
    rows = [(label, files.get(key)) for key, label in labels if files.get(key)]
    rows += [(key, path) for key, path in files.items()
             if path and key not in dict(labels)]
    width = max((len(label) for label, _ in rows), default=0)
    return [f"  {label.ljust(width)}  {path}" for label, path in rows]


_TRAIN_FILES = (("best", "best weights"), ("final", "final weights"), ("log", "epoch log"),
                ("tensorboard", "TensorBoard"), ("summary", "summary"))


def phase_summary(result: dict) -> str:
    """A few lines for a human at the end of a phase (`result`: what `phases.run`
    returns): epochs run and why it stopped, the best monitored value and its epoch,
    the files written, and the next command."""
    phase = result.get("phase")
    if phase == "lr_find":
        return summary_text(result)
    lines = []
    if phase == "evaluate" and result.get("interpreted_split") == "validation":
        found = result.get("interpretation") or {}
        lines.append(f"evaluate: the validation split interpreted (the test split not "
                     f"scored): ECE {_number(found.get('ece'))}, macro F1 "
                     f"{_number(found.get('macro_f1'))}; in {found.get('folder')}")
        labels = (("interpretation", "interpretation"),)
    elif phase == "evaluate":
        examples = result.get("test_examples")
        on = f" on {examples} test examples" if examples is not None else ""
        lines.append(f"evaluate: loss {_number(result.get('loss'))}, accuracy "
                     f"{_number(result.get('accuracy'))}{on}")
        source = result.get("weights")
        if source:
            about = [f"{result['trained_phase']} phase" if result.get("trained_phase") else "",
                     result.get("weights_note") or ""]
            about = ", ".join(a for a in about if a)
            lines.append(f"weights: {source}" + (f" ({about})" if about else ""))
        data = result.get("data")
        if data:
            if isinstance(data, dict):
                data = ", ".join(f"{k}={v}" for k, v in data.items())
            lines.append(f"data: {data}")
        labels = (("evaluation", "evaluation"),)
    else:
        epochs_run, epochs = result.get("epochs_run"), result.get("epochs")
        loop = result.get("loop")
        lines.append(f"{phase} phase ({loop} loop): {epochs_run}/{epochs} epochs, "
                     f"{_stop_text(result)}")
        monitor, best = result.get("monitor"), result.get("best_value")
        if best is not None:
            epoch = result.get("best_epoch")
            lines.append(f"best {monitor}: {_number(best)}"
                         + (f" at epoch {epoch}" if epoch else ""))
        else:
            lines.append(f"best {monitor}: none (never logged, or not finite)")
        last = result.get("last_epoch_logs")
        if last:
            # A fixed order (the JSON's is sorted): loss first, then validation.
            names = sorted(last, key=lambda n: (n == "learning_rate", n.startswith("val_"),
                                                n.removeprefix("val_") != "loss", n))
            lines.append("last epoch: " + " - ".join(f"{n} {_number(last[n])}" for n in names))
        labels = _TRAIN_FILES
    files = dict(result.get("files") or {})
    if phase != "evaluate" and result.get("run_dir") and "summary" not in files:
        files["summary"] = os.path.join(result["run_dir"], SUMMARY_JSON)
    file_lines = _files_lines(files, labels)
    if file_lines:
        lines.append("files:")
        lines.extend(file_lines)
    if phase != "evaluate" and result.get("stop_reason") == "nan":
        advice = result.get("advice") or "pass a lower --learning_rate"
        lines.append(f"next: {advice}; run the phase again:")
    else:
        lines.append("next:")
    lines.append("  " + next_command(result))
    return "\n".join(lines)


def summary_text(result: dict) -> str:
    """What train.py prints after `--phase=lr_find` (`result`: `phases.lr_find`'s)."""
    found = result["suggestions"]
    lines = [f"lr_find ({result['for_phase']} phase): {result['steps']} steps"
             + (", stopped when the loss diverged" if result["stopped_early"] else "")]
    lines += [f"  {name:8s} {lr:.3g}" + ("  (--lr_suggestion default)"
                                         if name == result["default_suggestion"] else "")
              for name, lr in found.items()]
    lines.append("files:")
    lines += [f"  {path}" for path in result["files"].values()]
    lines.append("next:")
    lines.append(f"  tapefit train --phase={result['for_phase']} --learning_rate=auto "
                 f"--workdir={os.path.dirname(result['run_dir'])} [the same flags]")
    return "\n".join(lines)
