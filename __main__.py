"""`tapefit COMMAND [FLAGS]`: the four entry points under one command (also
`python -m tapefit COMMAND`).

    tapefit train --phase=head --workdir=runs/catsdogs
    tapefit predict --workdir=runs/catsdogs cat.jpg photos/
    tapefit compare --phase=head --deterministic
    tapefit sweep --workdir=runs/study --axis=learning_rate=1e-3,3e-3 --seeds=0,1,2

`tapefit COMMAND --help` lists that command's flags.
"""
import difflib
import importlib
import os
import sys

# Command -> (module, what it does). Each module's `main(argv)` is absl's `app.run`.
COMMANDS = {
    "train": ("tapefit.train", "train, evaluate or lr_find one phase of a run"),
    "predict": ("tapefit.predict", "classify image files or folders with a trained run"),
    "compare": ("tapefit.compare", "train a phase with the custom loop and with fit(), diff them"),
    "sweep": ("tapefit.sweep", "a study: configurations x seeds, with honest statistics"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: tapefit COMMAND [FLAGS]   (tapefit COMMAND --help for its flags)\n\n"
            "commands:\n" + "\n".join(lines))


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        try:
            print(usage(), flush=True)
        except BrokenPipeError:  # `tapefit --help | head -1`: the reader has what it wanted.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv[1] == "--version":
        from tapefit import __version__
        print(f"tapefit {__version__}")
        return 0
    name = argv[1]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        sys.exit(f"error: unknown command {name!r}{hint}; one of: {', '.join(COMMANDS)}")
    from tapefit.flags.quiet import silence_native_logs
    sys.argv = [f"tapefit {name}", *argv[2:]]  # absl's usage line names the command.
    silence_native_logs(sys.argv)  # Before the command's module imports TensorFlow.
    return importlib.import_module(COMMANDS[name][0]).main(sys.argv)


if __name__ == "__main__":
    sys.exit(main())
