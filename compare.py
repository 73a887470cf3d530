"""Trains one phase with the custom loop and with fit(), then reports the difference.

    tapefit compare --phase=head --deterministic [tapefit train flags...]

Exit code 0 iff the two runs agree within the criterion written in the report
(exact equality under --deterministic, else a relative tolerance).
"""
import os

if __name__ == "__main__" and not __package__:  # `python compare.py` in a checkout:
    import _checkout  # noqa: F401  (its own tapefit, installed, or one line)

from tapefit.flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from absl import flags  # noqa: E402

from tapefit.flags.config import DEFAULT_TOLERANCE  # noqa: E402
from tapefit.flags.definitions import define_flags, define_help_flags  # noqa: E402
from tapefit.loops.entry import app_run, run_command  # noqa: E402

define_flags()
flags.DEFINE_float("tolerance", DEFAULT_TOLERANCE,
                   "Relative tolerance when not --deterministic.")
define_help_flags({"comparison": ("tolerance",)}, doc=__doc__)
FLAGS = flags.FLAGS


def compare(cfg):
    from tapefit.loops import compare_lib
    report = compare_lib.compare(cfg, FLAGS.tolerance)
    print(f"{'EQUAL' if report['equal'] else 'DIFFERENT'}: max_abs_weight_diff="
          f"{report['max_abs_weight_diff']:.3g} max_abs_metric_diff="
          f"{report['max_abs_metric_diff']:.3g} ({report['criterion']}); report in "
          f"{os.path.join(cfg.run_dir, 'report.md')}")
    return 0 if report["equal"] else 1


def main(argv=None):
    """The `tapefit compare` command (absl's `app.run`; `argv` defaults to `sys.argv`)."""
    app_run(lambda argv: run_command(argv, compare), argv)


if __name__ == "__main__":
    main()
