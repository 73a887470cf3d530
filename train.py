"""Two-phase transfer learning: `--phase=head`, then `--phase=finetune`, then `--phase=evaluate`.

    tapefit train --phase=head --workdir=runs/catsdogs
    tapefit train --phase=finetune --unfreeze_from=block5 --workdir=runs/catsdogs
    tapefit train --phase=evaluate --workdir=runs/catsdogs
"""
# Flags are read here only; the library receives a frozen `Config`.
import json

if __name__ == "__main__" and not __package__:  # `python train.py` in a checkout:
    import _checkout  # noqa: F401  (its own tapefit, installed, or one line)

from tapefit.flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from tapefit.flags.definitions import define_flags, define_help_flags, define_output_flags  # noqa: E402
from tapefit.loops.entry import app_run, run_command  # noqa: E402

define_flags()
define_output_flags()
define_help_flags(doc=__doc__)


def train(cfg):
    from absl import flags

    from tapefit.loops import console, phases
    from tapefit.loops.training.strategy import is_chief, task
    result = phases.run(cfg)
    if not is_chief(cfg.strategy):  # Under multi_worker the chief speaks for the job.
        if not flags.FLAGS["json"].value:
            print(f"{cfg.phase} phase: done on worker {task()[1]}; the chief writes "
                  f"{cfg.workdir} and prints the summary and the next command")
        return
    if flags.FLAGS["json"].value:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(console.phase_summary(result))


def main(argv=None):
    """The `tapefit train` command (absl's `app.run`; `argv` defaults to `sys.argv`)."""
    app_run(lambda argv: run_command(argv, train), argv)


if __name__ == "__main__":
    main()
